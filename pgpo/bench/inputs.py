"""The data every candidate sees: a prompt dataset for the training steps, a reward, and processed prompt+completion
batches (what a training micro-batch looks like) for the dependency and parts measurements."""

from __future__ import annotations

import torch

COLOURS = ((255, 0, 0), (0, 160, 0), (0, 0, 255), (240, 200, 0), (128, 0, 128), (0, 170, 170))
QUESTION = "What colour is the square?"


def images(n: int, size: int) -> list:
    from PIL import Image

    return [Image.new("RGB", (size, size), COLOURS[i % len(COLOURS)]) for i in range(n)]


def prompt_dataset(n: int, image_size: int):
    """``n`` prompts in TRL's conversational format, each a coloured square and a question about it."""
    from datasets import Dataset

    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return Dataset.from_dict({"prompt": [prompt] * n, "image": images(n, image_size)})


def char_sum_reward(completions, **kwargs) -> list[float]:
    """Deterministic and not constant (groups get non-zero advantages): the completion's character sum mod 5, over 4,
    in [0, 1] like an accuracy reward (DAPO's dynamic sampling keeps groups whose mean is inside (0.01, 0.99))."""
    return [(sum(map(ord, c[0]["content"] if isinstance(c, list) else c)) % 5) / 4 for c in completions]


def scored_batch(processor, rows: int, completion_length: int, image_size: int, seed: int = 0) -> dict:
    """A processed batch of ``rows`` prompts (an image and the question, chat template, left padding) followed by
    ``completion_length`` random text tokens: ``input_ids``, ``attention_mask``, the image tensors, and
    ``completion_mask`` (all ones), the way TRL hands a micro-batch to the loss."""
    tok = getattr(processor, "tokenizer", processor)
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]] * rows
    text = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    tok.padding_side = "left"
    batch = dict(processor(text=text, images=images(rows, image_size), return_tensors="pt", padding=True))
    gen = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(min(len(tok), 20000)) if i not in special]
    pick = torch.randint(0, len(vocab), (rows, completion_length), generator=gen)
    completion = torch.tensor(vocab)[pick]
    batch["input_ids"] = torch.cat([batch["input_ids"], completion], dim=1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(completion)], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch:
            batch[key] = torch.cat([batch[key], torch.zeros_like(completion)], dim=1)
    batch["completion_mask"] = torch.ones_like(completion)
    return batch


def model_inputs(batch: dict, device: str) -> dict:
    """The batch without ``completion_mask``, on ``device``."""
    return {k: v.to(device) for k, v in batch.items() if k != "completion_mask"}
