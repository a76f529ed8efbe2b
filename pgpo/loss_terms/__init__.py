"""Extra loss terms (next to advantage shaping): one registry of pure functions, chosen by name (``loss_terms``).

A loss term adds to the policy loss of each training micro-batch. It is one function registered with
:func:`register_loss_term`::

    @register_loss_term("my_term", config=lambda args: args.my_coef)
    def my_term(ctx: LossContext, coef) -> tuple[torch.Tensor, dict[str, float]]: ...

It returns its value on the micro-batch, unscaled (the trainer divides the sum of the terms by the gradient-accumulation
steps, once, and logs each term as returned), and its metrics. ``config`` builds the term's constants from
:class:`~pgpo.config.PGPOConfig` (flat, documented fields). ``needs`` names per-rollout tensors computed once per
generation batch, with the rollout policy and no gradient, by a function registered with :func:`register_rollout_input`
(e.g. ``"masked_image_logps"``: PAPO's masked-image log-probs); they then travel with each micro-batch in
``ctx.inputs``. Registered here: ``entropy_penalty`` (VPPO's, and PAPO's entropy term on the current policy),
``papo_perception`` (PAPO's implicit perception loss) and ``papo_masked_entropy`` (PAPO's second entropy term;
:mod:`pgpo.loss_terms.papo`).
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


@dataclass
class Rollouts:
    """What a per-rollout input is computed from: one generation batch, once, without gradient."""

    output: dict  # TRL's generation output (prompt_ids, completion_ids, pixel_values, ...)
    rows: list[dict]  # the dataset row of each completion (a prompt's row repeated num_generations times)
    args: Any  # the run's PGPOConfig
    processor: Any  # the run's processor
    num_generations: int
    logps: Callable[[dict, int], torch.Tensor]  # (batch, T) -> [B, T] log-probs of the sampled tokens, dropout-free
    generator: Callable[..., torch.Generator]  # (*salt) -> a generator seeded by the run, the step and the process


LossTermFn = Callable[[LossContext, Any], tuple[torch.Tensor, dict[str, float]]]
RolloutInputFn = Callable[[Rollouts], torch.Tensor]


@dataclass(frozen=True)
class LossTerm:
    name: str
    fn: LossTermFn
    config: Callable[[Any], Any]
    needs: tuple[str, ...] = ()


LOSS_TERMS: dict[str, LossTerm] = {}
ROLLOUT_INPUTS: dict[str, RolloutInputFn] = {}


def register_loss_term(name: str, *, config: Callable[[Any], Any], needs: tuple[str, ...] = ()):
    """Decorator: register ``fn(ctx, cfg) -> (term, metrics)``; ``term`` (unscaled) is added to the loss."""

    def add(fn):
        if name in LOSS_TERMS:
            raise ValueError(f"loss term {name!r} is already registered")
        LOSS_TERMS[name] = LossTerm(name, fn, config, tuple(needs))
        return fn

    return add


def register_rollout_input(name: str):
    """Decorator: register ``fn(rollouts) -> [B, T]``, the per-rollout input ``name`` that loss terms may need."""

    def add(fn):
        if name in ROLLOUT_INPUTS:
            raise ValueError(f"rollout input {name!r} is already registered")
        ROLLOUT_INPUTS[name] = fn
        return fn

    return add


def get_loss_term(name: str) -> LossTerm:
    if name not in LOSS_TERMS:
        raise ValueError(f"unknown loss term {name!r}; registered terms: {sorted(LOSS_TERMS)}")
    return LOSS_TERMS[name]


@dataclass(frozen=True)
class LossTerms:
    """The run's loss terms with their configs, built once from a PGPOConfig (:meth:`from_config`)."""

    terms: tuple[tuple[LossTerm, Any], ...] = ()

    @classmethod
    def from_config(cls, args) -> LossTerms:
        return cls(tuple((get_loss_term(n), get_loss_term(n).config(args)) for n in args.loss_terms))

    @property
    def needs(self) -> tuple[str, ...]:
        """The per-rollout inputs the terms need, each once, in order."""
        return tuple(dict.fromkeys(need for term, _ in self.terms for need in term.needs))

    def rollout_inputs(self, rollouts: Rollouts) -> dict[str, torch.Tensor]:
        return {need: ROLLOUT_INPUTS[need](rollouts) for need in self.needs}

    def __call__(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of the terms on one micro-batch (unscaled) and the metrics: each term's value under its name,
        then its own metrics."""
        total, logs = ctx.logps.new_zeros(()), {}
        for term, cfg in self.terms:
            value, metrics = term.fn(ctx, cfg)
            total = total + value
            logs[term.name] = value.item()
            logs.update(metrics)
        return total, logs

    def __bool__(self) -> bool:
        return bool(self.terms)


def loss_mask(inputs: dict) -> torch.Tensor:
    """``[B, T]``: the tokens TRL's loss counts (the completion mask, times the tool mask where there is one)."""
    mask = inputs["completion_mask"]
    return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask


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
    return coef * value, {"sampled_entropy": value.item()}


from pgpo.loss_terms import papo as _papo  # noqa: E402,F401  (registers PAPO's terms)

__all__ = [
    "LOSS_TERMS",
    "ROLLOUT_INPUTS",
    "LossContext",
    "LossTerm",
    "LossTerms",
    "Rollouts",
    "get_loss_term",
    "loss_mask",
    "masked_mean",
    "register_loss_term",
    "register_rollout_input",
]
