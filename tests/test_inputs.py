"""Text-only inputs and model-level dependency on the real Qwen2.5-VL code path (tiny random weights)."""

import pytest
import torch
from PIL import Image

from pgpo.dependency import compute_visual_dependency
from pgpo.inputs import ImageTokenSpec, build_text_only_batch, image_token_spec, text_only_prompt


def _messages(n_images, text):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def make_batch(processor, rows, completions):
    """rows: list of (n_images, question). Returns (batch, logits_to_keep, completion_mask) like TRL builds them."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    texts = [
        processor.apply_chat_template(_messages(n, q), add_generation_prompt=True, tokenize=False) for n, q in rows
    ]
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 0)]
    images = [[Image.new("RGB", (56, 56), colours[(i + j) % 4]) for j in range(n)] for i, (n, _) in enumerate(rows)]
    has_images = any(images)
    enc = processor(images=images if has_images else None, text=texts, padding=True, return_tensors="pt")
    comp = [
        tok(c, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")] for c in completions
    ]
    T = max(map(len, comp))
    comp_ids = torch.full((len(comp), T), tok.pad_token_id)
    comp_mask = torch.zeros(len(comp), T, dtype=torch.long)
    for i, c in enumerate(comp):
        comp_ids[i, : len(c)] = torch.tensor(c)
        comp_mask[i, : len(c)] = 1
    batch = dict(enc)
    batch["input_ids"] = torch.cat([enc["input_ids"], comp_ids], 1)
    batch["attention_mask"] = torch.cat([enc["attention_mask"], comp_mask], 1)
    if "mm_token_type_ids" in batch:
        batch["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(comp_ids)], 1)
    return batch, T, comp_mask


ROWS = [(1, "How many red circles are there?"), (2, "Compare the two pictures."), (0, "What is 2+2?")]
COMPLETIONS = ["There are three circles.", "The left one is red", "4"]


def test_text_only_decodes_to_prompt_minus_image_span(tiny_qwen):
    model, processor = tiny_qwen
    tok = processor.tokenizer
    batch, T, cmask = make_batch(processor, ROWS, COMPLETIONS)
    spec = image_token_spec(model.config)
    text = build_text_only_batch(batch, T, spec, tok.pad_token_id)
    assert "pixel_values" not in text and "image_grid_thw" not in text
    assert torch.equal(text["input_ids"][:, -T:], batch["input_ids"][:, -T:])
    assert torch.equal(text["attention_mask"][:, -T:], batch["attention_mask"][:, -T:])
    for i in range(len(ROWS)):
        full = tok.decode(batch["input_ids"][i][batch["attention_mask"][i].bool()])
        stripped = tok.decode(text["input_ids"][i][text["attention_mask"][i].bool()])
        import re

        expected = re.sub(r"<\|vision_start\|>(<\|image_pad\|>)*<\|vision_end\|>", "", full)
        assert stripped == expected
        assert "<|image_pad|>" not in stripped and "<|vision_start|>" not in stripped
    # left padding kept: every row ends with valid tokens where the completion is valid; pads only at the start
    prompt_mask = text["attention_mask"][:, :-T]
    assert (prompt_mask.cummax(1).values == prompt_mask).all()
    # the prompt without image is unchanged
    assert torch.equal(
        text["input_ids"][2][text["attention_mask"][2].bool()], batch["input_ids"][2][batch["attention_mask"][2].bool()]
    )


def test_right_padding_is_kept():
    spec = ImageTokenSpec(image_token_id=9, start_token_id=7, end_token_id=8)
    ids = torch.tensor([[1, 7, 9, 9, 8, 2, 0, 0], [1, 2, 3, 4, 5, 6, 0, 0]])
    mask = (torch.arange(8) < 6).long().expand(2, 8)
    new_ids, new_mask = text_only_prompt(ids, mask, spec, pad_token_id=0)
    assert new_ids.tolist() == [[1, 2, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]]
    assert new_mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]


def test_llava_style_run_of_image_tokens():
    spec = ImageTokenSpec(image_token_id=9)
    ids = torch.tensor([[0, 1, 9, 9, 9, 2, 3]])
    new_ids, new_mask = text_only_prompt(ids, torch.tensor([[0, 1, 1, 1, 1, 1, 1]]), spec, pad_token_id=0)
    assert new_ids.tolist() == [[1, 2, 3]] and new_mask.tolist() == [[1, 1, 1]]


@pytest.mark.parametrize(
    "ids,msg",
    [
        ([1, 7, 9, 9, 2], "not closed"),
        ([1, 9, 8, 2, 3], "unbalanced"),
        ([1, 9, 2, 3, 4], "outside"),
    ],
)
def test_unclosed_span_raises(ids, msg):
    spec = ImageTokenSpec(image_token_id=9, start_token_id=7, end_token_id=8)
    with pytest.raises(ValueError, match=msg):
        text_only_prompt(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), spec, pad_token_id=0)


def test_bad_shapes_and_modes_raise():
    spec = ImageTokenSpec(image_token_id=9)
    with pytest.raises(ValueError, match="shape"):
        text_only_prompt(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), spec, 0)
    batch = {"input_ids": torch.ones(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with pytest.raises(ValueError, match="text_only_mode"):
        build_text_only_batch(batch, 2, spec, 0, mode="erase")
    with pytest.raises(ValueError, match="logits_to_keep"):
        build_text_only_batch(batch, 5, spec, 0)
    with pytest.raises(ValueError, match="image token id"):
        image_token_spec(object())


def test_model_dependency_shape_padding_and_no_image_rows(tiny_qwen):
    model, processor = tiny_qwen
    batch, T, cmask = make_batch(processor, ROWS, COMPLETIONS)
    text = build_text_only_batch(batch, T, image_token_spec(model.config), processor.tokenizer.pad_token_id)
    out = compute_visual_dependency(model, batch, text, T, cmask, chunk_size=3, return_logps=True)
    assert out.scores.shape == (3, T)
    assert (out.scores[~cmask.bool()] == 0).all()
    assert (out.scores[:2][cmask[:2].bool()] > 0).all()  # random weights: the image changes every prediction
    torch.testing.assert_close(out.scores[2], torch.zeros(T), atol=1e-6, rtol=0)  # no image -> no dependency
    # the logps are the image-conditioned log-probs of the completion tokens (full-logits reference)
    with torch.no_grad():
        logits = model(**batch).logits[:, -T - 1 : -1].float()
        ref = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, -T:, None]).squeeze(-1) * cmask
        ref_txt = model(**text).logits[:, -T - 1 : -1].float()
    torch.testing.assert_close(out.logps, ref, atol=1e-4, rtol=1e-4)
    from pgpo.dependency import token_kl

    torch.testing.assert_close(out.scores, token_kl(logits, ref_txt, cmask), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["blank", "noise"])
def test_blank_and_noise_modes_keep_ids(tiny_qwen, mode):
    model, processor = tiny_qwen
    batch, T, cmask = make_batch(processor, ROWS[:2], COMPLETIONS[:2])
    text = build_text_only_batch(batch, T, image_token_spec(model.config), processor.tokenizer.pad_token_id, mode=mode)
    assert torch.equal(text["input_ids"], batch["input_ids"])
    assert not torch.equal(text["pixel_values"], batch["pixel_values"])
    out = compute_visual_dependency(model, batch, text, T, cmask)
    assert out.scores.shape == (2, T) and torch.isfinite(out.scores).all() and (out.scores >= 0).all()


def test_model_level_bad_input(tiny_qwen):
    model, processor = tiny_qwen
    batch, T, cmask = make_batch(processor, ROWS[:2], COMPLETIONS[:2])
    text = build_text_only_batch(batch, T, image_token_spec(model.config), processor.tokenizer.pad_token_id)
    bad = dict(text)
    bad["input_ids"] = text["input_ids"].clone()
    bad["input_ids"][0, -1] += 1
    with pytest.raises(ValueError, match="completion tokens differ"):
        compute_visual_dependency(model, batch, bad, T, cmask)
    with pytest.raises(ValueError, match="completion_mask shape"):
        compute_visual_dependency(model, batch, text, T, cmask[:, :-1])
