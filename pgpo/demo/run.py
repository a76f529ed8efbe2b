"""``pgpo demo``: warm-start the small real VLM, then train DAPO and PGPO with the same seed and budget, evaluate.

Everything runs on the CPU with what pip installs: the VLM is built from shipped pretrained parts
(:mod:`pgpo.vlm`), the data are :mod:`pgpo.tasks`' procedural visual questions answered in the paper's shape
(``<think> ... </think> \\boxed{...}``), training is :class:`pgpo.trainer.PGPOTrainer` (TRL's GRPOTrainer) with the
paper's recipe scaled down (DAPO with dynamic sampling that refills, PGPO's Eqs. 4-8 on it), exactly as on a GPU
cluster, only smaller. Each trained model is saved (``<out>/<algorithm>/model``) for ``pgpo inspect`` / ``pgpo eval``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pgpo.demo.warmstart import (
    DEMO_WARM_STARTS,
    WarmStartConfig,
    evaluate_warm_start,
    held_out_split,
    validation_split,
    warm_start,
)

RL_TRAIN = ("all", "projector")
EVAL_SPLITS = ("test", "val")
# RL settings of each demo model where a flag leaves them unset (chosen on the validation split: docs/demo-report.md).
DEMO_RL_DEFAULTS = {
    "words": {"rl_steps": 60, "prompts_per_step": 4, "learning_rate": 3e-5, "max_completion_length": 40},
    "smollm2": {"rl_steps": 20, "prompts_per_step": 2, "learning_rate": 5e-6, "max_completion_length": 48},
}


@dataclass
class DemoConfig:
    """Settings of one demo run (one seed); every field is a flag of ``pgpo demo`` / ``pgpo compare``."""

    out_dir: str = field(default="runs/demo", metadata={"help": "report folder"})
    model: str = field(
        default="words",
        metadata={
            "help": "the demo VLM's language model: 'words' (a small Llama over the tasks' words, trained from "
            "scratch by the warm start) or 'smollm2' (SmolLM2-135M-Instruct + LoRA; ~20x slower per RL step)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the RL stage (training prompts, sampling)"})
    algorithms: list[str] = field(
        default_factory=lambda: ["dapo", "pgpo"], metadata={"help": "presets to train (pgpo.config.ALGORITHMS)"}
    )
    rl_steps: int | None = field(
        default=None, metadata={"help": "RL optimizer steps per algorithm (default: the model's)"}
    )
    prompts_per_step: int | None = field(default=None, metadata={"help": "prompts per RL step (default: the model's)"})
    num_generations: int = field(default=8, metadata={"help": "rollouts per prompt (G)"})
    max_completion_length: int | None = field(
        default=None, metadata={"help": "completion tokens at most, RL and eval (default: the model's)"}
    )
    temperature: float = field(default=1.0, metadata={"help": "rollout temperature (the paper's 1.0)"})
    learning_rate: float | None = field(
        default=None, metadata={"help": "RL learning rate, AdamW, constant (default: the model's)"}
    )
    rl_train: str = field(default="all", metadata={"help": "what RL updates: 'all' (projector + LM) or 'projector'"})
    max_sampling_rounds: int = field(default=3, metadata={"help": "dynamic sampling: rounds per step at most"})
    n_train: int = field(default=512, metadata={"help": "training questions"})
    n_test: int = field(default=512, metadata={"help": "held-out questions (reported once per model)"})
    eval_split: str = field(
        default="test",
        metadata={
            "help": "where the held-out questions come from: 'test' (the demo's test split, the same for every "
            "seed) or 'val' (the validation stream settings are chosen on; never tune on 'test')"
        },
    )
    n_val: int = field(default=32, metadata={"help": "validation questions for the accuracy-vs-step curves"})
    n_perception: int = field(
        default=128,
        metadata={"help": "held-out questions whose taught answers measure S against the perception tokens (0 = off)"},
    )
    eval_every: int = field(default=5, metadata={"help": "validation accuracy every N RL steps (0 = off)"})
    eval_batch_size: int = field(default=32, metadata={"help": "greedy evaluation batch size"})
    gradvar_batches: int = field(
        default=8, metadata={"help": "gradient variance (pgpo gradvar) over K rollout batches, before and after RL"}
    )
    gradvar_params: str = field(
        default="trainable", metadata={"help": "gradient variance over: 'trainable' or name substrings (pgpo gradvar)"}
    )
    mask_truncated_completions: bool = field(
        default=False,
        metadata={
            "help": "DAPO's overlong filtering: truncated completions get no loss. Off by default: with it on, "
            "the word LM learned to loop until the length cap, unpenalised (docs/demo-report.md)"
        },
    )
    save_models: bool = field(default=True, metadata={"help": "save each trained model under <out>/<algorithm>/model"})
    families: list[str] | None = field(
        default=None,
        metadata={"help": "task families, comma- or space-separated (default: the model's warm start's)"},
    )
    warm_steps: int | None = field(default=None, metadata={"help": "supervised warm-start steps (default: its own)"})
    # The warm start's own settings (library only; cached by them): set the attribute after construction.
    warm: WarmStartConfig = field(default_factory=WarmStartConfig, init=False)

    def __post_init__(self):
        from pgpo.config import ALGORITHMS

        if self.model not in DEMO_WARM_STARTS:
            raise ValueError(f"model must be one of {tuple(DEMO_WARM_STARTS)}, got {self.model!r}")
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}")
        self.warm = DEMO_WARM_STARTS[self.model]
        for name, value in DEMO_RL_DEFAULTS[self.model].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"unknown algorithm(s) {unknown}: choose from {ALGORITHMS}")
        if self.rl_train not in RL_TRAIN:
            raise ValueError(f"rl_train must be one of {RL_TRAIN}, got {self.rl_train!r}")
        for name in ("rl_steps", "prompts_per_step", "num_generations", "max_completion_length", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warm_steps is not None:
            self.warm = replace(self.warm, steps=self.warm_steps)
        if self.families is not None:
            from pgpo.tasks.families import family_names

            self.families = list(family_names(self.families))
            self.warm = replace(self.warm, families=tuple(self.families))


@dataclass
class CompareConfig(DemoConfig):
    """``pgpo compare``: the demo over several seeds (0..seeds-1), each in ``<out_dir>/seed<k>``."""

    seeds: int = field(default=3, metadata={"help": "number of seeds"})

    def __post_init__(self):
        super().__post_init__()
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")


def samples(split: str, n: int, cfg: DemoConfig, salt: int = 0):
    """``n`` task samples of the demo's families; the test split is the same for every seed, the others are not."""
    from pgpo.tasks import make_split

    if split == "test":
        return (held_out_split if cfg.eval_split == "test" else validation_split)(n, cfg.warm)
    offset = 1000 * (cfg.seed + 1) + salt
    return make_split(split, n, seed=offset, families=cfg.warm.families, size=cfg.warm.image_size)


def evaluate_accuracy(model, processor, samples, batch_size: int = 32, max_new_tokens: int = 48) -> dict:
    """Greedy accuracy, overall and per task family (answers checked by :func:`pgpo.tasks.check`), and the mean
    completion length in tokens: :func:`pgpo.demo.warmstart.evaluate_warm_start` without sampling (the one task
    evaluator); the model's train / eval mode is restored."""
    was_training = model.training
    result = evaluate_warm_start(model, processor, samples, k=0, batch_size=batch_size, max_new_tokens=max_new_tokens)
    model.train(was_training)
    return {
        "accuracy": result["accuracy"],
        "per_family": result["per_family"],
        "n": result["n"],
        "mean_completion_tokens": result["completion_tokens"],
    }


def _accuracy_callback(processor, val, cfg: DemoConfig, curve: list):
    """Validation accuracy every ``eval_every`` optimizer steps (the accuracy-vs-step curves)."""
    from transformers import TrainerCallback

    class AccuracyCurve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if cfg.eval_every and state.global_step % cfg.eval_every == 0:
                acc = evaluate_accuracy(model, processor, val, cfg.eval_batch_size, cfg.max_completion_length)
                curve.append((state.global_step, acc["accuracy"]))

    return AccuracyCurve()


def _step_timer(seconds: list):
    """Wall seconds of each optimizer step (generation, scoring, update; not the validation curve's evaluation)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds.append(time.perf_counter() - self.t0)

    return StepTimer()


def _quiet_progress(trainer) -> None:
    """Swap TRL's progress bar for one that keeps its ETA (and shows the reward) without the dict of every metric
    printed under it at each step: the metrics are in ``results.json`` and the report's curves."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs and "reward" in logs:
                self.training_bar.set_postfix(reward=f"{logs['reward']:.2f}", refresh=False)

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress())


def median(values: list[float]) -> float:
    """The median, nan for no values (a run with no optimizer step)."""
    return statistics.median(values) if values else math.nan


def rl_config(algorithm: str, cfg: DemoConfig, out: Path):
    """The preset of ``algorithm`` with the demo's scaled-down setup over it (one reward function: the task check)."""
    from pgpo.small_preset import small_preset

    return small_preset(
        algorithm,
        output_dir=str(out / algorithm),
        use_cpu=True,
        bf16=False,
        seed=cfg.seed,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=1.0,
        max_steps=cfg.rl_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        overwrite_output_dir=True,  # the demo's own folder: a rerun replaces the previous demo's run
        log_visual_dependency=True,  # DAPO's dependency is logged too, for the comparison plots
        log_completions=False,
        disable_tqdm=False,
        gradient_checkpointing=False,  # a small model: recomputing activations would only cost time
        mask_truncated_completions=cfg.mask_truncated_completions,
        max_sampling_rounds=cfg.max_sampling_rounds,
        dynamic_sampling_fallback="fill",  # a tiny model's rare all-same batches: filled and counted, not a crash
    )


def train_one(algorithm: str, warm_path: Path, cfg: DemoConfig, out: Path, log=print) -> dict:
    """RL-train a copy of the warm-started model with one algorithm; returns the model, its history and curve."""
    from pgpo.tasks import correctness_reward, to_hf_dataset
    from pgpo.trainer import PGPOTrainer
    from pgpo.vlm import load_pgpo_vlm

    model, processor = load_pgpo_vlm(warm_path)
    if cfg.rl_train == "projector":
        model.model.language_model.requires_grad_(False)
    model.train()
    curve: list[tuple[int, float]] = []
    step_seconds: list[float] = []
    val = samples("train", cfg.n_val, cfg, salt=7) if cfg.eval_every else []  # other seeds than the training set
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=correctness_reward,
        args=rl_config(algorithm, cfg, out),
        train_dataset=to_hf_dataset(samples("train", cfg.n_train, cfg)),
        processing_class=processor,
        # the timer first: it stops before the validation curve's evaluation runs
        callbacks=[_step_timer(step_seconds)]
        + ([_accuracy_callback(processor, val, cfg, curve)] if cfg.eval_every else []),
    )
    _quiet_progress(trainer)
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    log(f"{algorithm}: {cfg.rl_steps} RL steps in {seconds:.0f} s (median step {median(step_seconds):.2f} s)")
    saved = None
    if cfg.save_models:
        saved = out / algorithm / "model"
        trainer.model.save_pretrained(saved)
        processor.save_pretrained(saved)
    return {
        "model": trainer.model,
        "processor": processor,
        "history": trainer.state.log_history,
        "curve": curve,
        "seconds": seconds,
        "step_seconds": step_seconds,
        "saved": str(saved) if saved else None,
    }


def gradient_statistics(model, processor, cfg: DemoConfig, out: Path) -> dict:
    """``pgpo gradvar`` on the demo's training distribution at the model's current parameters."""
    from pgpo.gradvar import GradVarConfig, build_gradvar_trainer, gradient_variance

    gcfg = GradVarConfig(
        model="demo-vlm",
        out=str(out / "gradvar"),
        batches=cfg.gradvar_batches,
        prompts_per_batch=cfg.prompts_per_step,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        families=list(cfg.warm.families),
        image_size=cfg.warm.image_size,
        seed=cfg.seed,
        params=cfg.gradvar_params,
    )
    trainer = build_gradvar_trainer(gcfg, model, processor)
    return gradient_variance(trainer, gcfg.batches, params=gcfg.params).to_dict()


def perception(model, processor, samples, cfg: DemoConfig) -> dict:
    """Does ``S`` find the perception tokens? :func:`pgpo.inspection.groundtruth.measure_perception` on the taught
    answers of ``samples`` (the prompt RL trained on), without the per-token lists."""
    from pgpo.inspection.groundtruth import measure_perception

    was_training = model.training
    model.eval()
    res = measure_perception(  # no_grad itself
        model,
        processor,
        samples,
        system_prompt=cfg.warm.system_prompt,
        prompt_template=cfg.warm.prompt_template,
        answer_format=cfg.warm.answer_format,
        temperature=cfg.temperature,
    )
    model.train(was_training)
    # one answer for the report's heatmap: the first with a token that needs the image
    example = next((r for r in res["responses"] if "image" in r["labels"]), res["responses"][0])
    example = {**example, "question": samples[res["responses"].index(example)]["question"]}
    return {**{k: v for k, v in res.items() if k != "responses"}, "example": example}


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Warm start (cached), evaluate, train each algorithm, evaluate, write ``results.json``; returns the results."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    warm_path = warm_start(cfg.warm, log=log)
    test = samples("test", cfg.n_test, cfg)

    from pgpo.vlm import load_pgpo_vlm

    model, processor = load_pgpo_vlm(warm_path)
    before = evaluate_accuracy(model, processor, test, cfg.eval_batch_size, cfg.max_completion_length)
    log(f"before RL: held-out accuracy {before['accuracy']:.3f}")
    results = {"config": _jsonable(asdict(cfg)), "before": before, "runs": {}, "warm_path": str(warm_path)}
    if cfg.n_perception:
        results["perception_before"] = perception(model, processor, test[: cfg.n_perception], cfg)
    if cfg.gradvar_batches:
        results["gradvar_before"] = gradient_statistics(model, processor, cfg, out)
    for algorithm in cfg.algorithms:
        run = train_one(algorithm, warm_path, cfg, out, log)
        after = evaluate_accuracy(run["model"], processor, test, cfg.eval_batch_size, cfg.max_completion_length)
        log(f"{algorithm}: held-out accuracy {after['accuracy']:.3f}")
        results["runs"][algorithm] = {
            "after": after,
            "history": _clean(run["history"]),
            "curve": run["curve"],
            "seconds": run["seconds"],
            "step_seconds": run["step_seconds"],
            "median_step_seconds": median(run["step_seconds"]),
            "saved": run["saved"],
        }
        if cfg.n_perception:
            results["runs"][algorithm]["perception"] = perception(
                run["model"], processor, test[: cfg.n_perception], cfg
            )
        if cfg.gradvar_batches:
            results["runs"][algorithm]["gradvar"] = gradient_statistics(run["model"], processor, cfg, out)
        if algorithm.startswith("pgpo") and "heatmap_sample" not in results:
            results["heatmap_sample"] = _sample_dependency(run["model"], processor, test[0], cfg)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    results["wall_seconds"] = time.time() - t0
    steps = {a: r["median_step_seconds"] for a, r in results["runs"].items()}
    if "pgpo" in steps and "dapo" in steps:
        results["pgpo_dapo_step_ratio"] = steps["pgpo"] / steps["dapo"]
    log(
        "median RL step: "
        + ", ".join(f"{a} {s:.2f} s" for a, s in steps.items())
        + (f"; PGPO / DAPO {results['pgpo_dapo_step_ratio']:.2f}x" if "pgpo_dapo_step_ratio" in results else "")
        + f"; whole run {results['wall_seconds'] / 60:.1f} min"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _sample_dependency(model, processor, sample, cfg: DemoConfig) -> dict:
    """S, I and w~ of the PGPO model's own greedy answer to one held-out question (for the heatmap)."""
    from pgpo.inspection import score_tokens

    res = score_tokens(
        model,
        processor,
        [sample["image"]],
        sample_prompt(sample, cfg),
        max_new_tokens=cfg.max_completion_length,
        temperature=cfg.temperature,
        system_prompt=cfg.warm.system_prompt,  # the prompt RL trained on
    )
    return {"question": sample["question"], "answer": sample["answer"], **_jsonable(asdict(res))}


def sample_prompt(sample, cfg: DemoConfig | None = None) -> str:
    from pgpo.tasks.hf import DEFAULT_PROMPT_TEMPLATE, prompt_text

    return prompt_text(sample, cfg.warm.prompt_template if cfg else DEFAULT_PROMPT_TEMPLATE)


def _clean(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if isinstance(v, int | float) and math.isfinite(v)} for h in history]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj
