"""Extra loss terms (next to advantage shaping): one registry of pure functions, chosen by name (``loss_terms``).

A loss term adds to the policy loss of each training micro-batch. It is one function registered with
:func:`register_loss_term`::

    @register_loss_term("my_term", config=lambda args: args.my_coef or None, needs=())
    def my_term(ctx: LossContext, coef) -> tuple[torch.Tensor, dict[str, float]]: ...

``config`` builds the term's constants from :class:`~pgpo.config.PGPOConfig` (flat, documented fields); ``needs`` names
per-rollout tensors the trainer computes once after generation, with the rollout policy and no gradient (e.g.
``"masked_image_logps"``: PAPO's masked-image log-probs), which then travel with each micro-batch. Registered here:
``entropy_penalty`` (VPPO's, and PAPO's entropy term on the current policy), ``papo_perception`` (PAPO's implicit
perception loss) and ``papo_masked_entropy`` (PAPO's second entropy term; :mod:`pgpo.loss_terms.papo`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LossContext:
    """What a loss term sees for one training micro-batch."""

    logps: torch.Tensor  # [B, T] current policy's log-probs of the sampled tokens, WITH gradient (the clean image)
    mask: torch.Tensor  # [B, T] the tokens the loss counts (completion mask x tool mask)
    inputs: dict  # the micro-batch: TRL's keys plus every tensor a term `needs`
    accumulation: float  # gradient-accumulation divisor TRL applies to this micro-batch's loss


@dataclass(frozen=True)
class LossTerm:
    name: str
    fn: Callable[[LossContext, Any], tuple[torch.Tensor, dict[str, float]]]
    config: Callable[[Any], Any]
    needs: tuple[str, ...] = ()


LOSS_TERMS: dict[str, LossTerm] = {}


def register_loss_term(name: str, *, config: Callable[[Any], Any], needs: tuple[str, ...] = ()):
    """Decorator: register ``fn(ctx, cfg) -> (term, metrics)``; ``term`` is added to the loss."""

    def add(fn):
        if name in LOSS_TERMS:
            raise ValueError(f"loss term {name!r} is already registered")
        LOSS_TERMS[name] = LossTerm(name, fn, config, tuple(needs))
        return fn

    return add


def get_loss_term(name: str) -> LossTerm:
    if name not in LOSS_TERMS:
        raise ValueError(f"unknown loss term {name!r}; registered terms: {sorted(LOSS_TERMS)}")
    return LOSS_TERMS[name]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the tokens where ``mask`` is 1 (0 when there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


@register_loss_term("entropy_penalty", config=lambda args: args.entropy_penalty_coef)
def entropy_penalty(ctx: LossContext, coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``+coef * mean_t(-log pi(x_t))``: the sampled-token entropy estimate of the current policy, as a penalty
    (minimising it raises the sampled tokens' probability: lower entropy). VPPO's "entropy penalty" (0.06 in its 7B
    script) and PAPO's entropy loss on the clean image (0.03 in its DAPO scripts) are this term; both average over
    all valid tokens of the micro-batch."""
    value = masked_mean(-ctx.logps, ctx.mask)
    return coef * value / ctx.accumulation, {"sampled_entropy": value.item()}


from pgpo.loss_terms import papo as _papo  # noqa: E402,F401  (registers PAPO's terms)

__all__ = ["LOSS_TERMS", "LossContext", "LossTerm", "get_loss_term", "masked_mean", "register_loss_term"]
