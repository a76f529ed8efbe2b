"""``PGPOConfig``: TRL's ``GRPOConfig`` plus PGPO's options. Every constant of the method is a field here.

The defaults are the paper's PGPO (arXiv 2604.01840, ../docs/method.md): the blind pass with the visual tokens masked
and the positions kept, the k3 estimator, Eqs. 4-8 with ``tau = 0.4`` and ``beta = 2.0``, on DAPO's loss (TRL's
``loss_type="dapo"``: token-level mean; clip-higher ``epsilon_high = 0.28``; no KL term, TRL's ``beta = 0``).
``pgpo_beta`` is PGPO's amplification (Eq. 6); TRL's ``beta`` is the reference-KL coefficient: they are unrelated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from trl import GRPOConfig

from pgpo.checkpoint import check_save_schedule
from pgpo.dependency import DEFAULT_CHUNK_SIZE, ESTIMATORS, VPPO_K3_CLAMP
from pgpo.shaping import SHAPING_METHODS, PGPOShapingConfig, get_shaping
from pgpo.text_only import TEXT_ONLY_MODES

K3_CLAMPS = {"none": None, "vppo": VPPO_K3_CLAMP}
# TRL loss types whose per-token loss is ratio x advantage, so a [B, T] advantage means per-token credit.
SHAPEABLE_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")


@dataclass
class PGPOConfig(GRPOConfig):
    """Configuration of :class:`pgpo.trainer.PGPOTrainer`. All of ``GRPOConfig``'s options apply unchanged."""

    advantage_shaping: str = field(
        default="pgpo",
        metadata={
            "help": "Per-token advantage shaping, by registered name (pgpo.shaping): 'pgpo' (the paper's Eqs. 4-8), "
            "'vppo', or 'none' (plain GRPO / DAPO / Dr.GRPO)."
        },
    )
    pgpo_tau: float = field(
        default=PGPOShapingConfig.tau,
        metadata={
            "help": "PGPO gate tau on the normalised dependency I (Eq. 6): tokens below are suppressed (w = I/tau), "
            "tokens at or above are amplified. 1 = suppression-only, 0 = boosting-only (Table 2)."
        },
    )
    pgpo_beta: float = field(
        default=PGPOShapingConfig.beta,
        metadata={"help": "PGPO amplification beta (Eq. 6): gated weights run from 1 to 1 + beta. Not TRL's `beta`."},
    )
    pgpo_eps: float = field(
        default=PGPOShapingConfig.eps, metadata={"help": "The small constant eps of Eqs. 5-6 (pgpo's choice: 1e-8)."}
    )
    pgpo_normalize: bool = field(
        default=PGPOShapingConfig.normalize,
        metadata={"help": "Eq. 7: rescale each response's weights to sum to its length. False = 'w/o Norm.'."},
    )
    dependency_estimator: Literal["k3", "kl"] = field(
        default="k3",
        metadata={
            "help": "Token visual dependency estimator: 'k3' (the paper's single-sample estimate on the sampled "
            "token) or 'kl' (the exact full-vocabulary KL of Eq. 1; costs an own image-conditioned pass)."
        },
    )
    text_only_mode: Literal["mask", "remove_reindex", "blank"] = field(
        default="mask",
        metadata={
            "help": "The blind pass: 'mask' (the paper's: visual tokens masked out, original position ids kept), "
            "'remove_reindex' (image spans deleted, positions recomputed: not the paper's) or 'blank' (zero pixels)."
        },
    )
    mask_vision_delimiters: bool = field(
        default=False,
        metadata={"help": "Blind pass: also mask <|vision_start|> / <|vision_end|> (default: they stay visible)."},
    )
    k3_clamp: Literal["none", "vppo"] = field(
        default="none",
        metadata={"help": "Clamps on the k3 estimate: 'none' (the paper's) or 'vppo' (d in [-20, 20], S in [0, 10])."},
    )
    dependency_chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE,
        metadata={"help": "Tokens per chunk of the LM head / vocabulary KL in PGPO's passes; bounds their memory."},
    )
    dependency_from_training_forward: bool = field(
        default=True,
        metadata={
            "help": "When TRL runs no old-log-prob pass (its default configuration), take the image-conditioned "
            "log-probs from the training forward itself (its weights are the ones that sampled the batch) and shape "
            "each micro-batch there; False runs PGPO's own no-grad image pass after generation."
        },
    )
    log_visual_dependency: bool = field(
        default=False,
        metadata={"help": "Score (and log) visual dependency even when advantage_shaping='none', e.g. for DAPO runs."},
    )
    filter_zero_advantage: bool = field(
        default=False,
        metadata={
            "help": "Mask completions whose advantage is exactly 0 (groups with identical rewards) out of the loss "
            "(without refilling the batch)."
        },
    )
    vppo_top_p_tokens: float = field(
        default=0.2,
        metadata={"help": "VPPO TGF: fraction of each response's tokens (highest dependency) that get gradient."},
    )
    vppo_advantage_scaling_min: float = field(
        default=0.8,
        metadata={"help": "VPPO TAS: lower end m of the per-response advantage factor (mean factor 1)."},
    )
    # DAPO's clip-higher (the base the paper trains PGPO on); TRL's default is epsilon_high = epsilon.
    epsilon_high: float | None = field(
        default=0.28,
        metadata={"help": "Upper clipping bound of the ratio (DAPO's clip-higher; the paper's recipe: 0.28)."},
    )

    def __post_init__(self):
        super().__post_init__()
        get_shaping(self.advantage_shaping)  # unknown names: ValueError listing the registered ones
        choices = {
            "dependency_estimator": ESTIMATORS,
            "text_only_mode": TEXT_ONLY_MODES,
            "k3_clamp": tuple(K3_CLAMPS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.dependency_chunk_size < 1:
            raise ValueError(f"dependency_chunk_size must be >= 1, got {self.dependency_chunk_size}")
        for name in ("epsilon", "epsilon_high", "beta", "temperature", "learning_rate"):
            value = getattr(self, name, None)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.shaping.name != "none" and self.loss_type not in SHAPEABLE_LOSS_TYPES:
            raise ValueError(
                f"advantage_shaping={self.advantage_shaping!r} needs a loss whose per-token term is ratio x advantage "
                f"(loss_type in {SHAPEABLE_LOSS_TYPES}); got loss_type={self.loss_type!r}"
            )
        self.shaping_config()  # validates the method's own options (finite, in range), naming the option
        self._check_save_schedule()

    def _check_save_schedule(self) -> None:
        """Checkpoints must fall between TRL's generation batches to be resumable exactly
        (:func:`pgpo.checkpoint.check_save_schedule`); a fraction of a length not known yet is checked at resume."""
        if self.save_strategy != "steps" or self.save_only_model:
            return
        save_steps = self.save_steps
        if save_steps < 1:
            if self.max_steps <= 0:
                return
            save_steps = math.ceil(self.max_steps * save_steps)
        check_save_schedule(
            int(save_steps), self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations
        )

    @property
    def shaping(self):
        """The registered :class:`~pgpo.shaping.ShapingMethod` named by ``advantage_shaping``."""
        return get_shaping(self.advantage_shaping)

    def shaping_config(self):
        """The chosen method's own config, built from the flat fields above."""
        return self.shaping.config(self)

    @property
    def k3_clamp_values(self) -> tuple[float, float] | None:
        return K3_CLAMPS[self.k3_clamp]

    @property
    def scores_dependency(self) -> bool:
        return self.shaping.needs_dependency or self.log_visual_dependency


SHAPINGS = tuple(SHAPING_METHODS)

# The algorithms users compare, each "one config away": overrides applied on top of a PGPOConfig.
ALGORITHM_PRESETS: dict[str, dict] = {
    "grpo": {"advantage_shaping": "none", "loss_type": "grpo", "epsilon_high": None},
    "dapo": {
        "advantage_shaping": "none",
        "loss_type": "dapo",
        "epsilon_high": 0.28,
        "filter_zero_advantage": True,
        "mask_truncated_completions": True,
    },
    "dr_grpo": {"advantage_shaping": "none", "loss_type": "dr_grpo", "scale_rewards": "none", "epsilon_high": None},
    "vppo": {"advantage_shaping": "vppo", "loss_type": "grpo", "k3_clamp": "vppo", "text_only_mode": "blank"},
    "pgpo": {"advantage_shaping": "pgpo", "loss_type": "dapo", "epsilon_high": 0.28},
}
ALGORITHMS = tuple(ALGORITHM_PRESETS)
