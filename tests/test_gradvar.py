"""pgpo gradvar: the moments by hand, and the paired DAPO / PGPO gradients on the tiny model (PGPO with unit weights
gives exactly DAPO's statistics; real weights change them)."""

import math

import pytest
import torch

from pgpo.gradvar import GradVarConfig, RunningMoments, build_gradvar_trainer, gradient_variance
from pgpo.shaping import PGPOShapingConfig


def test_running_moments_by_hand():
    m = RunningMoments(2)
    for g in ([1.0, 2.0], [3.0, 4.0], [5.0, 0.0]):
        m.add(torch.tensor(g))
    s = m.summary()
    # mean [3, 2]; unbiased variances [4, 4] -> trace 8; E||g||^2 = (5 + 25 + 25) / 3; ||mean||^2 = 13
    assert s["trace_cov"] == pytest.approx(8.0) and s["mean_sq_norm"] == pytest.approx(55 / 3)
    assert s["mean_grad_sq_norm"] == pytest.approx(13.0) and s["snr"] == pytest.approx(13 / 8)
    with pytest.raises(ValueError, match="at least 2"):
        one = RunningMoments(1)
        one.add(torch.ones(1))
        one.summary()


def test_options_have_pgpo_trains_names(tmp_path, capsys):
    """``--tau`` / ``--beta`` were gradvar's (and inspect's) names for pgpo train's ``--pgpo_tau`` / ``--pgpo_beta``."""
    from pgpo.commands.parsing import parse_config

    assert parse_config(GradVarConfig, ["--model", "m", "--pgpo_tau", "0.3"], "pgpo gradvar").pgpo_tau == 0.3
    (tmp_path / "c.yaml").write_text("beta: 1.0\n")
    for argv, said in [
        (["--tau", "0.3"], "--tau is now --pgpo_tau"),
        (["--config", str(tmp_path / "c.yaml")], "'beta' in"),
    ]:
        with pytest.raises(SystemExit):
            parse_config(GradVarConfig, ["--model", "m", *argv], "pgpo gradvar")
        assert said in capsys.readouterr().err


def test_config_checks():
    with pytest.raises(ValueError, match="batches must be >= 2"):
        GradVarConfig(model="tiny-qwen", batches=1)
    with pytest.raises(ValueError, match="pgpo_tau"):
        GradVarConfig(model="tiny-qwen", pgpo_tau=2.0)
    with pytest.raises(ValueError, match="unknown"):
        GradVarConfig(model="tiny-qwen", families=["count,nope"])
    assert GradVarConfig(model="tiny-qwen", families=["count,clock"]).families == ["count", "clock"]


def _run(tmp_path, shaping):
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    model, processor = build_tiny_qwen25vl(seed=0)
    cfg = GradVarConfig(
        model="tiny-qwen",
        out=str(tmp_path),
        batches=2,
        prompts_per_batch=2,
        num_generations=4,
        max_completion_length=6,
        reward_funcs=["tests.test_trainer.length_reward"],
        image_size=56,
        families=["count"],
    )
    trainer = build_gradvar_trainer(cfg, model, processor)
    return gradient_variance(trainer, cfg.batches, shaping, params="lm_head")


def test_paired_gradients_on_the_tiny_model(tmp_path, monkeypatch):
    """PGPO's and DAPO's gradients come from the same rollouts; with unit weights (tau = beta = 0) PGPO's gradient is
    DAPO's exactly, with the paper's weights it differs."""
    import pgpo.gradvar as gv

    unit_equal = []
    original = gv.policy_gradient

    def both(trainer, batch, params):  # also the unit-weight gradient on the same batch, for the paired check
        g = original(trainer, batch, params)
        if batch["advantages"].dim() == 1:
            ones = batch["advantages"][:, None] * batch["completion_mask"].to(batch["advantages"].dtype)
            unit_equal.append(torch.allclose(original(trainer, {**batch, "advantages": ones}, params), g, atol=1e-7))
        return g

    monkeypatch.setattr(gv, "policy_gradient", both)
    shaped = _run(tmp_path / "shaped", PGPOShapingConfig())
    assert unit_equal == [True, True]
    for key in ("mean_sq_norm", "trace_cov", "snr"):
        assert math.isfinite(shaped.dapo[key]) and math.isfinite(shaped.pgpo[key])
    assert shaped.pgpo["mean_sq_norm"] != pytest.approx(shaped.dapo["mean_sq_norm"], rel=1e-6)
    assert 0 < shaped.gated_frac < 1 and shaped.n_params > 0
    assert set(shaped.to_dict()["pgpo_over_dapo"]) == {"mean_sq_norm", "trace_cov", "snr", "mean_sq_norm_ci95"}


def test_paired_ratio_interval_by_hand():
    from pgpo.gradvar import paired_ratio_interval

    # PGPO's squared norm exactly half of DAPO's on every batch: every resample gives 0.5
    assert paired_ratio_interval([1.0, 2.0, 4.0], [2.0, 4.0, 8.0]) == pytest.approx([0.5, 0.5])
    # batches resampled together: the interval holds the point estimate and lies within the extreme resamples
    num, den = [1.0, 3.0, 2.0, 5.0], [2.0, 2.0, 4.0, 4.0]
    lo, hi = paired_ratio_interval(num, den)
    assert lo <= sum(num) / sum(den) <= hi
    per_batch = [a / b for a, b in zip(num, den)]
    assert min(per_batch) <= lo < hi <= max(per_batch)
    with pytest.raises(ValueError, match="paired"):
        paired_ratio_interval([1.0], [1.0])
