"""Training steps of GRPO, DAPO and PGPO trainers on the same model, data and seed, taking turns.

Every candidate is a :class:`pgpo.trainer.PGPOTrainer` built from ``PGPOConfig()`` defaults plus one preset
(:data:`CANDIDATES`), on a fresh copy of the same model, the same prompts, the same reward and seed; every completion
is exactly ``completion_length`` tokens (``min_new_tokens``). Each trainer runs its own, unmodified
``Trainer.train()`` in a thread of its own; a :class:`TakeTurns` callback lets exactly one of them run at a time, one
*turn* (a generation cycle: ``steps_per_generation`` optimizer steps) per grant, and times it from ``on_step_begin``
to ``on_step_end`` (generation, scoring, forward, backward, clipping, optimizer step), in wall time and in process
CPU time (the other trainers' threads are blocked meanwhile, so it is this turn's: robust to waiting for a CPU on a
shared machine). In the default interleaved
schedule the trainers of a comparison take turns round by round, the order rotated every round, so a change of load on
a shared machine hits all of them; ratios are paired per round. The sequential schedule (the CUDA default: a 3B model
three times over may not fit) runs one trainer after the other, freeing each before the next is built.

TRL's own ``step_time`` metric (the seconds of ``training_step``, generation included, the optimizer step not) is
collected from the logs too (``logging_steps=1``). Peak memory is measured in an extra, untimed, last turn
(:class:`pgpo.bench.measure.PeakMemory`; on CUDA also in every timed turn); a trainer's total is that peak plus the
bytes of its parameters, gradients and optimizer state at the start of the turn.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PrinterCallback, TrainerCallback

from pgpo.bench.inputs import char_sum_reward, prompt_dataset
from pgpo.bench.measure import (
    QUIET_STALL,
    PeakMemory,
    RetiredThreads,
    StallMeter,
    free_memory,
    median,
    paired,
    resident_bytes,
    rotation,
    sync,
)
from pgpo.config import ALGORITHM_PRESETS

# Candidate -> PGPOConfig overrides. DAPO is the base PGPO runs on: the same config with advantage_shaping="none".
CANDIDATES: dict[str, dict] = {
    "grpo": dict(ALGORITHM_PRESETS["grpo"]),
    "dapo": {**ALGORITHM_PRESETS["pgpo"], "advantage_shaping": "none"},
    "pgpo": dict(ALGORITHM_PRESETS["pgpo"]),
    "pgpo_own_pass": {**ALGORITHM_PRESETS["pgpo"], "dependency_from_training_forward": False},
}
LABELS = {"grpo": "GRPO", "dapo": "DAPO", "pgpo": "PGPO", "pgpo_own_pass": "PGPO"}


@dataclass(frozen=True)
class Group:
    """One comparison: candidates that take turns, in one configuration; the last one is PGPO."""

    candidates: tuple[str, ...]
    expected_source: str  # PGPOTrainer.dependency_source the PGPO candidate must report
    options: tuple[tuple[str, object], ...] = ()  # PGPOConfig options of every candidate of the group
    note: str = ""

    @property
    def subject(self) -> str:
        return self.candidates[-1]

    @property
    def steps_per_turn(self) -> int:
        return int(dict(self.options).get("steps_per_generation", 1))


GROUPS: dict[str, Group] = {
    "default": Group(("grpo", "dapo", "pgpo"), "training_forward", note="PGPOConfig() defaults, pgpo preset"),
    "trl_old_logps": Group(
        ("dapo", "pgpo"),
        "trl_old_logps",
        (("steps_per_generation", 2), ("gradient_accumulation_steps", 1)),
        "steps_per_generation=2, gradient_accumulation_steps=1",
    ),
    "own_pass": Group(("dapo", "pgpo_own_pass"), "own_pass", note="dependency_from_training_forward=False"),
}


class BenchAborted(RuntimeError):
    """Raised inside a trainer's thread when the bench stops early."""


class TakeTurns(TrainerCallback):
    """Runs one trainer's ``train()`` a turn at a time and measures each turn.

    The turn is held from one turn's ``on_step_begin`` to the next one's (so the logging and batch fetching between
    steps run inside it too); ``go`` grants a turn, ``done`` reports it over. ``timed`` and ``memory`` are the turn
    indices that are timed / whose peak memory is measured.
    """

    def __init__(self, steps_per_turn: int, seed: int, device: str, timed: range, memory: set[int]):
        self.steps_per_turn, self.seed, self.device = steps_per_turn, seed, device
        self.timed, self.memory = timed, memory
        self.ready, self.go, self.done = threading.Semaphore(0), threading.Semaphore(0), threading.Semaphore(0)
        self.abort = False
        self.turn = -1
        self.meter: PeakMemory | None = None
        self.stall: StallMeter | None = None
        self.t0 = self.cpu0 = 0.0
        self.seconds: list[float] = []  # wall time per timed turn
        self.cpu_seconds: list[float] = []  # process CPU time per timed turn (the other trainers' threads are idle)
        self.stalls: list[float | None] = []
        self.trl_step_time: dict[int, float] = {}  # optimizer step -> TRL's logged step_time
        self.peak_extra = 0
        self.resident = 0
        self.cuda_peak_total: int | None = None
        self.logged: set[str] = set()

    def wait_for_turn(self) -> None:
        self.go.acquire()
        if self.abort:
            raise BenchAborted("the bench stopped")

    def on_train_begin(self, args, state, control, **kwargs):
        self.ready.release()
        self.wait_for_turn()

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step % self.steps_per_turn:
            return
        self.turn = state.global_step // self.steps_per_turn
        if self.turn > 0:
            self.done.release()
            self.wait_for_turn()
        torch.manual_seed(self.seed + state.global_step)  # the same sampling noise for every candidate at a step
        if self.turn in self.memory:
            self.resident = resident_bytes(model, optimizer)
            self.meter = PeakMemory(self.device).__enter__()
        sync(self.device)
        self.stall = StallMeter().__enter__()
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps_per_turn:
            return
        sync(self.device)
        seconds, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        self.stall.__exit__(None, None, None)
        if self.turn in self.timed:
            self.seconds.append(seconds)
            self.cpu_seconds.append(cpu)
            self.stalls.append(self.stall.fraction)
        if self.meter is not None:
            self.meter.__exit__(None, None, None)
            self.peak_extra = max(self.peak_extra, self.meter.peak_extra)
            if self.meter.peak_total is not None:
                self.cuda_peak_total = max(self.cuda_peak_total or 0, self.meter.peak_total)
            self.meter = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.logged.update(logs)
        if "step_time" in logs:
            self.trl_step_time[state.global_step] = float(logs["step_time"])

    def on_train_end(self, args, state, control, **kwargs):
        self.done.release()

    def trl_turn_times(self) -> list[float]:
        """TRL's step_time summed over each timed turn's optimizer steps."""
        spt = self.steps_per_turn
        return [
            sum(self.trl_step_time.get(t * spt + i + 1, math.nan) for i in range(spt))
            for t in self.timed
            if t * spt + spt in self.trl_step_time
        ]


class Runner:
    """One trainer, its callback and its thread."""

    def __init__(self, name: str, trainer, callback: TakeTurns):
        self.name, self.trainer, self.callback = name, trainer, callback
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.main, name=f"pgpo-bench-{name}", daemon=True)

    def main(self) -> None:
        try:
            self.trainer.train()
        except BaseException as err:  # reported by turn() in the main thread
            self.error = err
            self.callback.ready.release()
            self.callback.done.release()
        finally:
            RetiredThreads.retire_current_thread()

    def start(self) -> None:
        self.thread.start()
        self.callback.ready.acquire()  # its set-up is done before anyone else's turn starts
        self.check()

    def turn(self) -> None:
        self.callback.go.release()
        self.callback.done.acquire()
        self.check()

    def check(self) -> None:
        if self.error is not None and not isinstance(self.error, BenchAborted):
            raise RuntimeError(f"the {self.name} trainer failed: {self.error!r}") from self.error

    def stop(self) -> None:
        self.callback.abort = True
        self.callback.go.release()
        self.thread.join(timeout=60)


def build_trainer(source, candidate: str, group: Group, cfg, max_steps: int, output_dir: str):
    """A PGPOTrainer of ``candidate`` in ``group``'s configuration, on a fresh copy of the model."""
    from pgpo.small_preset import small_preset
    from pgpo.trainer import PGPOTrainer

    model, processor = source.load()
    cuda = cfg.device.startswith("cuda")
    spg = group.steps_per_turn
    sizes = dict(  # over the recipe: the bench's sizes override the paper's, the group's options override both
        output_dir=output_dir,
        use_cpu=not cuda,
        bf16=cuda and model.dtype == torch.bfloat16,
        per_device_train_batch_size=cfg.batch,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.completion_length,
        generation_kwargs={"min_new_tokens": cfg.completion_length},
        max_steps=max_steps,
        learning_rate=cfg.learning_rate,
        dependency_chunk_size=cfg.chunk_size,
        overwrite_output_dir=True,  # the bench's own scratch folder (it holds the saved policy)
        seed=cfg.seed,
        log_completions=False,
    )
    args = small_preset(CANDIDATES[candidate], **{**sizes, **dict(group.options)})
    prompts = max(8, 2 * cfg.batch * spg // cfg.num_generations)
    if args.beta > 0:  # GRPO's KL term: TRL builds the reference model from the policy's path
        model.save_pretrained(os.path.join(output_dir, "policy"))
        model = os.path.join(output_dir, "policy")
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=char_sum_reward,
        args=args,
        train_dataset=prompt_dataset(prompts, cfg.image_size or source.image_size),
        processing_class=processor,
    )
    trainer.remove_callback(PrinterCallback)  # the logs are collected by TakeTurns, not printed
    return trainer


def summary(name: str, trainer, cb: TakeTurns) -> dict:
    spt = cb.steps_per_turn
    per_step = [s / spt for s in cb.seconds]
    cpu = [s / spt for s in cb.cpu_seconds]
    trl = [s / spt for s in cb.trl_turn_times()]
    return {
        "candidate": name,
        "dependency_source": trainer.dependency_source,
        "step_s": median(per_step),
        "step_s_all": per_step,
        "cpu_s": median(cpu),
        "cpu_s_all": cpu,
        "stall_all": cb.stalls,
        "trl_step_time_s": median(trl),
        "trl_step_time_all": trl,
        "peak_extra_bytes": cb.peak_extra,
        "resident_bytes": cb.resident,
        "peak_total_bytes": cb.resident + cb.peak_extra,
        "cuda_max_memory_allocated": cb.cuda_peak_total,
        "shaping_metrics_logged": any(k.startswith("shaping/") for k in cb.logged),
        "dependency_metrics_logged": any(k.startswith("dependency/") for k in cb.logged),
    }


def run_group(source, group_name: str, cfg, interleave: bool, log: Callable[[str], None] = print) -> dict:
    """The candidates of ``GROUPS[group_name]``: ``cfg.warmup`` untimed turns, ``cfg.steps`` timed ones, one untimed
    memory turn; returns each candidate's summary and PGPO's ratios to the others."""
    group = GROUPS[group_name]
    spt = group.steps_per_turn
    turns = cfg.warmup + cfg.steps + 1
    timed = range(cfg.warmup, cfg.warmup + cfg.steps)
    memory = {turns - 1} | (set(timed) if cfg.device.startswith("cuda") else set())
    folders: list[str] = []
    results: dict[str, dict] = {}

    def make(name: str) -> Runner:
        folders.append(tempfile.mkdtemp(prefix=f"pgpo-bench-{name}-"))
        trainer = build_trainer(source, name, group, cfg, turns * spt, folders[-1])
        callback = TakeTurns(spt, cfg.seed, cfg.device, timed, memory)
        trainer.add_callback(callback)
        return Runner(name, trainer, callback)

    def finish(run: Runner) -> None:
        run.thread.join()
        run.check()
        results[run.name] = summary(run.name, run.trainer, run.callback)

    def note(turn: int, runs: list[Runner]) -> str:
        parts = []
        for run in runs:
            cb = run.callback
            if turn in timed and cb.seconds:
                stall = cb.stalls[-1]
                parts.append(
                    f"{run.name} {cb.seconds[-1] / spt:.2f}s/step, CPU {cb.cpu_seconds[-1] / spt:.2f}s"
                    + ("" if stall is None else f", stall {stall:.0%}")
                )
        return ", ".join(parts)

    runs: list[Runner] = []
    try:
        if interleave:
            runs = [make(name) for name in group.candidates]
            for run in runs:
                run.start()
            for t in range(turns):
                order = rotation(runs, t)
                for run in order:
                    run.turn()
                kind = "timed" if t in timed else ("memory" if t == turns - 1 else "warm-up")
                log(f"  {group_name} turn {t + 1}/{turns} ({kind}) {note(t, order)}")
            for run in runs:
                finish(run)
        else:
            for name in group.candidates:
                run = make(name)
                runs = [run]
                run.start()
                for _ in range(turns):
                    run.turn()
                finish(run)
                log(f"  {group_name} {name}: " + ", ".join(f"{s / spt:.2f}s" for s in run.callback.seconds))
                runs = []
                del run
                free_memory(cfg.device)
    finally:
        for run in runs:
            if run.thread.is_alive():
                run.stop()
        del runs
        free_memory(cfg.device)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return compare(group_name, results, interleave)


def compare(group_name: str, results: dict[str, dict], interleave: bool) -> dict:
    """PGPO's ratios to every other candidate of the group: step time (paired per round when interleaved, and over
    the quiet rounds only), CPU time per step, TRL's step_time, peak memory (total and step-only)."""
    group = GROUPS[group_name]
    subject = results[group.subject]
    ratios = {}
    for other in group.candidates[:-1]:
        base = results[other]
        quiet = [
            i
            for i, (a, b) in enumerate(zip(subject["stall_all"], base["stall_all"]))
            if a is not None and b is not None and max(a, b) < QUIET_STALL
        ]
        time_ratio = paired(subject["step_s_all"], base["step_s_all"])
        if not interleave:  # the rounds were not measured side by side: only the ratio of the medians means anything
            time_ratio.update(paired_median=time_ratio["of_medians"], paired_min=math.nan, paired_max=math.nan)
        ratios[other] = {
            "time": time_ratio,
            "time_quiet": paired([subject["step_s_all"][i] for i in quiet], [base["step_s_all"][i] for i in quiet]),
            "cpu": paired(subject["cpu_s_all"], base["cpu_s_all"]),
            "trl_step_time": paired(subject["trl_step_time_all"], base["trl_step_time_all"]),
            "memory_total": subject["peak_total_bytes"] / max(base["peak_total_bytes"], 1),
            "memory_step": subject["peak_extra_bytes"] / max(base["peak_extra_bytes"], 1),
            "quiet_rounds": len(quiet),
        }
    return {
        "group": group_name,
        "note": group.note,
        "options": dict(group.options),
        "subject": group.subject,
        "expected_source": group.expected_source,
        "source_ok": subject["dependency_source"] == group.expected_source,
        "interleaved": interleave,
        "candidates": results,
        "ratios": ratios,
    }
