"""``pgpo bench``: PGPO's step time and peak memory over DAPO and GRPO, in one process. See docs/bench.md.

Example::

    OMP_NUM_THREADS=1 pgpo bench --model tiny-qwen --groups default,own_pass --out bench.json --markdown bench.md

Flags are :class:`pgpo.bench.BenchConfig`'s fields (snake_case; kebab-case accepted; lists comma-separated). Prints the tables, then
``PGPO/GRPO step time ratio: X`` and ``PGPO/DAPO step time ratio: X`` of the default configuration.
"""

from __future__ import annotations

import json
import os
import sys
import time

from pgpo.commands.parsing import parse_config


def equals_form(argv: list[str]) -> list[str]:
    """``--flag v1 v2`` -> ``--flag=v1,v2``, a bare ``--flag`` -> ``--flag=true``, ``--help`` -> ``-h``.

    A workaround: ``parse_config``'s ``snake_case_flags`` currently rewrites the leading ``--`` of every ``--flag``
    token too (``--batch`` -> ``__batch``, so no flag is recognised) but leaves ``--flag=value`` tokens alone. The
    equals form parses the same once that is fixed, so this can then go.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--help":
            out.append("-h")
            continue
        if not arg.startswith("--") or "=" in arg:
            out.append(arg)
            continue
        values = []
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        out.append(f"{arg}={','.join(values) if values else 'true'}")
    return out


def main(argv: list[str]) -> int:
    from pgpo.bench import BenchConfig, run_bench
    from pgpo.bench.models import ModelUnavailable
    from pgpo.bench.report import print_report, to_markdown

    cfg = parse_config(BenchConfig, equals_form(argv), "pgpo bench")
    if cfg.report:
        with open(cfg.report) as f:
            print_report(json.load(f))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()

    def log(msg: str) -> None:
        if not cfg.quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        result = run_bench(cfg, log=log)
    except ModelUnavailable as err:
        print(f"pgpo bench: skipped: {err}", file=sys.stderr)
        return 3
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    if cfg.markdown:
        with open(cfg.markdown, "w") as f:
            f.write(to_markdown(result))
    print_report(result)
    return 0
