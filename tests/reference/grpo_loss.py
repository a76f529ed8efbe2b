"""Test oracle: the clipped policy-gradient loss with per-token advantages (GRPO family), written from the papers.

Not library code: PGPOTrainer uses TRL's own ``_compute_loss``; tests/test_loss.py checks that TRL's loss equals this
reference, so that PGPO's ``[B, T]`` advantages enter the loss the papers define.

Per token: ``rho = exp(logp - logp_old)``,
``l_t = -min(rho * A_t, clip(rho, 1 - eps_low, 1 + eps_high) * A_t) + beta * k3(pi || pi_ref)`` with
``k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1``. PGPO changes only ``A_t`` (a per-token ``[B, T]`` tensor);
a ``[B]`` tensor means GRPO's one advantage per sequence.

Aggregations (``loss_type``), the same formulas as TRL 1.16's ``GRPOTrainer._compute_loss`` without gradient
accumulation:

* ``grpo``: mean over each sequence's valid tokens, then mean over sequences.
* ``dapo`` / ``bnpo``: one mean over all valid tokens of the batch (token-level).
* ``dr_grpo``: sum over valid tokens divided by ``B * max_completion_length`` (a constant).
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return ``(loss, stats)``; ``stats`` has the clip fractions and the mean KL (detached)."""
    if logps.shape != old_logps.shape or logps.shape != mask.shape:
        raise ValueError(
            f"shape mismatch: logps {tuple(logps.shape)}, old_logps {tuple(old_logps.shape)}, mask {tuple(mask.shape)}"
        )
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    if advantages.shape[0] != logps.shape[0] or advantages.shape[1] not in (1, logps.shape[1]):
        raise ValueError(f"advantages shape {tuple(advantages.shape)} does not fit logps {tuple(logps.shape)}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps")

    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    stats: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
        stats["kl"] = ((kl * mask).sum() / mask.sum().clamp(min=1.0)).detach()

    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("dapo", "bnpo"):
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - epsilon_low) & (advantages < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (advantages > 0)).to(mask.dtype)
        stats["clip_ratio/low_mean"] = (low * mask).sum() / n
        stats["clip_ratio/high_mean"] = (high * mask).sum() / n
    return loss, stats
