"""One algorithm's preset at a small run's size: the demo's RL runs, ``pgpo gradvar``, ``pgpo bench`` and the tests.

The preset (:data:`pgpo.config.ALGORITHM_PRESETS`) comes first, so the recipe stays the algorithm's; the run's sizes
(batch, group, completion length, steps, learning rate) go over it, and so do the settings every small run shares
(:data:`SMALL_RUN`): one reward function, no truncation mask, no reports, no checkpoints, a log line per step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SMALL_RUN: dict[str, Any] = {
    "reward_weights": None,  # one reward function (the preset's [0.9, 0.1] weigh the paper's two)
    "mask_truncated_completions": False,  # short completions are all truncated: masked, none would count
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 1,
    "disable_tqdm": True,
}


def small_preset(algorithm: str | Mapping[str, Any], **options: Any):
    """A :class:`pgpo.config.PGPOConfig`: ``algorithm``'s preset (a name of ``ALGORITHM_PRESETS``, or a preset's
    options as a mapping), then :data:`SMALL_RUN`, then ``options`` (sizes, ``output_dir``, ``use_cpu``, ...; any of
    them also overrides :data:`SMALL_RUN`)."""
    from pgpo.config import ALGORITHM_PRESETS, PGPOConfig

    recipe = ALGORITHM_PRESETS[algorithm] if isinstance(algorithm, str) else algorithm
    return PGPOConfig(**{**recipe, **SMALL_RUN, **options})
