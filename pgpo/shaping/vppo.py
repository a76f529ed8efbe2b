"""VPPO's shaping ("Spotlight on Token Perception", arXiv 2510.09285), as VPPO-RL's code does it.

VPPO scores each token with the k3 dependency between the old policy on the original image and on a patch-blackened
copy (clamped: :data:`pgpo.dependency.VPPO_K3_CLAMP`) and then applies two things:

* TAS (trajectory advantage shaping): ``s_i = mean_t S_{i,t}``; ``n_i = (s_i - min s) / (max s - min s)`` over the
  batch given; ``A_i <- A_i * (m + n_i (1 - m) / (mean(n) + 1e-8))``, so the factors lie in ``[m, M]`` with
  ``M = m + (1 - m) / mean(n)`` and average 1. Factor 1 when fewer than two responses have tokens or when
  ``max s - min s <= 1e-6``. ``m = advantage_scaling_min``.
* TGF (token gradient filtering): only the top ``ceil(p L_i)`` tokens of each response by ``S`` keep their advantage
  (``p = top_p_tokens``); the others get 0 but stay in the loss's token count.

VPPO-RL takes the TAS min-max over each GPU's share of the update mini-batch and the mean over each micro-batch; this
function does both over the batch it is given, and the trainer gives it each process's share of the generation batch
(after dynamic sampling), once per generation, before it is split into micro-batches (``per_response=False``: the
trainer's ``own_pass`` / ``trl_old_logps`` sources; docs/method.md). With Table 6's sizes that is 384 / P prompts on
each of P processes, three times VPPO-RL's share of its 128-prompt update mini-batch (and more than a micro-batch for
the mean). Its defaults are VPPO-RL's config (p = 0.2, m = 0.8); their 7B script uses p = 0.4, m = 0.9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pgpo.shaping import ShapingResult, check_inputs, register_shaping, work_dtype


@dataclass(frozen=True)
class VPPOShapingConfig:
    """VPPO's TAS and TGF constants; defaults from VPPO-RL's config."""

    top_p_tokens: float = 0.2  # p: fraction of each response's tokens kept by TGF (their 7B script: 0.4)
    advantage_scaling_min: float = 0.8  # m: lower end of the TAS factor (their 7B script: 0.9)

    def __post_init__(self):
        if not (math.isfinite(self.top_p_tokens) and 0.0 < self.top_p_tokens <= 1.0):
            raise ValueError(f"vppo_top_p_tokens must be in (0, 1], got {self.top_p_tokens}")
        if not (math.isfinite(self.advantage_scaling_min) and 0.0 <= self.advantage_scaling_min <= 1.0):
            raise ValueError(f"vppo_advantage_scaling_min must be in [0, 1], got {self.advantage_scaling_min}")


def tas_factor(dependency: torch.Tensor, mask: torch.Tensor, m: float) -> torch.Tensor:
    """TAS: one factor per response (``[B]``), mean 1 over the responses with tokens."""
    maskf = mask.to(work_dtype(dependency))
    length = maskf.sum(-1)
    seq = (dependency.to(maskf.dtype) * maskf).sum(-1) / length.clamp_min(1.0)
    has = length > 0
    factor = torch.ones_like(seq)
    if has.sum() < 2:
        return factor
    lo, hi = seq[has].min(), seq[has].max()
    if hi - lo <= 1e-6:
        return factor
    n = ((seq - lo) / (hi - lo)).clamp(0.0, 1.0)
    return torch.where(has, m + n * (1.0 - m) / (n[has].mean() + 1e-8), factor)


def tgf_mask(dependency: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """TGF: bool ``[B, T]``, the top ``ceil(p L_i)`` valid tokens of each response by dependency."""
    valid = mask.bool()
    length = valid.sum(-1).to(torch.float64)
    k = torch.ceil(p * length - 1e-9)
    ranked = torch.where(
        valid, dependency.to(torch.float64), torch.full_like(dependency, -math.inf, dtype=torch.float64)
    )
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (rank < k[:, None]) & valid


@register_shaping(
    "vppo",
    config=lambda args: VPPOShapingConfig(
        top_p_tokens=args.vppo_top_p_tokens, advantage_scaling_min=args.vppo_advantage_scaling_min
    ),
    per_response=False,
)
def vppo_shape(
    advantages: torch.Tensor,
    dependency: torch.Tensor,
    mask: torch.Tensor,
    cfg: VPPOShapingConfig = VPPOShapingConfig(),
) -> ShapingResult:
    """VPPO: ``A_{i,t} = A_i * TAS_i * 1[t in TGF_i]``."""
    advantages = check_inputs(advantages, dependency, mask)
    factor = tas_factor(dependency, mask, cfg.advantage_scaling_min)
    keep = tgf_mask(dependency, mask, cfg.top_p_tokens)
    w = (factor[:, None] * keep).to(advantages.dtype)
    return ShapingResult(advantages=advantages[:, None] * w, weights=w, gate=keep, extras={"tas": factor.float()})
