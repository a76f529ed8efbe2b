"""Conversion to a Hugging Face ``datasets.Dataset`` in TRL's GRPO format (conversational prompt + ``image`` column)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import datasets

# The paper's prompt (PGPO, arXiv 2604.01840): think in <think> </think>, then answer in \boxed{}.
DEFAULT_INSTRUCTION = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> tags. "
    "Then, provide your final answer enclosed within \\boxed{}."
)
# A str.format template: the instruction's braces are escaped.
DEFAULT_PROMPT_TEMPLATE = "{question} " + DEFAULT_INSTRUCTION.replace("{", "{{").replace("}", "}}")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# A one-word answer without reasoning (what pgpo.tasks asked before the paper's format).
SHORT_INSTRUCTION = "Answer with a single word or number."
SHORT_PROMPT_TEMPLATE = "{question} " + SHORT_INSTRUCTION

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


def to_messages(
    sample: Mapping[str, Any],
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> list[dict[str, Any]]:
    """``[{"role": "system", ...}, {"role": "user", "content": [{"type": "image"}, {"type": "text", ...}]}]``.

    The system message (``[{"type": "text", "text": system_prompt}]``) is left out when ``system_prompt`` is None.
    """
    user = {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": prompt_text(sample, prompt_template)}],
    }
    if system_prompt is None:
        return [user]
    return [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}, user]


def to_hf_dataset(
    samples: Iterable[Mapping[str, Any]],
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> datasets.Dataset:
    """Columns ``prompt`` (conversational, one image placeholder), ``image`` (PIL), ``answer``, ``family``, ``choices``.

    Arrow stores the placeholder as ``{"type": "image", "text": None}``; TRL only looks at ``type`` (and fills the
    image from the ``image`` column), so that is fine.
    """
    rows: dict[str, list[Any]] = {name: [] for name in FEATURES}
    for s in samples:
        rows["prompt"].append(to_messages(s, prompt_template, system_prompt))
        rows["image"].append(s["image"])
        rows["answer"].append(s["answer"])
        rows["family"].append(s["family"])
        rows["choices"].append(list(s["choices"]) if s.get("choices") is not None else None)
    return datasets.Dataset.from_dict(rows, features=FEATURES)
