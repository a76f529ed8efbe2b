"""The blind pass on the real Qwen2.5-VL code path (tiny random weights, real processor and tokenizer).

The reference for text_only_mode="mask" (tests/reference/masked.py) is written independently of the library: the
literal full-length forward of the image-conditioned batch (pixel values included) with the visual tokens' attention
mask set to 0 and the original position ids passed, with eager attention.
"""

import re

import pytest
import torch
from PIL import Image
from reference.masked import literal_masked_logps, make_batch

from pgpo.dependency import BlindPass, sampled_token_logps, score_batch
from pgpo.text_only import (
    ImageTokenSpec,
    blind_batch,
    counterfactual_batch,
    image_pass_position_ids,
    image_token_spec,
    remove_reindex_batch,
    text_only_prompt,
)

ROWS = [(1, "How many red circles are there?"), (2, "Compare the two pictures."), (0, "What is 2+2?")]
COMPLETIONS = ["There are three circles.", "The left one is red", "4"]


@pytest.fixture(scope="module")
def eager_qwen():
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    model, processor = build_tiny_qwen25vl(seed=0)
    model.set_attn_implementation("eager")
    return model, processor


def test_position_ids_are_the_image_passs_own(eager_qwen):
    """image_pass_position_ids == the M-RoPE ids the model's rotary embedding receives in a real image forward."""
    model, processor = eager_qwen
    batch, T, _ = make_batch(processor, ROWS, COMPLETIONS)
    _, captured = literal_masked_logps(model, batch, T, torch.tensor([model.config.image_token_id]))
    positions = image_pass_position_ids(model, batch)
    assert positions.shape == (3, 3, batch["input_ids"].shape[1])
    assert torch.equal(positions, captured)
    # M-RoPE: the tokens after an image do not sit at their index (they would in a text-only re-indexed prompt)
    assert not torch.equal(positions[0, 0], torch.arange(positions.shape[-1]))


@pytest.mark.parametrize("mask_delimiters", [False, True])
def test_blind_pass_equals_the_literal_masked_forward(eager_qwen, mask_delimiters):
    model, processor = eager_qwen
    batch, T, cmask = make_batch(processor, ROWS, COMPLETIONS)
    spec = image_token_spec(model.config)
    hidden = torch.tensor(spec.hidden_ids(mask_delimiters))
    ref, _ = literal_masked_logps(model, batch, T, hidden)
    blind = blind_batch(batch, T, spec, image_pass_position_ids(model, batch), mask_delimiters=mask_delimiters)
    assert "pixel_values" not in blind and "image_grid_thw" not in blind  # the vision tower does not run
    assert not torch.isin(blind["input_ids"][:, :-T], hidden).any()
    assert torch.equal(blind["input_ids"][:, -T:], batch["input_ids"][:, -T:])
    with torch.no_grad():
        got = sampled_token_logps(model, blind, T)
    torch.testing.assert_close(got * cmask, ref * cmask, atol=1e-5, rtol=0)


def test_delimiters_visible_by_default_and_the_option_changes_the_result(eager_qwen):
    model, processor = eager_qwen
    batch, T, cmask = make_batch(processor, ROWS[:2], COMPLETIONS[:2])
    spec = image_token_spec(model.config)
    pos = image_pass_position_ids(model, batch)
    visible = blind_batch(batch, T, spec, pos)
    hidden = blind_batch(batch, T, spec, pos, mask_delimiters=True)
    assert (visible["input_ids"] == spec.start_token_id).sum() == 3  # one per image
    assert (hidden["input_ids"] == spec.start_token_id).sum() == 0
    with torch.no_grad():
        a, b = sampled_token_logps(model, visible, T), sampled_token_logps(model, hidden, T)
    assert not torch.allclose(a * cmask, b * cmask, atol=1e-4)


def test_blind_pass_does_not_see_the_image_but_the_image_pass_does(eager_qwen):
    """Two different images of the same size: identical blind log-probs, different image-conditioned ones."""
    model, processor = eager_qwen
    rows, comps = ROWS[:1], COMPLETIONS[:1]
    a, T, cmask = make_batch(processor, rows, comps, images=[[Image.new("RGB", (56, 56), (255, 0, 0))]])
    noise = Image.fromarray((torch.rand(56, 56, 3) * 255).to(torch.uint8).numpy())
    b, _, _ = make_batch(processor, rows, comps, images=[[noise]])
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["pixel_values"], b["pixel_values"])
    spec = image_token_spec(model.config)
    with torch.no_grad():
        blind_a = sampled_token_logps(model, blind_batch(a, T, spec, image_pass_position_ids(model, a)), T)
        blind_b = sampled_token_logps(model, blind_batch(b, T, spec, image_pass_position_ids(model, b)), T)
        img_a, img_b = sampled_token_logps(model, a, T), sampled_token_logps(model, b, T)
    assert torch.equal(blind_a, blind_b)
    assert not torch.allclose(img_a, img_b, atol=1e-4)


def test_mask_differs_from_remove_reindex_because_positions_matter(eager_qwen):
    model, processor = eager_qwen
    batch, T, cmask = make_batch(processor, ROWS, COMPLETIONS)
    spec = image_token_spec(model.config)
    pad = processor.tokenizer.pad_token_id
    masked = counterfactual_batch(batch, T, "mask", spec, position_ids=image_pass_position_ids(model, batch))
    removed = counterfactual_batch(batch, T, "remove_reindex", spec, pad_token_id=pad)
    with torch.no_grad():
        a, b = sampled_token_logps(model, masked, T), sampled_token_logps(model, removed, T)
    valid = cmask.bool()
    assert (a[:2] - b[:2]).abs()[valid[:2]].max() > 1e-3  # rows with an image: shifted positions change the output
    torch.testing.assert_close(a[2][valid[2]], b[2][valid[2]], atol=1e-5, rtol=0)  # no image: nothing moves


def test_score_batch_k3_and_kl(eager_qwen):
    """score_batch: >= 0, exactly 0 on padding, ~0 on the row without an image, k3 and kl both finite."""
    model, processor = eager_qwen
    batch, T, cmask = make_batch(processor, ROWS, COMPLETIONS)
    for estimator in ("k3", "kl"):
        s = score_batch(model, batch, T, BlindPass(estimator, pad_token_id=processor.tokenizer.pad_token_id))
        assert s.shape == (3, T) and (s >= 0).all() and torch.isfinite(s).all()
        assert (s[~cmask.bool()] == 0).all()
        assert s[:2][cmask[:2].bool()].sum() > 0
        torch.testing.assert_close(s[2], torch.zeros(T), atol=1e-6, rtol=0)


def test_blind_batch_layout_by_hand():
    """Right-aligned kept prompt tokens, original positions, completion columns untouched, any input padding."""
    spec = ImageTokenSpec(image_token_id=9, start_token_id=7, end_token_id=8)
    ids = torch.tensor([[0, 0, 1, 7, 9, 9, 8, 2, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 5, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    pos = torch.tensor([[0, 0, 0, 1, 2, 2, 4, 5, 6, 7], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]])
    out = blind_batch({"input_ids": ids, "attention_mask": mask}, 2, spec, pos, pad_token_id=0)
    # row 0 keeps 1, 7, 8, 2 (the two 9s and the pads are dropped); row 1 keeps all 8 prompt tokens
    assert out["input_ids"].tolist() == [[0, 0, 0, 0, 1, 7, 8, 2, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 5, 0]]
    assert out["attention_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]]
    assert out["position_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 4, 5, 6, 7], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
    hidden = blind_batch({"input_ids": ids, "attention_mask": mask}, 2, spec, pos, mask_delimiters=True)
    assert hidden["input_ids"][0].tolist()[-4:] == [1, 2, 5, 6] and hidden["position_ids"][0].tolist()[-4:] == [
        0,
        5,
        6,
        7,
    ]
    pos3 = torch.stack([pos, pos + 100, pos + 200])
    out3 = blind_batch({"input_ids": ids, "attention_mask": mask}, 2, spec, pos3)
    assert out3["position_ids"].shape == (3, 2, 10)
    assert out3["position_ids"][1][0].tolist() == [0, 0, 0, 0, 100, 101, 104, 105, 106, 107]


def test_llava_style_run_of_image_tokens_and_video_tokens():
    spec = ImageTokenSpec(image_token_id=9, video_token_id=11)
    ids = torch.tensor([[1, 9, 9, 9, 2, 11, 11, 3, 4]])
    out = blind_batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 2, spec, torch.arange(9)[None])
    assert out["input_ids"].tolist() == [[1, 2, 3, 4]] and out["position_ids"].tolist() == [[0, 4, 7, 8]]


def test_blind_batch_refuses_image_tokens_in_the_completion_and_bad_shapes():
    spec = ImageTokenSpec(image_token_id=9)
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 9, 4]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with pytest.raises(ValueError, match="row 1: image tokens inside the completion"):
        blind_batch(batch, 2, spec, torch.arange(4).expand(2, 4))
    with pytest.raises(ValueError, match="position_ids shape"):
        blind_batch(batch, 2, spec, torch.arange(5)[None])
    with pytest.raises(ValueError, match="logits_to_keep"):
        blind_batch(batch, 4, spec, torch.arange(4).expand(2, 4))
    with pytest.raises(ValueError, match="needs the image-conditioned"):
        counterfactual_batch(batch, 2, "mask", spec)
    with pytest.raises(ValueError, match="text_only_mode"):
        counterfactual_batch(batch, 2, "erase", spec)
    with pytest.raises(ValueError, match="image token id"):
        image_token_spec(object())


# ----------------------------------------------------------------------------------------------- remove_reindex


def test_remove_reindex_decodes_to_prompt_minus_image_span(tiny_qwen):
    model, processor = tiny_qwen
    tok = processor.tokenizer
    batch, T, cmask = make_batch(processor, ROWS, COMPLETIONS)
    text = remove_reindex_batch(batch, T, image_token_spec(model.config), tok.pad_token_id)
    assert "pixel_values" not in text and "image_grid_thw" not in text
    assert torch.equal(text["input_ids"][:, -T:], batch["input_ids"][:, -T:])
    for i in range(len(ROWS)):
        full = tok.decode(batch["input_ids"][i][batch["attention_mask"][i].bool()])
        stripped = tok.decode(text["input_ids"][i][text["attention_mask"][i].bool()])
        assert stripped == re.sub(r"<\|vision_start\|>(<\|image_pad\|>)*<\|vision_end\|>", "", full)
    prompt_mask = text["attention_mask"][:, :-T]
    assert (prompt_mask.cummax(1).values == prompt_mask).all()  # left padding kept


def test_remove_reindex_right_padding_and_unclosed_spans():
    spec = ImageTokenSpec(image_token_id=9, start_token_id=7, end_token_id=8)
    ids = torch.tensor([[1, 7, 9, 9, 8, 2, 0, 0], [1, 2, 3, 4, 5, 6, 0, 0]])
    mask = (torch.arange(8) < 6).long().expand(2, 8)
    new_ids, new_mask = text_only_prompt(ids, mask, spec, pad_token_id=0)
    assert new_ids.tolist() == [[1, 2, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]]
    assert new_mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    for bad, msg in [([1, 7, 9, 9, 2], "not closed"), ([1, 9, 8, 2, 3], "unbalanced"), ([1, 9, 2, 3, 4], "outside")]:
        with pytest.raises(ValueError, match=msg):
            text_only_prompt(torch.tensor([bad]), torch.ones(1, len(bad), dtype=torch.long), spec, pad_token_id=0)


def test_blank_mode_keeps_ids_and_zeroes_pixels(tiny_qwen):
    model, processor = tiny_qwen
    batch, T, cmask = make_batch(processor, ROWS[:2], COMPLETIONS[:2])
    text = counterfactual_batch(batch, T, "blank", image_token_spec(model.config))
    assert torch.equal(text["input_ids"], batch["input_ids"]) and (text["pixel_values"] == 0).all()
    s = score_batch(model, batch, T, BlindPass(text_only_mode="blank"))
    assert torch.isfinite(s).all() and (s >= 0).all()
