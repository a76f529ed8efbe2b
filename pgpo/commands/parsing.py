"""One way every command parses its options: a library dataclass through transformers' ``HfArgumentParser`` (the
parser under TRL's), snake_case flags, ``--config FILE.yaml`` for any of them, kebab-case accepted as an alias."""

from __future__ import annotations

import sys
from typing import TypeVar

T = TypeVar("T")


def merge_repeated(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``--image a --image b`` -> ``--image a b`` (argparse's ``nargs='+'`` would keep only the last one)."""
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


def snake_case_flags(argv: list[str]) -> list[str]:
    """``--max-new-tokens`` -> ``--max_new_tokens`` (values are left alone)."""
    return ["--" + a[2:].replace("-", "_") if a.startswith("--") and "=" not in a else a for a in argv]


def parse_config(cls: type[T], argv: list[str], prog: str, repeatable: tuple[str, ...] = ()) -> T:
    """Parse ``argv`` into ``cls``; errors in the dataclass's own checks exit with status 2 and ``prog: error: ...``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(cls, prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    argv = merge_repeated(snake_case_flags(argv), repeatable)
    try:
        if "--config" in argv:
            i = argv.index("--config")
            path, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
            import yaml

            with open(path) as f:
                defaults = yaml.safe_load(f) or {}
            parser.set_defaults(**defaults)
        (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg
