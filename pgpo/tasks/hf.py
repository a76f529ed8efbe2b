"""Conversion to a Hugging Face ``datasets.Dataset`` in TRL's GRPO format (conversational prompt + ``image`` column)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import datasets

from pgpo.data import PAPER_INSTRUCTION, PAPER_PROMPT_TEMPLATE, PAPER_SYSTEM_PROMPT, build_messages

# The paper's prompt (PGPO, arXiv 2604.01840; pgpo.data): think in <think> </think>, then answer in \boxed{}.
DEFAULT_INSTRUCTION = PAPER_INSTRUCTION
DEFAULT_PROMPT_TEMPLATE = PAPER_PROMPT_TEMPLATE  # a str.format template: the instruction's braces are escaped
DEFAULT_SYSTEM_PROMPT = PAPER_SYSTEM_PROMPT
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
    """``[{"role": "system", ...}, {"role": "user", "content": [{"type": "image"}, {"type": "text", ...}]}]``
    (:func:`pgpo.data.build_messages`); the system message is left out when ``system_prompt`` is None."""
    return build_messages(prompt_text(sample, prompt_template), 1, "{question}", system_prompt)


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
