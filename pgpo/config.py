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
from pgpo.loss_terms import get_loss_term
from pgpo.shaping import SHAPING_METHODS, PGPOAuthorsDevConfig, PGPOShapingConfig, get_shaping
from pgpo.text_only import TEXT_ONLY_MODES, TextOnlyMode

K3_CLAMPS = {"none": None, "vppo": VPPO_K3_CLAMP}
# Float options checked finite at start (NaN / inf would train silently or turn a method into another).
FINITE_OPTIONS = (
    "epsilon",
    "epsilon_high",
    "beta",
    "temperature",
    "top_p",
    "learning_rate",
    "max_grad_norm",
    "weight_decay",
    "pgpo_tau",
    "pgpo_beta",
    "pgpo_eps",
    "pgpo_authors_dev_quantile",
    "pgpo_authors_dev_floor",
    "patch_blackout_prob",
    "vppo_top_p_tokens",
    "vppo_advantage_scaling_min",
    "dynamic_sampling_low",
    "dynamic_sampling_high",
    "entropy_penalty_coef",
    "papo_coef",
    "papo_mask_prob",
    "papo_masked_entropy_coef",
)
# TRL loss types whose per-token loss is ratio x advantage, so a [B, T] advantage means per-token credit.
SHAPEABLE_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")


def _bf16_gpu() -> bool:
    from transformers.utils import is_torch_bf16_gpu_available

    return is_torch_bf16_gpu_available()


@dataclass
class PGPOConfig(GRPOConfig):
    """Configuration of :class:`pgpo.trainer.PGPOTrainer`. All of ``GRPOConfig``'s options apply unchanged."""

    advantage_shaping: str = field(
        default="pgpo",
        metadata={
            "help": "Per-token advantage shaping, by registered name (pgpo.shaping): 'pgpo' (the paper's Eqs. 4-8), "
            "'pgpo_authors_dev' (the authors' development code: per-response quantile gate, 0.1 floor, no Eq. 7), "
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
    pgpo_authors_dev_quantile: float = field(
        default=PGPOAuthorsDevConfig.quantile,
        metadata={
            "help": "advantage_shaping='pgpo_authors_dev': q; each response's gate is its normalised dependency I at "
            "ascending rank floor(q L) (the authors' development code), instead of the fixed pgpo_tau."
        },
    )
    pgpo_authors_dev_floor: float = field(
        default=PGPOAuthorsDevConfig.floor,
        metadata={
            "help": "advantage_shaping='pgpo_authors_dev': lower bound of the suppressed tokens' weights (the "
            "authors' development code: 0.1; the paper: none)."
        },
    )
    dependency_estimator: Literal["k3", "kl"] = field(
        default="k3",
        metadata={
            "help": "Token visual dependency estimator: 'k3' (the paper's single-sample estimate on the sampled "
            "token) or 'kl' (the exact full-vocabulary KL of Eq. 1; costs an own image-conditioned pass)."
        },
    )
    text_only_mode: TextOnlyMode = field(
        default="mask",
        metadata={
            "help": "The blind pass: 'mask' (the paper's: visual tokens masked out, original position ids kept), "
            "'remove_reindex' (image spans deleted, positions recomputed: not the paper's), 'blank' (zero pixels) "
            "or 'patch_blackout' (VPPO's: 14-px patches blackened with probability patch_blackout_prob)."
        },
    )
    patch_blackout_prob: float = field(
        default=0.5, metadata={"help": "text_only_mode='patch_blackout': probability of blackening each patch."}
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
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling with refill: drop groups whose mean reward is not strictly inside "
            "(dynamic_sampling_low, dynamic_sampling_high) and generate more groups until the batch is full "
            "(pgpo.sampling). On in the dapo / pgpo / vppo / papo presets."
        },
    )
    dynamic_sampling_low: float = field(default=0.01, metadata={"help": "Dynamic sampling: lower bound (exclusive)."})
    dynamic_sampling_high: float = field(default=0.99, metadata={"help": "Dynamic sampling: upper bound (exclusive)."})
    dynamic_sampling_key: str = field(
        default="reward",
        metadata={
            "help": "What the group mean is taken of: 'reward' (the weighted total, EasyR1's 'overall') or the name of "
            "one reward function (e.g. paper_accuracy_reward, the key VPPO's and PAPO's scripts use)."
        },
    )
    max_sampling_rounds: int = field(
        default=20, metadata={"help": "Dynamic sampling: generation rounds per batch at most (EasyR1's default 20)."}
    )
    dynamic_sampling_fallback: Literal["raise", "fill"] = field(
        default="raise",
        metadata={
            "help": "When the rounds run out: 'raise' (EasyR1) or 'fill' the batch with filtered groups (advantage ~0), "
            "counted in dynamic_sampling/filled_frac."
        },
    )
    loss_terms: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra loss terms by registered name (pgpo.loss_terms): entropy_penalty, papo_perception, "
            "papo_masked_entropy."
        },
    )
    entropy_penalty_coef: float = field(
        default=0.0,
        metadata={
            "help": "entropy_penalty: coefficient of mean(-log pi) of the sampled tokens (VPPO 0.06, PAPO 0.03)."
        },
    )
    papo_coef: float = field(
        default=0.01, metadata={"help": "papo_perception: coefficient (PAPO: 0.01 on DAPO, 0.02 on GRPO)."}
    )
    papo_mask_prob: float = field(
        default=0.6,
        metadata={"help": "PAPO: probability of blackening each 14-px patch of the raw image (one mask per prompt)."},
    )
    papo_masked_entropy_coef: float = field(
        default=0.03, metadata={"help": "papo_masked_entropy: coefficient (PAPO's DAPO scripts: 0.03; no gradient)."}
    )
    vppo_top_p_tokens: float = field(
        default=0.2,
        metadata={"help": "VPPO TGF: fraction of each response's tokens (highest dependency) that get gradient."},
    )
    vppo_advantage_scaling_min: float = field(
        default=0.8,
        metadata={"help": "VPPO TAS: lower end m of the per-response advantage factor (mean factor 1)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an output_dir that is not empty and holds no run to resume (pgpo.run_folder): an "
            "earlier pgpo run's checkpoints are removed first; files pgpo did not write are never deleted."
        },
    )
    # DAPO's clip-higher (the base the paper trains PGPO on); TRL's default is epsilon_high = epsilon.
    epsilon_high: float | None = field(
        default=0.28,
        metadata={"help": "Upper clipping bound of the ratio (DAPO's clip-higher; the paper's recipe: 0.28)."},
    )

    def __post_init__(self):
        # TRL's GRPOConfig sets transformers' deprecated `gradient_checkpointing` name (default True), so every config
        # warned "deprecated ... use activation_checkpointing". Resolve the alias here, as transformers would, so the
        # notice (about TRL's field, not the user's code) is not printed: same value, no warning.
        if getattr(self, "activation_checkpointing", False) is None and self.gradient_checkpointing is not None:
            self.activation_checkpointing = self.gradient_checkpointing
            if self.activation_checkpointing_kwargs is None:
                self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
        # TRL turns bf16 on when it is left unset, and transformers then refuses a machine without a bf16 GPU ("Your
        # setup doesn't support bf16/gpu"): there, unset means fp32, so PGPOConfig(output_dir=...) works as typed.
        if self.bf16 is None and not self.fp16 and not self.use_cpu and not _bf16_gpu():
            self.bf16 = False
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
        for name in FINITE_OPTIONS:
            value = getattr(self, name, None)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        self._check_reward_weights()
        for name in ("patch_blackout_prob", "papo_mask_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("entropy_penalty_coef", "papo_coef", "papo_masked_entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dynamic_sampling_low < self.dynamic_sampling_high:
            raise ValueError(
                f"need 0 <= dynamic_sampling_low < dynamic_sampling_high, got {self.dynamic_sampling_low}, "
                f"{self.dynamic_sampling_high}"
            )
        if self.max_sampling_rounds < 1:
            raise ValueError(f"max_sampling_rounds must be >= 1, got {self.max_sampling_rounds}")
        if self.dynamic_sampling_fallback not in ("raise", "fill"):
            raise ValueError(
                f"dynamic_sampling_fallback must be 'raise' or 'fill', got {self.dynamic_sampling_fallback!r}"
            )
        for name in self.loss_terms:
            get_loss_term(name)
        if self.shaping.name != "none" and self.loss_type not in SHAPEABLE_LOSS_TYPES:
            raise ValueError(
                f"advantage_shaping={self.advantage_shaping!r} needs a loss whose per-token term is ratio x advantage "
                f"(loss_type in {SHAPEABLE_LOSS_TYPES}); got loss_type={self.loss_type!r}"
            )
        self.shaping_config()  # validates the method's own options (finite, in range), naming the option
        self._check_save_schedule()

    def _check_reward_weights(self) -> None:
        """NaN / inf weights, or weights that are all 0, make every advantage 0 (TRL sets NaN advantages to 0): the run
        would train nothing without a word. Negative weights (penalties) are allowed."""
        weights = self.reward_weights or []
        for i, w in enumerate(weights):
            if not math.isfinite(w):
                raise ValueError(f"reward_weights[{i}] must be finite, got {w} (reward_weights={weights})")
        if weights and not any(weights):
            raise ValueError(
                f"reward_weights are all 0 ({weights}): every reward is multiplied by 0, so every advantage is 0 and "
                "the policy gradient is zero; give at least one reward function a non-zero weight"
            )

    def _check_save_schedule(self) -> None:
        """Checkpoints must fall between TRL's generation batches to be resumable exactly
        (:func:`pgpo.checkpoint.check_save_schedule`); a fraction of a length not known yet is checked at resume."""
        if self.save_strategy != "steps" or self.save_only_model or self.save_every() is None:
            return
        check_save_schedule(
            self.save_every(), self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations
        )

    def save_every(self) -> int | None:
        """Optimizer steps between two checkpoints of ``save_strategy="steps"`` (a fractional ``save_steps`` is a share
        of ``max_steps``); ``None`` while that length is not known."""
        if self.save_steps >= 1:
            return int(self.save_steps)
        return math.ceil(self.max_steps * self.save_steps) if self.max_steps > 0 else None

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

# --------------------------------------------------------------------------------------------------- presets
# Each preset is the recipe of the paper that defines the algorithm, on the PGPO paper's shared setup (Table 6), so
# that `--algorithm X` runs the baselines as the paper re-ran them (README: "preset -> what it sets -> source").
# Explicit options override a preset. Reward functions are not config fields: PRESET_REWARDS (used by `pgpo train`).
PAPER_SETUP = {  # Table 6 / Sec. 5.1: G = 5, AdamW lr 1e-6 constant, rollout temperature 1.0, top-p 0.99, 2048 tokens
    "num_generations": 5,
    # pgpo's choice, not Table 6's (which gives global sizes: 512 prompts a step): the smallest per-device batch that
    # holds one group, so that `--algorithm X` runs as typed (TRL's default of 8 is not a multiple of 5). Scale the
    # batch with gradient_accumulation_steps / steps_per_generation and the number of processes.
    "per_device_train_batch_size": 5,
    "learning_rate": 1e-6,
    "lr_scheduler_type": "constant",
    "temperature": 1.0,
    "top_p": 0.99,
    "max_completion_length": 2048,
    "reward_weights": [0.9, 0.1],  # 0.9 accuracy + 0.1 format (PRESET_REWARDS)
    # Not Table 6's but its code base's: EasyR1 has no correction for the vLLM / HF likelihood mismatch. TRL's (on by
    # default) would drop, under vLLM, every sequence whose ratio exceeds 3 (its sequence_mask mode); True turns it on.
    "vllm_importance_sampling_correction": False,
}
# DAPO's overlong filtering (TRL's mask_truncated_completions) is in no preset: Table 6, EasyR1's DAPO example,
# VPPO-RL and PAPO do not filter overlong completions. It stays an option (docs/method.md, "Deviations").
DAPO = {  # DAPO (arXiv 2503.14476) as EasyR1 runs it: clip-higher, token-level mean, no KL, dynamic sampling
    "advantage_shaping": "none",
    "loss_type": "dapo",
    "epsilon": 0.2,
    "epsilon_high": 0.28,
    "beta": 0.0,
    "dynamic_sampling": True,
}
GRPO = {  # GRPO as the paper re-ran it in EasyR1: token-level mean, k3 KL 0.01 to the reference, no dynamic sampling
    "advantage_shaping": "none",
    "loss_type": "dapo",
    "epsilon": 0.2,
    "epsilon_high": 0.3,  # EasyR1's default clip_ratio_high (the paper states no clip for GRPO): not the paper's fact
    "beta": 0.01,
    "dynamic_sampling": False,
}
PGPO = {  # the paper's method (Eqs. 4-8) with its defaults
    "advantage_shaping": "pgpo",
    "dependency_estimator": "k3",
    "text_only_mode": "mask",
    "pgpo_tau": 0.4,
    "pgpo_beta": 2.0,
}
ALGORITHM_PRESETS: dict[str, dict] = {
    "grpo": {**PAPER_SETUP, **GRPO},
    "dapo": {**PAPER_SETUP, **DAPO},
    "dr_grpo": {  # Dr. GRPO (arXiv 2503.20783): no length or std normalisation
        **PAPER_SETUP,
        "advantage_shaping": "none",
        "loss_type": "dr_grpo",
        "scale_rewards": "none",
        "epsilon_high": 0.2,
        "beta": 0.0,
    },
    "pgpo": {**PAPER_SETUP, **DAPO, **PGPO},  # PGPO on DAPO: the paper's main recipe
    "pgpo_grpo": {**PAPER_SETUP, **GRPO, **PGPO},  # PGPO on GRPO (App. B, Table 7)
    "vppo": {  # VPPO (arXiv 2510.09285) as VPPO-RL's 7B script runs it, on DAPO
        **PAPER_SETUP,
        **DAPO,
        "advantage_shaping": "vppo",
        "dependency_estimator": "k3",
        "text_only_mode": "patch_blackout",
        "patch_blackout_prob": 0.5,
        "k3_clamp": "vppo",
        "vppo_top_p_tokens": 0.4,
        "vppo_advantage_scaling_min": 0.9,
        "loss_terms": ["entropy_penalty"],
        "entropy_penalty_coef": 0.06,
    },
    "papo": {  # PAPO-D (arXiv 2507.06448) as MikeWangWZHL/PAPO's DAPO scripts run it
        **PAPER_SETUP,
        **DAPO,
        "loss_terms": ["papo_perception", "entropy_penalty", "papo_masked_entropy"],
        "papo_coef": 0.01,
        "papo_mask_prob": 0.6,
        "entropy_penalty_coef": 0.03,
        "papo_masked_entropy_coef": 0.03,
    },
}
# Table 2's ablations of PGPO (on DAPO), one preset each.
ALGORITHM_PRESETS["pgpo_suppress_only"] = {**ALGORITHM_PRESETS["pgpo"], "pgpo_tau": 1.0}
ALGORITHM_PRESETS["pgpo_boost_only"] = {**ALGORITHM_PRESETS["pgpo"], "pgpo_tau": 0.0}
ALGORITHM_PRESETS["pgpo_no_norm"] = {**ALGORITHM_PRESETS["pgpo"], "pgpo_normalize": False}
ALGORITHMS = tuple(ALGORITHM_PRESETS)

# Options of earlier pgpo versions: what replaced each one and how the meaning changed (pgpo train names it when an old
# command line or YAML uses one, instead of a bare "unknown option").
_GATE = (
    "the gate is now Eq. 6's fixed threshold pgpo_tau (default 0.4) on the dependency normalised to [0, 1] within "
    "each response (Eqs. 4-5)"
)
REMOVED_OPTIONS = {
    "pgpo_gate": f"removed: {_GATE}; there is no gate rule to choose",
    "pgpo_quantile": (
        f"removed: {_GATE}, not a quantile of the batch's dependency: use pgpo_tau. A per-response quantile gate is "
        "the authors' development variant: --advantage_shaping pgpo_authors_dev --pgpo_authors_dev_quantile Q"
    ),
    "pgpo_threshold": f"removed: {_GATE}, not a threshold in nats of KL: use pgpo_tau",
    "pgpo_alpha": (
        "removed: gated tokens are amplified by Eq. 6's ramp, w = 1 + pgpo_beta (I - tau) / (1 - tau), not "
        "r = 1 + alpha S / mean_gated(S): use pgpo_beta (default 2.0). Note that pgpo_beta itself changed meaning: it "
        "was the weight of ungated tokens, it is now the amplification"
    ),
    "pgpo_w_min": "removed: Eq. 6's weights need no clipping (suppressed tokens get w = I / tau in [0, 1))",
    "pgpo_w_max": "removed: Eq. 6's weights need no clipping (amplified tokens get w in [1, 1 + pgpo_beta])",
    "filter_zero_advantage": (
        "removed: DAPO's dynamic sampling now drops the groups whose mean reward is 0 or 1 and generates more until "
        "the batch is full: use dynamic_sampling true (bounds dynamic_sampling_low / dynamic_sampling_high)"
    ),
}
PRESET_REWARDS = {name: ["paper_accuracy", "paper_format"] for name in ALGORITHMS}
