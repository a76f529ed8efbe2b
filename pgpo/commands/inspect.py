"""``pgpo inspect``: which tokens of an answer see the image (see ``docs/inspect.md``).

Example::

    pgpo inspect --model ckpt/ --image cat.png --prompt "How many cats?" --out inspect_out/

writes ``inspect_out/inspect.html`` (tokens coloured by PGPO's importance ``I`` with the gate ``tau`` marked, ``S``
and ``w~`` on hover), ``inspect_out/inspect.png`` and ``inspect_out/tokens.json``, and prints the summary. Flags are
:class:`pgpo.inspection.run.InspectConfig`'s fields. ``--model tiny-qwen`` uses the tiny random Qwen2.5-VL (smoke
tests; its answers are noise).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pgpo.commands.parsing import parse_config


def print_summary(summary, result, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="visual dependency of the answer", show_header=False)
    table.add_column(style="dim")
    table.add_column()
    for label, value in summary.rows():
        table.add_row(label, value)
    console = Console()
    console.print(table)
    top = sorted(range(len(result.scores)), key=lambda i: -result.scores[i])[:5]
    shown = ", ".join(
        f"{json.dumps(result.tokens[i], ensure_ascii=False)} S={result.scores[i]:.3g} w={result.weights[i]:.2f}"
        for i in top
    )
    console.print(f"most image-dependent tokens: {shown}", highlight=False)
    console.print(f"wrote {out / 'inspect.html'}, {out / 'inspect.png'}, {out / 'tokens.json'}", highlight=False)


def main(argv: list[str]) -> int:
    from pgpo.inspection.run import InspectConfig, inspect_answer

    cfg = parse_config(InspectConfig, argv, "pgpo inspect", repeatable=("--image",))
    try:
        result, summary = inspect_answer(cfg)
    except ValueError as err:  # input problems found while loading or scoring (a missing image, an empty completion)
        print(f"pgpo inspect: error: {err}", file=sys.stderr)
        return 2
    print_summary(summary, result, Path(cfg.out))
    return 0
