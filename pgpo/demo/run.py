"""``pgpo demo``: warm-start the small real VLM, then train GRPO and PGPO with the same seed and budget, evaluate.

Everything runs on the CPU with what pip installs: the VLM is built from shipped pretrained parts
(:mod:`pgpo.vlm`), the data are :mod:`pgpo.tasks`' procedural visual questions, training is
:class:`pgpo.trainer.PGPOTrainer` (TRL's GRPOTrainer) exactly as on a GPU cluster, only smaller.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pgpo.demo.warmstart import WarmStartConfig, warm_start


@dataclass
class DemoConfig:
    """Settings of one demo run (one seed). Defaults fit ~10 minutes on 2 CPU cores."""

    out_dir: str = "runs/demo"
    seed: int = 0
    algorithms: tuple[str, ...] = ("grpo", "pgpo")
    rl_steps: int = 32
    prompts_per_step: int = 4
    num_generations: int = 4
    max_completion_length: int = 8
    temperature: float = 0.7
    learning_rate: float = 1e-5
    # What RL updates: "all" (projector + LM; the vision encoder is always frozen) or "projector" (the LM stays as
    # shipped, like the warm start).
    rl_train: str = "all"
    n_train: int = 512
    n_test: int = 192
    eval_batch_size: int = 32
    warm: WarmStartConfig = field(default_factory=WarmStartConfig)


def _samples(split: str, n: int, cfg: DemoConfig):
    from pgpo.tasks import make_split

    offset = 0 if split == "test" else 1000 * (cfg.seed + 1)
    return make_split(split, n, seed=offset, families=cfg.warm.families, size=cfg.warm.image_size)


def evaluate_accuracy(model, processor, samples, batch_size: int = 32, max_new_tokens: int = 6) -> dict:
    """Greedy held-out accuracy, overall and per task family (answers checked by :func:`pgpo.tasks.check`)."""
    from pgpo.eval.generation import GenerationRequest, HFGenerator
    from pgpo.tasks import check
    from pgpo.tasks.hf import to_messages

    gen = HFGenerator(model, processor, temperature=0.0, max_new_tokens=max_new_tokens)
    correct: dict[str, list[bool]] = {}
    was_training = model.training
    model.eval()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        outs = gen.generate([GenerationRequest(to_messages(s), [s["image"]]) for s in chunk])
        for s, out in zip(chunk, outs):
            correct.setdefault(s["family"], []).append(check(s, out))
    model.train(was_training)
    per_family = {f: sum(v) / len(v) for f, v in sorted(correct.items())}
    flat = [c for v in correct.values() for c in v]
    return {"accuracy": sum(flat) / len(flat), "per_family": per_family, "n": len(flat)}


def train_one(algorithm: str, warm_path: Path, cfg: DemoConfig, out: Path, log=print):
    """RL-train a copy of the warm-started model with one algorithm; returns (model, processor, log_history)."""
    from pgpo.config import ALGORITHM_PRESETS, PGPOConfig
    from pgpo.tasks import correctness_reward, to_hf_dataset
    from pgpo.trainer import PGPOTrainer
    from pgpo.vlm import load_pgpo_vlm

    model, processor = load_pgpo_vlm(warm_path)
    if cfg.rl_train not in ("all", "projector"):
        raise ValueError(f"rl_train must be 'all' or 'projector', got {cfg.rl_train!r}")
    if cfg.rl_train == "projector":
        model.model.language_model.requires_grad_(False)
    model.train()
    options = dict(ALGORITHM_PRESETS[algorithm])  # the preset, then the demo's own (smaller) setup over it
    options.update(
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
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        log_visual_dependency=True,  # GRPO's dependency is logged too, for the comparison plots
        log_completions=False,
        disable_tqdm=False,
        reward_weights=None,  # one reward function (the task's checker)
        mask_truncated_completions=False,
        dynamic_sampling_fallback="fill",
    )
    args = PGPOConfig(**options)
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=correctness_reward,
        args=args,
        train_dataset=to_hf_dataset(_samples("train", cfg.n_train, cfg)),
        processing_class=processor,
    )
    t0 = time.time()
    trainer.train()
    log(f"{algorithm}: {cfg.rl_steps} RL steps in {time.time() - t0:.0f} s")
    return trainer.model, processor, trainer.state.log_history


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Warm start (cached), evaluate, train each algorithm, evaluate, write ``results.json``; returns the results."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    warm_cfg = replace(cfg.warm, seed=cfg.warm.seed)
    warm_path = warm_start(warm_cfg, log=log)
    test = _samples("test", cfg.n_test, cfg)

    from pgpo.vlm import load_pgpo_vlm

    model, processor = load_pgpo_vlm(warm_path)
    before = evaluate_accuracy(model, processor, test, cfg.eval_batch_size, cfg.max_completion_length)
    log(f"before RL: held-out accuracy {before['accuracy']:.3f}")
    results = {"config": _jsonable(asdict(cfg)), "before": before, "runs": {}}
    for algorithm in cfg.algorithms:
        model, processor, history = train_one(algorithm, warm_path, cfg, out, log)
        after = evaluate_accuracy(model, processor, test, cfg.eval_batch_size, cfg.max_completion_length)
        log(f"{algorithm}: held-out accuracy {after['accuracy']:.3f}")
        results["runs"][algorithm] = {"after": after, "history": _clean(history)}
        if algorithm == "pgpo":
            results["heatmap_sample"] = _sample_dependency(model, processor, test[0], cfg)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    results["wall_seconds"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _sample_dependency(model, processor, sample, cfg: DemoConfig) -> dict:
    """Per-token dependency of the PGPO model's own greedy answer to one held-out question (for the heatmap)."""
    from pgpo.inspection import score_tokens

    res = score_tokens(
        model, processor, [sample["image"]], sample_prompt(sample), max_new_tokens=cfg.max_completion_length
    )
    return {"question": sample["question"], "answer": sample["answer"], **_jsonable(asdict(res))}


def sample_prompt(sample) -> str:
    from pgpo.tasks.hf import prompt_text

    return prompt_text(sample)


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
