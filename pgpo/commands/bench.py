"""``pgpo bench``: what PGPO costs over GRPO (step time and peak memory ratios), in one process. See docs/bench.md.

Example::

    pgpo bench --model tiny-qwen --batch 8 --completion-length 32 --steps 4 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

MiB = 2**20


def build_parser() -> argparse.ArgumentParser:
    from pgpo.dependency import DEFAULT_CHUNK_SIZE

    p = argparse.ArgumentParser(prog="pgpo bench", description="Measure PGPO's time and memory cost over GRPO.")
    p.add_argument(
        "--model",
        default="tiny-qwen",
        help="tiny-qwen (default) | demo-vlm | qwen25vl-3b (random-init 3B-sized config, GPU) | a local model folder",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument("--batch", type=int, default=8, help="completions per optimizer step (default 8)")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt (default 4)")
    p.add_argument("--completion-length", type=int, default=32, help="tokens per completion, exact (default 32)")
    p.add_argument("--steps", type=int, default=4, help="timed generation cycles per configuration (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generation cycles before them (default 1)")
    p.add_argument(
        "--shared-steps-per-generation",
        type=int,
        default=2,
        help="steps_per_generation of the configuration where PGPO shares TRL's old-log-prob pass (default 2)",
    )
    p.add_argument("--image-size", type=int, default=112, help="pixels per side of the prompt images (default 112)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="dependency_chunk_size (default: PGPO's)")
    p.add_argument("--repeats", type=int, default=5, help="rounds for the KL and the parts timings (default 5)")
    p.add_argument("--dep-batch", type=int, default=4, help="batch of the KL-alone measurement (default 4)")
    p.add_argument(
        "--dep-lengths",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma-separated completion lengths of the KL-alone measurement (default: 1/4 .. 4 chunks of tokens)",
    )
    p.add_argument(
        "--chunk-sweep",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[64, 256, 1024],
        help="chunk sizes tried at the longest length (default 64,256,1024)",
    )
    p.add_argument("--naive-max-gib", type=float, default=6.0, help="skip the naive KL above this estimate (GiB)")
    p.add_argument(
        "--sequential", action="store_true", help="run GRPO then PGPO instead of interleaving (CUDA default)"
    )
    p.add_argument(
        "--configs",
        type=lambda s: tuple(x for x in s.split(",") if x),
        default=("aligned", "aligned_own", "shared"),
        help="step configurations to compare: aligned (p_image from the training forward), aligned_own (PGPO's own "
        "image pass), shared (TRL's old-log-prob pass) (default: all three)",
    )
    p.add_argument("--skip-steps", action="store_true", help="only the KL-alone measurement (b)")
    p.add_argument("--skip-dependency", action="store_true", help="skip the KL-alone measurement (b)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write every measurement to this JSON file (after each section too)")
    p.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        default=None,
        help="print the tables of earlier --out files instead of measuring (later files fill missing sections)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def options_from_args(args):
    from pgpo.bench import BenchOptions, StepSetup

    setup = StepSetup(
        batch=args.batch,
        num_generations=args.num_generations,
        completion_length=args.completion_length,
        steps=args.steps,
        warmup=args.warmup,
        shared_steps_per_generation=args.shared_steps_per_generation,
        image_size=args.image_size,
        chunk_size=args.chunk_size,
        seed=args.seed,
    )
    return BenchOptions(
        model=args.model,
        device=args.device,
        threads=args.threads,
        setup=setup,
        repeats=args.repeats,
        dep_batch=args.dep_batch,
        dep_lengths=args.dep_lengths,
        chunk_sweep=args.chunk_sweep,
        naive_max_bytes=int(args.naive_max_gib * 2**30),
        interleave=False if args.sequential else None,
        configs=() if args.skip_steps else args.configs,
        run_dependency=not args.skip_dependency,
    )


# ----------------------------------------------------------------------------------------------- tables
def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:,.1f}"


def _s(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _pct(x) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def _ratio(x, target=None) -> str:
    if x is None or math.isnan(x):
        return "-"
    text = f"{x:.3f}x"
    if target is not None:
        text += " [green]ok[/]" if x <= target else " [red]over[/]"
    return text


def _config_label(r: dict, name: str) -> str:
    spg = r["steps_per_generation"]
    if r["pgpo_shares_trl_old_logps_pass"]:
        how = "shares TRL's pass"
    elif r.get("pgpo_scores_in_training_forward"):
        how = "training forward"
    else:
        how = "own image pass"
    return f"{name}, spg={spg} ({how})"


def _configs_in(result: dict) -> list[str]:
    from pgpo.bench import CONFIGS

    return [name for name in CONFIGS if result.get(name)]


def step_tables(result: dict):
    """(a) as two tables: step time, and peak memory."""
    from rich.table import Table

    from pgpo.bench import QUIET_STALL, TARGET_MEMORY_RATIO, TARGET_TIME_RATIO

    rows = [(name, result[name]) for name in _configs_in(result)]
    t = Table(title="(a) training step time: PGPO vs GRPO (same model, batch, completion length)")
    t.add_column("configuration", no_wrap=True)
    for col in ("GRPO median", "PGPO median", "ratio", "GRPO min", "PGPO min", "ratio of mins", "paired [range]"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("quiet rounds", justify="right", no_wrap=True)
    for name, r in rows:
        g, p = r["grpo"], r["pgpo"]
        paired = quiet = "-"
        if r["time_ratio_paired"] is not None:
            lo, hi = r["time_ratio_paired_range"]
            paired = f"{r['time_ratio_paired']:.3f}x [{lo:.2f}-{hi:.2f}]"
            if "quiet_rounds" in r:
                quiet = f"{_ratio(r['time_ratio_quiet'])} ({r['quiet_rounds']}/{r['rounds']})"
        t.add_row(
            _config_label(r, name),
            _s(g["step_s"]),
            _s(p["step_s"]),
            _ratio(r["time_ratio"], TARGET_TIME_RATIO),
            _s(g.get("step_s_min")),
            _s(p.get("step_s_min")),
            _ratio(r.get("time_ratio_min"), TARGET_TIME_RATIO),
            paired,
            quiet,
        )
    t.caption = (
        f"target <= {TARGET_TIME_RATIO}x. spg = steps_per_generation. paired = PGPO/GRPO of the same round (the two "
        f"take turns); quiet round: this process waited for a CPU < {QUIET_STALL:.0%} of both cycles "
        "(/proc/self/task/*/schedstat)."
    )
    m = Table(title="(a) peak memory of a training step: PGPO vs GRPO")
    m.add_column("configuration", no_wrap=True)
    for col in ("resident MiB", "GRPO step peak", "PGPO step peak", "GRPO total", "PGPO total", "ratio", "step-only"):
        m.add_column(col, justify="right", no_wrap=True)
    for name, r in rows:
        g, p = r["grpo"], r["pgpo"]
        m.add_row(
            _config_label(r, name),
            _mib(g["resident_bytes"]),
            _mib(g["peak_extra_bytes"]),
            _mib(p["peak_extra_bytes"]),
            _mib(g["peak_total_bytes"]),
            _mib(p["peak_total_bytes"]),
            _ratio(r["memory_ratio"], TARGET_MEMORY_RATIO),
            _ratio(r["memory_extra_ratio"]),
        )
    m.caption = (
        f"target <= {TARGET_MEMORY_RATIO}x of the total. MiB. Step peak = peak allocated during one generation cycle "
        "above its start; total = resident (parameters, gradients, optimizer state) + step peak."
    )
    return t, m


def parts_table(result: dict):
    from rich.table import Table

    parts = result.get("parts") or {}
    if "parts" not in parts:
        return None
    derived, shapes = parts.get("derived", {}), parts["shapes"]
    t = Table(title=f"(c) PGPO's extra work, per generation batch of the {parts.get('configuration', 'aligned')} step")
    for col in ("part", "time", "peak extra MiB", "share of the parts' extra", "share of measured PGPO-GRPO"):
        t.add_column(col, justify="left" if col == "part" else "right")
    shares = derived.get("share_of_measured_extra", {})
    part_shares = derived.get("share_of_parts_extra", {})
    labels = {
        "text_only_batch": "build the text-only batch",
        "image_forward": "image-conditioned forward (no grad)",
        "text_forward": "text-only forward (no grad)",
        "kl": "vocabulary KL (+ logps), chunked",
        "shaping_and_metrics": "PGPO shaping + dependency metrics",
        "compute_visual_dependency": "= compute_visual_dependency (both forwards + KL)",
        "trl_old_logps_forward": "TRL's own old-logp forward (GRPO, shared config)",
    }
    for name, label in labels.items():
        p = parts["parts"][name]
        t.add_row(label, _s(p["s"]), _mib(p["peak_extra_bytes"]), _pct(part_shares.get(name)), _pct(shares.get(name)))
    t.caption = (
        f"sequence length with image {shapes['image_batch_seq_len']} ({shapes['image_tokens_per_row']} image tokens), "
        f"text-only {shapes['text_batch_seq_len']}, completion {shapes['completion_len']}; "
        f"text/image forward = {derived.get('text_over_image_forward', math.nan):.2f}. "
        "Step-time ratio predicted from the parts: "
        + ", ".join(
            f"{name} {_ratio(derived[f'predicted_time_ratio_{name}'])}"
            for name in _configs_in(result)
            if f"predicted_time_ratio_{name}" in derived
        )
        + f"; floor (text-only forward + KL + shaping only) {_ratio(derived.get('floor_time_ratio'))}."
    )
    return t


def dependency_table(result: dict):
    from rich.table import Table

    dep = result.get("dependency")
    if not dep:
        return None
    t = Table(
        title=f"(b) visual dependency alone: chunked (chunk {dep['chunk_size']}) vs naive full logits, "
        f"batch {dep['batch']}, V={dep['vocab']:,}, H={dep['hidden']}, {dep['dtype']}"
    )
    cols = ("length", "tokens", "chunked", "naive", "chunked MiB", "bound MiB", "naive MiB")
    for col in cols + ("logits: chunked / naive", "logits MiB: chunked / naive"):
        t.add_column(col, justify="right")
    for r in dep["rows"]:
        naive = r.get("naive")
        lc, ln = r.get("logits_chunked"), r.get("logits_naive")
        skipped = f"skipped (~{r['naive_estimate_bytes'] / 2**30:.1f} GiB)"
        t.add_row(
            str(r["length"]),
            str(r["tokens"]),
            _s(r["chunked"]["s"]),
            _s(naive["s"]) if naive else skipped,
            _mib(r["chunked"]["peak_extra_bytes"]),
            _mib(r["one_chunk_bound_bytes"]),
            _mib(naive["peak_extra_bytes"]) if naive else "-",
            f"{_s(lc['s'])} / {_s(ln['s'])}" if lc else "-",
            f"{_mib(lc['peak_extra_bytes'])} / {_mib(ln['peak_extra_bytes'])}" if lc else "-",
        )
    t.caption = (
        "chunked = pgpo.dependency.token_kl_from_hidden (what PGPOTrainer runs); "
        "bound = 3 x min(chunk, tokens) x V float32; 'logits' = "
        "token_kl on precomputed [B,T,V] logits (not counted)."
    )
    sweep = dep["chunk_sweep"]
    s = Table(title=f"chunk size at length {sweep['length']} ({sweep['tokens']} tokens)")
    for col in ("chunk_size", "time", "peak MiB"):
        s.add_column(col, justify="right")
    for r in sweep["rows"]:
        s.add_row(str(r["chunk_size"]), _s(r["s"]), _mib(r["peak_extra_bytes"]))
    return t, s


def print_report(result: dict, console=None) -> None:
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    meta = result["meta"]
    stall, wall = meta.get("cpu_stall_fraction"), meta.get("wall_s")
    console.print(
        f"[bold]pgpo bench[/] model={meta['model']} ({meta['model_note']}), device={meta['device_name']}, "
        f"torch {meta['torch']} ({meta['torch_threads']} threads)\nmemory: {meta['memory_method']}; timing: "
        f"{'interleaved' if meta['interleaved'] else 'sequential'} runs; load average {meta['load_average_start']} -> "
        f"{meta.get('load_average_end', '?')}"
        + ("" if wall is None else f"; the run took {wall:.0f} s")
        + ("" if stall is None else f" and waited for a CPU {stall:.0%} of it (run-queue wait / wall time)")
    )
    if _configs_in(result):
        for table in step_tables(result):
            console.print(table)
    table = parts_table(result)
    if table is not None:
        console.print(table)
    tables = dependency_table(result)
    if tables is not None:
        for table in tables:
            console.print(table)


def merge_results(paths: list[str]) -> dict:
    """Sections of several ``--out`` files; the first file that has a section wins."""
    merged: dict = {}
    for path in paths:
        with open(path) as f:
            for key, value in json.load(f).items():
                merged.setdefault(key, value)
    return merged


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        print_report(merge_results(args.report))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pgpo.bench import ModelUnavailable, run_bench

    start = time.perf_counter()

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def save(result: dict) -> None:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1, default=str)

    try:
        result = run_bench(options_from_args(args), log=log, checkpoint=save)
    except ModelUnavailable as err:
        print(f"pgpo bench: skipped: {err}", file=sys.stderr)
        return 3
    save(result)
    print_report(result)
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
