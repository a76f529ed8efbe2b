"""One way every command parses its options: a library dataclass through transformers' ``HfArgumentParser`` (the
parser under TRL's), snake_case flags, ``--config FILE.yaml`` for any of them, kebab-case accepted as an alias."""

from __future__ import annotations

import difflib
import sys
from dataclasses import fields
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


# Options renamed so that one option has one name across commands (PGPOConfig's, as in `pgpo train`).
RENAMED = {"tau": "pgpo_tau", "beta": "pgpo_beta", "estimator": "dependency_estimator"}


def parse_config(cls: type[T], argv: list[str], prog: str, repeatable: tuple[str, ...] = ()) -> T:
    """Parse ``argv`` into ``cls``; errors in the dataclass's own checks exit with status 2 and ``prog: error: ...``.

    ``--config FILE.yaml`` (or ``--config=FILE.yaml``) sets defaults that flags override; a key of the YAML that is not
    an option of ``cls`` is an error naming it (and the closest option)."""
    import argparse

    from transformers import HfArgumentParser

    options = [f.name for f in fields(cls)]
    renamed = {old: new for old, new in RENAMED.items() if new in options and old not in options}
    parser = HfArgumentParser(cls, prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    pre = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    config, argv = pre.parse_known_args(merge_repeated(snake_case_flags(argv), repeatable))
    try:
        for flag in argv:
            name = flag[2:].split("=")[0] if flag.startswith("--") else None
            if name in renamed:
                raise ValueError(f"--{name} is now --{renamed[name]} (the name pgpo train uses)")
        if config.config:
            import yaml

            with open(config.config) as f:
                defaults = yaml.safe_load(f) or {}
            for key in defaults:
                if key in renamed:
                    raise ValueError(f"{key!r} in {config.config} is now {renamed[key]!r} (the name pgpo train uses)")
                if key not in options:
                    close = difflib.get_close_matches(str(key), options, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(f"unknown option {key!r} in {config.config}{hint}")
            parser.set_defaults(**defaults)
        (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg
