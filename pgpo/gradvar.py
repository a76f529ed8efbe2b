"""Gradient variance at fixed parameters, the quantity the paper's App. E reasons about (``pgpo gradvar``).

App. E argues that PGPO lowers the second moment of the policy-gradient estimator, because tokens that do not depend
on the image (most of them) get small weights. That is a property of the estimator at fixed parameters, not of the
gradient norm's variation over training (``grad_norm/running_var`` logs the latter). So: with the parameters frozen,
draw ``K`` independent rollout batches (fresh prompts, fresh samples); on each, compute the policy gradient ``g_k`` of
the same loss twice, *on the same rollouts* (paired): with DAPO's uniform token weights (the response advantage
``A_i`` on every token) and with PGPO's weights (``A_i * w~_t``, Eqs. 4-8). Reported for both, and as PGPO / DAPO
ratios:

* ``mean_sq_norm`` = ``mean_k ||g_k||^2`` (the second moment App. E bounds),
* ``trace_cov`` = ``sum_j Var_k(g_kj)`` (unbiased, over the ``K`` batches): the estimator's total variance,
* ``snr`` = ``||mean_k g_k||^2 / trace_cov``: how much of the gradient is signal.

Memory: two float64 running sums per method over the chosen parameters (``2 x 8 B x n_params`` each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pgpo.shaping import PGPOShapingConfig, pgpo_shape


class RunningMoments:
    """Sums of ``g`` and ``g * g`` over samples (float64), and of ``||g||^2``."""

    def __init__(self, n: int):
        self.n, self.sum, self.sum_sq, self.sq_norms = 0, torch.zeros(n, dtype=torch.float64), None, []
        self.sum_sq = torch.zeros(n, dtype=torch.float64)

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().double().cpu()
        self.n += 1
        self.sum += g
        self.sum_sq += g * g
        self.sq_norms.append(float(g @ g))

    def summary(self) -> dict:
        if self.n < 2:
            raise ValueError("gradient variance needs at least 2 batches")
        mean = self.sum / self.n
        var = (self.sum_sq - self.n * mean * mean).clamp_min(0) / (self.n - 1)
        trace = float(var.sum())
        signal = float(mean @ mean)
        return {
            "batches": self.n,
            "mean_sq_norm": sum(self.sq_norms) / self.n,
            "trace_cov": trace,
            "mean_grad_sq_norm": signal,
            "snr": signal / trace if trace > 0 else math.inf,
        }


def paired_ratio_interval(
    num: list[float], den: list[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> list[float]:
    """Percentile bootstrap interval of ``mean(num) / mean(den)`` over paired samples (batches resampled together,
    seeded): the interval of the PGPO / DAPO ratio of ``E||g||^2`` over the ``K`` rollout batches."""
    if len(num) != len(den) or len(num) < 2:
        raise ValueError(f"need >= 2 paired values, got {len(num)} and {len(den)}")
    a, b = torch.tensor(num, dtype=torch.float64), torch.tensor(den, dtype=torch.float64)
    idx = torch.randint(0, len(num), (resamples, len(num)), generator=torch.Generator().manual_seed(seed))
    ratios = a[idx].mean(1) / b[idx].mean(1)
    tail = (1 - level) / 2
    return [float(torch.quantile(ratios, tail)), float(torch.quantile(ratios, 1 - tail))]


def chosen_parameters(model, names: str = "trainable") -> list[tuple[str, torch.nn.Parameter]]:
    """``"trainable"``: every parameter with ``requires_grad``; else a comma-separated list of name substrings."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if names != "trainable":
        keys = [k.strip() for k in names.split(",") if k.strip()]
        params = [(n, p) for n, p in params if any(k in n for k in keys)]
    if not params:
        raise ValueError(f"no trainable parameter matches {names!r}")
    return params


def policy_gradient(trainer, batch: dict, params: list[tuple[str, torch.nn.Parameter]]) -> torch.Tensor:
    """The flat gradient of the trainer's loss (TRL's, plus its loss terms) on one generation batch."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    trainer.accelerator.backward(loss)
    grads = [p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), device=p.device) for _, p in params]
    out = torch.cat(grads).detach().clone()
    model.zero_grad(set_to_none=True)
    return out


@dataclass
class GradVarResult:
    dapo: dict
    pgpo: dict
    ratios: dict = field(default_factory=dict)  # PGPO / DAPO
    n_params: int = 0
    gated_frac: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "dapo": self.dapo,
            "pgpo": self.pgpo,
            "pgpo_over_dapo": self.ratios,
            "n_params": self.n_params,
            "gated_frac": self.gated_frac,
        }


def gradient_variance(
    trainer, batches: int, shaping: PGPOShapingConfig | None = None, params: str = "trainable", progress=None
) -> GradVarResult:
    """Paired DAPO / PGPO gradient statistics over ``batches`` independent rollout batches at fixed parameters.

    ``trainer`` is a :class:`~pgpo.trainer.PGPOTrainer` whose config gives the base algorithm with
    ``advantage_shaping="none"`` (its advantages are DAPO's ``[B]``); PGPO's ``[B, T]`` are formed here from the same
    rollouts. Its training dataloader supplies the prompts.
    """
    if trainer.args.advantage_shaping != "none":
        raise ValueError("gradient_variance needs the base algorithm's trainer (advantage_shaping='none')")
    shaping = shaping or PGPOShapingConfig()
    chosen = chosen_parameters(trainer.model, params)
    n = sum(p.numel() for _, p in chosen)
    moments = {"dapo": RunningMoments(n), "pgpo": RunningMoments(n)}
    trainer.model.train()
    loader = iter(trainer.get_train_dataloader())
    repeat = trainer.args.steps_per_generation * trainer.num_iterations  # TRL's sampler repeats each batch
    gated = []
    for k in range(batches):
        rows = next(loader)
        for _ in range(repeat - 1):
            next(loader, None)
        batch = trainer.generate_and_score(rows)
        mask = batch["completion_mask"]
        with torch.no_grad():
            scores = trainer.visual_dependency(batch)
        shaped = pgpo_shape(batch["advantages"], scores, mask, shaping)
        gated.append(float((shaped.gate & mask.bool()).sum() / mask.sum().clamp_min(1)))
        for name, adv in (("dapo", batch["advantages"]), ("pgpo", shaped.advantages.to(batch["advantages"].dtype))):
            moments[name].add(policy_gradient(trainer, {**batch, "advantages": adv}, chosen))
        if progress is not None:
            progress(k + 1, batches)
    dapo, pgpo = moments["dapo"].summary(), moments["pgpo"].summary()
    ratios = {
        k: (pgpo[k] / dapo[k] if dapo[k] not in (0, math.inf) else math.nan)
        for k in ("mean_sq_norm", "trace_cov", "snr")
    }
    ratios["mean_sq_norm_ci95"] = paired_ratio_interval(moments["pgpo"].sq_norms, moments["dapo"].sq_norms)
    return GradVarResult(dapo=dapo, pgpo=pgpo, ratios=ratios, n_params=n, gated_frac=sum(gated) / len(gated))


@dataclass
class GradVarConfig:
    """Options of ``pgpo gradvar``: paired DAPO / PGPO gradient statistics of a model at fixed parameters."""

    model: str = field(metadata={"help": "model folder (e.g. a saved demo run), 'demo-vlm', 'tiny-qwen' or a hub id"})
    out: str = field(default="runs/gradvar", metadata={"help": "output folder (gradvar.json)"})
    batches: int = field(default=8, metadata={"help": "independent rollout batches K (>= 2)"})
    prompts_per_batch: int = field(default=4, metadata={"help": "prompts per batch"})
    num_generations: int = field(default=8, metadata={"help": "rollouts per prompt"})
    max_completion_length: int = field(default=64, metadata={"help": "completion tokens at most"})
    temperature: float = field(default=1.0, metadata={"help": "rollout temperature"})
    dataset: str = field(default="tasks", metadata={"help": "prompts: 'tasks' (pgpo's visual tasks) or a data file"})
    families: list[str] = field(
        default_factory=list,
        metadata={"help": "task families, comma- or space-separated (default: pgpo.tasks' DEFAULT_FAMILIES)"},
    )
    image_size: int = field(default=0, metadata={"help": "task image size (default: the model's)"})
    reward_funcs: list[str] = field(default_factory=lambda: ["tasks"], metadata={"help": "reward functions by name"})
    params: str = field(default="trainable", metadata={"help": "'trainable' or comma-separated name substrings"})
    pgpo_tau: float = field(default=PGPOShapingConfig.tau, metadata={"help": "PGPO's tau (Eq. 6)"})
    pgpo_beta: float = field(default=PGPOShapingConfig.beta, metadata={"help": "PGPO's beta (Eq. 6)"})
    seed: int = field(default=0, metadata={"help": "seed of the prompts and samples"})

    def shaping(self) -> PGPOShapingConfig:
        return PGPOShapingConfig(tau=self.pgpo_tau, beta=self.pgpo_beta)

    def __post_init__(self):
        if self.batches < 2:
            raise ValueError(f"--batches must be >= 2 (a variance needs two samples), got {self.batches}")
        for name in ("prompts_per_batch", "num_generations", "max_completion_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        self.shaping()
        if self.families:
            from pgpo.tasks.families import family_names

            self.families = list(family_names(self.families))


def build_gradvar_trainer(cfg: GradVarConfig, model=None, processor=None):
    """A DAPO-loss trainer (no shaping, no dynamic sampling: the batches are drawn as they come) on ``cfg``'s data."""
    from pgpo.rewards import reward_functions
    from pgpo.small_preset import small_preset
    from pgpo.trainer import PGPOTrainer

    if model is None:
        from pgpo.models import load_model

        model, processor = load_model(cfg.model)
    if cfg.dataset == "tasks":
        from pgpo.tasks import make_split, to_hf_dataset

        kwargs = {"families": tuple(cfg.families)} if cfg.families else {}
        size = cfg.image_size or getattr(model.config, "image_size", 0)
        if size:
            kwargs["size"] = size
        n = max(64, cfg.batches * cfg.prompts_per_batch)
        dataset = to_hf_dataset(make_split("train", n, seed=10_000 + cfg.seed, **kwargs))
    else:
        from pgpo.data import load_rlvr_dataset

        dataset = load_rlvr_dataset(cfg.dataset)
    args = small_preset(
        "dapo",
        output_dir=str(cfg.out),
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=cfg.seed,
        per_device_train_batch_size=cfg.prompts_per_batch * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=1.0,
        dynamic_sampling=False,
    )
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=reward_functions(cfg.reward_funcs),
        args=args,
        train_dataset=dataset,
        processing_class=processor,
    )
    if not hasattr(trainer, "current_gradient_accumulation_steps"):  # set by Trainer's loop; the loss reads it
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return trainer
