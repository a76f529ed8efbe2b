"""Advantage shaping from token visual dependency: one registry of pure functions, chosen by name.

A shaping method turns GRPO's per-response advantages ``A_i`` (``[B]``) and the per-token visual dependency ``S``
(``[B, T]``, :mod:`pgpo.dependency`) into per-token advantages ``[B, T]`` that TRL's loss takes as they are. Each
method is one function with one signature, registered with :func:`register_shaping`::

    @register_shaping("my_method", config=lambda args: MyConfig(strength=args.my_strength))
    def my_method(advantages, dependency, mask, cfg) -> ShapingResult: ...

``config`` builds the method's own frozen config from the trainer's :class:`~pgpo.config.PGPOConfig` (so its
options are flat, documented ``PGPOConfig`` fields, as TRL's parser needs); ``per_response=True`` declares that a
response's weights depend on that response's tokens alone, which lets the trainer shape each training micro-batch
on its own. Registered here: ``none`` (GRPO / DAPO / Dr.GRPO), ``pgpo`` (Eqs. 4-8, :mod:`pgpo.shaping.pgpo`),
``pgpo_authors_dev`` (the authors' development variant: per-response quantile gate, 0.1 floor, no Eq. 7;
:mod:`pgpo.shaping.pgpo_authors_dev`) and ``vppo`` (:mod:`pgpo.shaping.vppo`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ShapingResult:
    """What a shaping method returns (all ``[B, T]``, 0 on masked tokens)."""

    advantages: torch.Tensor  # per-token advantages handed to the loss
    weights: torch.Tensor  # the factor applied to A_i
    gate: torch.Tensor  # bool: the tokens the method singles out (PGPO: I >= tau, amplified; VPPO: the kept tokens)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token intermediates, e.g. PGPO's I


@dataclass(frozen=True)
class ShapingMethod:
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], ShapingResult]
    config: Callable[[Any], Any]  # PGPOConfig -> the method's config
    needs_dependency: bool = True
    per_response: bool = True


SHAPING_METHODS: dict[str, ShapingMethod] = {}


def register_shaping(name: str, *, config: Callable[[Any], Any], needs_dependency: bool = True, per_response=True):
    """Decorator: register ``fn(advantages [B], dependency [B, T], mask [B, T], cfg) -> ShapingResult`` as ``name``."""

    def add(fn):
        if name in SHAPING_METHODS:
            raise ValueError(f"shaping method {name!r} is already registered")
        SHAPING_METHODS[name] = ShapingMethod(name, fn, config, needs_dependency, per_response)
        return fn

    return add


def get_shaping(name: str) -> ShapingMethod:
    """The registered method ``name``; a ``ValueError`` listing the registered names otherwise."""
    if name not in SHAPING_METHODS:
        raise ValueError(f"unknown advantage_shaping {name!r}; registered methods: {sorted(SHAPING_METHODS)}")
    return SHAPING_METHODS[name]


def check_inputs(advantages: torch.Tensor, dependency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes and values; returns the advantages as ``[B]``."""
    if dependency.shape != mask.shape:
        raise ValueError(f"dependency shape {tuple(dependency.shape)} != mask shape {tuple(mask.shape)}")
    if advantages.dim() == 2 and advantages.shape[1] == 1:
        advantages = advantages.squeeze(1)
    if advantages.dim() != 1 or advantages.shape[0] != dependency.shape[0]:
        raise ValueError(
            f"advantages must be one per response, shape ({dependency.shape[0]},), got {tuple(advantages.shape)}"
        )
    valid = dependency[mask.bool()]
    if not torch.isfinite(valid).all():
        raise ValueError("dependency has non-finite values on valid tokens")
    if (valid < 0).any():
        raise ValueError("dependency must be >= 0 (it is a KL divergence or its k3 estimate)")
    return advantages


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for the [B, T] weight arithmetic, where the device has it (MPS does not)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


@register_shaping("none", config=lambda args: None, needs_dependency=False)
def no_shaping(advantages: torch.Tensor, dependency: torch.Tensor, mask: torch.Tensor, cfg=None) -> ShapingResult:
    """GRPO / DAPO / Dr.GRPO: every valid token carries its response's advantage (``w = 1``)."""
    advantages = check_inputs(advantages, dependency, mask)
    w = mask.to(advantages.dtype)
    return ShapingResult(advantages=advantages[:, None] * w, weights=w, gate=torch.zeros_like(mask, dtype=torch.bool))


from pgpo.shaping import pgpo as _pgpo  # noqa: E402,F401  (registers "pgpo")
from pgpo.shaping import pgpo_authors_dev as _pgpo_authors_dev  # noqa: E402,F401  (registers "pgpo_authors_dev")
from pgpo.shaping import vppo as _vppo  # noqa: E402,F401  (registers "vppo")
from pgpo.shaping.pgpo import PGPOShapingConfig, pgpo_shape, pgpo_weights  # noqa: E402
from pgpo.shaping.pgpo_authors_dev import PGPOAuthorsDevConfig, authors_dev_shape, authors_dev_weights  # noqa: E402
from pgpo.shaping.vppo import VPPOShapingConfig, vppo_shape  # noqa: E402

__all__ = [
    "SHAPING_METHODS",
    "PGPOAuthorsDevConfig",
    "PGPOShapingConfig",
    "ShapingMethod",
    "ShapingResult",
    "VPPOShapingConfig",
    "authors_dev_shape",
    "authors_dev_weights",
    "get_shaping",
    "pgpo_shape",
    "pgpo_weights",
    "register_shaping",
    "vppo_shape",
]
