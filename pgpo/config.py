"""``PGPOConfig``: TRL's ``GRPOConfig`` plus the PGPO / VPPO options. Every constant of the method is a field here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from pgpo.checkpoint import check_save_schedule
from pgpo.dependency import DEFAULT_CHUNK_SIZE
from pgpo.inputs import TEXT_ONLY_MODES
from pgpo.shaping import PGPOShapingConfig, VPPOShapingConfig

SHAPINGS = ("none", "pgpo", "vppo")
ALGORITHMS = ("grpo", "dapo", "dr_grpo", "vppo", "pgpo")


@dataclass
class PGPOConfig(GRPOConfig):
    """Configuration of :class:`pgpo.trainer.PGPOTrainer`. All of ``GRPOConfig``'s options apply unchanged."""

    advantage_shaping: str = field(
        default="pgpo",
        metadata={"help": "Per-token advantage shaping: 'none' (plain GRPO/DAPO/Dr.GRPO), 'pgpo' or 'vppo'."},
    )
    pgpo_gate: str = field(
        default="quantile",
        metadata={"help": "PGPO gate rule: 'quantile' (tau = pgpo_quantile of the batch's dependency) or 'fixed'."},
    )
    pgpo_quantile: float = field(
        default=PGPOShapingConfig.quantile,
        metadata={"help": "PGPO: quantile q of the batch's token dependency used as the gate tau (top 1-q gated)."},
    )
    pgpo_threshold: float = field(
        default=PGPOShapingConfig.threshold, metadata={"help": "PGPO: tau for pgpo_gate='fixed' (nats of KL)."}
    )
    pgpo_alpha: float = field(
        default=PGPOShapingConfig.alpha,
        metadata={"help": "PGPO: amplification of gated tokens, r = 1 + alpha * S / mean_gated(S)."},
    )
    pgpo_beta: float = field(
        default=PGPOShapingConfig.beta, metadata={"help": "PGPO: raw weight of ungated tokens (suppression floor)."}
    )
    pgpo_w_min: float = field(default=PGPOShapingConfig.w_min, metadata={"help": "PGPO: lower bound of token weights."})
    pgpo_w_max: float = field(default=PGPOShapingConfig.w_max, metadata={"help": "PGPO: upper bound of token weights."})
    vppo_top_p_tokens: float = field(
        default=VPPOShapingConfig.top_p_tokens,
        metadata={"help": "VPPO TGF: fraction of each sequence's tokens (highest dependency) that get gradient."},
    )
    vppo_advantage_scaling_min: float = field(
        default=VPPOShapingConfig.advantage_scaling_min,
        metadata={"help": "VPPO TAS: lower end m of the per-sequence advantage factor (mean factor is 1)."},
    )
    text_only_mode: str = field(
        default="remove",
        metadata={
            "help": "How the 'without image' distribution is formed: 'remove' (delete the image tokens; the paper), "
            "'blank' (zero pixel values) or 'noise' (Gaussian pixel values, like VPPO's perturbation)."
        },
    )
    dependency_chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE,
        metadata={"help": "Tokens per chunk of the vocabulary KL; bounds the extra memory of PGPO."},
    )
    dependency_from_training_forward: bool = field(
        default=True,
        metadata={
            "help": "When TRL runs no old-log-prob pass and each generation batch is one micro-batch trained on once "
            "(steps_per_generation == num_iterations == 1, no vLLM importance sampling, no Liger loss), take p_image "
            "from the training forward's hidden states instead of running a no-grad image-conditioned forward: the "
            "weights are the ones that sampled the batch, so the result is the same and one forward is saved. "
            "False always runs PGPO's own no-grad pass."
        },
    )
    log_visual_dependency: bool = field(
        default=False,
        metadata={"help": "Score (and log) visual dependency even when advantage_shaping='none', e.g. for GRPO runs."},
    )
    filter_zero_advantage: bool = field(
        default=False,
        metadata={
            "help": "DAPO dynamic sampling, without refilling: completions whose advantage is exactly 0 (groups with "
            "identical rewards) are masked out of the loss so they do not dilute the token mean."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.advantage_shaping not in SHAPINGS:
            raise ValueError(f"advantage_shaping must be one of {SHAPINGS}, got {self.advantage_shaping!r}")
        if self.text_only_mode not in TEXT_ONLY_MODES:
            raise ValueError(f"text_only_mode must be one of {TEXT_ONLY_MODES}, got {self.text_only_mode!r}")
        if self.dependency_chunk_size < 1:
            raise ValueError(f"dependency_chunk_size must be >= 1, got {self.dependency_chunk_size}")
        self.pgpo_shaping_config()  # validates the ranges early, with the same messages
        self.vppo_shaping_config()
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

    def pgpo_shaping_config(self) -> PGPOShapingConfig:
        return PGPOShapingConfig(
            gate=self.pgpo_gate,
            quantile=self.pgpo_quantile,
            threshold=self.pgpo_threshold,
            alpha=self.pgpo_alpha,
            beta=self.pgpo_beta,
            w_min=self.pgpo_w_min,
            w_max=self.pgpo_w_max,
        )

    def vppo_shaping_config(self) -> VPPOShapingConfig:
        return VPPOShapingConfig(
            top_p_tokens=self.vppo_top_p_tokens, advantage_scaling_min=self.vppo_advantage_scaling_min
        )


# The algorithms users compare, each "one config away": overrides applied on top of a PGPOConfig.
ALGORITHM_PRESETS: dict[str, dict] = {
    "grpo": {"advantage_shaping": "none", "loss_type": "grpo"},
    "dapo": {
        "advantage_shaping": "none",
        "loss_type": "dapo",
        "epsilon_high": 0.28,
        "filter_zero_advantage": True,
        "mask_truncated_completions": True,
    },
    "dr_grpo": {"advantage_shaping": "none", "loss_type": "dr_grpo", "scale_rewards": "none"},
    "vppo": {"advantage_shaping": "vppo", "loss_type": "grpo", "text_only_mode": "noise"},
    "pgpo": {"advantage_shaping": "pgpo", "loss_type": "grpo"},
}
