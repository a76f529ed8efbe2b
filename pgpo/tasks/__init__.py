"""Procedural visual reasoning tasks for small-VLM RL: seeded, balanced, answer needs the image.

Quick use::

    from pgpo.tasks import make_split, to_hf_dataset, check
    train = make_split("train", 512, seed=0, size=96)
    ds = to_hf_dataset(train)                       # TRL GRPO format: prompt / image / answer / family / choices
    check(train[0], "\\\\boxed{3}")                    # robust answer matching
    taught_completion(train[0])                     # "<think>...</think> \\\\boxed{...}" from the sample's scene

Families (see :mod:`pgpo.tasks.families`): count, compare, spatial, bars, clock, largest, shape, exists (+ clock12).
``pgpo tasks`` (or ``python -m pgpo tasks``) prints the chance table (text-only predictors vs chance).
"""

from pgpo.tasks.chance import ChanceRow, chance_report, format_chance_report
from pgpo.tasks.check import check, completion_text, correctness_reward, final_answer, words_to_digits
from pgpo.tasks.easyvqa import EASY_VQA_VOCABULARY, load_easy_vqa
from pgpo.tasks.families import DEFAULT_FAMILIES, FAMILIES, Family, get_family
from pgpo.tasks.generate import DEFAULT_SIZE, SPLITS, Sample, generate, generate_one, make_split, split_of_image
from pgpo.tasks.hf import (
    DEFAULT_INSTRUCTION,
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    SHORT_PROMPT_TEMPLATE,
    to_hf_dataset,
    to_messages,
)
from pgpo.tasks.reasoning import completion_spans, reasoning, reasoning_spans, taught_completion

__all__ = [
    "DEFAULT_FAMILIES",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_SIZE",
    "DEFAULT_SYSTEM_PROMPT",
    "EASY_VQA_VOCABULARY",
    "FAMILIES",
    "SHORT_PROMPT_TEMPLATE",
    "SPLITS",
    "ChanceRow",
    "Family",
    "Sample",
    "chance_report",
    "check",
    "completion_spans",
    "completion_text",
    "correctness_reward",
    "final_answer",
    "format_chance_report",
    "generate",
    "generate_one",
    "get_family",
    "load_easy_vqa",
    "make_split",
    "reasoning",
    "reasoning_spans",
    "split_of_image",
    "taught_completion",
    "to_hf_dataset",
    "to_messages",
    "words_to_digits",
]
