"""The demo's report folder: ``report.md`` (terminal, README), ``report.html`` (real tables, the plots inline), the
plots (matplotlib) and the token heatmap of one answer (S, I, w~).

Tables (:func:`report_tables`): held-out accuracy per model (mean ± sd over seeds, per seed), the per-seed paired
difference PGPO − DAPO with a 95% t-interval over seeds, per-family accuracy, mean completion length, and, when
measured, the gradient-variance statistics of ``pgpo gradvar`` (App. E's quantity) at the warm start and after RL.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = [
    ("reward", "training reward (mean over rollouts)"),
    ("dynamic_sampling/kept_frac", "fraction of groups kept by dynamic sampling"),
    ("shaping/gated_frac", "fraction of tokens with I >= tau"),
    ("dependency/mean_log1p", "mean log(1 + S) (Eq. 4)"),
    ("completions/mean_length", "completion length (tokens)"),
    ("grad_norm", "gradient norm"),
]
# Student t quantiles t_{0.975, df} for the 95% interval over seeds.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    return [r[0] for r in rows], [r[1] for r in rows]


def _band_plot(ax, label, series_per_seed):
    """Mean line over seeds and a min-max band."""
    series = [s for s in series_per_seed if s[0]]
    if not series:
        return False
    n = min(len(s[0]) for s in series)
    steps = series[0][0][:n]
    values = [[s[1][i] for s in series] for i in range(n)]
    (line,) = ax.plot(steps, [statistics.fmean(v) for v in values], label=label, lw=2)
    if len(series) > 1:
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2, color=line.get_color())
    return True


def _save(fig, ax, title: str, path: Path) -> Path:
    ax.set_xlabel("RL step")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(results: list[dict], out: Path) -> list[Path]:
    """One PNG per training metric, and the validation accuracy vs step: mean over seeds with a min-max band."""
    paths = []
    algorithms = list(results[0]["runs"])
    for key, title in CURVES:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        drawn = [
            _band_plot(ax, a.upper(), [_series(r["runs"][a]["history"], key) for r in results]) for a in algorithms
        ]
        if any(drawn):
            paths.append(_save(fig, ax, title, out / f"{key.replace('/', '_')}.png"))
        else:
            plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    drawn = []
    for a in algorithms:
        curves = [r["runs"][a].get("curve") or [] for r in results]
        drawn.append(_band_plot(ax, a.upper(), [([c[0] for c in cur], [c[1] for c in cur]) for cur in curves]))
    if any(drawn):
        before = statistics.fmean(r["before"]["accuracy"] for r in results)
        ax.axhline(before, color="#777", ls="--", lw=1, label="warm start (test)")
        paths.append(_save(fig, ax, "validation accuracy during RL", out / "accuracy_curve.png"))
    else:
        plt.close(fig)
    return paths


def plot_accuracy(table: dict[str, list[float]], out: Path) -> Path:
    """Bar chart of held-out accuracy (mean, with one dot per seed)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    names = list(table)
    means = [statistics.fmean(table[n]) for n in names]
    colours = ["#999999", "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3"]
    ax.bar(names, means, color=[colours[i % len(colours)] for i in range(len(names))])
    for i, n in enumerate(names):
        ax.scatter([i] * len(table[n]), table[n], color="black", s=12, zorder=3)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_table(results: list[dict]) -> dict[str, list[float]]:
    """``{"warm start": [...], "dapo": [...], ...}``: held-out accuracy per seed."""
    table = {"warm start": [r["before"]["accuracy"] for r in results]}
    for algorithm in results[0]["runs"]:
        table[algorithm] = [r["runs"][algorithm]["after"]["accuracy"] for r in results if algorithm in r["runs"]]
    return table


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Per-seed ``a - b``: mean, the 95% t-interval over seeds (nan with one seed) and the values."""
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "diffs": diffs}
    half = T975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "diffs": diffs}


def report_tables(results: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of every table of the report, in order."""
    acc = accuracy_table(results)
    tables = [
        (
            "Held-out accuracy",
            ["model", "accuracy (mean ± sd over seeds)", "per seed", "completion tokens"],
            [
                [
                    name,
                    mean_sd(values),
                    ", ".join(f"{v:.3f}" for v in values),
                    f"{statistics.fmean(_lengths(results, name)):.1f}",
                ]
                for name, values in acc.items()
            ],
        )
    ]
    base = "dapo" if "dapo" in acc else None
    if base:
        rows = []
        for name in acc:
            if name in ("warm start", base):
                continue
            d = paired_difference(acc[name], acc[base])
            ci = f"[{d['low']:+.3f}, {d['high']:+.3f}]" if math.isfinite(d["low"]) else "(one seed)"
            rows.append([f"{name} − {base}", f"{d['mean']:+.3f}", ci, ", ".join(f"{x:+.3f}" for x in d["diffs"])])
        d = paired_difference(acc[base], acc["warm start"])
        ci = f"[{d['low']:+.3f}, {d['high']:+.3f}]" if math.isfinite(d["low"]) else "(one seed)"
        rows.insert(0, [f"{base} − warm start", f"{d['mean']:+.3f}", ci, ", ".join(f"{x:+.3f}" for x in d["diffs"])])
        tables.append(
            ("Paired differences (same seed, same test questions)", ["", "mean", "95% interval", "per seed"], rows)
        )
    families = sorted(results[0]["before"]["per_family"])
    rows = []
    for f in families:
        row = [f, f"{statistics.fmean(r['before']['per_family'].get(f, 0.0) for r in results):.2f}"]
        for algorithm in results[0]["runs"]:
            row.append(
                f"{statistics.fmean(r['runs'][algorithm]['after']['per_family'].get(f, 0.0) for r in results):.2f}"
            )
        rows.append(row)
    tables.append(("Per task family (mean over seeds)", ["family", *acc], rows))
    perception = _perception_rows(results)
    if perception:
        tables.append(
            (
                "Does S find the perception tokens? (taught answers of held-out questions; ground truth from the task "
                "generator; mean over seeds)",
                [
                    "model",
                    "AUROC of S (image vs rest)",
                    "gate precision",
                    "gate recall",
                    "w~ mass on image tokens",
                    "image share of tokens",
                    "mean S image / template",
                ],
                perception,
            )
        )
    grad = _gradvar_rows(results)
    if grad:
        tables.append(
            (
                "Policy-gradient estimator at fixed parameters (pgpo gradvar; DAPO vs PGPO weights on the same rollouts)",
                [
                    "parameters",
                    "E‖g‖² DAPO",
                    "E‖g‖² PGPO",
                    "tr Cov DAPO",
                    "tr Cov PGPO",
                    "PGPO/DAPO E‖g‖² [95% bootstrap over batches, per seed]",
                    "PGPO/DAPO tr Cov",
                    "SNR PGPO/DAPO",
                ],
                grad,
            )
        )
    return tables


def _lengths(results, name):
    if name == "warm start":
        return [r["before"].get("mean_completion_tokens", math.nan) for r in results]
    return [r["runs"][name]["after"].get("mean_completion_tokens", math.nan) for r in results if name in r["runs"]]


def _perception_example(result: dict):
    """(model name, response) of the heatmap with the ground truth: the PGPO run's, else the warm start's."""
    for name, run in result.get("runs", {}).items():
        if name.startswith("pgpo") and (run.get("perception") or {}).get("example"):
            return f"after {name}", run["perception"]["example"]
    if (result.get("perception_before") or {}).get("example"):
        return "warm start", result["perception_before"]["example"]
    return None


def _stages(results, before_key: str, run_key: str) -> list[tuple[str, list[dict]]]:
    """``[("warm start", [per-seed values]), ("after dapo", [...]), ...]`` of one measurement taken at the warm start
    (``results[k][before_key]``) and after each RL run (``results[k]["runs"][a][run_key]``); stages never measured
    are left out."""
    entries = [("warm start", [r.get(before_key) for r in results])]
    for algorithm in results[0]["runs"]:
        entries.append((f"after {algorithm}", [r["runs"][algorithm].get(run_key) for r in results]))
    return [(label, [v for v in values if v]) for label, values in entries if any(values)]


def _perception_rows(results):
    rows = []
    for label, measured in _stages(results, "perception_before", "perception"):
        values = [v["overall"] for v in measured]

        def m(key, values=values):
            return statistics.fmean(v[key] for v in values)

        image_s = statistics.fmean(v["mean_S"]["image"] for v in values)
        template_s = statistics.fmean(v["mean_S"]["template"] for v in values)
        rows.append(
            [
                label,
                f"{m('auroc'):.3f}",
                f"{m('gate_precision'):.3f}",
                f"{m('gate_recall'):.3f}",
                f"{m('image_weight_share'):.3f}",
                f"{m('image_token_share'):.3f}",
                f"{image_s:.3g} / {template_s:.3g}",
            ]
        )
    return rows


def _gradvar_rows(results):
    rows = []
    for label, values in _stages(results, "gradvar_before", "gradvar"):

        def m(path, values=values):
            return statistics.fmean(v[path[0]][path[1]] for v in values)

        rows.append(
            [
                label,
                f"{m(('dapo', 'mean_sq_norm')):.3g}",
                f"{m(('pgpo', 'mean_sq_norm')):.3g}",
                f"{m(('dapo', 'trace_cov')):.3g}",
                f"{m(('pgpo', 'trace_cov')):.3g}",
                f"{m(('pgpo_over_dapo', 'mean_sq_norm')):.3f} "
                + "["
                + "; ".join(
                    f"{v['pgpo_over_dapo']['mean_sq_norm_ci95'][0]:.2f}-{v['pgpo_over_dapo']['mean_sq_norm_ci95'][1]:.2f}"
                    for v in values
                    if "mean_sq_norm_ci95" in v["pgpo_over_dapo"]
                )
                + "]",
                f"{m(('pgpo_over_dapo', 'trace_cov')):.3f}",
                f"{m(('pgpo_over_dapo', 'snr')):.3f}",
            ]
        )
    return rows


def settings_line(results: list[dict]) -> str:
    cfg = results[0]["config"]
    walls = ", ".join(f"{r.get('wall_seconds', float('nan')):.0f} s" for r in results)
    step = {
        a: statistics.fmean(r["runs"][a].get("median_step_seconds", math.nan) for r in results if a in r["runs"])
        for a in results[0]["runs"]
    }
    ratio = f"; PGPO / DAPO {step['pgpo'] / step['dapo']:.2f}x" if "pgpo" in step and "dapo" in step else ""
    return (
        f"Settings: {cfg['rl_steps']} RL steps x {cfg['prompts_per_step']} prompts x {cfg['num_generations']} "
        f"rollouts (T {cfg['temperature']}), lr {cfg['learning_rate']}, rl_train {cfg['rl_train']}, "
        f"{cfg['n_test']} held-out questions, warm start {cfg['warm']['steps']} supervised steps. "
        f"Wall time per seed: {walls}. Median RL step: "
        + ", ".join(f"{a} {v:.2f} s" for a, v in step.items())
        + ratio
        + "."
    )


def summary_markdown(results: list[dict], command: str) -> str:
    n = len(results)
    lines = [f"# pgpo demo report ({n} seed{'s' if n > 1 else ''})", "", f"Command: `{command}`", ""]
    for title, header, rows in report_tables(results):
        lines += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines.append(settings_line(results))
    return "\n".join(lines) + "\n"


def summary_html(results: list[dict], command: str) -> str:
    parts = [f"<h1>pgpo demo report ({len(results)} seed{'s' if len(results) > 1 else ''})</h1>"]
    parts.append(f"<p>Command: <code>{html.escape(command)}</code></p>")
    for title, header, rows in report_tables(results):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        parts.append(f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append(f"<p>{html.escape(settings_line(results))}</p>")
    return "".join(parts)


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;color:#222}"
    "table{border-collapse:collapse;margin:6px 0 18px}th,td{border:1px solid #ccc;padding:4px 10px;font-size:14px}"
    "th{background:#f2f2f2}td:not(:first-child){text-align:right}h2{font-size:16px;margin-top:22px}"
    "figure{display:inline-block;margin:6px}img{max-width:520px}figcaption{font-size:12px;color:#555}"
)


def write_report(results: list[dict], out_dir: str | Path, command: str) -> Path:
    """Write the plots, the heatmap, ``report.md`` and ``report.html``; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = [plot_accuracy(accuracy_table(results), out), *plot_curves(results, out)]
    sample = results[0].get("heatmap_sample")
    if sample:
        from pgpo.inspection import render_png

        pngs.append(
            render_png(
                sample["tokens"],
                sample["importance"],
                sample["tau"],
                out / "dependency_heatmap.png",
                title=f"PGPO model, held-out question: {sample['question']} (gold: {sample['answer']}); "
                "colour: I (Eqs. 4-5), line: w~ (Eq. 7)",
                weights=sample["weights"],
            )
        )
    example = _perception_example(results[0])
    if example:
        from pgpo.inspection import render_png

        name, response = example
        pngs.append(
            render_png(
                response["tokens"],
                response["I"],
                results[0]["perception_before"]["tau"],
                out / "perception_heatmap.png",
                title=f"{name}, the taught answer of a held-out question: {response['question']} "
                "(colour: I, Eqs. 4-5; line: w~, Eq. 7; red: what the task generator says names the image)",
                weights=response["w"],
                marked=[label == "image" for label in response["labels"]],
            )
        )
    md = summary_markdown(results, command)
    md += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    (out / "report.md").write_text(md)
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>"
        for p in pngs
    )
    (out / "report.html").write_text(
        f"<!doctype html><html lang=en><meta charset=utf-8><title>pgpo demo</title><style>{CSS}</style>"
        f"<body>{summary_html(results, command)}{figures}</body></html>"
    )
    return out / "report.md"
