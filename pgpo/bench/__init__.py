"""``pgpo bench``: what PGPO costs over DAPO (its base) and GRPO, in step time and peak memory. See docs/bench.md.

PGPO's extra work over DAPO is one no-grad blind forward per micro-batch (the visual tokens dropped, the original
positions kept: shorter, no vision tower) plus the k3 estimate and the shaping on ``[B, T]`` tensors; in the default
configuration ``log pi_img`` comes from the training forward itself. Three sections, each a module returning
JSON-ready dicts:

* ``step`` (:mod:`pgpo.bench.step`): training steps of GRPO / DAPO / PGPO trainers on the same model, data and seed,
  taking turns, in three configurations (:data:`pgpo.bench.step.GROUPS`): the default (``training_forward``), TRL's
  old-log-prob pass (``trl_old_logps``) and PGPO's own image pass (``own_pass``).
* ``dependency`` (:mod:`pgpo.bench.dependency`): k3 vs the exact chunked KL vs a naive full-logits KL, time and peak
  memory at several completion lengths.
* ``parts`` (:mod:`pgpo.bench.parts`): PGPO's extra work split into building the blind batch, the blind forward, k3
  and the shaping.

:mod:`pgpo.bench.measure` says how time, memory and machine load are measured; :mod:`pgpo.bench.report` prints the
tables (rich and Markdown). Only public APIs are used: pgpo's, ``transformers.Trainer.train`` with a
``TrainerCallback``, TRL's logged ``step_time``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from pgpo.dependency import DEFAULT_CHUNK_SIZE

# The targets for the default configuration, PGPO over DAPO.
TARGET_TIME_RATIO = 1.08
TARGET_MEMORY_RATIO = 1.02
SECTIONS = ("step", "dependency", "parts")


def split(values: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in values.split(",") if v.strip()]


@dataclass
class BenchConfig:
    """Options of ``pgpo bench``: measure PGPO's step time and peak memory over DAPO and GRPO."""

    model: Literal["tiny-qwen", "demo-vlm", "qwen25vl-3b"] = field(
        default="tiny-qwen",
        metadata={"help": "tiny-qwen | demo-vlm | qwen25vl-3b (random-init 3B config, ~1k image tokens; for CUDA)"},
    )
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads (0: leave PyTorch's default)"})
    sections: str = field(
        default=",".join(SECTIONS), metadata={"help": f"what to measure, comma-separated: any of {SECTIONS}"}
    )
    groups: str = field(
        default="default,trl_old_logps,own_pass",
        metadata={
            "help": "step configurations, comma-separated: default (log pi_img from the training forward), "
            "trl_old_logps (steps_per_generation=2), own_pass (dependency_from_training_forward=False)"
        },
    )
    schedule: Literal["auto", "interleaved", "sequential"] = field(
        default="auto",
        metadata={
            "help": "step section: trainers take turns (interleaved) or run one after the other; auto: "
            "interleaved on the CPU, sequential on CUDA"
        },
    )
    batch: int = field(default=8, metadata={"help": "completions per optimizer step (per_device_train_batch_size)"})
    num_generations: int = field(default=4, metadata={"help": "completions per prompt"})
    completion_length: int = field(default=32, metadata={"help": "tokens per completion, exactly (min_new_tokens)"})
    image_size: int | None = field(
        default=None, metadata={"help": "side of the prompt images in pixels (default: the model's: 112, 64, 896)"}
    )
    steps: int = field(default=6, metadata={"help": "timed turns (generation cycles) per candidate"})
    warmup: int = field(default=1, metadata={"help": "untimed turns before them"})
    chunk_size: int = field(default=DEFAULT_CHUNK_SIZE, metadata={"help": "dependency_chunk_size of every pass"})
    learning_rate: float = field(default=1e-5, metadata={"help": "the trainers' learning rate"})
    seed: int = field(default=0, metadata={"help": "model weights, prompts and sampling seed"})
    dep_batch: int = field(default=4, metadata={"help": "dependency section: rows per batch"})
    dep_lengths: str = field(
        default="16,64,128,512", metadata={"help": "dependency section: completion lengths, comma-separated"}
    )
    naive_max_gib: float = field(default=4.0, metadata={"help": "skip the naive KL where it would need more (GiB)"})
    repeats: int = field(default=5, metadata={"help": "rounds of the dependency and parts timings"})
    out: str | None = field(default=None, metadata={"help": "write every measurement to this JSON file"})
    markdown: str | None = field(default=None, metadata={"help": "write the tables to this Markdown file"})
    report: str | None = field(default=None, metadata={"help": "print the tables of an earlier --out file, no run"})
    quiet: bool = field(default=False, metadata={"help": "no progress lines"})

    def __post_init__(self):
        from pgpo.bench.step import GROUPS

        for name, allowed in (("sections", SECTIONS), ("groups", tuple(GROUPS))):
            unknown = [v for v in split(getattr(self, name)) if v not in allowed]
            if unknown:
                raise ValueError(f"--{name}: unknown {unknown}; choose from {allowed}")
        for name in ("batch", "num_generations", "completion_length", "steps", "chunk_size", "dep_batch", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.threads < 0:
            raise ValueError("--warmup and --threads must be >= 0")
        if self.batch % self.num_generations:
            raise ValueError(f"--batch {self.batch} must be a multiple of --num_generations {self.num_generations}")
        try:
            lengths = [int(x) for x in split(self.dep_lengths)]
        except ValueError:
            raise ValueError(f"--dep_lengths must be comma-separated integers, got {self.dep_lengths!r}") from None
        if not lengths or min(lengths) < 1:
            raise ValueError(f"--dep_lengths must be >= 1, got {self.dep_lengths!r}")

    @property
    def section_list(self) -> list[str]:
        return split(self.sections)

    @property
    def group_list(self) -> list[str]:
        return split(self.groups)

    @property
    def length_list(self) -> list[int]:
        return [int(x) for x in split(self.dep_lengths)]

    @property
    def interleave(self) -> bool:
        if self.schedule == "auto":
            return not self.device.startswith("cuda")
        return self.schedule == "interleaved"


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print, source=None) -> dict:
    """Every section of ``cfg.sections`` on ``cfg.model`` (or ``source``, a :class:`pgpo.bench.models.ModelSource`);
    returns a JSON-ready dict: ``meta``, ``step`` (group -> comparison), ``dependency``, ``parts``."""
    import torch

    from pgpo.bench.measure import StallMeter, load_average, machine
    from pgpo.bench.models import resolve_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with StallMeter() as whole:
        source = source or resolve_model(cfg.model, cfg.device, cfg.seed)
        result: dict = {
            "meta": {
                **machine(cfg.device),
                "model": source.name,
                "model_note": source.note,
                "image_size": cfg.image_size or source.image_size,
                "config": asdict(cfg),
                "interleaved": cfg.interleave,
            }
        }
        if "step" in cfg.section_list:
            from pgpo.bench.step import GROUPS, run_group

            result["step"] = {}
            for name in cfg.group_list:
                log(f"step: {name} ({GROUPS[name].note}): {', '.join(GROUPS[name].candidates)}")
                result["step"][name] = run_group(source, name, cfg, cfg.interleave, log)
        if "dependency" in cfg.section_list:
            from pgpo.bench.dependency import dependency_scaling

            log(f"dependency: k3 vs exact KL vs naive KL, lengths {cfg.dep_lengths}")
            result["dependency"] = dependency_scaling(source, cfg, log)
        if "parts" in cfg.section_list:
            from pgpo.bench.parts import dependency_parts

            log("parts: PGPO's extra work, split")
            result["parts"] = dependency_parts(source, cfg, result.get("step"))
    result["meta"].update(wall_s=whole.wall, stall=whole.fraction, load_average_end=load_average())
    return result


__all__ = ["SECTIONS", "TARGET_MEMORY_RATIO", "TARGET_TIME_RATIO", "BenchConfig", "run_bench"]
