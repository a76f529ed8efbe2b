"""``pgpo demo``: warm start (cached) -> GRPO and PGPO with the same seed and budget -> held-out evaluation -> report."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields, replace

from pgpo.demo.run import DemoConfig


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--out", default=defaults.out_dir, help="report folder (default: %(default)s)")
    for f in fields(DemoConfig):
        if f.name in ("out_dir", "warm", "algorithms", "seed"):
            continue
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help="(default: %(default)s)",
        )
    parser.add_argument("--warm-steps", type=int, default=defaults.warm.steps, help="supervised warm-start steps")


def config_from(args: argparse.Namespace, **overrides) -> DemoConfig:
    cfg = DemoConfig(out_dir=args.out)
    values = {f.name: getattr(args, f.name) for f in fields(DemoConfig) if hasattr(args, f.name)}
    cfg = replace(cfg, **{**values, **overrides})
    return replace(cfg, warm=replace(cfg.warm, steps=args.warm_steps))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgpo demo", description=__doc__)
    add_demo_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.markdown import Markdown

    from pgpo.demo.report import summary_markdown, write_report
    from pgpo.demo.run import run_demo

    console = Console()
    cfg = config_from(args, seed=args.seed)
    results = run_demo(cfg, log=lambda msg: console.print(f"[bold cyan]pgpo demo[/] {msg}"))
    command = "pgpo demo " + shlex.join(argv) if argv else "make demo"
    path = write_report([results], cfg.out_dir, command)
    console.print(Markdown(summary_markdown([results], command)))
    console.print(f"report: {path} (and report.html, plots next to it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
