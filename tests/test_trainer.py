"""PGPOTrainer on the tiny random Qwen2.5-VL (real tokenizer): every algorithm trains, PGPO with unit weights is GRPO."""

import logging
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from PIL import Image
from reference.trainers import colour_dataset, length_reward, make_trainer
from reference.trainers import final_params as _final_params
from reference.trainers import max_diff as _max_diff

from pgpo.config import ALGORITHM_PRESETS, PGPOConfig
from pgpo.scoring import Scorer
from pgpo.trainer import PGPOTrainer

METRICS = [
    "dependency/mean",
    "dependency/mean_log1p",
    "dependency/p50",
    "dependency/p90",
    "dependency/frac_above_10",
    "shaping/gated_frac",
    "shaping/weight_gated",
    "shaping/weight_ungated",
    "grad_norm",
    "grad_norm/running_var",
]


@pytest.mark.parametrize("algorithm", list(ALGORITHM_PRESETS))
def test_each_algorithm_trains(tmp_path, algorithm):
    trainer = make_trainer(tmp_path, algorithm, log_visual_dependency=True, max_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 1 and all(math.isfinite(h["loss"]) for h in logs)
    changed = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)
    assert changed > 0
    shaped = ALGORITHM_PRESETS[algorithm]["advantage_shaping"] != "none"
    expected = METRICS if shaped else [m for m in METRICS if not m.startswith("shaping")]
    if trainer.args.dynamic_sampling:
        expected = expected + ["dynamic_sampling/rounds", "dynamic_sampling/kept_frac"]
    expected = expected + [f"loss_terms/{name}" for name in trainer.args.loss_terms]
    tau = trainer.args.pgpo_tau
    # The ablations' empty token sets: tau = 1 gates no token (I < 1 by eps), tau = 0 gates every token (I >= 0).
    undefined = {1.0: "shaping/weight_gated", 0.0: "shaping/weight_ungated"}.get(tau) if shaped else None
    for key in expected:
        values = [h[key] for h in logs if key in h]
        if key == undefined:
            assert all(v is None or math.isnan(v) for v in values), (key, logs[-1])
            continue
        assert values and all(math.isfinite(v) for v in values), (key, logs[-1])
    if algorithm.startswith("pgpo"):
        gated = logs[-1]["shaping/gated_frac"]
        if tau == 1.0:
            assert gated == 0 and logs[-1]["shaping/weight_ungated"] == pytest.approx(1.0)  # mass kept (Eq. 7)
        elif tau == 0.0:
            assert gated == 1 and logs[-1]["shaping/weight_gated"] == pytest.approx(1.0)
        else:
            assert 0 < gated < 1
            assert logs[-1]["shaping/weight_gated"] > 1 > logs[-1]["shaping/weight_ungated"]


def test_default_config_is_the_papers_pgpo(tmp_path):
    args = PGPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (args.advantage_shaping, args.dependency_estimator, args.text_only_mode) == ("pgpo", "k3", "mask")
    assert (args.pgpo_tau, args.pgpo_beta, args.pgpo_eps, args.pgpo_normalize) == (0.4, 2.0, 1e-8, True)
    assert (args.loss_type, args.epsilon, args.epsilon_high, args.beta) == ("dapo", 0.2, 0.28, 0.0)
    assert args.k3_clamp == "none" and not args.mask_vision_delimiters


def test_pgpo_with_unit_weights_equals_dapo(tmp_path):
    """tau = 0 and beta = 0 make every weight exactly 1: the update must be plain DAPO's (to 1e-6)."""
    dapo = make_trainer(tmp_path / "dapo", "dapo")
    dapo.train()
    unit = make_trainer(tmp_path / "unit", "pgpo", pgpo_tau=0.0, pgpo_beta=0.0)
    unit.train()
    shaped = make_trainer(tmp_path / "pgpo", "pgpo")
    shaped.train()
    a, b, c = _final_params(dapo), _final_params(unit), _final_params(shaped)
    assert _max_diff(a, b) < 1e-6
    assert _max_diff(a, c) > 1e-6  # real shaping does change the update
    ga = [h["grad_norm"] for h in dapo.state.log_history if "grad_norm" in h]
    gb = [h["grad_norm"] for h in unit.state.log_history if "grad_norm" in h]
    assert ga == pytest.approx(gb, abs=1e-6)


@pytest.fixture
def image_passes(monkeypatch):
    """Counts PGPO's own image-conditioned passes: Scorer.sampled_logps calls on batches without position_ids (the
    blind batch of text_only_mode='mask' always has them)."""
    calls = {"image": 0, "blind": 0}
    original = Scorer.sampled_logps

    def counting(self, batch, logits_to_keep):
        calls["blind" if "position_ids" in batch else "image"] += 1
        return original(self, batch, logits_to_keep)

    monkeypatch.setattr(Scorer, "sampled_logps", counting)
    return calls


@pytest.mark.parametrize(
    "overrides,source",
    [
        ({}, "training_forward"),
        ({"steps_per_generation": 2, "gradient_accumulation_steps": 1}, "trl_old_logps"),
        ({"dependency_from_training_forward": False}, "own_pass"),
        ({"dependency_estimator": "kl"}, "own_pass"),
        ({"advantage_shaping": "vppo"}, "own_pass"),
        ({"advantage_shaping": "none"}, "none"),
        ({"advantage_shaping": "none", "log_visual_dependency": True}, "training_forward"),
    ],
)
def test_the_dependency_source_is_decided_once_per_configuration(tmp_path, overrides, source):
    assert make_trainer(tmp_path, "pgpo", **overrides).dependency_source == source


def _logged(trainer, keys=("loss", "dependency/mean", "dependency/p90", "shaping/gated_frac", "grad_norm")):
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {k: [h.get(k) for h in logs] for k in keys}  # generation-time metrics appear on generation steps only


def _assert_same_logs(a, b):
    for key in a:
        assert [x is None for x in a[key]] == [y is None for y in b[key]], key
        assert [x for x in a[key] if x is not None] == pytest.approx([y for y in b[key] if y is not None], rel=1e-4), (
            key
        )


def test_training_forward_source_equals_own_pass(tmp_path, image_passes):
    """TRL's default configuration: log pi_img from the training forward gives the update of PGPO's own pass."""
    own = make_trainer(tmp_path / "own", "pgpo", dependency_from_training_forward=False)
    assert own.dependency_source == "own_pass"
    own.train()
    assert image_passes["image"] == 2 and image_passes["blind"] == 2
    hooked = make_trainer(tmp_path / "tf", "pgpo", gradient_checkpointing=True)  # the training forward checkpointed
    assert hooked.dependency_source == "training_forward"
    hooked.train()
    assert image_passes["image"] == 2 and image_passes["blind"] == 4  # no image pass of its own
    assert _max_diff(_final_params(own), _final_params(hooked)) < 1e-5
    a, b = _logged(own), _logged(hooked)
    _assert_same_logs(a, b)


def test_trl_old_logps_source_equals_own_pass(tmp_path, image_passes, monkeypatch):
    """When TRL runs its old-log-prob pass, PGPO reuses its log-probs: no image pass of its own, same update."""
    overrides = dict(steps_per_generation=2, gradient_accumulation_steps=1, max_steps=2)
    shared = make_trainer(tmp_path / "shared", "pgpo", **overrides)
    assert shared.dependency_source == "trl_old_logps"
    shared.train()
    assert image_passes["image"] == 0 and image_passes["blind"] == 1
    monkeypatch.setattr(PGPOTrainer, "_choose_dependency_source", lambda self: "own_pass")
    own = make_trainer(tmp_path / "own", "pgpo", **overrides)
    own.train()
    assert image_passes["image"] == 1
    assert _max_diff(_final_params(shared), _final_params(own)) < 1e-5
    a, b = _logged(shared), _logged(own)
    _assert_same_logs(a, b)


def test_trainer_dependency_equals_the_library_score_batch(tmp_path):
    """The trainer's scores (TRL's fused head, micro-batched) == pgpo.dependency.score_batch on the same batch.

    In float32: TRL's configs default to bf16 autocast (on the CPU too), under which both sides carry bf16 noise."""
    from pgpo.dependency import BlindPass, score_batch

    trainer = make_trainer(tmp_path, "pgpo", dependency_from_training_forward=False, bf16=False)
    captured = {}
    original = trainer._shape_advantages

    def keep(batch, scores, mode):
        captured.update(batch=dict(batch), scores=scores.clone())
        return original(batch, scores, mode)

    trainer._shape_advantages = keep
    trainer.train()
    out = captured["batch"]
    batch = {k: out[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in out}
    batch["input_ids"] = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    batch["attention_mask"] = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    # the weights of the last generation batch are those after step 1; score with a copy of them
    ref_model = make_trainer(tmp_path / "ref", "pgpo", dependency_from_training_forward=False, max_steps=1, bf16=False)
    ref_model.train()
    blind = BlindPass(temperature=ref_model.temperature)
    ref = score_batch(ref_model.model, batch, out["completion_ids"].shape[1], blind)
    torch.testing.assert_close(captured["scores"], ref, atol=1e-5, rtol=1e-4)


def test_config_rejects_bad_options(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True)
    for kwargs, msg in [
        ({"advantage_shaping": "ppo"}, "unknown advantage_shaping 'ppo'"),
        ({"text_only_mode": "crop"}, "text_only_mode"),
        ({"dependency_estimator": "k2"}, "dependency_estimator"),
        ({"k3_clamp": "tight"}, "k3_clamp"),
        ({"pgpo_tau": 1.5}, "pgpo_tau"),
        ({"pgpo_tau": float("nan")}, "pgpo_tau"),
        ({"pgpo_beta": -1.0}, "pgpo_beta"),
        ({"pgpo_eps": float("inf")}, "pgpo_eps"),
        ({"vppo_top_p_tokens": 0.0, "advantage_shaping": "vppo"}, "vppo_top_p_tokens"),
        ({"epsilon_high": float("nan")}, "epsilon_high"),
        ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, "loss_type"),
    ]:
        with pytest.raises(ValueError, match=msg):
            PGPOConfig(**base, **kwargs)


def test_a_text_only_model_is_refused_when_dependency_is_scored(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from pgpo.models.tiny_qwen import build_tiny_qwen25vl_processor

    tok = build_tiny_qwen25vl_processor().tokenizer
    cfg = AutoConfig.for_model(
        "qwen2",
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    text_ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]] * 8})
    with pytest.raises(ValueError, match="needs a vision-language model"):
        PGPOTrainer(
            model=AutoModelForCausalLM.from_config(cfg),
            reward_funcs=length_reward,
            args=small_args(tmp_path),
            train_dataset=text_ds,
            processing_class=tok,
        )


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


# ----------------------------------------------------------------------------------------------- dropout-free scoring


def lora_dropout_trainer(tmp_path, **kw):
    """The tiny Qwen2.5-VL with a PEFT LoRA of dropout 0.05 (configs/qwen25vl_7b_lora.yaml's); random A and B, so the
    adapter (and its dropout) changes the output from the start."""
    from peft import LoraConfig

    model, processor = build_model()
    torch.manual_seed(0)
    return PGPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=small_args(tmp_path, logging_steps=1, **kw),
        train_dataset=colour_dataset(),
        processing_class=processor,
        peft_config=LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )


@pytest.mark.parametrize("overrides", [{}, {"steps_per_generation": 2, "gradient_accumulation_steps": 1}])
def test_with_dropout_log_p_image_comes_from_a_dropout_free_pass(tmp_path, caplog, overrides):
    """TRL's training forward and its old-log-prob pass run in train mode: with dropout, PGPO scores its own pass,
    and says so at start."""
    with caplog.at_level(logging.INFO, logger="pgpo.trainer"):
        trainer = lora_dropout_trainer(tmp_path, **overrides)
    assert trainer.dropout_sites and all("lora_dropout" in name for name in trainer.dropout_sites)
    assert trainer.dependency_source == "own_pass"
    assert "dropout-free" in caplog.text and "applies dropout while it trains" in caplog.text


def test_scoring_with_lora_dropout_is_dropout_free(tmp_path):
    """In training (train mode, LoRA dropout 0.05): S of a batch == S of the same batch with the dropout disabled,
    and scoring it again gives the same S."""
    trainer = lora_dropout_trainer(tmp_path)
    dropouts = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert dropouts
    seen = []
    original = trainer._shape_advantages

    def check(batch, scores, mode):
        assert trainer.model.training
        again = trainer.visual_dependency(batch)
        for m in dropouts:
            m.p = 0.0  # what TRL's disable_dropout does
        try:
            without = trainer.visual_dependency(batch)
        finally:
            for m in dropouts:
                m.p = 0.05
        seen.append((scores.clone(), again, without, trainer.model.training))
        return original(batch, scores, mode)

    trainer._shape_advantages = check
    trainer.train()
    assert seen
    for scores, again, without, training in seen:
        assert training  # the scoring passes gave the model its train mode back
        assert torch.equal(scores, again)
        torch.testing.assert_close(scores, without, atol=1e-6, rtol=1e-5)
        assert scores.sum() > 0


def test_frac_above_10_is_logged_and_the_same_with_or_without_the_clamp():
    """dependency/frac_above_10: the share of valid tokens with S >= 10, k3_clamp='vppo''s ceiling (a clamped S of
    exactly 10 counts, so the number does not depend on the clamp)."""
    from pgpo.dependency import VPPO_K3_CLAMP, k3_dependency

    d = torch.tensor([[5.5, -3.0, 0.0, 2.0, 9.0], [-12.0, 0.1, 0.0, -30.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    fracs = []
    for clamp in (None, VPPO_K3_CLAMP):
        scores = k3_dependency(torch.zeros_like(d), d, mask, clamp=clamp)
        fake = SimpleNamespace(_metrics={"train": defaultdict(list)}, _gathered=lambda v: v)
        PGPOTrainer._log_dependency(fake, scores, mask, "train")
        fracs.append(fake._metrics["train"]["dependency/frac_above_10"])
    assert fracs == [[pytest.approx(2 / 7)]] * 2  # d = +5.5 (S = 238) and d = -12 (S = 11); padding not counted


# ----------------------------------------------------------------------------------------------- extending
# A new loss term is one function and its options; a new shaping method is one function, chosen with
# PGPOConfig(advantage_shaping=...). Each is registered here as a toy and trained for a step.


def test_a_toy_loss_term_is_one_function_and_trains_a_step(tmp_path):
    from pgpo.loss_terms import LOSS_TERMS, masked_mean, register_loss_term

    seen = []

    @register_loss_term("_toy_mean_logp", config=lambda args: 0.5)
    def toy(ctx, coef):
        value = coef * masked_mean(ctx.logps, ctx.mask)
        seen.append(value.item())
        return value, {"toy_mean_logp": value.item() / coef}

    try:
        trainer = make_trainer(tmp_path, "dapo", loss_terms=["_toy_mean_logp"], max_steps=1)
        trainer.train()
        # The trainer scales the terms once, by the gradient-accumulation steps TRL divides its own loss by.
        logps = torch.tensor([[-1.0, -3.0]])
        inputs = {"completion_mask": torch.ones(1, 2)}
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 4
        assert trainer._loss_terms_value(logps, inputs).item() == pytest.approx(0.5 * -2.0 / 4)
    finally:
        LOSS_TERMS.pop("_toy_mean_logp")
    logs = [h for h in trainer.state.log_history if "loss_terms/_toy_mean_logp" in h]
    assert seen and logs
    assert logs[0]["loss_terms/_toy_mean_logp"] == pytest.approx(sum(seen[:-1]) / len(seen[:-1]))  # unscaled
    assert logs[0]["loss_terms/toy_mean_logp"] == pytest.approx(2 * logs[0]["loss_terms/_toy_mean_logp"])


def test_a_toy_shaping_method_set_through_the_config_trains_a_step(tmp_path):
    from pgpo.shaping import SHAPING_METHODS, ShapingResult, register_shaping

    seen = []

    @register_shaping("_toy_half", config=lambda args: 0.5)
    def half(advantages, dependency, mask, cfg):
        seen.append(dependency.shape)
        w = mask.to(advantages.dtype) * cfg
        return ShapingResult(
            advantages=advantages[:, None] * w, weights=w, gate=torch.zeros_like(mask, dtype=torch.bool)
        )

    try:
        trainer = make_trainer(tmp_path, "pgpo", advantage_shaping="_toy_half", max_steps=1)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
    finally:
        SHAPING_METHODS.pop("_toy_half")
    assert seen and all(len(shape) == 2 for shape in seen)  # [B, T] dependency, per micro-batch or per generation
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logs = [h for h in trainer.state.log_history if "shaping/gated_frac" in h]
    assert logs and logs[0]["shaping/gated_frac"] == 0.0 and logs[0]["shaping/weight_ungated"] == pytest.approx(0.5)
