r"""TRL reward functions for RLVR on multimodal math: the paper's reward and pgpo's lenient ones.

* The paper's (Sec. 5.1 / App. A, VPPO's ``examples/reward_function/math.py`` which the paper follows, the same as
  PAPO's): :func:`paper_accuracy_reward` (mathruler ``grade_answer`` on the last ``\boxed{}`` -- the grader of
  ``pgpo eval``, :func:`pgpo.answers.paper_grade`), :func:`paper_format_reward` (fullmatch of
  ``<think>.*</think>.*\boxed\{.*\}.*``, DOTALL) and :func:`paper_reward` = 0.9 * accuracy + 0.1 * format, each on
  the tag-normalised completion (:func:`pgpo.answers.normalize_tags`), as VPPO/PAPO's ``compute_score`` does.
* pgpo's lenient ones: :func:`accuracy_reward` (:func:`pgpo.answers.check_answer`: math-verify, letters, units) and
  :func:`format_reward` (exactly one leading think block, then a balanced box).

``pgpo train --reward_funcs`` names them (``paper``, ``paper_accuracy``, ``paper_format``, ``accuracy``, ``format``:
``REWARD_FUNCTIONS``). All follow TRL's reward-function contract
(``GRPOTrainer(reward_funcs=[paper_reward])``): they get the batch's ``completions`` plus every other dataset column
as keyword lists, and return one float per completion.
A completion may be conversational (``[{"role": "assistant", "content": "..."}]``, where ``content`` may also be a
list of ``{"type": "text", "text": ...}`` parts) or a plain string. Nothing here raises on a strange completion: it
scores 0.0.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from pgpo.answers import boxed_contents, check_answer, extract_answer, normalize_tags, paper_grade

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


def _missing_answer(name: str, kwargs: dict[str, Any]) -> ValueError:
    return ValueError(
        f"{name} needs the gold answers in a dataset column named 'answer' "
        f"(the batch has columns: {sorted(k for k in kwargs if not k.startswith(('log_', 'trainer_')))})"
    )


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
    r"""1.0 when the completion's final answer (lenient checker, see :mod:`pgpo.answers`) equals the gold ``answer``.

    ``answer`` is the dataset's gold column (``\boxed{...}`` around it is fine, as in ViRL39K); the optional
    ``choices`` column (option texts in letter order, or None per row) enables option-text matching for multiple
    choice. Optional ``answer_type`` / ``precision`` columns select the float rule. Raises ``ValueError`` when the
    dataset has no ``answer`` column.
    """
    if answer is None:
        raise _missing_answer("accuracy_reward", kwargs)
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

    pgpo's lenient format check (stricter than the paper's in its structure, see :func:`paper_format_reward`).
    """
    rewards = []
    for completion in completions:
        try:
            ok = has_think_then_box(completion_text(completion))
        except Exception:
            ok = False
        rewards.append(1.0 if ok else 0.0)
    return rewards


# ----------------------------------------------------------------------------------------------------------------------
# The paper's reward (VPPO / PAPO ``examples/reward_function/math.py``)
# ----------------------------------------------------------------------------------------------------------------------

PAPER_FORMAT_RE = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
"""VPPO-RL / PAPO ``format_reward``: ``re.fullmatch`` of this pattern on the tag-normalised response."""
PAPER_FORMAT_WEIGHT = 0.1
"""``compute_score(..., format_weight=0.1)``: overall = 0.9 * accuracy + 0.1 * format."""


def paper_accuracy_reward(completions: list[Any], answer: list[str] | None = None, **kwargs: Any) -> list[float]:
    r"""1.0 when mathruler's ``grade_answer`` accepts the last ``\boxed{}`` of the completion for the gold ``answer``.

    The grader of ``pgpo eval`` (:func:`pgpo.answers.paper_grade`). Completions may be plain strings or
    conversational; a completion without a closed last box scores 0.0. Raises ``ValueError`` without an ``answer``
    column.
    """
    if answer is None:
        raise _missing_answer("paper_accuracy_reward", kwargs)
    answers = _column(answer, len(completions), "answer")
    return [
        1.0 if paper_grade(completion_text(c), "" if g is None else str(g))[1] else 0.0
        for c, g in zip(completions, answers)
    ]


def paper_format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    r"""1.0 when the tag-normalised completion fullmatches ``<think>.*</think>.*\boxed\{.*\}.*`` (DOTALL), else 0.0."""
    return [1.0 if PAPER_FORMAT_RE.fullmatch(normalize_tags(completion_text(c))) else 0.0 for c in completions]


def paper_reward(completions: list[Any], answer: list[str] | None = None, **kwargs: Any) -> list[float]:
    """The paper's reward: 0.9 * :func:`paper_accuracy_reward` + 0.1 * :func:`paper_format_reward`."""
    if answer is None:
        raise _missing_answer("paper_reward", kwargs)
    acc = paper_accuracy_reward(completions, answer)
    fmt = paper_format_reward(completions)
    return [(1 - PAPER_FORMAT_WEIGHT) * a + PAPER_FORMAT_WEIGHT * f for a, f in zip(acc, fmt)]


REWARD_FUNCTIONS = {  # name -> import path: the names `pgpo train --reward_funcs` and the presets use
    "paper": "pgpo.rewards.paper_reward",
    "paper_accuracy": "pgpo.rewards.paper_accuracy_reward",
    "paper_format": "pgpo.rewards.paper_format_reward",
    "accuracy": "pgpo.rewards.accuracy_reward",
    "format": "pgpo.rewards.format_reward",
    "tasks": "pgpo.tasks.correctness_reward",
}


def check_group_statistics(rewards_per_func, weights, num_generations: int, names: list[str]) -> None:
    """``FloatingPointError`` when a group's rewards overflow the float32 statistics its advantages are normalised with.

    ``rewards_per_func`` is TRL's ``[N, F]`` float32 tensor (NaN: not scored), groups of ``num_generations``
    consecutive rows. TRL takes each group's mean and std of the weighted total (or of each function's rewards, with
    ``multi_objective_aggregation="normalize_then_sum"``) and turns NaN advantages into 0: rewards near 1e38, or about
    1e19 apart (the std squares the deviations), would give a step that trains nothing, without a word.
    """
    import torch
    from trl.trainer.utils import nanstd

    total = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(dim=1)
    total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    columns = torch.cat([rewards_per_func, total[:, None]], dim=1).view(-1, num_generations, len(names) + 1)
    scored = (~torch.isnan(columns)).sum(dim=1)
    mean, std = torch.nanmean(columns, dim=1), nanstd(columns, dim=1)
    bad = ((scored > 0) & ~torch.isfinite(mean)) | ((scored > 1) & ~torch.isfinite(std))
    if not bad.any():
        return
    group, column = (int(i) for i in bad.nonzero()[0])

    def values(col: int) -> str:
        return "[" + ", ".join(f"{v:.3g}" for v in columns[group, :, col].tolist()) + "]"

    label = repr(names[column]) if column < len(names) else "the weighted total"
    gave = "; ".join(f"reward function {name!r} gave {values(i)}" for i, name in enumerate(names))
    raise FloatingPointError(
        f"rewards of group {group} overflow float32 in the group statistics the advantages are normalised with "
        f"({label}: mean {mean[group, column]:.3g}, std {std[group, column]:.3g}): {gave}; weighted total "
        f"{values(len(names))}. The advantages would be 0 (TRL sets NaN ones to 0): a step that trains nothing. "
        "Rewards must stay well below 1e19 in magnitude (float32 ends at 3.4e38 and the std squares the deviations): "
        "rescale them"
    )


def reward_functions(names: list[str]):
    """Reward functions by short name (:data:`REWARD_FUNCTIONS`) or dotted import path (``module.function``)."""
    funcs = []
    for name in names:
        path = REWARD_FUNCTIONS.get(name, name)
        if "." not in path:
            raise ValueError(
                f"unknown reward function {name!r}: use one of {sorted(REWARD_FUNCTIONS)} or module.function"
            )
        module, attr = path.rsplit(".", 1)
        sys.path.insert(0, os.getcwd())
        funcs.append(getattr(importlib.import_module(module), attr))
    return funcs
