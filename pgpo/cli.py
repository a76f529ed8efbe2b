"""The ``pgpo`` command: ``pgpo <command> [args]``, or ``python -m pgpo <command> [args]``. Each command lives in its
own module with ``main(argv) -> int``; nothing outside ``pgpo/commands/`` and this file imports them."""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Modules are imported lazily so `pgpo --help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "pgpo.commands.train",
        "RL-train a VLM with PGPO / GRPO / DAPO / Dr.GRPO / VPPO / PAPO (TRL style, accelerate-ready)",
    ),
    "demo": ("pgpo.commands.demo", "embedded default: warm-start a small real VLM, then GRPO vs PGPO on this CPU"),
    "compare": ("pgpo.commands.compare", "the demo over several seeds and algorithms, mean +- sd"),
    "eval": ("pgpo.commands.eval", "the paper's evaluation: Table 1's eight benchmarks, avg@8, the paper's grader"),
    "inspect": ("pgpo.commands.inspect", "S, I and w~ of each token of one answer, as HTML + PNG"),
    "gradvar": ("pgpo.commands.gradvar", "policy-gradient variance at fixed parameters: DAPO vs PGPO, same rollouts"),
    "bench": ("pgpo.commands.bench", "measure PGPO's cost over DAPO / GRPO (time and memory ratios)"),
    "tasks": (
        "pgpo.commands.tasks",
        "the chance table of the visual tasks: text-only predictors vs chance, per family",
    ),
    "warm-start": (
        "pgpo.commands.warm_start",
        "train (or reuse) the demo's warm start and measure it: accuracy per family, pass@k, headroom for RL",
    ),
    "make-tiny": (
        "pgpo.commands.make_tiny",
        "save a tiny random VLM (--arch: qwen2_5_vl, qwen2_vl, qwen3_vl, llava, ...; real processor) to a folder",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pgpo <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `pgpo <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pgpo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("pgpo.commands"):
            print(f"pgpo {name}: not built yet in this version", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
