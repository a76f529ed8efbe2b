"""``pgpo warm-start``: train (or reuse) the demo's warm start and measure it: greedy accuracy per family, sampled
accuracy, pass@k and the fraction of prompts whose k samples are mixed (the headroom RL needs).

Example::

    pgpo warm-start --model smollm2 --steps 120 --n_eval 192 --json warm.json

Flags are :class:`pgpo.demo.warmstart.WarmStartEvalConfig`'s fields (snake_case; kebab-case accepted;
``--families`` comma- or space-separated); prints the measurements as JSON.
"""

from __future__ import annotations

import json

from pgpo.commands.parsing import parse_config


def main(argv: list[str]) -> int:
    from pgpo.demo.warmstart import WarmStartEvalConfig, measure_warm_start

    args = parse_config(WarmStartEvalConfig, argv, "pgpo warm-start", repeatable=("--families",))
    res = measure_warm_start(args)
    print(json.dumps({k: v for k, v in res.items() if k != "warm_start"}, indent=1))
    return 0
