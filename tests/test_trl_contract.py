"""Each private TRL behaviour PGPOTrainer relies on, one small test each (TRL 1.16), so that a TRL upgrade that changes
one fails here, by name, instead of silently turning PGPO into DAPO."""

import inspect
from types import SimpleNamespace

import pytest
import torch
from reference.trainers import make_trainer
from reference.trl_loss import trl_loss
from trl import GRPOTrainer

from pgpo.scoring import TRL_FORWARD_KEYS
from pgpo.text_only import IMAGE_KEYS, PER_TOKEN_KEYS
from pgpo.trainer import PGPOTrainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return make_trainer(tmp_path_factory.mktemp("contract"), "pgpo", max_steps=1)


def test_compute_loss_takes_per_token_advantages():
    """PGPO hands TRL [B, T] advantages; TRL must use them per token (a [B, T] of equal columns == the [B] case)."""
    g = torch.Generator().manual_seed(0)
    logps = torch.randn(3, 5, generator=g, dtype=torch.float64) - 2
    old = logps + 0.1 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.long)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    seq = trl_loss(logps, old, adv, mask, "dapo", 0.2, 0.28)
    per_token = trl_loss(logps, old, adv[:, None].expand(3, 5).clone(), mask, "dapo", 0.2, 0.28)
    torch.testing.assert_close(seq, per_token, atol=0, rtol=0)
    shaped = adv[:, None] * torch.tensor([[2.0, 0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    assert not torch.allclose(trl_loss(logps, old, shaped, mask, "dapo", 0.2, 0.28), seq)


def test_compute_loss_runs_the_policy_forward_before_it_reads_the_advantages():
    """The training_forward source shapes inputs['advantages'] inside the policy forward: TRL must read them after."""
    stub_logps = torch.zeros(2, 3, dtype=torch.float64)
    inputs_seen = {}

    def forward(*args, **kwargs):
        inputs_seen["inputs"]["advantages"] = torch.tensor([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
        return stub_logps, torch.zeros_like(stub_logps), None

    base = dict(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=0.0,
        loss_type="dapo",
        epsilon_low=0.2,
        epsilon_high=0.28,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction="sum": x),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        max_completion_length=3,
        _metrics={"train": __import__("collections").defaultdict(list)},
        _get_per_token_logps_and_entropies=forward,
    )
    inputs = {
        "prompt_ids": torch.zeros(2, 1, dtype=torch.long),
        "prompt_mask": torch.ones(2, 1, dtype=torch.long),
        "completion_ids": torch.zeros(2, 3, dtype=torch.long),
        "completion_mask": torch.ones(2, 3, dtype=torch.long),
        "advantages": torch.tensor([1.0, 1.0], dtype=torch.float64),
        "num_items_in_batch": torch.tensor(6.0),
    }
    inputs_seen["inputs"] = inputs
    loss = GRPOTrainer._compute_loss(SimpleNamespace(**base), None, inputs)
    assert loss.item() == pytest.approx(-5.0)  # ratio 1: loss = -mean(A) with the advantages set in the forward


def test_per_token_logps_signature_and_model_call():
    """TRL's micro-batched log-prob helper takes the image keys PGPO forwards and calls the model with
    ``labels=...`` and ``fused_lm_head=True``, reading ``.log_probs``."""
    params = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    assert {"batch_size", "pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids"} <= set(params)
    assert set(TRL_FORWARD_KEYS) <= set(IMAGE_KEYS + PER_TOKEN_KEYS) and "pixel_values" in TRL_FORWARD_KEYS
    calls = []

    def model(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(log_probs=torch.zeros(kwargs["input_ids"].shape), entropy=None, aux_loss=None)

    stub = SimpleNamespace(
        accelerator=SimpleNamespace(autocast=__import__("contextlib").nullcontext, is_main_process=True)
    )
    ids = torch.ones(4, 6, dtype=torch.long)
    out, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(stub, model, ids, torch.ones_like(ids), 3, batch_size=2)
    assert out.shape == (4, 3) and len(calls) == 2
    assert calls[0]["fused_lm_head"] is True and calls[0]["labels"][:, :-3].eq(-100).all()


def test_fused_head_passes_position_ids_to_the_backbone(trainer):
    """The blind pass calls TRL's fused-head forward with explicit position ids: they must reach the backbone."""
    model = trainer.model
    ids = torch.randint(0, 1000, (2, 7))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :3] = -100
    positions = torch.tensor([0, 1, 2, 9, 10, 11, 12]).expand(2, 7)  # a jump (RoPE ignores a uniform shift)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
        b = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels, fused_lm_head=True
        ).log_probs
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, :-1].float()
    assert not torch.allclose(a, b)
    ref = torch.log_softmax(full, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(b[:, 2:], ref[:, 2:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides,runs_pass", [({}, False), ({"steps_per_generation": 2}, True)])
def test_old_logps_pass_condition(tmp_path, overrides, runs_pass):
    """TRL computes old_per_token_logps exactly when gradient_accumulation_steps % (steps_per_generation *
    num_iterations) != 0 (or vLLM importance sampling): what PGPOTrainer._trl_runs_old_logps_pass mirrors."""
    t = make_trainer(tmp_path, "pgpo", dependency_from_training_forward=False, **overrides)
    assert t._trl_runs_old_logps_pass() == runs_pass
    seen = {}
    original = PGPOTrainer._shape_advantages

    def spy(self, batch, scores, mode):
        seen["has_old"] = "old_per_token_logps" in batch
        return original(self, batch, scores, mode)

    t._shape_advantages = spy.__get__(t)
    t.args.max_steps = 1
    t.train()
    assert seen["has_old"] == runs_pass


def test_calculate_rewards_returns_the_gathered_rewards(trainer):
    """Dynamic sampling decides on the rewards TRL gathered over processes: [N_global, n_reward_funcs]."""
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "image": None}] * 4
    completions = [[{"role": "assistant", "content": c}] for c in ("a", "bb", "ccc", "dddd")]
    out = GRPOTrainer._calculate_rewards(trainer, rows, [r["prompt"] for r in rows], completions, [[1]] * 4)
    assert out.shape == (4, 1) and torch.isfinite(out).all()


def test_attributes_pgpo_reads(trainer):
    for name in ("temperature", "num_generations", "reward_func_names", "reward_weights", "_metrics", "_tokenizer"):
        assert hasattr(trainer, name), name
    assert trainer.args.generation_batch_size % trainer.num_generations == 0


def test_pixel_value_split_round_trip():
    """TRL's split / unsplit of pixel_values by image grid (dynamic sampling selects rows in the split layout)."""
    from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

    batch = {
        "pixel_values": torch.arange(10.0)[:, None].expand(10, 3),
        "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 3]]),
        "num_images": [1, 1],
        "advantages": torch.tensor([1.0, 2.0]),
    }
    split = split_pixel_values_by_grid(batch)
    assert [p.shape[0] for p in split["pixel_values"]] == [4, 6]
    merged = unsplit_pixel_values_by_grid(split)
    assert torch.equal(merged["pixel_values"], batch["pixel_values"])
    assert torch.equal(merged["image_grid_thw"], batch["image_grid_thw"])


def test_pgpo_config_resolves_trls_deprecated_checkpointing_name_without_a_warning():
    """TRL's GRPOConfig sets transformers' deprecated `gradient_checkpointing` (default True); PGPOConfig maps it to
    `activation_checkpointing` itself: same values, no FutureWarning on every run."""
    import warnings

    from pgpo.config import PGPOConfig

    cpu = {"use_cpu": True, "bf16": False, "output_dir": "unused"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert PGPOConfig(**cpu).activation_checkpointing is True  # TRL's default kept
        off = PGPOConfig(**cpu, gradient_checkpointing=False)
        assert off.activation_checkpointing is False and off.gradient_checkpointing is False
        new = PGPOConfig(**cpu, activation_checkpointing=False)
        assert new.activation_checkpointing is False and new.gradient_checkpointing is False
