"""Test oracle for the blind pass (``text_only_mode="mask"``), written independently of the library.

The reference is the literal full-length forward of the image-conditioned batch (image tensors included) with the
visual tokens' attention mask set to 0 and the position ids the image-conditioned forward itself uses (captured from
the language model's rotary embedding), under eager attention. :func:`make_batch` builds a prompt + completion batch
as TRL does (left-padded prompts, right-padded completions ending in ``<|im_end|>``) for any processor whose chat
template renders ``{"type": "image"}``.
"""

from __future__ import annotations

import torch
from PIL import Image

COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 0)]


def messages(n_images, text):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def make_batch(processor, rows, completions, images=None, size=56):
    """rows: list of (n_images, question). Returns (batch, logits_to_keep, completion_mask) as TRL builds them:
    left-padded prompts, completions right-padded after their end token, per-token type ids extended with zeros."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    texts = [processor.apply_chat_template(messages(n, q), add_generation_prompt=True, tokenize=False) for n, q in rows]
    if images is None:
        images = [
            [Image.new("RGB", (size, size), COLOURS[(i + j) % 4]) for j in range(n)] for i, (n, _) in enumerate(rows)
        ]
    enc = processor(images=images if any(images) else None, text=texts, padding=True, return_tensors="pt")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    comp = [tok(c, add_special_tokens=False)["input_ids"] + [end] for c in completions]
    T = max(map(len, comp))
    comp_ids = torch.full((len(comp), T), tok.pad_token_id)
    comp_mask = torch.zeros(len(comp), T, dtype=torch.long)
    for i, c in enumerate(comp):
        comp_ids[i, : len(c)] = torch.tensor(c)
        comp_mask[i, : len(c)] = 1
    batch = dict(enc)
    batch["input_ids"] = torch.cat([enc["input_ids"], comp_ids], 1)
    batch["attention_mask"] = torch.cat([enc["attention_mask"], comp_mask], 1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch:
            batch[key] = torch.cat([enc[key], torch.zeros_like(comp_ids)], 1)
    return batch, T, comp_mask


def text_rotary(model):
    """The language model's rotary embedding (not the vision tower's)."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and "vision" not in name and "visual" not in name:
            return module
    raise LookupError(f"no rotary embedding in {type(model).__name__}")


def literal_masked_logps(model, batch, T, hidden_ids):
    """The reference: the image-conditioned batch, full length, with the visual tokens' attention set to 0 and the
    position ids the image-conditioned forward uses, captured from the model's own rotary embedding. Returns
    ``(logps [B, T], the captured position ids)``."""
    captured = {}

    def grab(module, args, kwargs):
        captured.setdefault("pos", (args[1] if len(args) > 1 else kwargs["position_ids"]).clone())

    handle = text_rotary(model).register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(**batch)
    handle.remove()
    masked = dict(batch)
    masked["attention_mask"] = batch["attention_mask"].masked_fill(torch.isin(batch["input_ids"], hidden_ids), 0)
    masked["position_ids"] = captured["pos"]
    with torch.no_grad():
        logits = model(**masked).logits[:, -T - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, -T:, None]).squeeze(-1), captured["pos"]
