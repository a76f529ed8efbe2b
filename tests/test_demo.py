"""The embedded default end to end at toy size: warm start -> GRPO and PGPO on the small real VLM -> report."""

import json
import math

import pytest

from pgpo.demo.run import DemoConfig, run_demo
from pgpo.demo.warmstart import WarmStartConfig


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(
        out_dir=str(out),
        rl_steps=1,
        prompts_per_step=2,
        num_generations=2,
        max_completion_length=4,
        n_train=8,
        n_test=8,
        warm=WarmStartConfig(n_samples=8, steps=1, batch_size=4),
    )
    import os

    os.environ["PGPO_CACHE"] = str(out / "cache")  # a fresh warm start, not a developer's cached one
    try:
        return out, run_demo(cfg, log=lambda *_: None)
    finally:
        os.environ.pop("PGPO_CACHE")


def test_demo_runs_both_algorithms_and_logs_pgpo_metrics(results):
    out, res = results
    assert set(res["runs"]) == {"grpo", "pgpo"}
    for algorithm, run in res["runs"].items():
        assert 0.0 <= run["after"]["accuracy"] <= 1.0 and run["after"]["n"] == 8
        steps = [h for h in run["history"] if "loss" in h]
        assert len(steps) == 1 and math.isfinite(steps[0]["loss"])
        assert "dependency/mean" in steps[0]  # logged for GRPO too
        assert ("shaping/gated_frac" in steps[0]) == (algorithm == "pgpo")
    assert json.loads((out / "results.json").read_text())["runs"]["pgpo"]["after"]["n"] == 8
    sample = res["heatmap_sample"]
    assert len(sample["tokens"]) == len(sample["scores"]) and all(s >= 0 for s in sample["scores"])


def test_report_has_table_plots_and_heatmap(results):
    from pgpo.demo.report import write_report

    out, res = results
    md = write_report([res, res], out / "report", "pgpo compare --seeds 2").read_text()
    assert "| pgpo |" in md and "| grpo |" in md and "± 0.000" in md
    for name in ("accuracy.png", "reward.png", "dependency_heatmap.png", "report.html"):
        assert (out / "report" / name).stat().st_size > 1000, name


def test_rl_train_projector_leaves_the_language_model_untouched(results, tmp_path):
    import torch

    from pgpo.demo.run import train_one

    out, _ = results
    warm_path = next((out / "cache").glob("warmstart-*"))
    cfg = DemoConfig(
        out_dir=str(tmp_path), rl_steps=1, prompts_per_step=2, num_generations=2, max_completion_length=4, n_train=8
    )
    cfg = DemoConfig(**{**cfg.__dict__, "rl_train": "projector", "learning_rate": 1e-2})
    from pgpo.vlm import load_pgpo_vlm

    before, _ = load_pgpo_vlm(warm_path)
    model, _, history = train_one("grpo", warm_path, cfg, tmp_path, log=lambda *_: None)
    after = dict(model.named_parameters())
    lm = [n for n, _ in before.named_parameters() if ".language_model." in n]
    proj = [n for n, _ in before.named_parameters() if "projector" in n]
    assert lm and proj
    ref = dict(before.named_parameters())
    assert all(torch.equal(ref[n], after[n]) for n in lm)
    assert all(after[n].requires_grad for n in proj) and not any(after[n].requires_grad for n in lm)
    with pytest.raises(ValueError, match="rl_train"):
        train_one("grpo", warm_path, DemoConfig(**{**cfg.__dict__, "rl_train": "lm"}), tmp_path)
