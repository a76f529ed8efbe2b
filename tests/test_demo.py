"""The embedded default end to end at toy size: warm start -> DAPO and PGPO on the small real VLM -> report (Markdown,
real HTML tables rendered in headless Chromium), saved models, gradvar; the report's statistics by hand."""

import json
import math
from pathlib import Path

import pytest
from reference.browser import CHROMIUM, screenshot

from pgpo.demo.report import paired_difference, report_tables, write_report
from pgpo.demo.run import DemoConfig, run_demo
from pgpo.demo.warmstart import WarmStartConfig


def toy_config(out, **kw) -> DemoConfig:
    options = dict(
        out_dir=str(out),
        rl_steps=1,
        prompts_per_step=2,
        num_generations=2,
        max_completion_length=6,
        n_train=8,
        n_test=6,
        n_val=2,
        eval_every=1,
        gradvar_batches=2,
        gradvar_params="projector",  # the statistics' plumbing, not 135 M float64 parameters
        max_sampling_rounds=1,
        mask_truncated_completions=False,  # 6-token completions are all truncated
    )
    options.update(kw)
    cfg = DemoConfig(**options)
    # the default demo's word LM at toy size (trained from scratch: one step of it is noise, which is all we need)
    cfg.warm = WarmStartConfig(
        language="words",
        train="lm",
        n_samples=8,
        steps=1,
        batch_size=4,
        align_samples=8,
        lm_hidden_size=64,
        lm_layers=1,
    )
    return cfg


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    import os

    os.environ["PGPO_CACHE"] = str(out / "cache")  # a fresh warm start, not a developer's cached one
    try:
        return out, run_demo(toy_config(out), log=lambda *_: None)
    finally:
        os.environ.pop("PGPO_CACHE")


def test_demo_runs_dapo_and_pgpo_saves_models_and_logs_metrics(results):
    out, res = results
    assert set(res["runs"]) == {"dapo", "pgpo"}
    for algorithm, run in res["runs"].items():
        assert 0.0 <= run["after"]["accuracy"] <= 1.0 and run["after"]["n"] == 6
        steps = [h for h in run["history"] if "loss" in h]
        assert len(steps) == 1 and math.isfinite(steps[0]["loss"])
        assert "dependency/mean" in steps[0] and "dynamic_sampling/rounds" in steps[0]  # DAPO's dependency logged too
        assert ("shaping/gated_frac" in steps[0]) == (algorithm == "pgpo")
        assert run["curve"] and run["curve"][0][0] == 1  # validation accuracy after step 1
        assert (Path(run["saved"]) / "config.json").exists()  # for pgpo inspect / pgpo eval
        assert set(run["gradvar"]["pgpo_over_dapo"]) == {"mean_sq_norm", "trace_cov", "snr", "mean_sq_norm_ci95"}
    assert json.loads((out / "results.json").read_text())["runs"]["pgpo"]["after"]["n"] == 6
    sample = res["heatmap_sample"]
    assert len(sample["tokens"]) == len(sample["scores"]) == len(sample["importance"]) == len(sample["weights"])
    assert all(s >= 0 for s in sample["scores"]) and sum(sample["weights"]) == pytest.approx(len(sample["weights"]))
    assert res["gradvar_before"]["dapo"]["batches"] == 2
    # S against the ground-truth perception tokens of the taught answers, before and after each RL run
    for measured in (res["perception_before"], *(run["perception"] for run in res["runs"].values())):
        overall = measured["overall"]
        assert overall["n_responses"] == 6 and overall["n_image"] > 0 and 0.0 <= overall["auroc"] <= 1.0
    example = res["runs"]["pgpo"]["perception"]["example"]  # the heatmap's answer, with its ground truth
    assert len(example["tokens"]) == len(example["labels"]) == len(example["I"]) == len(example["w"])
    assert "image" in example["labels"] and example["question"].endswith("?")
    # step times, and the ratio PGPO / DAPO printed at the end
    assert all(run["median_step_seconds"] > 0 for run in res["runs"].values())
    assert res["pgpo_dapo_step_ratio"] == pytest.approx(
        res["runs"]["pgpo"]["median_step_seconds"] / res["runs"]["dapo"]["median_step_seconds"]
    )


def test_a_saved_demo_model_loads_with_load_model(results):
    from pgpo.models import load_model

    _, res = results
    model, processor = load_model(res["runs"]["pgpo"]["saved"])
    assert type(model).__name__ == "PGPOVLMForConditionalGeneration" and processor is not None


def test_report_tables_by_hand():
    runs = {
        "dapo": {"after": {"accuracy": 0.6, "per_family": {"count": 0.6}, "mean_completion_tokens": 30}, "history": []},
        "pgpo": {"after": {"accuracy": 0.7, "per_family": {"count": 0.7}, "mean_completion_tokens": 31}, "history": []},
    }
    seeds = []
    for d, p in [(0.6, 0.7), (0.5, 0.7), (0.7, 0.7)]:
        r = json.loads(json.dumps({"before": {"accuracy": 0.5, "per_family": {"count": 0.5}}, "runs": runs}))
        r["runs"]["dapo"]["after"]["accuracy"], r["runs"]["pgpo"]["after"]["accuracy"] = d, p
        seeds.append(r)
    diff = paired_difference([0.7, 0.7, 0.7], [0.6, 0.5, 0.7])
    # diffs .1 .2 0: mean .1, sd .1, t(0.975, 2) = 4.303 -> +- 4.303 * .1 / sqrt(3)
    assert diff["mean"] == pytest.approx(0.1) and diff["high"] - diff["mean"] == pytest.approx(4.303 * 0.1 / 3**0.5)
    tables = {title: rows for title, _, rows in report_tables(seeds)}
    paired = tables["Paired differences (same seed, same test questions)"]
    assert paired[0][0] == "dapo − warm start" and paired[0][1] == "+0.100"
    assert paired[1][0] == "pgpo − dapo" and paired[1][1] == "+0.100"
    assert tables["Held-out accuracy"][1][1] == "0.600 ± 0.100"


def test_report_has_real_tables_plots_and_heatmap(results, tmp_path):
    out, res = results
    md = write_report([res, res], tmp_path, "pgpo compare --seeds 2").read_text()
    assert "| pgpo |" in md and "| dapo |" in md and "± 0.000" in md and "pgpo − dapo" in md
    page = (tmp_path / "report.html").read_text()
    assert "<table>" in page and "<th>model</th>" in page and "<pre>" not in page  # rendered tables, not raw Markdown
    for name in (
        "accuracy.png",
        "reward.png",
        "accuracy_curve.png",
        "dependency_heatmap.png",
        "perception_heatmap.png",
    ):
        assert (tmp_path / name).stat().st_size > 1000, name


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(results, tmp_path):
    _, res = results
    write_report([res], tmp_path, "pgpo demo")
    pixels = screenshot(tmp_path / "report.html", 1200, 1600)
    assert pixels.shape[:2] == (1600, 1200) and pixels.var() > 0
    # the table header background (#f2f2f2) made it to the screen: a rendered table, not text
    assert ((abs(pixels - 242) < 2).all(-1)).sum() > 500


def test_rl_train_projector_leaves_the_language_model_untouched(results, tmp_path):
    import torch

    from pgpo.demo.run import train_one
    from pgpo.vlm import load_pgpo_vlm

    out, res = results
    warm_path = Path(res["warm_path"])
    cfg = toy_config(tmp_path, rl_train="projector", learning_rate=1e-2, eval_every=0, gradvar_batches=0)
    before, _ = load_pgpo_vlm(warm_path)
    after = dict(train_one("dapo", warm_path, cfg, tmp_path, log=lambda *_: None)["model"].named_parameters())
    lm = [n for n, _ in before.named_parameters() if ".language_model." in n]
    proj = [n for n, _ in before.named_parameters() if "projector" in n]
    assert lm and proj
    ref = dict(before.named_parameters())
    assert all(torch.equal(ref[n], after[n]) for n in lm)
    assert all(after[n].requires_grad for n in proj) and not any(after[n].requires_grad for n in lm)
    with pytest.raises(ValueError, match="rl_train"):
        DemoConfig(rl_train="lm")


def test_heatmap_marks_must_match_the_tokens(tmp_path):
    from pgpo.inspection import render_png

    path = render_png(["a", " red", " circle"], [0.0, 0.9, 0.5], 0.4, tmp_path / "h.png", marked=[False, True, True])
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="marks"):
        render_png(["a", " red"], [0.0, 0.9], 0.4, tmp_path / "x.png", marked=[True])


def test_demo_models_pick_their_warm_start_and_rl_defaults():
    from pgpo.demo.run import DEMO_RL_DEFAULTS
    from pgpo.demo.warmstart import DEMO_WARM_STARTS

    words, smol = DemoConfig(), DemoConfig(model="smollm2")
    assert words.warm == DEMO_WARM_STARTS["words"] and words.warm.language == "words"
    assert smol.warm == DEMO_WARM_STARTS["smollm2"] and smol.warm.language == "smollm2"
    for cfg, name in ((words, "words"), (smol, "smollm2")):
        assert {k: getattr(cfg, k) for k in DEMO_RL_DEFAULTS[name]} == DEMO_RL_DEFAULTS[name]
    assert DemoConfig(learning_rate=1e-3).learning_rate == 1e-3  # a flag overrides the model's default
    assert DemoConfig(families=["count,compare"]).warm.families == ("count", "compare")
    with pytest.raises(ValueError, match="model must be one of"):
        DemoConfig(model="gpt5")
    with pytest.raises(ValueError, match="eval_split"):
        DemoConfig(eval_split="train")


def test_median_step_time():
    from pgpo.demo.run import median

    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert math.isnan(median([]))
