"""``pgpo gradvar``: the variance of the policy-gradient estimator at fixed parameters, DAPO vs PGPO on the same
rollouts (the quantity of the paper's App. E; :mod:`pgpo.gradvar`).

Example::

    pgpo gradvar --model runs/demo/pgpo/model --batches 8 --out runs/gradvar
"""

from __future__ import annotations

import json
from pathlib import Path

from pgpo.commands.parsing import parse_config


def main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from pgpo.gradvar import GradVarConfig, build_gradvar_trainer, gradient_variance

    cfg = parse_config(GradVarConfig, argv, "pgpo gradvar", repeatable=("--families", "--reward_funcs"))
    console = Console()
    trainer = build_gradvar_trainer(cfg)
    with console.status("rollout batches") as status:
        result = gradient_variance(
            trainer,
            cfg.batches,
            cfg.shaping(),
            cfg.params,
            progress=lambda k, n: status.update(f"rollout batch {k}/{n}"),
        )
    table = Table(
        title=f"policy-gradient estimator at fixed parameters, {cfg.batches} batches, {result.n_params:,} params"
    )
    for col in ("", "DAPO", "PGPO", "PGPO / DAPO"):
        table.add_column(col)
    for key, label in (("mean_sq_norm", "E||g||^2"), ("trace_cov", "tr Cov(g)"), ("snr", "||E g||^2 / tr Cov(g)")):
        table.add_row(label, f"{result.dapo[key]:.4g}", f"{result.pgpo[key]:.4g}", f"{result.ratios[key]:.3f}")
    console.print(table)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradvar.json").write_text(json.dumps({"config": vars(cfg), **result.to_dict()}, indent=1))
    console.print(f"wrote {out / 'gradvar.json'}", highlight=False)
    return 0
