r"""TRL reward functions for RLVR on multimodal math: answer accuracy and the think-then-box format.

Both follow TRL's reward-function contract (``GRPOTrainer(reward_funcs=[accuracy_reward, format_reward])``): they get
the batch's ``completions`` plus every other dataset column as keyword lists, and return one float per completion.
A completion may be conversational (``[{"role": "assistant", "content": "..."}]``, where ``content`` may also be a
list of ``{"type": "text", "text": ...}`` parts) or a plain string. Nothing here raises on a strange completion: it
scores 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pgpo.scoring import boxed_contents, check_answer, extract_answer

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, one message dict, or a list of messages (the last assistant one)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        chosen = assistant or messages
        return _content_text(chosen[-1].get("content")) if chosen else ""
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def _column(values: Any, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def accuracy_reward(
    completions: list[Any], answer: list[str] | None = None, choices: list[Any] | None = None, **kwargs: Any
) -> list[float]:
    r"""1.0 when the completion's final answer (last ``\boxed{}``, see :mod:`pgpo.scoring`) equals the gold ``answer``.

    ``answer`` is the dataset's gold column (``\boxed{...}`` around it is fine, as in ViRL39K); the optional
    ``choices`` column (option texts in letter order, or None per row) enables option-text matching for multiple
    choice. Optional ``answer_type`` / ``precision`` columns select the float rule. Raises ``ValueError`` when the
    dataset has no ``answer`` column.
    """
    if answer is None:
        raise ValueError(
            "accuracy_reward needs the gold answers in a dataset column named 'answer' "
            f"(the batch has columns: {sorted(k for k in kwargs if not k.startswith(('log_', 'trainer_')))})"
        )
    n = len(completions)
    answers = _column(answer, n, "answer")
    choice_lists = _column(choices, n, "choices")
    answer_types = _column(kwargs.get("answer_type"), n, "answer_type")
    precisions = _column(kwargs.get("precision"), n, "precision")
    rewards = []
    for completion, gold, opts, kind, precision in zip(completions, answers, choice_lists, answer_types, precisions):
        try:
            pred = extract_answer(completion_text(completion))
            ok = check_answer(pred, "" if gold is None else str(gold), opts or None, kind, precision)
        except Exception:
            ok = False
        rewards.append(1.0 if ok else 0.0)
    return rewards


def has_think_then_box(text: str) -> bool:
    r"""``<think>...</think>`` first (exactly one pair, nothing before it), then text with a balanced ``\boxed{}``."""
    if not isinstance(text, str):
        return False
    text = text.strip()
    if not text.startswith(_THINK_OPEN) or text.count(_THINK_OPEN) != 1 or text.count(_THINK_CLOSE) != 1:
        return False
    after = text.split(_THINK_CLOSE, 1)[1]
    return bool(boxed_contents(after)) and not re.search(r"<think>|</think>", after)


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    r"""1.0 when the completion is ``<think> reasoning </think>`` followed by an answer in ``\boxed{}``, else 0.0.

    The format asked for by :data:`pgpo.data.PGPO_PROMPT_TEMPLATE` (EasyR1 / VPPO's math format reward).
    """
    rewards = []
    for completion in completions:
        try:
            ok = has_think_then_box(completion_text(completion))
        except Exception:
            ok = False
        rewards.append(1.0 if ok else 0.0)
    return rewards
