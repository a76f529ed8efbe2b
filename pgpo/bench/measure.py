"""How ``pgpo bench`` measures: wall time, peak memory, and a "stall" meter that says how much of a measurement other
processes took from it. Public APIs only (``torch.profiler``, ``torch.cuda``, Linux ``/proc``).

* Time: ``time.perf_counter`` around a block, CUDA synchronised at both ends.
* Peak memory (:class:`PeakMemory`): the peak of the bytes allocated *above* the level at the start of a block. On
  CUDA ``torch.cuda.max_memory_allocated`` (reset at entry); on the CPU the PyTorch profiler's allocation events
  (``profile_memory=True``), exported as a Chrome trace (``export_chrome_trace``: each ``[memory]`` event carries its
  signed ``Bytes``) and replayed in time order. The CPU profiler only records the thread that started it and slows
  the block down, so it is used in an untimed block of its own.
* Stall (:class:`StallMeter`): the seconds this process's threads spent runnable but waiting for a CPU (the second
  field of ``/proc/self/task/*/schedstat``) over the block's wall time. Other processes make it grow, the measured
  work does not; above :data:`QUIET_STALL` a timing is not to be trusted on its own.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import torch

QUIET_STALL = 0.10  # a block is "quiet" when this process waited for a CPU less than 10% of its wall time
MiB = 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def memory_method(device: str) -> str:
    """How :class:`PeakMemory` measures on ``device`` (printed with every table)."""
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated, reset per block"
    return "torch.profiler allocation events (profile_memory=True, Chrome trace) replayed in time order"


def chrome_trace_peak(path: str) -> int:
    """Peak of the running sum of the ``[memory]`` events (allocations positive, frees negative) of a Chrome trace
    written by ``torch.profiler.profile.export_chrome_trace``, in bytes. Frees of blocks allocated before the
    profiler started are not in the trace, so the result is the peak above the level at the start."""
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    deltas = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    live = peak = 0
    for _, size in deltas:
        live += size
        peak = max(peak, live)
    return peak


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_extra`` (bytes above the level at entry) and, on CUDA,
    ``m.peak_total`` (``max_memory_allocated``: everything live on the device)."""

    def __init__(self, device: str):
        self.device = device
        self.peak_extra = 0
        self.peak_total: int | None = None
        self.profiler = None
        self.start = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.profiler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_total = torch.cuda.max_memory_allocated()
            self.peak_extra = self.peak_total - self.start
            return
        self.profiler.__exit__(*exc)
        if exc[0] is None:
            with tempfile.TemporaryDirectory(prefix="pgpo-bench-trace-") as folder:
                path = os.path.join(folder, "trace.json")
                self.profiler.export_chrome_trace(path)
                self.peak_extra = chrome_trace_peak(path)
        self.profiler = None


def peak_extra(fn: Callable[[], object], device: str) -> int:
    """Peak bytes ``fn()`` allocates above the level at its start (see :class:`PeakMemory`)."""
    with PeakMemory(device) as meter:
        fn()
    return meter.peak_extra


def resident_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages of modules (parameters, gradients, buffers) and optimizers (state)."""
    seen, total = set(), 0

    def add(t) -> None:
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
        elif obj is not None:
            for state in getattr(obj, "state", {}).values():
                for value in state.values() if isinstance(state, dict) else ():
                    add(value)
    return total


def schedstat_wait(path: str) -> int:
    """Nanoseconds runnable but waiting for a CPU, the second field of a ``schedstat`` file (0 if unreadable)."""
    try:
        with open(path) as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0  # not Linux, or a thread that just ended


class RetiredThreads:
    """The run-queue wait of this process's threads that have ended: their ``/proc/self/task`` entries are gone, so
    each thread that ends (a trainer's, :mod:`pgpo.bench.step`) adds its own here first."""

    wait_ns = 0
    lock = threading.Lock()

    @classmethod
    def retire_current_thread(cls) -> None:
        wait = schedstat_wait("/proc/thread-self/schedstat")
        with cls.lock:
            cls.wait_ns += wait


def run_queue_wait_seconds() -> float | None:
    """Seconds this process's threads (live and ended) have been runnable but waiting for a CPU (``None`` off
    Linux)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    live = sum(schedstat_wait(f"/proc/self/task/{task}/schedstat") for task in tasks)
    return (live + RetiredThreads.wait_ns) / 1e9


class StallMeter:
    """``with StallMeter() as m: ...`` then ``m.fraction`` (run-queue wait / wall time, ``None`` off Linux) and
    ``m.wall`` (seconds)."""

    def __init__(self):
        self.fraction: float | None = None
        self.wall = 0.0
        self.wait0: float | None = None
        self.t0 = 0.0

    def __enter__(self) -> StallMeter:
        self.wait0, self.t0 = run_queue_wait_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wait, self.wall = run_queue_wait_seconds(), time.perf_counter() - self.t0
        if wait is not None and self.wait0 is not None and self.wall > 0:
            self.fraction = (wait - self.wait0) / self.wall


def rotation(names: list, r: int) -> list:
    """Round ``r``'s order: ``names`` rotated by ``r``, so every candidate takes every position equally often."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict:
    """Each function called ``repeats`` times, round by round (the order rotated every round): ``{"wall": {name:
    [s, ...]}, "cpu": {name: [process CPU s, ...]}, "stall": [fraction per round]}``."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    stalls: list[float | None] = []
    for r in range(repeats):
        with StallMeter() as stall:
            for name in rotation(list(fns), r):
                sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                fns[name]()
                sync(device)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        stalls.append(stall.fraction)
    return {"wall": wall, "cpu": cpu, "stall": stalls}


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> tuple[dict[str, dict], float]:
    """:func:`interleaved_times`, then per function its median wall and CPU time and its peak extra memory (measured
    in one more, untimed, call); and the median stall of the rounds."""
    t = interleaved_times(fns, repeats, device)
    out = {
        name: {
            "s": median(t["wall"][name]),
            "cpu_s": median(t["cpu"][name]),
            "s_all": t["wall"][name],
            "peak_extra_bytes": peak_extra(fn, device),
        }
        for name, fn in fns.items()
    }
    return out, median(t["stall"])


def median(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def paired(a: list[float], b: list[float]) -> dict:
    """``a / b`` round by round (the two measured in the same round): median, range, and the ratio of the medians."""
    ratios = [x / y for x, y in zip(a, b) if y > 0]
    return {
        "paired_median": median(ratios),
        "paired_min": min(ratios) if ratios else math.nan,
        "paired_max": max(ratios) if ratios else math.nan,
        "of_medians": median(a) / median(b) if b else math.nan,
        "rounds": len(ratios),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(device: str) -> dict:
    """What the numbers were measured on."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU x{os.cpu_count()}"
    return {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "memory_method": memory_method(device),
        "load_average_start": load_average(),
    }
