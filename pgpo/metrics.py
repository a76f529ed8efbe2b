"""Statistics of a run, as pure functions: the visual dependency, what a shaping method did with it, and a running
mean / variance (Welford). The trainer logs them per step; ``pgpo inspect`` summarises one answer with the same ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

TOP_SHARE_FRACTION = 0.1  # "the top 10% of tokens"
DEPENDENCY_QUANTILES = (0.5, 0.9, 0.99)
# k3_clamp="vppo"'s ceiling on S (pgpo.dependency.VPPO_K3_CLAMP[1]): min(S, 10) >= 10 iff S >= 10, so the share of
# tokens at or above it is the same with the clamp on or off.
HIGH_DEPENDENCY = 10.0


def top_share(values: torch.Tensor, fraction: float = TOP_SHARE_FRACTION) -> float:
    """Share of ``values.sum()`` carried by the largest ``ceil(fraction * n)`` values (at least 1); 0 for a zero sum."""
    k = max(1, math.ceil(fraction * values.numel()))
    total = float(values.sum())
    return float(values.topk(k).values.sum()) / total if total > 0 else 0.0


def dependency_summary(valid: torch.Tensor) -> dict[str, float]:
    """The dependency metrics of a run's tokens (``valid``: the ``S`` of every valid token, 1-D, not empty)."""
    valid = valid.float()
    out = {"mean": valid.mean().item(), "mean_log1p": torch.log1p(valid).mean().item()}  # the mean S~ of Eq. 4
    for q in DEPENDENCY_QUANTILES:
        out[f"p{int(q * 100)}"] = torch.quantile(valid, q).item()
    out["max"] = valid.max().item()
    out["frac_above_10"] = (valid >= HIGH_DEPENDENCY).float().mean().item()
    out["top10_share"] = top_share(valid)  # sparsity: the share of the total S on the top 10% of tokens
    return out


def gate_sums(weights: torch.Tensor, gate: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """float64 ``[4]``: gated tokens, valid tokens, the weight on gated tokens, the weight on the others (sums, so
    that processes can add them up before :func:`gate_summary`)."""
    valid = valid.bool()
    gate, w = gate & valid, weights.detach().to(torch.float64)
    return torch.stack([gate.sum(), valid.sum(), (w * gate).sum(), (w * (valid & ~gate)).sum()]).to(torch.float64)


def gate_summary(sums: torch.Tensor) -> dict[str, float]:
    """``gated_frac`` and the mean weight on gated / ungated tokens (NaN where there are none) from :func:`gate_sums`."""
    n_gated, n_valid, w_gated, w_ungated = sums.tolist()
    return {
        "gated_frac": n_gated / max(n_valid, 1.0),
        "weight_gated": w_gated / n_gated if n_gated else math.nan,
        "weight_ungated": w_ungated / (n_valid - n_gated) if n_valid > n_gated else math.nan,
    }


@dataclass
class RunningMoments:
    """Welford's running mean and (sample) variance of a stream of numbers; saved with checkpoints as a dict."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def variance(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    def state_dict(self) -> dict:
        return asdict(self)
