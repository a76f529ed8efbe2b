"""The tables of a :func:`pgpo.bench.run_bench` result, as Markdown and as rich tables, and the headline lines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pgpo.bench import TARGET_MEMORY_RATIO, TARGET_TIME_RATIO
from pgpo.bench.measure import QUIET_STALL, MiB, median
from pgpo.bench.step import LABELS


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""


def _s(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:,.1f}"


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _x(x, target: float | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    text = f"{x:.3f}x"
    if target is not None:
        text += " (ok)" if x <= target else " (over)"
    return text


def _range(p: dict) -> str:
    if math.isnan(p["paired_min"]):
        return ""
    return f"[{p['paired_min']:.3f}-{p['paired_max']:.3f}]"


def headline(result: dict) -> list[str]:
    """``PGPO/GRPO step time ratio: X`` and ``PGPO/DAPO step time ratio: X`` of the default configuration (the median
    of the per-round paired wall-time ratios); on the CPU also the same for CPU time (robust to a shared machine).
    Nothing when the default configuration was not measured."""
    default = (result.get("step") or {}).get("default")
    if not default:
        return []
    others = [o for o in ("grpo", "dapo") if o in default["ratios"]]
    lines = [f"PGPO/{LABELS[o]} step time ratio: {default['ratios'][o]['time']['paired_median']:.3f}" for o in others]
    if not result["meta"]["device"].startswith("cuda"):
        lines += [
            f"PGPO/{LABELS[o]} step CPU-time ratio: {default['ratios'][o]['cpu']['paired_median']:.3f}" for o in others
        ]
    return lines


def step_tables(result: dict) -> list[Table]:
    groups = result.get("step") or {}
    if not groups:
        return []
    per = Table(
        "Training step, per candidate",
        [
            "configuration",
            "candidate",
            "log pi_img from",
            "step (median)",
            "CPU / step",
            "TRL step_time",
            "stall",
            "step peak MiB",
            "resident MiB",
            "total MiB",
        ],
    )
    ratios = Table(
        "PGPO's ratios (same model, data, seed; paired per round)",
        [
            "configuration",
            "ratio",
            "step time: paired median [range]",
            "of medians",
            "quiet rounds",
            "CPU time: paired median [range]",
            "TRL step_time",
            "memory total",
            "memory step-only",
        ],
    )
    for name, g in groups.items():
        for cand, c in g["candidates"].items():
            per.rows.append(
                [
                    name,
                    cand,
                    c["dependency_source"],
                    _s(c["step_s"]),
                    _s(c["cpu_s"]),
                    _s(c["trl_step_time_s"]),
                    _pct(median(c["stall_all"])),
                    _mib(c["peak_extra_bytes"]),
                    _mib(c["resident_bytes"]),
                    _mib(c["peak_total_bytes"]),
                ]
            )
        for other, r in g["ratios"].items():
            t, q = r["time"], r["time_quiet"]
            targets = (TARGET_TIME_RATIO, TARGET_MEMORY_RATIO) if other == "dapo" else (None, None)
            ranged = f"{_x(t['paired_median'], targets[0])} {_range(t)}"
            cpu = f"{_x(r['cpu']['paired_median'], targets[0])} {_range(r['cpu'])}"
            per_quiet = f"{r['quiet_rounds']}/{t['rounds']}" + (f": {_x(q['paired_median'])}" if q["rounds"] else "")
            ratios.rows.append(
                [
                    name,
                    f"PGPO/{LABELS[other]}",
                    ranged,
                    _x(t["of_medians"]),
                    per_quiet,
                    cpu,
                    _x(r["trl_step_time"]["paired_median"]),
                    _x(r["memory_total"], targets[1]),
                    _x(r["memory_step"]),
                ]
            )
    per.caption = (
        "step = wall time from on_step_begin to on_step_end (generation, scoring, forward, backward, optimizer step); "
        "CPU = the process's CPU time over the same span (only this trainer's thread runs); TRL step_time = TRL's logged training_step time (no optimizer step); stall = the share of the step this "
        "process waited for a CPU; step peak = peak allocated above the step's start; total = resident (parameters, "
        "gradients, optimizer state) + step peak."
    )
    ratios.caption = (
        f"targets for PGPO/DAPO: time <= {TARGET_TIME_RATIO}x, memory <= {TARGET_MEMORY_RATIO}x (marked ok/over). "
        f"A quiet round: every candidate waited for a CPU < {QUIET_STALL:.0%} of its turn; the ratio after the "
        "colon is the paired median over quiet rounds only."
    )
    return [per, ratios]


def dependency_table(result: dict) -> list[Table]:
    dep = result.get("dependency")
    if not dep:
        return []
    names = ("k3", "k3_own_pass", "kl", "kl_naive")
    table = Table(
        f"Visual dependency alone: batch {dep['batch']}, chunk {dep['chunk_size']}, V = {dep['vocab']:,}, "
        f"{dep['dtype']} (time, peak extra MiB)",
        ["length", "tokens", *names, "max |kl - naive|", "stall"],
    )
    for r in dep["rows"]:
        cells = []
        for n in names:
            c = r.get(n)
            cells.append(
                f"{_s(c['s'])} ({_mib(c['peak_extra_bytes'])})"
                if c
                else f"skipped (~{r['naive_estimate_bytes'] / 2**30:.1f} GiB)"
            )
        diff = r.get("kl_vs_naive_max_abs_diff")
        table.rows.append(
            [str(r["length"]), str(r["tokens"]), *cells, "-" if diff is None else f"{diff:.1e}", _pct(r["stall"])]
        )
    table.caption = (
        "k3 = score_batch(..., BlindPass('k3'), image_logps) as in the default configuration (blind batch, blind "
        "forward, k3); k3_own_pass adds the image forward; kl = the exact chunked KL (both forwards); kl_naive = full "
        "[B, T, V] logits of both forwards, float32 log-softmax."
    )
    return [table]


def parts_table(result: dict) -> list[Table]:
    parts = result.get("parts")
    if not parts:
        return []
    labels = {
        "blind_batch": "build the blind batch (positions kept)",
        "blind_forward_trl": "blind forward, TRL's fused LM head (the trainer's kernel)",
        "k3": "k3 on [B, T]",
        "shaping": "PGPO shaping (Eqs. 4-8)",
        "blind_forward": "alternative: blind forward, pgpo's sampled_token_logps",
        "image_forward_trl": "for scale: image forward, TRL's fused LM head",
        "image_forward": "for scale: image forward, pgpo's sampled_token_logps",
    }
    dapo = None
    step = (result.get("step") or {}).get("default")
    if step:
        dapo = step["candidates"]["dapo"]["cpu_s"]
    table = Table(
        f"PGPO's extra work per micro-batch, no grad ({parts['rows']} rows x {parts['completion_length']} tokens; "
        f"sequence {parts['image_sequence']} with {parts['image_tokens_per_row']} image tokens, blind "
        f"{parts['blind_sequence']})",
        ["part", "time", "CPU", "peak extra MiB", "CPU share of a DAPO step"],
    )
    for name, label in labels.items():
        p = parts["parts"].get(name)
        if p is None:  # a result saved before the part existed
            continue
        share = _pct(p["cpu_s"] / dapo) if dapo else "-"
        table.rows.append([label, _s(p["s"]), _s(p["cpu_s"]), _mib(p["peak_extra_bytes"]), share])
    extra = parts["extra_cpu_s"]
    table.rows.append(
        ["PGPO's extra in the trainer (first four rows)", _s(parts["extra_s"]), _s(extra), "",
         _pct(extra / dapo) if dapo else "-"]
    )  # fmt: skip
    caption = f"blind / image forward CPU time: pgpo's kernel {parts['blind_over_image_forward']:.2f}"
    if "blind_over_image_forward_trl" in parts:
        caption += f", TRL's {parts['blind_over_image_forward_trl']:.2f}"
    caption += (
        f"; stall {_pct(parts['stall'])}. Off Triton devices TRL's fused head scores every position (prompt "
        "included) and the entropy too; pgpo's scores the completion positions only."
    )
    if "predicted_time_ratio" in parts:
        caption += (
            f" PGPO/DAPO step predicted as 1 + extra / DAPO step: CPU {_x(parts['predicted_cpu_ratio'])} "
            f"(measured {_x(parts['measured_cpu_ratio'])}), wall {_x(parts['predicted_time_ratio'])} "
            f"(measured {_x(parts['measured_time_ratio'])})."
        )
    table.caption = caption
    return [table]


def tables(result: dict) -> list[Table]:
    return step_tables(result) + dependency_table(result) + parts_table(result)


def header(result: dict) -> str:
    m = result["meta"]
    cfg = m["config"]
    text = (
        f"pgpo bench: model {m['model']} ({m['model_note']}), {m['device_name']}, torch {m['torch']} with "
        f"{m['torch_threads']} thread(s); batch {cfg['batch']} ({cfg['num_generations']} per prompt), completions of "
        f"{cfg['completion_length']} tokens, images {m['image_size']} px; "
        f"{'interleaved' if m['interleaved'] else 'sequential'} turns, {cfg['warmup']} warm-up + {cfg['steps']} timed. "
        f"Memory: {m['memory_method']}. Load average {m['load_average_start']} -> {m.get('load_average_end')}"
    )
    if m.get("wall_s") is not None:
        text += f"; the run took {m['wall_s']:.0f} s"
    if m.get("stall") is not None:
        text += f" and waited for a CPU {m['stall']:.0%} of it"
    return text + "."


def to_markdown(result: dict) -> str:
    out = [header(result), ""]
    for t in tables(result):
        out += [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
        out += ["| " + " | ".join(row) + " |" for row in t.rows]
        out += ["", t.caption, ""] if t.caption else [""]
    out += headline(result)
    return "\n".join(out) + "\n"


def print_report(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
    console.print(header(result), highlight=False)
    for t in tables(result):
        rich = RichTable(title=t.title, caption=t.caption or None, caption_justify="left")
        for i, col in enumerate(t.columns):
            rich.add_column(col, justify="left" if i < 2 else "right")
        for row in t.rows:
            rich.add_row(*row)
        console.print(rich)
    for line in headline(result):
        console.print(line, highlight=False)
