"""Every pass that feeds the visual dependency runs without dropout (spec section 1: "in eval mode, dropout off").

The policy is the tiny Qwen2.5-VL with a PEFT LoRA of dropout 0.05 (configs/qwen25vl_7b_lora.yaml's), in train mode as
during training. A train-mode scoring carries dropout noise as large as the image's own effect on this model.
"""

import copy

import pytest
import torch
from PIL import Image

from pgpo.dependency import BlindPass, dropout_free, dropout_sites, sampled_token_logps, score_batch

T = 6


@pytest.fixture(scope="module")
def lora_qwen():
    """(policy with LoRA dropout 0.05, the same policy with TRL's disable_dropout applied, processor)."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import disable_dropout_in_model

    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    model, processor = build_tiny_qwen25vl(seed=0)
    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )  # random A and B: the adapter is not a no-op, so its dropout shows
    policy = get_peft_model(model, lora)
    plain = copy.deepcopy(policy)
    disable_dropout_in_model(plain)
    return policy, plain, processor


def _batch(processor):
    """Two image rows, left-padded prompts, a 6-token completion each (the layout TRL builds)."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    questions = ["What colour is the square?", "Is it round?"]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    images = [[Image.new("RGB", (56, 56), c)] for c in ((255, 0, 0), (0, 0, 255))]
    enc = processor(images=images, text=texts, padding=True, return_tensors="pt")
    completion = torch.randint(0, 1000, (2, T), generator=torch.Generator().manual_seed(0))
    batch = dict(enc)
    batch["input_ids"] = torch.cat([enc["input_ids"], completion], 1)
    batch["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(completion)], 1)
    if "mm_token_type_ids" in batch:
        batch["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(completion)], 1)
    return batch


def _modes(model):
    return [(name, m.training) for name, m in model.named_modules()]


def test_the_lora_dropout_is_there_and_matters(lora_qwen):
    """The premise: in train mode the policy's own forward is noisy (two forwards differ), and dropout_sites sees it."""
    policy, plain, processor = lora_qwen
    batch = _batch(processor)
    policy.train()
    with torch.no_grad():
        a, b = policy(**batch).logits, policy(**batch).logits
    assert (a - b).abs().max() > 1e-3
    sites = dropout_sites(policy)
    assert sites and all("lora_dropout" in name for name in sites)
    assert (
        dropout_sites(plain) == []
    )  # TRL's disable_dropout: p = 0 everywhere (the tiny Qwen's attention_dropout is 0)


@pytest.mark.parametrize("estimator", ["k3", "kl"])
def test_score_batch_is_dropout_free(lora_qwen, estimator):
    """S of a batch == S of the same batch with dropout disabled, two scorings are identical, the modes come back."""
    policy, plain, processor = lora_qwen
    batch = _batch(processor)
    policy.train()
    before = _modes(policy)
    first = score_batch(policy, batch, T, BlindPass(estimator))
    second = score_batch(policy, batch, T, BlindPass(estimator))
    assert torch.equal(first, second)
    plain.train()
    torch.testing.assert_close(first, score_batch(plain, batch, T, BlindPass(estimator)), atol=1e-6, rtol=1e-5)
    assert _modes(policy) == before and policy.training
    assert first.sum() > 0


def test_sampled_token_logps_are_dropout_free(lora_qwen):
    policy, plain, processor = lora_qwen
    batch = _batch(processor)
    policy.train()
    plain.train()
    got = sampled_token_logps(policy, batch, T)
    assert torch.equal(got, sampled_token_logps(policy, batch, T))
    torch.testing.assert_close(got, sampled_token_logps(plain, batch, T), atol=1e-6, rtol=1e-5)
    assert policy.training


class _Attention(torch.nn.Module):
    """Stands for a Hugging Face attention module: its dropout is a float applied functionally when training."""

    def __init__(self, p):
        super().__init__()
        self.attention_dropout = p


def _toy():
    """A model with a frozen demo-VLM vision tower (eval under train(), by its own override) holding a dropout, a
    layer someone put in eval by hand, a dropout, a disabled dropout and an attention module with dropout."""
    pytest.importorskip("torchvision")
    from pgpo.vlm.configuration import PGPOVLMConfig
    from pgpo.vlm.modeling import PGPOVisionTower

    model = torch.nn.Module()
    model.tower = PGPOVisionTower(PGPOVLMConfig(vision_blocks=2))
    model.tower.extra = torch.nn.Dropout(0.3)
    model.head = torch.nn.Linear(4, 4)
    model.drop = torch.nn.Dropout(0.1)
    model.off = torch.nn.Dropout(0.0)
    model.attn = _Attention(0.1)
    model.quiet = _Attention(0.0)
    return model


def test_dropout_free_restores_each_modules_mode():
    """Frozen parts kept in eval stay in eval (inside and after); training parts train again afterwards."""
    model = _toy()
    model.train()
    model.head.eval()  # kept in eval on purpose, without a train() override
    assert not model.tower.training and not model.tower.features.training and not model.tower.extra.training
    before = _modes(model)
    with dropout_free(model):
        assert not any(m.training for m in model.modules())
        with dropout_free(model):  # nested
            pass
        assert not any(m.training for m in model.modules())
    assert _modes(model) == before
    model.eval()
    with dropout_free(model):
        pass
    assert not any(m.training for m in model.modules())


def test_dropout_free_restores_the_mode_when_the_pass_raises():
    model = _toy()
    model.train()
    before = _modes(model)
    with pytest.raises(RuntimeError, match="boom"), dropout_free(model):
        raise RuntimeError("boom")
    assert _modes(model) == before


def test_dropout_sites_counts_what_drops_while_training():
    """nn.Dropout with p > 0 and attention_dropout floats, outside the frozen tower; every mode restored."""
    model = _toy()
    model.eval()
    before = _modes(model)
    assert dropout_sites(model) == ["drop", "attn"]
    assert _modes(model) == before
