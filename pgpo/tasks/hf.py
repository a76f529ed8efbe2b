"""Conversion to a Hugging Face ``datasets.Dataset`` in TRL's GRPO format (conversational prompt + ``image`` column)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import datasets

from pgpo.data import build_messages

DEFAULT_INSTRUCTION = "Answer with a single word or number."
DEFAULT_PROMPT_TEMPLATE = "{question} " + DEFAULT_INSTRUCTION

FEATURES = datasets.Features(
    {
        "prompt": datasets.List(
            {
                "role": datasets.Value("string"),
                "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
            }
        ),
        "image": datasets.Image(),
        "answer": datasets.Value("string"),
        "family": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")),
    }
)


def prompt_text(sample: Mapping[str, Any], prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The user text for a sample. The template may use ``{question}``, ``{choices}`` ("a, b, c") and ``{family}``."""
    choices = sample.get("choices") or []
    return prompt_template.format(question=sample["question"], choices=", ".join(choices), family=sample["family"])


def to_messages(sample: Mapping[str, Any], prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> list[dict[str, Any]]:
    """``[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}]`` (:func:`pgpo.data.build_messages`)."""
    return build_messages(prompt_text(sample, prompt_template), 1, "{question}")


def to_hf_dataset(
    samples: Iterable[Mapping[str, Any]], prompt_template: str = DEFAULT_PROMPT_TEMPLATE
) -> datasets.Dataset:
    """Columns ``prompt`` (conversational, one image placeholder), ``image`` (PIL), ``answer``, ``family``, ``choices``.

    Arrow stores the placeholder as ``{"type": "image", "text": None}``; TRL only looks at ``type`` (and fills the
    image from the ``image`` column), so that is fine.
    """
    rows: dict[str, list[Any]] = {name: [] for name in FEATURES}
    for s in samples:
        rows["prompt"].append(to_messages(s, prompt_template))
        rows["image"].append(s["image"])
        rows["answer"].append(s["answer"])
        rows["family"].append(s["family"])
        rows["choices"].append(list(s["choices"]) if s.get("choices") is not None else None)
    return datasets.Dataset.from_dict(rows, features=FEATURES)
