"""Advantage shaping from token visual dependency: PGPO (the method) and VPPO (the baseline).

Notation: ``A_i`` is sequence ``i``'s GRPO advantage, ``S_{i,t} >= 0`` the visual dependency of its token ``t``
(:mod:`pgpo.dependency`), ``m_{i,t}`` the completion mask and ``L_i = sum_t m_{i,t}`` its number of valid tokens.
GRPO gives every token ``A_{i,t} = A_i``. Both functions here return per-token advantages ``[B, T]``.

PGPO (threshold-gated, mass-conserving reshaping; see docs/method.md for what the paper states and what is
pgpo's reconstruction):

1. Gate         ``g_{i,t} = 1[S_{i,t} > tau]``, with ``tau`` fixed, or the ``q``-quantile of all valid ``S`` of the batch.
2. Raw weight   ``r_{i,t} = 1 + alpha * S_{i,t} / mean_{g=1}(S)``  if gated,   ``r_{i,t} = beta``  otherwise.
3. Conserve     ``w_{i,t} = L_i * r_{i,t} / sum_t r_{i,t}``, so ``sum_t w_{i,t} = L_i``.
4. Bound        ``w_{i,t} = clip(c_i * r_{i,t}, w_min, w_max)`` with ``c_i`` solved (bisection, float64) so that the
                sum is still exactly ``L_i``; step 3 is the special case without bounds. If no ``c_i`` can reach
                ``L_i`` (``beta = 0`` and fewer than ``L_i / w_max`` gated tokens), gated tokens take ``w_max`` and the
                rest of the mass is spread equally over the ungated ones.
5. Advantage    ``A_{i,t} = w_{i,t} * A_i``.

A sequence with no gated token gets ``w = 1`` (plain GRPO); ``A_i = 0`` stays 0; masked tokens get 0.

VPPO ("Spotlight on Token Perception", arXiv 2510.09285, VPPO-RL code):

* TAS: ``s_i = mean_t S_{i,t}``; ``n_i = (s_i - min s) / (max s - min s)`` over the batch;
  ``A_i <- A_i * (m + (1 - m) * n_i / mean(n))`` (i.e. mapped to ``[m, M]``, ``M = m + (1 - m) / mean(n)``).
* TGF: keep only the top ``ceil(p * L_i)`` tokens of each sequence by ``S`` (advantage 0 elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PGPOShapingConfig:
    """PGPO gate and strength. Defaults: see docs/method.md (paper where it states them, else reconstruction)."""

    gate: str = "quantile"  # "quantile": tau = q-quantile of the batch's valid S; "fixed": tau = threshold
    quantile: float = 0.8  # q: the top (1 - q) of tokens are gated
    threshold: float = 0.0  # tau for gate == "fixed"
    alpha: float = 1.0  # amplification strength of gated tokens
    beta: float = 0.5  # floor of ungated tokens' raw weight, 0 <= beta <= 1
    w_min: float = 0.1  # lower bound of a token's weight
    w_max: float = 5.0  # upper bound of a token's weight

    def __post_init__(self):
        if self.gate not in ("quantile", "fixed"):
            raise ValueError(f"gate must be 'quantile' or 'fixed', got {self.gate!r}")
        if not 0.0 <= self.quantile < 1.0:
            raise ValueError(f"quantile must be in [0, 1), got {self.quantile}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if 0.0 < self.beta < 1e-200:
            raise ValueError(
                f"beta must be 0 or >= 1e-200 (the mass solve works in float64 log-space), got {self.beta}"
            )
        if not 0.0 <= self.w_min <= 1.0 <= self.w_max:
            raise ValueError(
                f"need 0 <= w_min <= 1 <= w_max (mass must stay reachable), got {self.w_min}, {self.w_max}"
            )


@dataclass
class ShapingResult:
    advantages: torch.Tensor  # [B, T] per-token advantages (0 on masked tokens)
    weights: torch.Tensor  # [B, T] the factor applied to A_i (0 on masked tokens)
    gate: torch.Tensor  # [B, T] bool, the tokens PGPO amplified (VPPO: the kept tokens)
    threshold: float  # tau used (nan for VPPO)


def _check(advantages: torch.Tensor, dependency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if dependency.shape != mask.shape:
        raise ValueError(f"dependency shape {tuple(dependency.shape)} != mask shape {tuple(mask.shape)}")
    if advantages.dim() == 2 and advantages.shape[1] == 1:
        advantages = advantages.squeeze(1)
    if advantages.dim() != 1 or advantages.shape[0] != dependency.shape[0]:
        raise ValueError(
            f"advantages must be one per sequence, shape ({dependency.shape[0]},), got {tuple(advantages.shape)}"
        )
    if not torch.isfinite(dependency[mask.bool()]).all():
        raise ValueError("dependency has non-finite values on valid tokens")
    if (dependency[mask.bool()] < 0).any():
        raise ValueError("dependency must be >= 0 (it is a KL divergence)")
    return advantages


def gate_threshold(dependency: torch.Tensor, mask: torch.Tensor, cfg: PGPOShapingConfig) -> float:
    """``tau``: fixed, or the ``q``-quantile of all valid dependency values of the batch."""
    if cfg.gate == "fixed":
        return float(cfg.threshold)
    valid = dependency[mask.bool()].double()
    if valid.numel() == 0:
        return math.inf
    return float(torch.quantile(valid, cfg.quantile))


def _solve_bounded(r: torch.Tensor, mask: torch.Tensor, w_min: float, w_max: float, iters: int = 200) -> torch.Tensor:
    """``w = clip(c * r, w_min, w_max)`` per row with ``c`` chosen so that ``sum_t w = L`` (float64 bisection)."""
    r = r.double() * mask
    L = mask.sum(-1, keepdim=True)
    # At c_hi every token with r > 0 reaches w_max >= 1, so the sum is >= L whenever L is reachable at all.
    # Bisection on log c (r can span hundreds of orders of magnitude), float64.
    r_pos_min = torch.where(r > 0, r, torch.full_like(r, math.inf)).min(-1, keepdim=True).values
    log_hi = torch.where(torch.isfinite(r_pos_min), math.log(w_max) - torch.log(r_pos_min), torch.zeros_like(L))
    log_hi = log_hi.clamp(max=700.0)
    log_lo = torch.full_like(L, -700.0)

    def total(c):
        return (torch.clamp(c * r, w_min, w_max) * mask).sum(-1, keepdim=True)

    for _ in range(iters):
        mid = (log_lo + log_hi) / 2
        too_small = total(torch.exp(mid)) < L
        log_lo = torch.where(too_small, mid, log_lo)
        log_hi = torch.where(too_small, log_hi, mid)
    c = torch.exp((log_lo + log_hi) / 2)
    w = torch.clamp(c * r, w_min, w_max) * mask
    # Rows where scaling cannot reach L (zero raw weights, i.e. beta = 0, and too few gated tokens for w_max):
    # gated tokens take w_max and the remaining mass is spread equally over the zero-weight tokens.
    pos = (r > 0) & mask.bool()
    cap = torch.where(pos, torch.full_like(r, w_max), torch.full_like(r, w_min)).mul(mask).sum(-1, keepdim=True)
    short = cap < L - 1e-12
    if short.any():
        n_zero = (~pos & mask.bool()).sum(-1, keepdim=True).clamp_min(1)
        fill = (L - pos.sum(-1, keepdim=True) * w_max) / n_zero
        alt = torch.where(pos, torch.full_like(r, w_max), fill.expand_as(r)) * mask
        w = torch.where(short, alt, w)
    return w


def pgpo_weights(
    dependency: torch.Tensor, mask: torch.Tensor, cfg: PGPOShapingConfig = PGPOShapingConfig()
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """PGPO token weights ``w`` (``[B, T]``, summing to ``L_i`` per row), the gate and ``tau``. Steps 1-4 above."""
    maskf = mask.to(torch.float64)
    S = dependency.to(torch.float64) * maskf
    tau = gate_threshold(dependency, mask, cfg)
    gate = (S > tau) & mask.bool()
    if not gate.any():
        return maskf.to(dependency.dtype).clone(), gate, tau
    mean_gated = S[gate].mean()
    r = torch.where(gate, 1.0 + cfg.alpha * S / mean_gated, torch.full_like(S, cfg.beta)) * maskf
    # Rows with no gated token stay plain GRPO (w = 1).
    r = torch.where(gate.any(-1, keepdim=True), r, maskf)
    L = maskf.sum(-1, keepdim=True)
    w = L * r / r.sum(-1, keepdim=True).clamp_min(1e-300)
    if (w < cfg.w_min * (1 - 1e-9)).any() or (w > cfg.w_max * (1 + 1e-9)).any():
        w = _solve_bounded(r, maskf, cfg.w_min, cfg.w_max)
    return (w * maskf).to(dependency.dtype), gate, tau


def pgpo_shape(
    advantages: torch.Tensor,
    dependency: torch.Tensor,
    mask: torch.Tensor,
    cfg: PGPOShapingConfig = PGPOShapingConfig(),
) -> ShapingResult:
    """PGPO: ``A_{i,t} = w_{i,t} * A_i`` with the threshold-gated, mass-conserving weights of :func:`pgpo_weights`."""
    advantages = _check(advantages, dependency, mask)
    w, gate, tau = pgpo_weights(dependency, mask, cfg)
    w = w.to(advantages.dtype)
    return ShapingResult(advantages=advantages[:, None] * w, weights=w, gate=gate, threshold=tau)


@dataclass(frozen=True)
class VPPOShapingConfig:
    """VPPO's trajectory advantage shaping (TAS) and token gradient filtering (TGF); defaults from VPPO-RL's config."""

    top_p_tokens: float = 0.2  # p: fraction of each sequence's tokens kept by TGF (their 7B script: 0.4)
    advantage_scaling_min: float = 0.8  # m: lower end of the TAS factor (their 7B script: 0.9)

    def __post_init__(self):
        if not 0.0 < self.top_p_tokens <= 1.0:
            raise ValueError(f"top_p_tokens must be in (0, 1], got {self.top_p_tokens}")
        if not 0.0 <= self.advantage_scaling_min <= 1.0:
            raise ValueError(f"advantage_scaling_min must be in [0, 1], got {self.advantage_scaling_min}")


def vppo_shape(
    advantages: torch.Tensor,
    dependency: torch.Tensor,
    mask: torch.Tensor,
    cfg: VPPOShapingConfig = VPPOShapingConfig(),
) -> ShapingResult:
    """VPPO: TAS scales each ``A_i`` by its mean dependency (mean factor 1); TGF keeps the top-``p`` tokens per row."""
    advantages = _check(advantages, dependency, mask)
    maskb = mask.bool()
    maskf = mask.to(torch.float64)
    S = dependency.to(torch.float64) * maskf
    L = maskf.sum(-1)
    seq = S.sum(-1) / L.clamp_min(1.0)
    has = L > 0
    factor = torch.ones_like(seq)
    if has.sum() > 1:
        lo, hi = seq[has].min(), seq[has].max()
        if hi - lo > 0:
            n = (seq - lo) / (hi - lo)
            mean_n = n[has].mean()
            m = cfg.advantage_scaling_min
            factor = torch.where(has, m + (1 - m) * n / mean_n, factor)
    # TGF: rank tokens within each row; keep the top ceil(p * L_i).
    k = torch.ceil(cfg.top_p_tokens * L - 1e-9).clamp_min(1.0)
    ranked = torch.where(maskb, S, torch.full_like(S, -math.inf))
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(S.shape[-1], device=S.device).expand_as(order))
    keep = (rank < k[:, None]) & maskb
    w = (factor[:, None] * keep).to(advantages.dtype)
    return ShapingResult(advantages=advantages[:, None] * w, weights=w, gate=keep, threshold=math.nan)
