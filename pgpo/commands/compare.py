"""``pgpo compare --seeds N --algos dapo,pgpo,vppo,papo``: the demo on several seeds; mean ± sd, per-seed paired
differences with 95% intervals, curves (:class:`pgpo.demo.run.CompareConfig`)."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

from pgpo.commands.demo import algos_alias
from pgpo.commands.parsing import parse_config


def main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.markdown import Markdown

    from pgpo.demo.report import summary_markdown, write_report
    from pgpo.demo.run import CompareConfig, run_demo

    cfg = parse_config(CompareConfig, algos_alias(argv), "pgpo compare", repeatable=("--algorithms", "--families"))
    console = Console()
    results = []
    for seed in range(cfg.seeds):
        one = replace(cfg, seed=seed, out_dir=str(Path(cfg.out_dir) / f"seed{seed}"))
        one.warm = cfg.warm
        console.rule(f"seed {seed}")
        results.append(run_demo(one, log=lambda msg, s=seed: console.print(f"[bold cyan]seed {s}[/] {msg}")))
        write_report(results, cfg.out_dir, "pgpo compare " + shlex.join(argv))  # a report after every seed
    command = "pgpo compare " + shlex.join(argv)
    path = write_report(results, cfg.out_dir, command)
    console.print(Markdown(summary_markdown(results, command)))
    console.print(f"report: {path}")
    return 0
