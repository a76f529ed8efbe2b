"""``pgpo eval``: the paper's Table 1 evaluation of a model (see ``docs/eval.md``).

Example::

    pgpo eval --protocol paper --benchmark all --data data/ --model ckpt/ --out results/ --compare_paper 3b
    pgpo eval --config configs/eval_paper.yaml --data data/ --model ckpt/ --out results/

Flags are :class:`pgpo.eval.config.EvalConfig`'s fields (snake_case; kebab-case accepted), ``--config FILE.yaml`` sets
any of them (:func:`pgpo.commands.parsing.parse_config`). ``--benchmark``, ``--data`` and ``--split`` may be repeated.
Rerunning the same command resumes: samples already in ``OUT/<benchmark>.jsonl`` are not generated again. An ``--out``
that holds another model's samples, or samples of other settings, is refused; ``--overwrite_out`` starts afresh.
"""

from __future__ import annotations

import sys

from pgpo.commands.parsing import parse_config

REPEATABLE = ("--benchmark", "--data", "--split")


def parse(argv: list[str]):
    """``argv`` -> :class:`pgpo.eval.config.EvalConfig`."""
    from pgpo.eval.config import EvalConfig

    return parse_config(EvalConfig, argv, "pgpo eval", repeatable=REPEATABLE)


def main(argv: list[str]) -> int:
    config = parse(argv)
    from pgpo.eval.evaluate import evaluate, summary_paths

    try:
        evaluate(config)
        if config.shard()[0] == 0:
            print(f"results in {summary_paths(config.out)['md']}")
    except ValueError as err:
        print(f"pgpo eval: error: {err}", file=sys.stderr)
        return 2
    return 0
