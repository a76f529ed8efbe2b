"""The demo's report folder: ``report.md``, ``report.html``, plots (matplotlib) and the dependency heatmap."""

from __future__ import annotations

import base64
import html
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = [
    ("reward", "reward (mean over rollouts)"),
    ("shaping/gated_frac", "fraction of tokens gated by PGPO"),
    ("dependency/mean", "mean token visual dependency (nats)"),
    ("grad_norm", "gradient norm"),
    ("grad_norm/running_var", "running variance of the gradient norm"),
]


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    return [r[0] for r in rows], [r[1] for r in rows]


def plot_curves(runs: dict[str, list[list[dict]]], out: Path) -> list[Path]:
    """One PNG per metric; ``runs`` maps algorithm -> list of histories (one per seed): mean line, min-max band."""
    paths = []
    for key, label in CURVES:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        drawn = False
        for algorithm, histories in runs.items():
            series = [_series(h, key) for h in histories]
            series = [s for s in series if s[0]]
            if not series:
                continue
            n = min(len(s[0]) for s in series)
            steps = series[0][0][:n]
            values = [[s[1][i] for s in series] for i in range(n)]
            mean = [statistics.fmean(v) for v in values]
            (line,) = ax.plot(steps, mean, label=algorithm.upper(), lw=2)
            if len(series) > 1:
                ax.fill_between(
                    steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2, color=line.get_color()
                )
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("RL step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_accuracy(table: dict[str, list[float]], out: Path) -> Path:
    """Bar chart of held-out accuracy (mean, with one dot per seed)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(table)
    means = [statistics.fmean(table[n]) for n in names]
    ax.bar(names, means, color=["#999999", "#4C72B0", "#DD8452", "#55A868", "#C44E52"][: len(names)])
    for i, n in enumerate(names):
        ax.scatter([i] * len(table[n]), table[n], color="black", s=12, zorder=3)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_table(results: list[dict]) -> dict[str, list[float]]:
    """``{"before RL": [...], "grpo": [...], ...}``: held-out accuracy per seed."""
    table = {"before RL": [r["before"]["accuracy"] for r in results]}
    for algorithm in results[0]["runs"]:
        table[algorithm] = [r["runs"][algorithm]["after"]["accuracy"] for r in results if algorithm in r["runs"]]
    return table


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def summary_markdown(results: list[dict], command: str) -> str:
    """The comparison table (mean ± sd over seeds) and the settings, as Markdown."""
    table = accuracy_table(results)
    n = len(results)
    lines = [
        f"# pgpo demo report ({n} seed{'s' if n > 1 else ''})",
        "",
        f"Command: `{command}`",
        "",
        "| model | held-out accuracy | per seed |",
        "|---|---|---|",
    ]
    for name, values in table.items():
        lines.append(f"| {name} | {_fmt(values)} | {', '.join(f'{v:.3f}' for v in values)} |")
    last = {}
    for algorithm in results[0]["runs"]:
        hist = [r["runs"][algorithm]["history"] for r in results if algorithm in r["runs"]]
        finals = [h for hs in hist for h in hs if "grad_norm/running_var" in h]
        if finals:
            last[algorithm] = statistics.fmean(h["grad_norm/running_var"] for h in finals[-n:])
    if last:
        lines += ["", "| algorithm | grad-norm running variance (final, mean over seeds) |", "|---|---|"]
        lines += [f"| {a} | {v:.4g} |" for a, v in last.items()]
    families = sorted(results[0]["before"]["per_family"])
    lines += ["", "Per task family (mean over seeds):", "", "| family | " + " | ".join(table) + " |"]
    lines.append("|---" * (len(table) + 1) + "|")
    for f in families:
        row = [statistics.fmean(r["before"]["per_family"].get(f, 0.0) for r in results)]
        for algorithm in results[0]["runs"]:
            row.append(statistics.fmean(r["runs"][algorithm]["after"]["per_family"].get(f, 0.0) for r in results))
        lines.append(f"| {f} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    cfg = results[0]["config"]
    lines += [
        "",
        f"Settings: {cfg['rl_steps']} RL steps x {cfg['prompts_per_step']} prompts x {cfg['num_generations']} "
        f"rollouts, lr {cfg['learning_rate']}, {cfg['n_test']} held-out questions, warm start "
        f"{cfg['warm']['steps']} supervised steps. Wall time per seed: "
        + ", ".join(f"{r.get('wall_seconds', float('nan')):.0f} s" for r in results),
    ]
    return "\n".join(lines) + "\n"


def write_report(results: list[dict], out_dir: str | Path, command: str) -> Path:
    """Write plots, the heatmap, ``report.md`` and ``report.html``; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[list[dict]]] = {}
    for r in results:
        for algorithm, run in r["runs"].items():
            runs.setdefault(algorithm, []).append(run["history"])
    pngs = [plot_accuracy(accuracy_table(results), out), *plot_curves(runs, out)]
    sample = results[0].get("heatmap_sample")
    if sample:
        from pgpo.inspection import render_png

        pngs.append(
            render_png(
                sample["tokens"],
                sample["importance"],
                sample["tau"],
                out / "dependency_heatmap.png",
                title=f"PGPO model, held-out question: {sample['question']} (gold: {sample['answer']})",
                weights=sample["weights"],
            )
        )
    md = summary_markdown(results, command)
    md += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    (out / "report.md").write_text(md)
    body = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>"
        for p in pngs
    )
    table_html = "<pre>" + html.escape(summary_markdown(results, command)) + "</pre>"
    (out / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>pgpo demo</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}figure{display:inline-block;margin:6px}"
        "img{max-width:480px}</style>" + table_html + body
    )
    return out / "report.md"
