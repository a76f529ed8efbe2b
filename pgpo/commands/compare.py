"""``pgpo compare --seeds N --algos grpo,dapo,vppo,pgpo``: the demo on several seeds, mean +- sd."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from pgpo.commands.demo import add_demo_options, config_from
from pgpo.config import ALGORITHMS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgpo compare", description=__doc__)
    add_demo_options(parser)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    parser.add_argument("--algos", default="grpo,pgpo", help=f"comma-separated, from {','.join(ALGORITHMS)}")
    args = parser.parse_args(argv)
    algos = tuple(a.strip() for a in args.algos.split(",") if a.strip())
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {ALGORITHMS}")
    from rich.console import Console
    from rich.markdown import Markdown

    from pgpo.demo.report import summary_markdown, write_report
    from pgpo.demo.run import run_demo

    console = Console()
    results = []
    for seed in range(args.seeds):
        cfg = config_from(args, seed=seed, algorithms=algos, out_dir=str(Path(args.out) / f"seed{seed}"))
        console.rule(f"seed {seed}")
        results.append(run_demo(cfg, log=lambda msg, s=seed: console.print(f"[bold cyan]seed {s}[/] {msg}")))
    command = "pgpo compare " + shlex.join(argv)
    path = write_report(results, args.out, command)
    console.print(Markdown(summary_markdown(results, command)))
    console.print(f"report: {path}")
    return 0
