"""PGPOTrainer on the tiny random Qwen2.5-VL (real tokenizer): every algorithm trains, PGPO with unit weights is GRPO."""

import math

import pytest
import torch
from datasets import Dataset
from PIL import Image

from pgpo.config import ALGORITHM_PRESETS, PGPOConfig
from pgpo.trainer import PGPOTrainer

COLOURS = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (240, 200, 0)]


def colour_dataset(n=8):
    images = [Image.new("RGB", (56, 56), COLOURS[i % 4]) for i in range(n)]
    prompts = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}] for _ in range(n)
    ]
    return Dataset.from_dict({"prompt": prompts, "image": images, "answer": ["x"] * n})


def length_reward(completions, **kwargs):
    """Deterministic, non-constant reward so that groups have non-zero advantages."""
    return [float(sum(map(ord, c[0]["content"])) % 5) for c in completions]


def make_trainer(tmp_path, algorithm="pgpo", model=None, **overrides):
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    model, processor = build_tiny_qwen25vl(seed=0) if model is None else model
    kwargs = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    kwargs.update(ALGORITHM_PRESETS[algorithm])
    kwargs.update(overrides)
    args = PGPOConfig(**kwargs)
    return PGPOTrainer(
        model=model, reward_funcs=length_reward, args=args, train_dataset=colour_dataset(), processing_class=processor
    )


METRICS = [
    "dependency/mean",
    "dependency/p50",
    "dependency/p90",
    "shaping/gated_frac",
    "shaping/weight_gated",
    "shaping/weight_ungated",
    "grad_norm",
    "grad_norm/running_var",
]


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "dr_grpo", "vppo", "pgpo"])
def test_each_algorithm_trains(tmp_path, algorithm):
    # 8-token completions are all truncated here; DAPO's preset would mask every one of them out of the loss.
    trainer = make_trainer(tmp_path, algorithm, log_visual_dependency=True, mask_truncated_completions=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    changed = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)
    assert changed > 0
    expected = METRICS if algorithm in ("pgpo", "vppo") else [m for m in METRICS if not m.startswith("shaping")]
    for key in expected:
        values = [h[key] for h in logs if key in h]
        assert values and all(math.isfinite(v) for v in values), (key, logs[-1])
    if algorithm == "pgpo":
        assert 0 < logs[-1]["shaping/gated_frac"] < 1
        assert logs[-1]["shaping/weight_gated"] > 1 > logs[-1]["shaping/weight_ungated"]


def _final_params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_pgpo_with_unit_weights_equals_grpo(tmp_path):
    """alpha = 0, beta = 1 makes every raw weight 1, so w = 1: the update must be GRPO's, bit for bit (to 1e-6)."""
    grpo = make_trainer(tmp_path / "grpo", "grpo")
    grpo.train()
    unit = make_trainer(tmp_path / "unit", "pgpo", pgpo_alpha=0.0, pgpo_beta=1.0)
    unit.train()
    shaped = make_trainer(tmp_path / "pgpo", "pgpo")
    shaped.train()
    a, b, c = _final_params(grpo), _final_params(unit), _final_params(shaped)
    max_diff = max((a[n] - b[n]).abs().max().item() for n in a)
    assert max_diff < 1e-6
    assert max((a[n] - c[n]).abs().max().item() for n in a) > 1e-6  # real shaping does change the update
    ga = [h["grad_norm"] for h in grpo.state.log_history if "grad_norm" in h]
    gb = [h["grad_norm"] for h in unit.state.log_history if "grad_norm" in h]
    assert ga == pytest.approx(gb, abs=1e-6)


@pytest.fixture
def own_passes(monkeypatch):
    """Counts PGPO's own no-grad image-conditioned passes (``PGPOTrainer._score_output`` calls)."""
    calls = {"own": 0}
    original = PGPOTrainer._score_output

    def counting(self, output):
        calls["own"] += 1
        return original(self, output)

    monkeypatch.setattr(PGPOTrainer, "_score_output", counting)
    return calls


def test_dependency_shared_with_old_logprob_pass(tmp_path, own_passes):
    """When TRL runs its no-grad old-log-prob pass, PGPO scores inside it: one image forward, not two."""
    trainer = make_trainer(tmp_path, "pgpo", steps_per_generation=2, gradient_accumulation_steps=1, max_steps=2)
    assert trainer._trl_runs_old_logps_pass()
    trainer.train()
    assert own_passes["own"] == 0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(h["shaping/gated_frac"]) for h in logs if "shaping/gated_frac" in h)


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_dependency_from_training_forward_equals_own_pass(tmp_path, own_passes, gradient_checkpointing):
    """Aligned configuration: p_image from the training forward gives the update of PGPO's own no-grad pass."""
    calls = own_passes
    own = make_trainer(tmp_path / "own", "pgpo", dependency_from_training_forward=False)
    own.train()
    assert calls["own"] == 2
    hooked = make_trainer(
        tmp_path / "hooked",
        "pgpo",
        dependency_from_training_forward=True,
        gradient_checkpointing=gradient_checkpointing,
    )
    assert hooked._can_score_in_training_forward()
    hooked.train()
    assert calls["own"] == 2  # no own image-conditioned pass
    a, b = _final_params(own), _final_params(hooked)
    assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-5
    keys = ("dependency/mean", "dependency/p90", "shaping/gated_frac", "shaping/weight_gated", "grad_norm")
    logs = [[h for h in t.state.log_history if "loss" in h] for t in (own, hooked)]
    for key in keys:
        assert [h[key] for h in logs[0]] == pytest.approx([h[key] for h in logs[1]], rel=1e-4), key


def test_config_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="advantage_shaping"):
        PGPOConfig(output_dir=str(tmp_path), use_cpu=True, advantage_shaping="ppo")
    with pytest.raises(ValueError, match="text_only_mode"):
        PGPOConfig(output_dir=str(tmp_path), use_cpu=True, text_only_mode="crop")
    with pytest.raises(ValueError, match="beta"):
        PGPOConfig(output_dir=str(tmp_path), use_cpu=True, pgpo_beta=2.0)


# ----------------------------------------------------------------------------------------------- bad data


def test_missing_and_unreadable_image_files_name_the_row(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (56, 56), (255, 0, 0)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n not really a png")
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    for bad, msg in [(str(tmp_path / "missing.png"), "row 2: image file not found"), (str(broken), "row 2: image")]:
        ds = Dataset.from_dict({"prompt": [prompt] * 4, "image": [str(good), str(good), bad, str(good)]})
        with pytest.raises(ValueError, match=msg):
            PGPOTrainer(
                model=build_model(),
                reward_funcs=length_reward,
                args=small_args(tmp_path),
                train_dataset=ds,
                processing_class=build_model()[1],
            )


def build_model():
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(seed=0)


def small_args(tmp_path, **kw):
    return PGPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=4,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        **kw,
    )


def test_empty_prompt_names_the_row(tmp_path):
    ds = colour_dataset()
    prompts = list(ds["prompt"])
    prompts[5] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  "}]}]
    ds = Dataset.from_dict({"prompt": prompts, "image": list(ds["image"])})
    model, processor = build_model()
    with pytest.raises(ValueError, match="row 5: empty prompt"):
        PGPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=small_args(tmp_path),
            train_dataset=ds,
            processing_class=processor,
        )


def test_reward_function_raising_names_function_and_sample(tmp_path):
    ds = colour_dataset().add_column("id", [f"q{i}" for i in range(8)])

    def picky(completions, id, **kwargs):
        if "q0" in id:
            raise KeyError("no gold answer")
        return [1.0] * len(completions)

    model, processor = build_model()
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=picky,
        args=small_args(tmp_path, shuffle_dataset=False),
        train_dataset=ds,
        processing_class=processor,
    )
    with pytest.raises(RuntimeError, match=r"reward function 'picky' raised KeyError.*id='q0'"):
        trainer.train()


def test_nan_reward_is_a_counted_skip_not_a_nan_loss(tmp_path):
    def half_nan(completions, **kwargs):
        return [float("nan") if i % 4 == 0 else float(i % 3) for i in range(len(completions))]

    model, processor = build_model()
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=half_nan,
        args=small_args(tmp_path, logging_steps=1),
        train_dataset=colour_dataset(),
        processing_class=processor,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert math.isfinite(logs[0]["loss"]) and logs[0]["rewards/unscorable_frac"] == pytest.approx(0.25)


def test_peft_lora_trains_and_scores_dependency_through_the_adapter(tmp_path):
    from peft import LoraConfig

    model, processor = build_model()
    trainer = PGPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=small_args(tmp_path, logging_steps=1, learning_rate=1e-2),
        train_dataset=colour_dataset(),
        processing_class=processor,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert lora
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert math.isfinite(logs[0]["loss"]) and math.isfinite(logs[0]["shaping/gated_frac"])
    assert any(not torch.equal(lora[n], p) for n, p in trainer.model.named_parameters() if n in lora)


def test_yaml_peft_section_becomes_model_config_options(tmp_path):
    import yaml

    from pgpo.commands.train import _flatten_peft

    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"learning_rate": 1e-5, "peft": {"r": 16, "alpha": 32, "target_modules": ["q_proj"]}})
    )
    flat = yaml.safe_load(open(_flatten_peft(str(path))))
    assert flat == {
        "learning_rate": 1e-5,
        "use_peft": True,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_modules": ["q_proj"],
    }
