"""What PGPO costs over GRPO, measured in one process on one model and one batch (``pgpo bench``).

PGPO's only extra work over GRPO is one no-grad text-only forward per batch plus the vocabulary KL. The
image-conditioned distribution comes from a forward that runs anyway: TRL's no-grad old-log-prob pass when TRL runs
one, else the training forward (``dependency_from_training_forward``); only when neither applies does PGPO run its own
no-grad image-conditioned forward. Three measurements, each a function returning a JSON-ready dict (:func:`run_bench`
runs all three):

* :func:`compare_config` (a): a GRPO vs a PGPO training step (``ALGORITHM_PRESETS`` ``"grpo"`` / ``"pgpo"``, same model,
  seed, prompts and completion length), median step time and peak memory, in :data:`CONFIGS`: *aligned*
  (``steps_per_generation=1``, TRL's default: PGPO takes ``p_image`` from the training forward), *aligned_own* (the
  same with ``dependency_from_training_forward=False``: PGPO runs its own image-conditioned forward) and *shared*
  (``steps_per_generation=2``: PGPO rides on TRL's old-log-prob pass, GRPO runs that pass too).
* :func:`dependency_scaling` (b): :func:`pgpo.dependency.token_kl_from_hidden` / :func:`pgpo.dependency.token_kl`,
  chunked, vs a naive full-logits KL, at several completion lengths and chunk sizes.
* :func:`dependency_parts` (c): the parts of PGPO's extra work on the trainer's own last generation batch: building the
  text-only batch, the image-conditioned and the text-only forwards, the KL, the shaping, and TRL's own old-log-prob
  forward.

Timing: ``time.perf_counter`` (CUDA synchronised), the candidates of one measurement interleaved round by round (so a
load change on a shared machine hits all of them), medians reported, with how long this process waited for a CPU
(:class:`StallMeter`) as the noise indicator. Memory: the peak of the bytes allocated *on top
of* what was live when a block started (:class:`PeakMemory`): ``torch.cuda.max_memory_allocated`` on CUDA, the PyTorch
profiler's allocation events replayed in time order on the CPU. A step's total is that peak plus the resident bytes
(parameters, gradients, optimizer state) at its start, the CPU analogue of ``max_memory_allocated``.

The optimizer steps are driven by :class:`Stepper`, the body of ``transformers.Trainer``'s loop for
``gradient_accumulation_steps=1`` (``training_step``, clipping, optimizer and scheduler step), so that two trainers
can take turns step by step.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import math
import os
import shutil
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pgpo.dependency import DEFAULT_CHUNK_SIZE, token_kl, token_kl_from_hidden

TARGET_TIME_RATIO = 1.15
TARGET_MEMORY_RATIO = 1.10
QUIET_STALL = 0.10  # a round is "quiet" when this process waited for a CPU less than 10% of each of its cycles
COLOURS = ((255, 0, 0), (0, 160, 0), (0, 0, 255), (240, 200, 0), (128, 0, 128), (0, 170, 170))
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "teal")
# step configurations of (a): name -> (steps_per_generation, or None for StepSetup.shared_steps_per_generation; PGPO's
# extra PGPOConfig options)
CONFIGS = {
    "aligned": (1, {}),
    "aligned_own": (1, {"dependency_from_training_forward": False}),
    "shared": (None, {}),
}


# ----------------------------------------------------------------------------------------------- measuring
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_method(device: str) -> str:
    """How :class:`PeakMemory` measures on ``device`` (printed with every table)."""
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated (reset per block)"
    return "torch.profiler CPU allocation events (profile_memory=True), replayed in time order"


def _cpu_allocation_peak(prof) -> int:
    """Peak of the running sum of the allocation events (frees are negative) recorded by ``prof``, in bytes."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_extra``: peak bytes allocated above the level at entry.

    On CUDA ``m.peak_total`` is ``torch.cuda.max_memory_allocated`` (everything live on the device, other objects
    included); on the CPU it is ``None``.
    """

    def __init__(self, device: str):
        self.device = device
        self.peak_extra = 0
        self.peak_total: int | None = None
        self._prof = None
        self._start = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_total = torch.cuda.max_memory_allocated()
            self.peak_extra = self.peak_total - self._start
        else:
            self._prof.__exit__(*exc)
            if exc[0] is None:
                self.peak_extra = _cpu_allocation_peak(self._prof)
            self._prof = None


def resident_bytes(*objects) -> int:
    """Bytes of the distinct storages of the tensors of modules (parameters, gradients, buffers) and optimizers."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            if key not in seen and storage.nbytes() > 0:
                seen.add(key)
                total += storage.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                add(p)
                add(p.grad)
            for b in obj.buffers():
                add(b)
        elif isinstance(obj, torch.optim.Optimizer) or hasattr(obj, "state"):
            for state in getattr(obj, "state", {}).values():
                for value in state.values():
                    add(value)
    return total


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds, the order reversed every other round."""
    names, times = list(fns), {name: [] for name in fns}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def peak_extra(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated by ``fn`` above the level at its start (see :class:`PeakMemory`)."""
    with PeakMemory(device) as meter:
        fn()
    return meter.peak_extra


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def run_queue_wait_seconds() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux ``/proc/self/task/*/schedstat``,
    second field). Other processes on the machine make it grow; PyTorch's own work does not."""
    total = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue  # a thread that just ended
    except OSError:
        return None
    return total / 1e9


class StallMeter:
    """``with StallMeter() as m: ...`` then ``m.fraction``: this process's run-queue wait over the block's wall time
    (``None`` off Linux). A noise indicator: > 0.1 means other processes took CPUs from the measurement."""

    fraction: float | None = None
    wall: float = 0.0

    def __enter__(self) -> StallMeter:
        self._wait, self._t0 = run_queue_wait_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wait, self.wall = run_queue_wait_seconds(), time.perf_counter() - self._t0
        if wait is not None and self._wait is not None and self.wall > 0:
            self.fraction = (wait - self._wait) / self.wall


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------- models
@dataclass
class ModelSource:
    """A model to benchmark: ``load()`` returns a fresh ``(model, processor)`` with the same weights every time."""

    name: str
    load: Callable[[], tuple]
    note: str = ""


class ModelUnavailable(RuntimeError):
    """The requested model cannot be built here (e.g. ``demo-vlm`` while ``pgpo.vlm`` is missing)."""


def _qwen25vl_3b_source(device: str) -> ModelSource:
    """A random-init Qwen2.5-VL-3B-sized model built from a config (no download), bf16 on ``device``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from pgpo.models.tiny_qwen import build_tiny_qwen25vl_processor

    def load():
        processor = build_tiny_qwen25vl_processor(min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64)
        tok = processor.tokenizer
        config = Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=151936,
                hidden_size=2048,
                intermediate_size=11008,
                num_hidden_layers=36,
                num_attention_heads=16,
                num_key_value_heads=2,
                max_position_embeddings=128000,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                tie_word_embeddings=True,
                pad_token_id=tok.pad_token_id,
            ),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048),
            image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
            vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
            vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        )
        torch.manual_seed(0)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
        return model.eval(), processor

    return ModelSource("qwen25vl-3b", load, "random-init Qwen2.5-VL-3B-sized config, bf16")


def _path_source(path: str, device: str) -> ModelSource:
    """A local folder: weights if it has them, else a random init from its ``config.json``."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelUnavailable(f"{path}: not a model folder (no config.json)")
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32

    def load():
        try:
            processor = AutoProcessor.from_pretrained(str(folder))
        except (OSError, ValueError):
            from pgpo.models.tiny_qwen import build_tiny_qwen25vl_processor

            processor = build_tiny_qwen25vl_processor()
        if has_weights:
            model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype)
        else:
            torch.manual_seed(0)
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(folder)), dtype=dtype)
        return model.eval(), processor

    return ModelSource(str(folder), load, "weights" if has_weights else "random init from config.json")


def resolve_model(spec: str, device: str = "cpu", seed: int = 0) -> ModelSource:
    """``tiny-qwen`` | ``demo-vlm`` | ``qwen25vl-3b`` | a local model folder. Raises :class:`ModelUnavailable`."""
    if spec == "tiny-qwen":
        from pgpo.models.tiny_qwen import build_tiny_qwen25vl, build_tiny_qwen25vl_processor

        processor = build_tiny_qwen25vl_processor()
        return ModelSource(
            spec, lambda: build_tiny_qwen25vl(seed=seed, processor=processor), "random tiny Qwen2.5-VL, real tokenizer"
        )
    if spec == "demo-vlm":
        try:
            from pgpo.vlm import load_pgpo_vlm
        except Exception as err:  # being written elsewhere: any import failure means "not available"
            raise ModelUnavailable(f"demo-vlm needs pgpo.vlm.load_pgpo_vlm, which cannot be imported: {err!r}") from err
        cache: dict = {}

        def load():
            if "pair" not in cache:
                cache["pair"] = load_pgpo_vlm(seed=seed)
            model, processor = cache["pair"]
            return copy.deepcopy(model), processor

        return ModelSource(spec, load, "pgpo's demo VLM (MobileNetV2 + SmolLM2-135M)")
    if spec == "qwen25vl-3b":
        return _qwen25vl_3b_source(device)
    return _path_source(spec, device)


# ----------------------------------------------------------------------------------------------- trainers
@dataclass
class StepSetup:
    """What one training step is made of (the same for GRPO and PGPO)."""

    batch: int = 8  # completions per optimizer step (per_device_train_batch_size)
    num_generations: int = 4
    completion_length: int = 32  # every completion has exactly this many tokens (min_new_tokens = max)
    steps: int = 4  # timed generation cycles per configuration
    warmup: int = 1  # untimed generation cycles before them
    shared_steps_per_generation: int = 2  # the configuration where PGPO shares TRL's old-log-prob pass
    image_size: int = 112
    chunk_size: int = DEFAULT_CHUNK_SIZE
    learning_rate: float = 1e-5
    seed: int = 0


def _reward(completions, **kwargs) -> list[float]:
    """Deterministic, non-constant reward (groups get non-zero advantages): character sum mod 5."""
    return [float(sum(map(ord, c[0]["content"] if isinstance(c, list) else c)) % 5) for c in completions]


def bench_dataset(n: int, image_size: int):
    """``n`` prompts, each a coloured square with a question about it (TRL conversational format)."""
    from datasets import Dataset
    from PIL import Image

    images = [Image.new("RGB", (image_size, image_size), COLOURS[i % len(COLOURS)]) for i in range(n)]
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}]
    answers = [COLOUR_NAMES[i % len(COLOURS)] for i in range(n)]
    return Dataset.from_dict({"prompt": [prompt] * n, "image": images, "answer": answers})


def build_trainer(source: ModelSource, algorithm: str, setup: StepSetup, device: str, steps_per_generation: int, **kw):
    """A :class:`pgpo.trainer.PGPOTrainer` with ``ALGORITHM_PRESETS[algorithm]`` on a fresh copy of the model."""
    from pgpo.config import ALGORITHM_PRESETS, PGPOConfig
    from pgpo.trainer import PGPOTrainer

    model, processor = source.load()
    total_steps = (setup.warmup + setup.steps + 1) * steps_per_generation
    output_dir = tempfile.mkdtemp(prefix=f"pgpo-bench-{algorithm}-")
    options = dict(
        output_dir=output_dir,
        use_cpu=not device.startswith("cuda"),
        bf16=device.startswith("cuda") and model.dtype == torch.bfloat16,
        per_device_train_batch_size=setup.batch,
        num_generations=setup.num_generations,
        steps_per_generation=steps_per_generation,
        gradient_accumulation_steps=1,
        max_completion_length=setup.completion_length,
        generation_kwargs={"min_new_tokens": setup.completion_length},
        max_steps=total_steps,
        learning_rate=setup.learning_rate,
        dependency_chunk_size=setup.chunk_size,
        report_to="none",
        logging_steps=10**9,
        save_strategy="no",
        seed=setup.seed,
        disable_tqdm=True,
    )
    options.update(ALGORITHM_PRESETS[algorithm])
    options.update(kw)
    n_prompts = max(16, 2 * setup.batch * steps_per_generation // setup.num_generations)
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=_reward,
        args=PGPOConfig(**options),
        train_dataset=bench_dataset(n_prompts, setup.image_size),
        processing_class=processor,
    )
    weakref.finalize(trainer, shutil.rmtree, output_dir, True)
    return trainer


class Stepper:
    """Takes optimizer steps of one trainer by hand: ``transformers.Trainer``'s loop body, gradient accumulation 1."""

    def __init__(self, trainer, total_steps: int):
        self.trainer = trainer
        trainer.create_optimizer()
        self.model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
        trainer.model_wrapped = self.model
        trainer.create_scheduler(num_training_steps=total_steps, optimizer=trainer.optimizer)
        self._loader = trainer.get_train_dataloader()
        self._epoch = 0
        self._batches = iter(self._loader)

    def _next_batch(self):
        try:
            return next(self._batches)
        except StopIteration:
            self._epoch += 1
            if hasattr(self._loader, "set_epoch"):
                self._loader.set_epoch(self._epoch)
            self._batches = iter(self._loader)
            return next(self._batches)

    def step(self) -> float:
        """One optimizer step; returns the loss."""
        t = self.trainer
        t.current_gradient_accumulation_steps = 1
        t.accelerator.gradient_state._set_sync_gradients(True)
        loss = t.training_step(self.model, self._next_batch(), None)
        if t.args.max_grad_norm and t.args.max_grad_norm > 0:
            t._clip_grad_norm(self.model)
        t.optimizer.step()
        t.lr_scheduler.step()
        self.model.zero_grad()
        t.state.global_step += 1
        return float(loss)

    def resident(self) -> int:
        return resident_bytes(self.trainer.model, self.trainer.optimizer)


# Model inputs of a generation batch besides the ids and masks (TRL's num_images / num_tiles only slice them).
MODEL_INPUT_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "spatial_shapes",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def micro_batches_of(trainer) -> list[dict]:
    """The micro-batches of the trainer's last generation batch (TRL's ``_buffered_inputs``), as the model inputs PGPO
    scores: ``{"batch": {input_ids, attention_mask, image tensors}, "logits_to_keep", "completion_mask"}``."""
    out = []
    for inputs in getattr(trainer, "_buffered_inputs", None) or []:
        batch = {
            "input_ids": torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
            "attention_mask": torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
        }
        batch.update({k: inputs[k] for k in MODEL_INPUT_KEYS if isinstance(inputs.get(k), torch.Tensor)})
        k = inputs["completion_ids"].size(1)
        out.append({"batch": batch, "logits_to_keep": k, "completion_mask": batch["attention_mask"][:, -k:]})
    return out


@dataclass
class _Run:
    """One algorithm in one configuration, while it is being measured."""

    algorithm: str
    stepper: Stepper
    cycle: int
    memory_when_timed: bool = False  # measure memory in the timed cycles too (CUDA; or to save time on the CPU)
    times: list[float] = field(default_factory=list)
    stalls: list[float | None] = field(default_factory=list)  # run-queue wait fraction of each timed cycle
    peak_extra: int = 0
    resident: int = 0
    cuda_peak_total: int | None = None

    def run_cycle(self, seed: int) -> None:
        torch.manual_seed(seed)  # the same sampling noise for both algorithms at the same cycle
        for _ in range(self.cycle):
            self.stepper.step()

    def measure_cycle(self, seed: int, device: str, timed: bool) -> None:
        """One generation cycle, timed, and/or with its memory (see ``memory_when_timed``)."""
        meter = PeakMemory(device) if self.memory_when_timed or not timed else None
        if meter is not None:
            self.resident = self.stepper.resident()
        _sync(device)
        with StallMeter() as stall, meter if meter is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            self.run_cycle(seed)
            _sync(device)
            seconds = time.perf_counter() - t0
        if timed:
            self.times.append(seconds)
            self.stalls.append(stall.fraction)
        if meter is not None:
            self.peak_extra = max(self.peak_extra, meter.peak_extra)
            if meter.peak_total is not None:
                self.cuda_peak_total = max(self.cuda_peak_total or 0, meter.peak_total)

    def summary(self) -> dict:
        per_step = [t / self.cycle for t in self.times]
        return {
            "algorithm": self.algorithm,
            "step_s": median(per_step),
            "step_s_min": min(per_step) if per_step else math.nan,
            "step_s_all": per_step,
            "cpu_stall_all": self.stalls,
            "peak_extra_bytes": self.peak_extra,
            "resident_bytes": self.resident,
            "peak_total_bytes": self.resident + self.peak_extra,
            "cuda_max_memory_allocated": self.cuda_peak_total,
        }


def _cycle_note(run: _Run) -> str:
    stall = run.stalls[-1]
    return f"{run.algorithm} {run.times[-1] / run.cycle:.2f}s/step" + ("" if stall is None else f" (stall {stall:.0%})")


def compare_config(
    source: ModelSource,
    setup: StepSetup,
    device: str,
    steps_per_generation: int,
    interleave: bool = True,
    on_pgpo_ready: Callable | None = None,
    log: Callable[[str], None] = print,
    memory_when_timed: bool | None = None,
    pgpo_options: dict | None = None,
) -> dict:
    """GRPO vs PGPO in one configuration: median step time, peak memory, their ratios.

    A *cycle* is one generation batch: ``steps_per_generation`` optimizer steps; ``setup.warmup`` untimed cycles, then
    ``setup.steps`` timed ones; step time = cycle time / ``steps_per_generation``. ``interleave``: both trainers
    alive, taking turns cycle by cycle, the order alternating (robust to load changes; the default on the CPU); else
    one after the other, the first freed before the second is built (what a GPU with a large model needs).
    ``on_pgpo_ready(trainer)`` runs while the PGPO trainer is alive, after its last cycle. ``memory_when_timed`` (default: on CUDA only): measure memory in
    the timed cycles; else (the CPU's profiler slows a step down) in one more, untimed, cycle. ``pgpo_options``: extra
    ``PGPOConfig`` options of the PGPO trainer.
    """
    if memory_when_timed is None:
        memory_when_timed = device.startswith("cuda")
    cycle = steps_per_generation
    total_steps = (setup.warmup + setup.steps + 1) * cycle
    algorithms = ("grpo", "pgpo")
    summaries: dict[str, dict] = {}
    info: dict = {}

    def start(algorithm: str) -> _Run:
        extra = (pgpo_options or {}) if algorithm == "pgpo" else {}
        trainer = build_trainer(source, algorithm, setup, device, steps_per_generation, **extra)
        if algorithm == "pgpo":
            info["shares"] = trainer._trl_runs_old_logps_pass()
            info["training_forward"] = not info["shares"] and trainer._can_score_in_training_forward()
        run = _Run(algorithm, Stepper(trainer, total_steps), cycle, memory_when_timed)
        for i in range(setup.warmup):
            run.run_cycle(setup.seed - 1 - i)
        return run

    def finish(run: _Run) -> None:
        if not memory_when_timed:
            run.measure_cycle(setup.seed + setup.steps, device, timed=False)
        if run.algorithm == "pgpo" and on_pgpo_ready is not None:
            on_pgpo_ready(run.stepper.trainer)
        summaries[run.algorithm] = run.summary()

    if interleave:
        runs = {algorithm: start(algorithm) for algorithm in algorithms}
        for i in range(setup.steps):
            order = algorithms if i % 2 == 0 else algorithms[::-1]
            for algorithm in order:
                runs[algorithm].measure_cycle(setup.seed + i, device, timed=True)
            log(f"  cycle {i + 1}/{setup.steps}: " + ", ".join(_cycle_note(runs[a]) for a in order))
        for algorithm in algorithms:
            finish(runs[algorithm])
        del runs
    else:
        for algorithm in algorithms:
            run = start(algorithm)
            for i in range(setup.steps):
                run.measure_cycle(setup.seed + i, device, timed=True)
            log(f"  {algorithm}: " + ", ".join(f"{t / cycle:.2f}s" for t in run.times))
            finish(run)
            del run
            _free(device)
    _free(device)

    grpo, pgpo = summaries["grpo"], summaries["pgpo"]
    paired = [p / g for p, g in zip(pgpo["step_s_all"], grpo["step_s_all"])] if interleave else []
    quiet = [
        r
        for r, sg, sp in zip(paired, grpo["cpu_stall_all"], pgpo["cpu_stall_all"])
        if sg is not None and sp is not None and max(sg, sp) < QUIET_STALL
    ]
    result = {
        "steps_per_generation": steps_per_generation,
        "pgpo_shares_trl_old_logps_pass": bool(info.get("shares")),
        "pgpo_scores_in_training_forward": bool(info.get("training_forward")),
        "pgpo_options": pgpo_options or {},
        "interleaved": interleave,
        "grpo": grpo,
        "pgpo": pgpo,
        "time_ratio": pgpo["step_s"] / grpo["step_s"],
        "time_ratio_paired": median(paired) if paired else None,
        "time_ratio_paired_range": [min(paired), max(paired)] if paired else None,
        "time_ratio_min": pgpo["step_s_min"] / grpo["step_s_min"],
        "time_ratio_quiet": median(quiet) if quiet else None,
        "quiet_rounds": len(quiet),
        "rounds": len(paired) if interleave else None,
        "memory_ratio": pgpo["peak_total_bytes"] / max(grpo["peak_total_bytes"], 1),
        "memory_extra_ratio": pgpo["peak_extra_bytes"] / max(grpo["peak_extra_bytes"], 1),
        "pgpo_minus_grpo_step_s": pgpo["step_s"] - grpo["step_s"],
    }
    if not interleave and grpo["cuda_max_memory_allocated"] and pgpo["cuda_max_memory_allocated"]:
        result["cuda_memory_ratio"] = pgpo["cuda_max_memory_allocated"] / grpo["cuda_max_memory_allocated"]
    return result


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- (c) the parts
def _trl_logps_forward(trainer, model, batch: dict, logits_to_keep: int):
    """What TRL runs per micro-batch for its old log-probs: the model with its fused LM head, no gradient."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :-logits_to_keep] = -100
    with torch.no_grad(), trainer.accelerator.autocast():
        return model(**batch, labels=labels, fused_lm_head=True).log_probs


def dependency_parts(trainer, device: str, repeats: int = 5) -> dict:
    """Time and peak memory of each part of PGPO's extra work, on the trainer's last generation batch (summed over its
    micro-batches, see :func:`micro_batches_of`)."""
    from pgpo.dependency import _completion_states, _hidden_and_head, compute_visual_dependency
    from pgpo.shaping import pgpo_shape

    calls = micro_batches_of(trainer)
    if not calls:
        raise ValueError("the trainer holds no generation batch (TRL's _buffered_inputs)")
    model = trainer.model
    split = _hidden_and_head(model)
    chunk, temperature = trainer.args.dependency_chunk_size, trainer.temperature
    prepared = []
    with torch.no_grad():
        for c in calls:
            batch, k, mask = c["batch"], c["logits_to_keep"], c["completion_mask"]
            text = trainer._text_only(batch, k)
            h_img = _completion_states(model, batch, k, split)
            h_txt = _completion_states(model, text, k, split)
            prepared.append((batch, text, k, mask, h_img, h_txt))

    def over_calls(fn):
        def run():
            with torch.no_grad():
                for item in prepared:
                    fn(*item)

        return run

    def kl(batch, text, k, mask, h_img, h_txt) -> torch.Tensor:
        if split is None:
            return token_kl(h_img, h_txt, mask.bool(), chunk, temperature)
        targets = batch["input_ids"][:, -k:]
        return token_kl_from_hidden(h_img, h_txt, split[1], mask.bool(), chunk, temperature, targets)[0]

    with torch.no_grad():
        all_scores = torch.cat([kl(*item) for item in prepared])
    all_mask = torch.cat([item[3] for item in prepared])
    advantages = torch.randn(all_scores.shape[0], generator=torch.Generator().manual_seed(0)).to(all_scores.device)

    def shape_and_log():
        result = pgpo_shape(advantages, all_scores, all_mask, trainer.args.pgpo_shaping_config())
        trainer._log_dependency(all_scores, all_mask, "train")
        trainer._log_shaping(result, all_mask, "train")

    parts = {
        "text_only_batch": over_calls(lambda b, t, k, m, hi, ht: trainer._text_only(b, k)),
        "image_forward": over_calls(lambda b, t, k, m, hi, ht: _completion_states(model, b, k, split)),
        "text_forward": over_calls(lambda b, t, k, m, hi, ht: _completion_states(model, t, k, split)),
        "kl": over_calls(kl),
        "shaping_and_metrics": shape_and_log,
        "compute_visual_dependency": over_calls(
            lambda b, t, k, m, hi, ht: compute_visual_dependency(model, b, t, k, m, chunk, temperature, True)
        ),
        "trl_old_logps_forward": over_calls(lambda b, t, k, m, hi, ht: _trl_logps_forward(trainer, model, b, k)),
    }
    with StallMeter() as stall:
        times = interleaved_times(parts, repeats, device)
    measured = {
        name: {"s": median(ts), "s_all": ts, "peak_extra_bytes": peak_extra(parts[name], device)}
        for name, ts in times.items()
    }
    first_batch, first_text = prepared[0][0], prepared[0][1]
    spec = trainer._image_spec
    shapes = {
        "micro_batches": len(prepared),
        "rows": int(all_scores.shape[0]),
        "completion_tokens": int(all_mask.sum()),
        "image_batch_seq_len": int(first_batch["input_ids"].shape[1]),
        "text_batch_seq_len": int(first_text["input_ids"].shape[1]),
        "completion_len": int(prepared[0][2]),
        "hidden_split": split is not None,
        "image_tokens_per_row": int((first_batch["input_ids"][0] == spec.image_token_id).sum()) if spec else None,
        "image_keys": sorted(k for k in first_batch if k not in first_text),
    }
    return {"parts": measured, "shapes": shapes, "cpu_stall_fraction": stall.fraction}


# ----------------------------------------------------------------------------------------------- (b) the KL alone
def naive_token_kl(logits_img: torch.Tensor, logits_txt: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0):
    """The unchunked reference: ``log_softmax`` of the two full ``[B, T, V]`` tensors, float32."""
    lp = torch.log_softmax(logits_img.float() / temperature, dim=-1)
    lq = torch.log_softmax(logits_txt.float() / temperature, dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1) * mask


def naive_token_kl_from_hidden(h_img, h_txt, lm_head, mask, temperature: float = 1.0):
    """:func:`naive_token_kl` on the full ``[B, T, V]`` logits of both hidden states."""
    return naive_token_kl(lm_head(h_img), lm_head(h_txt), mask, temperature)


def naive_bytes(tokens: int, vocab: int) -> int:
    """Rough peak of :func:`naive_token_kl_from_hidden`: seven ``tokens x V`` float32 tensors (logits, log-softmax,
    exp, difference, product)."""
    return 7 * tokens * vocab * 4


def one_chunk_bound(tokens: int, chunk_size: int, vocab: int) -> int:
    """The documented bound of the chunked KL: three ``min(chunk, tokens) x V`` float32 buffers."""
    return 3 * min(chunk_size, tokens) * vocab * 4


def _scaling_candidates(lm_head, h1, h2, mask, targets, chunk_size: int, naive: bool, logits: bool) -> dict:
    """The KL variants compared at one length, as zero-argument callables."""
    fns = {
        "chunked": lambda: token_kl_from_hidden(h1, h2, lm_head, mask, chunk_size, 1.0, targets),
    }
    if naive:
        fns["naive"] = lambda: naive_token_kl_from_hidden(h1, h2, lm_head, mask)
    if logits:
        la, lb = lm_head(h1).float(), lm_head(h2).float()
        fns["logits_chunked"] = lambda: token_kl(la, lb, mask, chunk_size)
        fns["logits_naive"] = lambda: naive_token_kl(la, lb, mask)
    return fns


def _random_states(lm_head, batch: int, length: int, device: str, gen: torch.Generator) -> tuple:
    """Image / text-only hidden states whose logits spread like a trained model's (std ~2), all tokens valid."""
    weight = lm_head.weight
    vocab, hidden = weight.shape
    scale = 2.0 / (weight.detach().float().std().item() * hidden**0.5)
    h1 = torch.randn(batch, length, hidden, generator=gen) * scale
    h2 = h1 + 0.3 * scale * torch.randn(batch, length, hidden, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    targets = torch.randint(0, vocab, (batch, length), generator=gen).to(device)
    return h1.to(device, weight.dtype), h2.to(device, weight.dtype), mask, targets


def dependency_scaling(
    lm_head: torch.nn.Module,
    batch: int,
    lengths: list[int],
    chunk_size: int,
    device: str,
    repeats: int = 3,
    chunk_sizes: list[int] | None = None,
    naive_max_bytes: int = 6 << 30,
    log: Callable[[str], None] = print,
    kl_from_logits: bool = True,
) -> dict:
    """Chunked vs naive KL (from hidden states through ``lm_head``, and from logits) at each completion length.

    The naive variants are skipped where :func:`naive_bytes` (plus the two logits inputs, for the logits variants)
    exceeds ``naive_max_bytes``. At the longest length the chunk size is swept over ``chunk_sizes``.
    """
    vocab, hidden = lm_head.weight.shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    with torch.no_grad(), StallMeter() as stall:
        for length in lengths:
            tokens = batch * length
            h1, h2, mask, targets = _random_states(lm_head, batch, length, device, gen)
            naive = naive_bytes(tokens, vocab) <= naive_max_bytes
            logits = kl_from_logits and naive_bytes(tokens, vocab) + 2 * tokens * vocab * 4 <= naive_max_bytes
            fns = _scaling_candidates(lm_head, h1, h2, mask, targets, chunk_size, naive, logits)
            times = interleaved_times(fns, repeats, device)
            row = {
                "length": length,
                "tokens": tokens,
                "chunks": math.ceil(tokens / chunk_size),
                "one_chunk_bound_bytes": one_chunk_bound(tokens, chunk_size, vocab),
                "naive_estimate_bytes": naive_bytes(tokens, vocab),
            }
            for name, fn in fns.items():
                row[name] = {"s": median(times[name]), "s_all": times[name], "peak_extra_bytes": peak_extra(fn, device)}
            if naive:
                diff = fns["chunked"]()[0] - fns["naive"]()
                row["max_abs_diff_vs_naive"] = diff.abs().max().item()
            rows.append(row)
            msg = f"  length {length} ({tokens} tokens): chunked {row['chunked']['s']:.3f}s"
            msg += f" {row['chunked']['peak_extra_bytes'] / 2**20:.0f} MiB"
            if naive:
                msg += f", naive {row['naive']['s']:.3f}s {row['naive']['peak_extra_bytes'] / 2**20:.0f} MiB"
            log(msg)
            del fns
        sweep = _chunk_sweep(lm_head, batch, lengths[-1], chunk_sizes or [], device, repeats, gen)
    return {
        "vocab": vocab,
        "hidden": hidden,
        "dtype": str(lm_head.weight.dtype).removeprefix("torch."),
        "batch": batch,
        "chunk_size": chunk_size,
        "rows": rows,
        "chunk_sweep": {"length": lengths[-1], "tokens": batch * lengths[-1], "rows": sweep},
        "cpu_stall_fraction": stall.fraction,
    }


def _chunk_sweep(lm_head, batch: int, length: int, sizes: list[int], device: str, repeats: int, gen) -> list[dict]:
    """Time and peak memory of the chunked KL at one length for each chunk size (no larger than the token count)."""
    h1, h2, mask, targets = _random_states(lm_head, batch, length, device, gen)
    sizes = [c for c in sizes if c <= batch * length]
    fns = {c: functools.partial(token_kl_from_hidden, h1, h2, lm_head, mask, c, 1.0, targets) for c in sizes}
    times = interleaved_times(fns, repeats, device) if fns else {}
    return [
        {"chunk_size": c, "s": median(times[c]), "s_all": times[c], "peak_extra_bytes": peak_extra(fns[c], device)}
        for c in sizes
    ]


def default_lengths(chunk_size: int, batch: int) -> list[int]:
    """Completion lengths whose ``batch x length`` tokens are 1/4, 1/2, 1, 2 and 4 chunks."""
    return sorted({max(1, int(f * chunk_size) // batch) for f in (0.25, 0.5, 1, 2, 4)})


# ----------------------------------------------------------------------------------------------- all of it
@dataclass
class BenchOptions:
    """Everything ``pgpo bench`` takes."""

    model: str = "tiny-qwen"
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads; None leaves PyTorch's default
    setup: StepSetup = field(default_factory=StepSetup)
    repeats: int = 5  # rounds for (b) and (c)
    dep_batch: int = 4
    dep_lengths: list[int] | None = None  # None: default_lengths(chunk, dep_batch)
    chunk_sweep: list[int] = field(default_factory=lambda: [64, 256, 1024])
    naive_max_bytes: int = 6 << 30
    interleave: bool | None = None  # None: on the CPU yes, on CUDA no
    configs: tuple[str, ...] = ("aligned", "aligned_own", "shared")  # CONFIGS of (a) to run; () skips (a) and (c)
    memory_when_timed: bool | None = None  # None: on CUDA only (the CPU profiler would slow the timed steps)
    kl_from_logits: bool = True  # (b) also times token_kl on precomputed logits
    run_dependency: bool = True


def _derive_parts(parts: dict, measured: dict) -> dict:
    """Shares of PGPO's extra step time, and the step-time ratios the parts predict for each measured configuration.

    PGPO's extra work per generation batch: the floor (text-only batch and forward, KL, shaping) when ``p_image``
    comes from a forward that runs anyway (the training forward, or TRL's old-log-prob pass, which PGPO's own pass
    then replaces: its cost minus TRL's); plus its own image-conditioned forward otherwise.
    """
    s = {name: p["s"] for name, p in parts["parts"].items()}
    floor = s["text_only_batch"] + s["text_forward"] + s["kl"] + s["shaping_and_metrics"]
    own = s["text_only_batch"] + s["compute_visual_dependency"] + s["shaping_and_metrics"]
    derived = {
        "text_over_image_forward": s["text_forward"] / s["image_forward"] if s["image_forward"] else math.nan,
        "share_of_parts_extra": {name: v / own if own > 0 else math.nan for name, v in s.items()},
        "floor_extra_s": floor,
        "parts_extra_own_pass_s": own,
        "parts_extra_shared_s": own - s["trl_old_logps_forward"],
    }
    for name, r in measured.items():
        grpo = r["grpo"]["step_s"]
        if r["pgpo_shares_trl_old_logps_pass"]:
            extra = derived["parts_extra_shared_s"]
        else:
            extra = floor if r.get("pgpo_scores_in_training_forward") else own
        derived[f"predicted_time_ratio_{name}"] = 1 + extra / grpo
        delta = derived[f"measured_extra_{name}_s"] = r["pgpo_minus_grpo_step_s"]
        if name == next(iter(measured)):  # the configuration whose generation batch the parts were measured on
            derived["floor_time_ratio"] = 1 + floor / grpo
            derived["share_of_measured_extra"] = {n: v / delta if delta > 0 else math.nan for n, v in s.items()}
    return derived


def run_bench(
    options: BenchOptions,
    log: Callable[[str], None] = print,
    source: ModelSource | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """Runs (a), (b), (c) on one model and returns every measurement (see the module docstring).

    ``source`` overrides ``options.model`` (e.g. a model already built by the caller); ``checkpoint(result)`` is called
    with the partial result after each section (e.g. to save it).
    """
    checkpoint = checkpoint or (lambda result: None)
    device, setup = options.device, options.setup
    if options.threads:
        torch.set_num_threads(options.threads)
    run_stall = StallMeter().__enter__()
    interleave = options.interleave if options.interleave is not None else not device.startswith("cuda")
    source = source or resolve_model(options.model, device, setup.seed)
    result: dict = {
        "meta": {
            "model": source.name,
            "model_note": source.note,
            "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU x{os.cpu_count()}",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "memory_method": memory_method(device),
            "interleaved": interleave,
            "setup": asdict(setup),
            "load_average_start": load_average(),
        }
    }
    parts: dict = {}

    def on_pgpo_ready(trainer):
        log("(c) parts of PGPO's extra work, on the PGPO trainer's last generation batch")
        parts.update(dependency_parts(trainer, device, options.repeats))

    unknown = [name for name in options.configs if name not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    for i, name in enumerate(options.configs):
        spg, pgpo_options = CONFIGS[name]
        spg = spg or setup.shared_steps_per_generation
        log(
            f"(a) GRPO vs PGPO, {name} (steps_per_generation={spg}{', ' if pgpo_options else ''}"
            + ", ".join(f"{k}={v}" for k, v in pgpo_options.items())
            + ")"
        )
        ready = on_pgpo_ready if i == 0 else None  # (c) on the first configuration's generation batch
        result[name] = compare_config(
            source,
            setup,
            device,
            spg,
            interleave,
            ready,
            log,
            memory_when_timed=options.memory_when_timed,
            pgpo_options=pgpo_options,
        )
        if parts:
            result["parts"] = parts
            measured = {n: result[n] for n in options.configs if n in result}
            result["parts"]["derived"] = _derive_parts(parts, measured)
            result["parts"]["configuration"] = options.configs[0]
        checkpoint(result)
    if options.run_dependency:
        model, _ = source.load()
        head = model.get_output_embeddings().to(device)
        result["meta"]["parameters"] = sum(p.numel() for p in model.parameters())
        del model
        lengths = options.dep_lengths or default_lengths(setup.chunk_size, options.dep_batch)
        log(f"(b) the KL alone: chunk {setup.chunk_size} vs naive, batch {options.dep_batch}, lengths {lengths}")
        result["dependency"] = dependency_scaling(
            head,
            options.dep_batch,
            lengths,
            setup.chunk_size,
            device,
            options.repeats,
            options.chunk_sweep,
            options.naive_max_bytes,
            log,
            kl_from_logits=options.kl_from_logits,
        )
    run_stall.__exit__(None, None, None)
    meta = result["meta"]
    meta["load_average_end"], meta["wall_s"], meta["cpu_stall_fraction"] = (
        load_average(),
        run_stall.wall,
        run_stall.fraction,
    )
    return result


if __name__ == "__main__":  # python -m pgpo.bench == pgpo bench
    import sys

    from pgpo.commands.bench import main

    sys.exit(main(sys.argv[1:]))
