"""How well can a model do *without* the image? Chance level and the best text-only predictor, per family.

The text-only predictor is the majority answer given the exact question text, counted on train and scored on test:
for a test question it picks, among that sample's choices, the answer seen most often with the same question in train
(ties: the answer most frequent in the family, then the first choice). As the question is all a text-only model sees,
this is the best such model given enough data; if it does not beat ``1 / len(choices)``, the task needs the picture.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChanceRow:
    """One family's line of the chance report (accuracies in [0, 1])."""

    family: str
    n_train: int
    n_test: int
    n_choices: float  # mean number of choices per question
    chance: float  # mean of 1 / len(choices)
    text_only: float  # majority answer given the question text (train -> test)
    majority: float  # the family's most frequent train answer, ignoring the question
    margin: float  # half-width of a 95% binomial interval around chance at n_test

    @property
    def beats_chance(self) -> bool:
        """Whether the text-only predictor is significantly above chance."""
        return self.text_only > self.chance + self.margin


def _choices(sample: Mapping[str, Any], fallback: Sequence[str]) -> list[str]:
    return list(sample.get("choices") or fallback)


def chance_report(
    train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, ChanceRow]:
    """Per family: chance accuracy and the accuracy of text-only predictors fitted on ``train``, scored on ``test``.

    With ``test=None`` the samples are split in two halves (even indices fit, odd indices score).
    """
    if test is None:
        train, test = train[0::2], train[1::2]
    by_q: dict[tuple[str, str], Counter] = defaultdict(Counter)
    by_f: dict[str, Counter] = defaultdict(Counter)
    for s in train:
        by_q[(s["family"], s["question"])][s["answer"]] += 1
        by_f[s["family"]][s["answer"]] += 1
    test_by_f: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for s in test:
        test_by_f[s["family"]].append(s)
    rows = {}
    for fam in sorted(test_by_f):
        samples = test_by_f[fam]
        fam_counts = by_f.get(fam, Counter())
        seen = sorted(fam_counts)
        top = fam_counts.most_common(1)[0][0] if fam_counts else None
        hits_text = hits_major = 0
        inv = []
        for s in samples:
            choices = _choices(s, seen or [s["answer"]])
            q_counts = by_q.get((fam, s["question"]), Counter())
            pred = max(choices, key=lambda c: (q_counts[c], fam_counts[c], -choices.index(c)))
            hits_text += pred == s["answer"]
            hits_major += top == s["answer"]
            inv.append(1.0 / len(choices))
        n = len(samples)
        chance = sum(inv) / n
        rows[fam] = ChanceRow(
            family=fam,
            n_train=sum(fam_counts.values()),
            n_test=n,
            n_choices=sum(1 / x for x in inv) / n,
            chance=chance,
            text_only=hits_text / n,
            majority=hits_major / n,
            margin=1.96 * math.sqrt(chance * (1 - chance) / n),
        )
    return rows


def format_chance_report(rows: Mapping[str, ChanceRow]) -> str:
    """A Markdown table of :func:`chance_report`'s rows."""
    lines = [
        "| family | n train | n test | choices | chance | text-only (question majority) | majority class | "
        "95% margin | text-only beats chance? |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r.family} | {r.n_train} | {r.n_test} | {r.n_choices:.2f} | {r.chance:.3f} | {r.text_only:.3f} | "
            f"{r.majority:.3f} | ±{r.margin:.3f} | {'YES' if r.beats_chance else 'no'} |"
        )
    return "\n".join(lines)
