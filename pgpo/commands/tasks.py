"""``pgpo tasks``: the chance table of :mod:`pgpo.tasks` (text-only predictors vs chance, per family), and
optionally one example image per family.

Example::

    pgpo tasks --n_train 8000 --n_test 4000 --families all --easy_vqa --save_examples docs/img

Flags are :class:`pgpo.tasks.table.TasksConfig`'s fields (snake_case; kebab-case accepted; ``--families`` comma- or
space-separated). ``python -m pgpo tasks`` is the same command.
"""

from __future__ import annotations

import time

from pgpo.commands.parsing import parse_config


def main(argv: list[str]) -> int:
    from pgpo.tasks.chance import chance_report, format_chance_report
    from pgpo.tasks.generate import make_split
    from pgpo.tasks.table import TasksConfig, save_examples

    cfg = parse_config(TasksConfig, argv, "pgpo tasks", repeatable=("--families",))
    families = tuple(cfg.families)
    if cfg.save_examples:
        save_examples(cfg.save_examples, families, cfg.size, cfg.seed)
    t0 = time.perf_counter()
    train = make_split("train", cfg.n_train, cfg.seed, families, cfg.size)
    test = make_split("test", cfg.n_test, cfg.seed, families, cfg.size)
    secs = time.perf_counter() - t0
    print(f"\n# Chance table: {cfg.n_train} train / {cfg.n_test} test, seed {cfg.seed}, {cfg.size}px "
          f"({secs:.1f} s to draw)\n")  # fmt: skip
    print(format_chance_report(chance_report(train, test)))
    if cfg.easy_vqa:
        from pgpo.tasks.easyvqa import load_easy_vqa

        # Balanced subsets are capped by the rarest answers (391 'triangle' questions in test, 604 'brown' in train).
        etrain = load_easy_vqa("train", min(cfg.n_train, 12000), cfg.seed)
        etest = load_easy_vqa("test", min(cfg.n_test, 3000), cfg.seed)
        print(f"\n# easy-VQA (balanced): {len(etrain)} train / {len(etest)} test questions\n")
        print(format_chance_report(chance_report(etrain, etest)))
    return 0
