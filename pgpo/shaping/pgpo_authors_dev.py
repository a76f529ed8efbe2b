"""``pgpo_authors_dev``: PGPO as the authors' unreleased development code weights tokens, not as the paper does.

Source. The paper's repository (github.com/Yzk1114/PGPO) holds no code. The third-party re-implementation
github.com/zsxm1998/awesome-perception-aware-rlvr ships two forms of PGPO's token weights in one function,
``_compute_pgpo_token_scaling`` in ``verl/trainer/perception_reasoning_loss.py`` (commit
ef5f4b790a82463f3b1ede9fbe37f55a47b4baa9): the paper's (its defaults) and, with ``pgpo_threshold_mode=quantile``,
``pgpo_low_weight_floor=0.1``, ``pgpo_mass_normalization=false`` (``verl/trainer/config.py``; run by
``examples/reproduction/pgpo/*_dapo_pgpo_authorcode.sh`` and ``examples/comparison/qwen3_vl_4b/pgpo.sh``), the form of
"a development repository of the authors (``Yzk1114/EasyR1@6259f02``, method "vig", not linked from the paper)"
(``examples/reproduction/pgpo/README.md``), which its ``tests/test_pgpo_scaling.py`` (``_development_code_weights``)
transcribes from that snapshot's ``verl/workers/actor/dp_actor.py``. The snapshot itself is not public here. The paper
does not say which form produced its numbers. pgpo writes the form from the equations below, not from either code.

For response ``i`` with ``L_i`` valid tokens, dependencies ``S_t >= 0`` and advantage ``A_i``; ``q`` =
``pgpo_authors_dev_quantile`` (0.4), ``f`` = ``pgpo_authors_dev_floor`` (0.1), ``beta`` = ``pgpo_beta`` (2.0),
``eps`` = ``pgpo_eps``::

    S~_t  = log(1 + S_t)                                                      (Eq. 4, unchanged)
    I_t   = (S~_t - min_j S~_j) / (max_j S~_j - min_j S~_j + eps)   per response   (Eq. 5, unchanged)
    k_i   = min(floor(q L_i), L_i - 1)                                        [dev] a rank, not a value
    tau_i = the I at 0-based position k_i of response i's I sorted ascending    [dev] replaces Eq. 6's fixed tau
    w_t   = max(f, I_t / (tau_i + eps))                if I_t <  tau_i         [dev] Eq. 6's ramp, floored at f
          = 1 + beta (I_t - tau_i) / (1 - tau_i + eps) if I_t >= tau_i         (Eq. 6's amplification, with tau_i)
    A~_t  = A_i * w_t                                                          [dev] no Eq. 7: w is not rescaled

So ``k_i`` of each response's tokens (fewer with ties at ``tau_i``) are suppressed to ``[f, 1)`` and the rest
amplified to ``[1, 1 + beta]``, whatever the scale of its dependency. Without Eq. 7 a response's total advantage
is no longer ``L_i A_i`` and a group's zero mean is not kept (App. F does not hold). ``S -> w`` stays non-decreasing
within a response (App. G), but the floor ties the lowest tokens, so it is not strictly rank-preserving (App. H).

Degenerate responses need no special case: when all of a response's scores are equal (a 1-token response included),
``I = 0`` everywhere, ``tau_i = 0`` and every token gets ``1 + beta * 0 = 1`` (plain DAPO/GRPO). When ``q L_i < 1``,
``tau_i = min I = 0`` and no token is suppressed. Padding gets 0; ``A_i = 0`` stays 0; no clipping, no sign handling.

pgpo's choices, where the two codes differ from the equations by rounding only: ``I`` is pgpo's Eq. 5 (the snapshot
divides by the range when it exceeds 1e-8, by 1 otherwise: the same to within ``eps / range``); ``floor(q L_i)`` is
taken in float64 with a 1e-9 tolerance, so ``q = 0.29, L = 100`` gives 29 (the snapshot's float32 product can round
either way at such ties). The snapshot's dependency is the k3 estimate clamped as VPPO's (``d`` to [-20, 20], ``S`` to
[0, 10]), which in pgpo is the separate option ``k3_clamp="vppo"``, not part of this shaping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pgpo.shaping import ShapingResult, check_inputs, register_shaping
from pgpo.shaping.pgpo import PGPOShapingConfig, importance


@dataclass(frozen=True)
class PGPOAuthorsDevConfig:
    """The development code's constants; defaults are its settings (the re-implementation's ``*_authorcode`` runs)."""

    quantile: float = 0.4  # q: the gate is each response's I at ascending rank floor(q L)
    floor: float = 0.1  # f: lower bound of the suppressed tokens' weights
    beta: float = 2.0  # amplification at and above the gate, as Eq. 6 (pgpo_beta)
    eps: float = 1e-8  # the small constant of Eqs. 5-6 (pgpo_eps)

    def __post_init__(self):
        if not (math.isfinite(self.quantile) and 0.0 <= self.quantile <= 1.0):
            raise ValueError(f"pgpo_authors_dev_quantile must be in [0, 1], got {self.quantile}")
        if not (math.isfinite(self.floor) and 0.0 <= self.floor <= 1.0):
            raise ValueError(f"pgpo_authors_dev_floor must be in [0, 1], got {self.floor}")
        PGPOShapingConfig(beta=self.beta, eps=self.eps)  # the same checks on pgpo_beta / pgpo_eps as the paper's form


def quantile_gate(i: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """``tau_i`` (``[B, 1]``): each response's ``I`` at 0-based ascending rank ``min(floor(q L_i), L_i - 1)``."""
    valid = mask.bool()
    length = valid.sum(-1, keepdim=True)
    k = torch.floor(length.to(torch.float64) * q + 1e-9).long()
    k = torch.minimum(k, length - 1).clamp_min(0)
    ascending = torch.where(valid, i, torch.full_like(i, math.inf)).sort(dim=-1).values
    tau = ascending.gather(-1, k)
    return torch.where(length > 0, tau, torch.zeros_like(tau))


def authors_dev_weights(
    dependency: torch.Tensor, mask: torch.Tensor, cfg: PGPOAuthorsDevConfig = PGPOAuthorsDevConfig()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w, I, tau)``: the token weights (``[B, T]``, 0 on padding, not rescaled), Eq. 5's ``I`` and the gate ``[B, 1]``."""
    valid = mask.bool()
    i = importance(dependency, mask, cfg.eps)
    tau = quantile_gate(i, mask, cfg.quantile)
    below = (i / (tau + cfg.eps)).clamp_min(cfg.floor)
    above = 1.0 + cfg.beta * (i - tau) / (1.0 - tau + cfg.eps)
    w = torch.where(i < tau, below, above)
    return torch.where(valid, w, torch.zeros_like(w)), i, tau


@register_shaping(
    "pgpo_authors_dev",
    config=lambda args: PGPOAuthorsDevConfig(
        quantile=args.pgpo_authors_dev_quantile,
        floor=args.pgpo_authors_dev_floor,
        beta=args.pgpo_beta,
        eps=args.pgpo_eps,
    ),
)
def authors_dev_shape(
    advantages: torch.Tensor,
    dependency: torch.Tensor,
    mask: torch.Tensor,
    cfg: PGPOAuthorsDevConfig = PGPOAuthorsDevConfig(),
) -> ShapingResult:
    """``A~_{i,t} = A_i * w_{i,t}`` with the development code's weights (:func:`authors_dev_weights`)."""
    advantages = check_inputs(advantages, dependency, mask)
    w, i, tau = authors_dev_weights(dependency, mask, cfg)
    valid = mask.bool()
    gate = (i >= tau) & valid
    w = w.to(advantages.dtype)
    extras = {"importance": i.float(), "threshold": torch.where(valid, tau, torch.zeros_like(i)).float()}
    return ShapingResult(advantages=advantages[:, None] * w, weights=w, gate=gate, extras=extras)
