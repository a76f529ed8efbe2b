"""Metrics and the Table-1 row: avg@k per benchmark, bootstrap confidence intervals, ``summary.md`` / the console table.

avg@k (the paper's metric, PAPO-Eval's ``avg_mean_accuracy``) is the mean over questions of each question's mean
correctness over its k samples; with every question complete that is also the mean over all samples. "Avg." is the
mean of the eight Table 1 columns, shown only when all eight were run (otherwise the mean of the columns that were run
is printed on its own, labelled). The 95% interval is a percentile bootstrap over questions (the k samples of a
question stay together); for "Avg." every benchmark is resampled independently in each replicate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pgpo.eval.benchmarks import TABLE1_BENCHMARKS, get_spec
from pgpo.eval.config import TABLE1, paper_model_key


def per_question(samples: Sequence[Mapping[str, Any]], ids: Sequence[str], k: int, grader: str) -> dict[str, list]:
    """``{id: [correct of sample 0..k-1]}`` for the questions in ``ids`` that have all k samples graded."""
    wanted = set(ids)
    found: dict[str, dict[int, bool]] = {}
    key = f"{grader}_correct"
    for s in samples:
        sid, idx = str(s["id"]), int(s["sample_index"])
        if sid in wanted and idx < k and key in s:
            found.setdefault(sid, {})[idx] = bool(s[key])
    return {sid: [v[i] for i in range(k)] for sid, v in found.items() if len(v) == k}


def bootstrap_means(values: Sequence[float], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` means of ``values`` resampled with replacement (empty input: an empty array)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or n_resamples <= 0:
        return np.zeros(0)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    return arr[idx].mean(axis=1)


def _interval(means: np.ndarray) -> list[float] | None:
    if means.size == 0:
        return None
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def benchmark_metrics(
    question_scores: Mapping[str, Sequence[bool]],
    samples: Sequence[Mapping[str, Any]],
    n_questions: int,
    k: int,
) -> dict[str, Any]:
    """avg@k, pass@k, counts and truncations of one benchmark under one grader (no interval; see :func:`summarize`)."""
    means = [sum(v) / k for v in question_scores.values()]
    done = set(question_scores)
    counted = [s for s in samples if str(s["id"]) in done and int(s["sample_index"]) < k]
    return {
        "n": len(means),
        "k": k,
        "samples": len(means) * k,
        "correct": int(sum(sum(v) for v in question_scores.values())),
        "accuracy": float(sum(means) / len(means)) if means else 0.0,
        "pass_at_k": float(sum(any(v) for v in question_scores.values()) / len(means)) if means else 0.0,
        "truncated": sum(1 for s in counted if s.get("truncated")),
        "missing": n_questions - len(means),
    }


def summarize(
    per_benchmark: Mapping[str, Mapping[str, Sequence[bool]]],
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    n_questions: Mapping[str, int],
    k: int,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of every benchmark plus the Table-1 row for one grader.

    ``per_benchmark[name]`` is :func:`per_question`'s output. Deterministic given ``seed``: benchmark ``j`` (in the
    given order) uses ``numpy.random.default_rng([seed, j])`` for its resamples.
    """
    results: dict[str, Any] = {}
    boot: dict[str, np.ndarray] = {}
    for j, (name, scores) in enumerate(per_benchmark.items()):
        result = benchmark_metrics(scores, samples.get(name, []), n_questions[name], k)
        means = bootstrap_means([sum(v) / k for v in scores.values()], bootstrap, np.random.default_rng([seed, j]))
        result["ci95"] = _interval(means)
        results[name] = result
        boot[name] = means
    row = {name: results[name]["accuracy"] for name in TABLE1_BENCHMARKS if name in results and results[name]["n"]}
    complete = len(row) == len(TABLE1_BENCHMARKS)
    mean_run = float(np.mean(list(row.values()))) if row else None
    avg_ci = None
    if complete and bootstrap > 0 and all(boot[name].size for name in TABLE1_BENCHMARKS):
        avg_ci = _interval(np.mean([boot[name] for name in TABLE1_BENCHMARKS], axis=0))
    return {
        "benchmarks": results,
        "table1": {
            "columns": [name for name in TABLE1_BENCHMARKS],
            "avg": mean_run if complete else None,
            "avg_ci95": avg_ci,
            "mean_of_columns_run": mean_run,
            "columns_run": list(row),
        },
    }


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def table1_rows(summary: Mapping[str, Any], grader: str) -> list[tuple[str, list[str]]]:
    """The Table-1-shaped rows (label, 9 cells) for one grader's results in ``summary``."""
    part = summary["graders"][grader]
    results, t1 = part["benchmarks"], part["table1"]
    cols = list(TABLE1_BENCHMARKS)

    def cell(name: str, fmt) -> str:
        return fmt(results[name]) if name in results else "–"

    label = f"this run, avg@{summary['settings']['k']} ({grader} grader)"
    rows = [
        (label, [cell(c, lambda r: _pct(r["accuracy"]) if r["n"] else "–") for c in cols] + [_pct(t1["avg"])]),
        (
            "95% CI (bootstrap over questions)",
            [cell(c, lambda r: _ci(r["ci95"])) for c in cols] + [_ci(t1["avg_ci95"])],
        ),
        ("questions", [cell(c, lambda r: str(r["n"])) for c in cols] + [""]),
        ("samples", [cell(c, lambda r: str(r["samples"])) for c in cols] + [""]),
        ("truncated completions", [cell(c, lambda r: str(r["truncated"])) for c in cols] + [""]),
    ]
    return rows


def paper_rows(model: str) -> list[tuple[str, list[str]]]:
    """The paper's Table 1 rows for ``qwen2.5-vl-3b`` / ``qwen2.5-vl-7b``."""
    key = paper_model_key(model)
    size = key.rsplit("-", 1)[-1].upper()
    return [(f"paper: {size} {name}", [f"{v:.2f}" for v in values]) for name, values in TABLE1[key].items()]


def _md_table(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]
    return lines


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """``summary.md``: the settings, the Table-1 row (main grader, then the paper's rows when asked), the other
    grader's row (labelled), and the benchmarks outside Table 1."""
    st = summary["settings"]
    header = ["", *(get_spec(c).title for c in TABLE1_BENCHMARKS), "Avg."]
    main = st["grader"]
    lines = [
        f"# Evaluation: {summary['model']}",
        "",
        f"protocol `{st['protocol']}`: k={st['k']}, temperature={st['temperature']}, top_p={st['top_p']}, "
        f"top_k={st['top_k']}, max_new_tokens={st['max_new_tokens']}, max_pixels={st['max_pixels']}, "
        f"grader `{main}`, backend `{summary['backend']}`",
        "",
    ]
    rows = table1_rows(summary, main)
    if summary.get("compare_paper"):
        rows += paper_rows(summary["compare_paper"])
    lines += _md_table(header, rows)
    t1 = summary["graders"][main]["table1"]
    if t1["avg"] is None and t1["mean_of_columns_run"] is not None:
        lines += [
            "",
            f"Avg. needs all eight columns; the mean of the {len(t1['columns_run'])} run "
            f"({', '.join(t1['columns_run'])}) is {_pct(t1['mean_of_columns_run'])}.",
        ]
    others = [g for g in summary["graders"] if g != main]
    for g in others:
        lines += ["", f"Second grader, `{g}` (not comparable with the paper's numbers):", ""]
        lines += _md_table(header, table1_rows(summary, g)[:1])
    extra = [n for n in summary["graders"][main]["benchmarks"] if n not in TABLE1_BENCHMARKS]
    if extra:
        lines += ["", "Benchmarks outside Table 1:", ""]
        res = summary["graders"][main]["benchmarks"]
        lines += _md_table(
            ["benchmark", f"avg@{st['k']} (%)", "95% CI", "questions", "samples", "truncated"],
            [
                (
                    get_spec(n).title,
                    [_pct(res[n]["accuracy"]), _ci(res[n]["ci95"]), str(res[n]["n"]), str(res[n]["samples"])]
                    + [str(res[n]["truncated"])],
                )
                for n in extra
            ],
        )
    missing = {n: r["missing"] for n, r in summary["graders"][main]["benchmarks"].items() if r["missing"]}
    if missing:
        lines += ["", f"Questions without all {st['k']} samples yet (rerun to finish): {missing}"]
    return "\n".join(lines) + "\n"


def print_summary(summary: Mapping[str, Any]) -> None:
    """The Table-1 row (and the paper's rows when asked) as a rich table."""
    from rich.console import Console
    from rich.table import Table

    st = summary["settings"]
    table = Table(title=f"{summary['model']}  (protocol {st['protocol']}, avg@{st['k']}, grader {st['grader']})")
    table.add_column("")
    for c in TABLE1_BENCHMARKS:
        table.add_column(get_spec(c).title, justify="right")
    table.add_column("Avg.", justify="right")
    rows = table1_rows(summary, st["grader"])
    if summary.get("compare_paper"):
        rows += paper_rows(summary["compare_paper"])
    for label, cells in rows:
        table.add_row(label, *cells)
    Console().print(table)


def print_settings(settings: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """The resolved settings, printed before anything is generated."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pgpo eval settings", show_header=False)
    table.add_column(style="dim")
    table.add_column()
    for key, value in {**settings, **extra}.items():
        table.add_row(key, repr(value) if isinstance(value, str) else str(value))
    Console().print(table)
