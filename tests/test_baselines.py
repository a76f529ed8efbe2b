"""The baselines as their own code does them: VPPO's patch blackout, PAPO's mask and loss terms (hand computations),
their reduction to DAPO, DAPO's dynamic sampling inside the trainer, VPPO's normalisation scope; the presets and the
GPU configs against Table 6 and EasyR1's defaults (TRL's delta as EasyR1's dual clip)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from reference.trainers import colour_dataset, make_trainer
from reference.trainers import final_params as _final_params
from reference.trainers import max_diff as _max_diff
from reference.trl_loss import trl_loss

from pgpo.loss_terms import LOSS_TERMS, LossContext, get_loss_term, register_loss_term
from pgpo.loss_terms.papo import perception_kl
from pgpo.text_only import black_pixel, blacken_image, blacken_patches

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qwen_image_processor():
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl_processor

    return build_tiny_qwen25vl_processor().image_processor


def test_patch_blackout_fraction_is_the_probability():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(20_000, 12)
    out = blacken_patches(rows, 0.5, torch.tensor([-1.0, -2.0, -3.0]), gen)
    hit = (out == torch.tensor([-1.0] * 4 + [-2.0] * 4 + [-3.0] * 4)).all(1)
    assert abs(hit.double().mean().item() - 0.5) < 0.02
    assert torch.equal(out[~hit], rows[~hit])  # the other patches are untouched
    images = torch.randn(40, 3, 56, 56)
    out = blacken_patches(images, 0.5, torch.zeros(3), torch.Generator().manual_seed(1))
    cells = (out == 0).all(1).view(40, 4, 14, 4, 14).all(4).all(2)  # 14-px cells that are entirely black
    assert abs(cells.double().mean().item() - 0.5) < 0.05
    partial = blacken_patches(torch.randn(1, 3, 20, 20), 1.0, torch.zeros(3), torch.Generator())
    assert (partial == 0).all()  # the partial cells at the right and bottom edges are cells too


def test_blackened_qwen_patches_are_exactly_a_black_image_after_the_processors_normalisation(qwen_image_processor):
    """A row of Qwen's pixel_values is one 14-px patch: blackening it equals processing an image black there."""
    proc = qwen_image_processor
    image = Image.fromarray((torch.rand(56, 56, 3) * 255).to(torch.uint8).numpy())
    clean = proc(images=[image], return_tensors="pt")["pixel_values"]
    black_image = image.copy()
    black_image.paste((0, 0, 0), (0, 0, 14, 14))  # the top-left 14-px cell
    reference = proc(images=[black_image], return_tensors="pt")["pixel_values"]
    changed = (reference != clean).any(1)
    assert changed.sum() == 1  # aligned: exactly one row (patch) holds that cell
    row = int(changed.nonzero()[0])
    black = black_pixel(proc)
    every = blacken_patches(clean, 1.0, black, torch.Generator())
    torch.testing.assert_close(every[row], reference[row], atol=1e-5, rtol=0)
    torch.testing.assert_close(black.float(), torch.tensor([-1.7923, -1.7521, -1.4802]), atol=1e-4, rtol=0)


def test_papo_mask_on_the_raw_image_one_mask_per_prompt():
    image = Image.new("RGB", (70, 42), (200, 100, 50))
    masked = blacken_image(image, 0.6, torch.Generator().manual_seed(5))
    assert masked.size == image.size
    pixels = torch.from_numpy(np.asarray(masked)).long()
    cells = (pixels == 0).all(-1).view(3, 14, 5, 14).all(3).all(1)
    assert 0 < cells.sum() < 15  # 15 cells of 14 px, each black with probability 0.6
    again = blacken_image(image, 0.6, torch.Generator().manual_seed(5))
    assert list(again.getdata()) == list(
        masked.getdata()
    )  # the same generator -> the same mask (a prompt's G rollouts)
    many = [
        blacken_image(Image.new("RGB", (140, 140), "white"), 0.6, torch.Generator().manual_seed(s)) for s in range(40)
    ]
    frac = float(np.mean([(np.asarray(m) == 0).all(-1).mean() for m in many]))
    assert abs(frac - 0.6) < 0.03


def _ctx(logps, masked, mask):
    return LossContext(logps=logps, mask=mask, inputs={"masked_image_logps": masked})


def test_papo_and_entropy_terms_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, 0.0]], requires_grad=True)
    masked = torch.tensor([[-1.5, -2.0, -30.0], [-1.0, -4.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # d = masked - logps = [[-.5, 0, -29.5 -> -20], [2, -3, .]]; k = e^d - d - 1, clamped to 10
    d = [-0.5, 0.0, -20.0, 2.0, -3.0]
    k = [min(math.exp(x) - x - 1, 10.0) for x in d]
    kl = sum(k) / 5
    term, metrics = get_loss_term("papo_perception").fn(_ctx(logps, masked, mask), 0.01)  # unscaled: the trainer scales
    assert term.item() == pytest.approx(-0.01 * kl) and metrics["perception_kl"] == pytest.approx(kl)
    term.backward()
    assert logps.grad is not None and logps.grad[1, 2] == 0  # padding gets no gradient
    entropy, m = get_loss_term("entropy_penalty").fn(_ctx(logps, masked, mask), 0.06)
    assert entropy.item() == pytest.approx(0.06 * (1 + 2 + 0.5 + 3 + 1) / 5) and m["sampled_entropy"] == pytest.approx(
        1.5
    )
    masked_entropy, _ = get_loss_term("papo_masked_entropy").fn(_ctx(logps, masked, mask), 0.03)
    assert masked_entropy.item() == pytest.approx(0.03 * (1.5 + 2 + 30 + 1 + 4) / 5)
    assert not masked_entropy.requires_grad  # PAPO's masked-side entropy carries no gradient (PAPO issue #20)
    assert perception_kl(torch.zeros(1, 1), torch.full((1, 1), 50.0)).item() == 10.0  # both clamps


def test_loss_term_registry():
    assert {"entropy_penalty", "papo_perception", "papo_masked_entropy"} <= set(LOSS_TERMS)
    assert get_loss_term("papo_perception").needs == ("masked_image_logps",)
    with pytest.raises(ValueError, match="unknown loss term 'kl_bonus'"):
        get_loss_term("kl_bonus")
    with pytest.raises(ValueError, match="already registered"):
        register_loss_term("entropy_penalty", config=lambda a: 0.0)(lambda ctx, cfg: None)


# ----------------------------------------------------------------------------------------------- trainer


def test_vppo_with_p_1_and_m_1_and_papo_with_coefficient_0_equal_dapo(tmp_path):
    dapo = make_trainer(tmp_path / "dapo", "dapo")
    dapo.train()
    vppo = make_trainer(
        tmp_path / "vppo", "vppo", vppo_top_p_tokens=1.0, vppo_advantage_scaling_min=1.0, entropy_penalty_coef=0.0
    )
    vppo.train()
    papo = make_trainer(
        tmp_path / "papo", "papo", papo_coef=0.0, entropy_penalty_coef=0.0, papo_masked_entropy_coef=0.0
    )
    papo.train()
    a = _final_params(dapo)
    assert _max_diff(a, _final_params(vppo)) < 1e-6
    assert _max_diff(a, _final_params(papo)) < 1e-6
    logs = [h for h in papo.state.log_history if "loss" in h]
    assert all(math.isfinite(h["loss_terms/perception_kl"]) and h["loss_terms/perception_kl"] >= 0 for h in logs)
    papo_on = make_trainer(tmp_path / "papo_on", "papo", max_steps=1)  # PAPO's own coefficients: a different update
    papo_on.train()
    assert _max_diff(a, _final_params(papo_on)) > 1e-7


def _kinds_dataset(kinds):
    base = colour_dataset(len(kinds))
    return Dataset.from_dict({"prompt": list(base["prompt"]), "image": list(base["image"]), "kind": kinds})


def known_groups_reward(completions, kind, **kwargs):
    """zero / one: every rollout gets 0 / 1 (no spread: dropped); mixed: 1 for the first rollout of its group."""
    return [1.0 if k == "one" else float(k == "mixed" and i % 4 == 0) for i, k in enumerate(kind)]


def test_dapo_trains_only_on_mixed_groups_and_refills(tmp_path, monkeypatch):
    from pgpo.trainer import PGPOTrainer

    seen = []
    original = PGPOTrainer._dynamic_sample

    def spy(self, inputs):
        output, rows = original(self, inputs)
        seen.append((rows, output))
        return output, rows

    monkeypatch.setattr(PGPOTrainer, "_dynamic_sample", spy)
    kinds = ["zero", "one", "mixed", "zero", "one", "mixed", "one", "zero"]
    trainer = make_trainer(tmp_path, "dapo", per_device_train_batch_size=8, max_steps=1)
    trainer.train_dataset = _kinds_dataset(kinds)
    trainer.reward_funcs = [known_groups_reward]
    trainer.reward_func_names = ["known_groups_reward"]
    trainer._sampler = trainer._build_sampler()
    trainer.train()
    assert len(seen) == 1
    for rows, output in seen:
        assert [r["kind"] for r in rows] == ["mixed"] * 8  # full: two mixed groups, nothing else
        assert output["completion_ids"].shape[0] == 8 and (output["advantages"] != 0).any()
        assert output["num_items_in_batch"].item() == output["completion_mask"].sum().item()
    logs = [h for h in trainer.state.log_history if "dynamic_sampling/rounds" in h]
    assert all(h["dynamic_sampling/rounds"] > 1 and h["dynamic_sampling/kept_frac"] < 1 for h in logs)
    assert all(h["dynamic_sampling/filled_frac"] == 0 for h in logs)


def test_vppo_scores_each_process_share_of_the_generation_batch(tmp_path, monkeypatch):
    """VPPO's TAS normalises over the batch it is given: the trainer gives it the whole local generation batch (here
    2 micro-batches of 4), once per generation, not each training micro-batch (pgpo/shaping/vppo.py's docstring)."""
    import dataclasses

    from pgpo.shaping import SHAPING_METHODS, vppo

    method, seen = SHAPING_METHODS["vppo"], []

    def spy(advantages, dependency, mask, cfg):
        seen.append(advantages.shape[0])
        return method.fn(advantages, dependency, mask, cfg)

    monkeypatch.setitem(SHAPING_METHODS, "vppo", dataclasses.replace(method, fn=spy))
    trainer = make_trainer(
        tmp_path, "vppo", steps_per_generation=2, max_steps=2, dynamic_sampling_fallback="fill", max_sampling_rounds=2
    )
    trainer.train()
    assert seen == [8]  # one generation of 8 rows (2 groups of 4) serves both optimizer steps
    assert "each process's share of the generation batch" in " ".join(vppo.__doc__.split())


# ----------------------------------------------------------------------------------------------- presets and configs
GPU_CONFIGS = ["configs/qwen25vl_3b_pgpo.yaml", "configs/qwen25vl_7b_pgpo.yaml"]


def test_no_preset_turns_on_overlong_masking():
    """Table 6, EasyR1's DAPO example, VPPO-RL and PAPO filter no overlong completions, and grpo does not either: a
    preset that did would confound GRPO vs DAPO. It stays an option (TRL's mask_truncated_completions)."""
    from pgpo.config import ALGORITHM_PRESETS, PGPOConfig

    for name, preset in ALGORITHM_PRESETS.items():
        assert "mask_truncated_completions" not in preset, name
        assert PGPOConfig(**preset, use_cpu=True).mask_truncated_completions is False, name
    assert PGPOConfig(**ALGORITHM_PRESETS["dapo"], use_cpu=True, mask_truncated_completions=True)


def test_presets_turn_off_trls_vllm_importance_sampling_correction():
    """EasyR1 has no such step; TRL's default (on) masks whole sequences whose HF / vLLM likelihood ratio exceeds 3."""
    from pgpo.config import ALGORITHM_PRESETS

    assert all(p["vllm_importance_sampling_correction"] is False for p in ALGORITHM_PRESETS.values())


def test_grpo_presets_clip_as_easyr1s_default():
    from pgpo.config import ALGORITHM_PRESETS

    for name in ("grpo", "pgpo_grpo"):
        assert (ALGORITHM_PRESETS[name]["epsilon"], ALGORITHM_PRESETS[name]["epsilon_high"]) == (0.2, 0.3), name


@pytest.mark.parametrize("path", GPU_CONFIGS)
def test_gpu_configs_add_easyr1s_defaults_and_set_the_vllm_correction(path, tmp_path):
    """The 3B / 7B configs resolve to Table 6 plus EasyR1's defaults the paper's runs inherit (weight decay 1e-2,
    dual-clip 3.0 = TRL's delta), and say in the YAML itself whether TRL's vLLM correction runs."""
    import yaml

    from pgpo.commands.train import parse_args

    config = ROOT / path
    raw = yaml.safe_load(config.read_text())
    assert raw["use_vllm"] is True and raw["vllm_importance_sampling_correction"] is False  # set there, explicitly
    # --use_cpu: this machine has no GPU (the config asks for bf16, which transformers refuses on a CPU otherwise)
    _, args, _, algorithm = parse_args(["--config", str(config), "--use_cpu", "true", "--output_dir", str(tmp_path)])
    assert algorithm == "pgpo"
    assert (args.loss_type, args.epsilon, args.epsilon_high, args.beta) == ("dapo", 0.2, 0.28, 0.0)
    assert args.dynamic_sampling and not args.mask_truncated_completions
    assert (args.weight_decay, args.delta) == (0.01, 3.0)
    assert args.vllm_importance_sampling_correction is False
    assert (args.num_generations, args.learning_rate, args.lr_scheduler_type) == (5, 1e-6, "constant")
    assert (args.temperature, args.top_p, args.max_completion_length) == (1.0, 0.99, 2048)


def _easyr1_policy_loss(logps, old_logps, advantages, mask, clip_low, clip_high, clip_dual):
    """EasyR1's ``compute_policy_loss`` (verl/trainer/core_algos.py, loss_type "default", loss_avg_mode "token"),
    transcribed: the clipped loss, and for negative advantages the dual clip ``min(., -A * clip_dual)``."""
    log_ratio = logps - old_logps
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    clipped_ratio = torch.exp(torch.clamp(log_ratio, math.log(1.0 - clip_low), math.log(1.0 + clip_high)))
    pg_loss, pg_loss2, pg_loss3 = -advantages * ratio, -advantages * clipped_ratio, -advantages * clip_dual
    higher = torch.max(pg_loss, pg_loss2)
    final = torch.where(advantages < 0, torch.min(higher, pg_loss3), higher)
    return (final * mask).sum() / mask.sum()


@pytest.mark.parametrize("delta", [3.0, None])
def test_trls_delta_is_easyr1s_dual_clip(delta):
    """TRL's two-sided clip (``delta``) equals EasyR1's dual-clip PPO with C = delta, loss and gradient, whenever
    delta > 1 + epsilon_high; without it (TRL's default) the loss differs where A < 0 and the ratio exceeds 3."""
    g = torch.Generator().manual_seed(0)
    old = torch.randn(6, 9, generator=g, dtype=torch.float64) - 2
    base = old + 1.5 * torch.randn(6, 9, generator=g, dtype=torch.float64)  # ratios from ~0.01 to ~100
    adv = torch.randn(6, 9, generator=g, dtype=torch.float64)  # per-token, as PGPO hands them to the loss
    mask = (torch.arange(9)[None] < torch.tensor([[9], [7], [5], [9], [3], [8]])).long()
    assert (((base - old).exp() > 3) & (adv < 0) & mask.bool()).any()  # the dual clip has tokens to act on
    x1, x2 = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    trl = trl_loss(x1, old, adv, mask, "dapo", 0.2, 0.28, delta=delta)
    easyr1 = _easyr1_policy_loss(x2, old, adv, mask.double(), 0.2, 0.28, 3.0)
    trl.backward()
    easyr1.backward()
    if delta is None:
        assert abs(trl.item() - easyr1.item()) > 1e-3
        return
    torch.testing.assert_close(trl, easyr1, atol=1e-12, rtol=0)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-12, rtol=0)
