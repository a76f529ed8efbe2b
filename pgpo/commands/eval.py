"""``pgpo eval``: the paper's Table 1 evaluation of a model (see ``docs/eval.md``).

Example::

    pgpo eval --protocol paper --benchmark all --data data/ --model ckpt/ --out results/ --compare_paper 3b
    pgpo eval --config configs/eval_paper.yaml --data data/ --model ckpt/ --out results/

Flags are :class:`pgpo.eval.config.EvalConfig`'s fields (snake_case, as TRL's parser writes them; the kebab-case
spelling is accepted too); ``--config FILE.yaml`` sets any of them. ``--benchmark``, ``--data`` and ``--split`` may be
repeated. Rerunning the same command resumes: samples already in ``OUT/<benchmark>.jsonl`` are not generated again.
"""

from __future__ import annotations

import sys

REPEATABLE = ("--benchmark", "--data", "--split")


def merge_repeated(argv: list[str], flags: tuple[str, ...] = REPEATABLE) -> list[str]:
    """``--benchmark a --benchmark b`` -> ``--benchmark a b`` (argparse's ``nargs='+'`` keeps only the last one)."""
    spellings = {f: f for f in flags} | {f.replace("_", "-"): f for f in flags}
    merged: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        flag = spellings.get(argv[i])
        if flag is None:
            rest.append(argv[i])
            i += 1
            continue
        i += 1
        values = merged.setdefault(flag, [])
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
    for flag, values in merged.items():
        rest += [flag, *values]
    return rest


def make_parser():
    from trl import TrlParser

    from pgpo.eval.config import EvalConfig

    return TrlParser((EvalConfig,), prog="pgpo eval")


def main(argv: list[str]) -> int:
    parser = make_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.parse_args_and_config(["--help"])
        return 0
    from pgpo.eval.evaluate import evaluate, summary_paths

    try:
        (config,) = parser.parse_args_and_config(merge_repeated(list(argv)))
        evaluate(config)
        if config.shard()[0] == 0:
            print(f"results in {summary_paths(config.out)['md']}")
    except ValueError as err:
        print(f"pgpo eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
