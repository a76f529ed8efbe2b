"""PGPO's token weights: the paper's Eqs. 4-8 (Sec. 4.2-4.3), per response, exactly.

For response ``i`` with ``L_i`` valid tokens, visual dependencies ``S_t >= 0`` (:mod:`pgpo.dependency`) and
sequence-level advantage ``A_i``::

    S~_t = log(1 + S_t)                                                              (Eq. 4)
    I_t  = (S~_t - min_j S~_j) / (max_j S~_j - min_j S~_j + eps)   over the SAME response's tokens   (Eq. 5)
    w(I) = I / (tau + eps)                            if I < tau   (suppression ramp, 0 -> 1)        (Eq. 6)
         = 1 + beta * (I - tau) / (1 - tau + eps)     if I >= tau  (amplification, 1 -> 1 + beta)
    w~_t = w(I_t) * L_i / sum_j w(I_j)                (sum-preserving: sum_t w~_t = L_i)             (Eq. 7)
    A~_t = A_i * w~_t                                                                                 (Eq. 8)

Defaults ``tau = 0.4``, ``beta = 2.0`` (Table 3's best); ``eps = 1e-8`` (the paper: "a small constant"). No clipping
of the weights and no special handling of the sign of ``A_i``. Degenerate responses (pgpo's choice, as the public
re-implementation): when ``sum_j w(I_j) <= 1e-8`` — which is exactly the case of a 1-token response and of a
response whose scores are all equal (``I = 0`` everywhere) — every valid token gets ``w~ = 1`` (plain DAPO/GRPO).
Padding gets 0. The Table 2 ablations are options: ``tau = 1`` suppression-only, ``tau = 0`` boosting-only,
``normalize = False`` "w/o Norm." (Eq. 7 removed: ``w~ = w``, with the same degenerate fallback).

Properties (tested): ``S -> w~`` is non-decreasing within a response (App. G) and strictly rank-preserving for
``beta > 0`` (App. H); ``sum_t w~_t = L_i``, so each response's total advantage ``L_i A_i`` and each group's zero mean
are unchanged (App. F).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pgpo.shaping import ShapingResult, check_inputs, register_shaping, work_dtype

DEGENERATE_MASS = 1e-8  # sum_j w(I_j) at or below this -> w~ = 1 (spec section 2)


@dataclass(frozen=True)
class PGPOShapingConfig:
    """The constants of Eqs. 5-7. Defaults are the paper's."""

    tau: float = 0.4  # the gate on I (Eq. 6); 1 = suppression-only, 0 = boosting-only (Table 2)
    beta: float = 2.0  # amplification above the gate: w in [1, 1 + beta] (Eq. 6)
    eps: float = 1e-8  # the "small constant" of Eqs. 5-6
    normalize: bool = True  # Eq. 7; False = the "w/o Norm." ablation

    def __post_init__(self):
        for name in ("tau", "beta", "eps"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"pgpo_{name} must be finite, got {getattr(self, name)}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"pgpo_tau must be in [0, 1], got {self.tau}")
        if self.beta < 0.0:
            raise ValueError(f"pgpo_beta must be >= 0, got {self.beta}")
        if not 0.0 < self.eps < 0.1:
            raise ValueError(f"pgpo_eps must be in (0, 0.1), got {self.eps}")


def importance(dependency: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``I_t`` of Eqs. 4-5: ``log(1 + S)`` min-max normalised within each response (``[B, T]``, 0 on padding)."""
    valid = mask.bool()
    s = torch.log1p(dependency.to(work_dtype(dependency)))  # Eq. 4
    lo = torch.where(valid, s, torch.full_like(s, math.inf)).amin(-1, keepdim=True)
    hi = torch.where(valid, s, torch.full_like(s, -math.inf)).amax(-1, keepdim=True)
    span = torch.where(valid.any(-1, keepdim=True), hi - lo, torch.zeros_like(hi))
    i = (s - torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))) / (span + eps)  # Eq. 5
    return torch.where(valid, i, torch.zeros_like(i))


def ramp(i: torch.Tensor, tau: float, beta: float, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 6: ``I / (tau + eps)`` below ``tau``, ``1 + beta (I - tau) / (1 - tau + eps)`` at or above it."""
    return torch.where(i < tau, i / (tau + eps), 1.0 + beta * (i - tau) / (1.0 - tau + eps))


def pgpo_weights(
    dependency: torch.Tensor, mask: torch.Tensor, cfg: PGPOShapingConfig = PGPOShapingConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w~, I)``: the token weights of Eq. 7 (``[B, T]``, ``sum_t w~_t = L_i``) and the importance of Eq. 5."""
    valid = mask.bool()
    i = importance(dependency, mask, cfg.eps)
    w = torch.where(valid, ramp(i, cfg.tau, cfg.beta, cfg.eps), torch.zeros_like(i))
    mass = w.sum(-1, keepdim=True)
    length = valid.sum(-1, keepdim=True).to(w.dtype)
    degenerate = mass <= DEGENERATE_MASS
    if cfg.normalize:
        w = w * length / mass.clamp_min(DEGENERATE_MASS)  # Eq. 7
    w = torch.where(degenerate, valid.to(w.dtype), w)
    return w, i


@register_shaping(
    "pgpo",
    config=lambda args: PGPOShapingConfig(
        tau=args.pgpo_tau, beta=args.pgpo_beta, eps=args.pgpo_eps, normalize=args.pgpo_normalize
    ),
)
def pgpo_shape(
    advantages: torch.Tensor,
    dependency: torch.Tensor,
    mask: torch.Tensor,
    cfg: PGPOShapingConfig = PGPOShapingConfig(),
) -> ShapingResult:
    """PGPO (Eq. 8): ``A~_{i,t} = A_i * w~_{i,t}`` with the weights of :func:`pgpo_weights`."""
    advantages = check_inputs(advantages, dependency, mask)
    w, i = pgpo_weights(dependency, mask, cfg)
    gate = (i >= cfg.tau) & mask.bool()
    w = w.to(advantages.dtype)
    return ShapingResult(advantages=advantages[:, None] * w, weights=w, gate=gate, extras={"importance": i.float()})
