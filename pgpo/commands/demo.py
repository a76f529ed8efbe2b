"""``pgpo demo``: warm start (cached) -> DAPO and PGPO with the same seed and budget -> held-out evaluation -> report.

Flags are :class:`pgpo.demo.run.DemoConfig`'s fields (``--algos dapo,pgpo`` is accepted for ``--algorithms``)."""

from __future__ import annotations

import shlex

from pgpo.commands.parsing import parse_config


def algos_alias(argv: list[str]) -> list[str]:
    """``--algos a,b`` (comma-separated) -> ``--algorithms a b``."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--algos" and i + 1 < len(argv):
            out += ["--algorithms", *[a.strip() for a in argv[i + 1].split(",") if a.strip()]]
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.markdown import Markdown

    from pgpo.demo.report import summary_markdown, write_report
    from pgpo.demo.run import DemoConfig, run_demo

    cfg = parse_config(DemoConfig, algos_alias(argv), "pgpo demo", repeatable=("--algorithms", "--families"))
    console = Console()
    results = run_demo(cfg, log=lambda msg: console.print(f"[bold cyan]pgpo demo[/] {msg}"))
    command = "pgpo demo " + shlex.join(argv) if argv else "make demo"
    path = write_report([results], cfg.out_dir, command)
    console.print(Markdown(summary_markdown([results], command)))
    saved = [run["saved"] for run in results["runs"].values() if run.get("saved")]
    console.print(f"report: {path} (and report.html, plots next to it)")
    if saved:
        console.print(f"trained models: {', '.join(saved)} (try: pgpo inspect --model {saved[-1]} ...)")
    return 0
