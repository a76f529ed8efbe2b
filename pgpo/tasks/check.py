"""Answer checking: is a model's free-text reply the sample's answer?

The reply is first narrowed to its final answer: the last ``\\boxed{...}``, else the last ``<answer>...</answer>``,
else the whole text. Then, by the family's ``kind``:

* ``number``: number words ("three") become digits and math-verify compares (``parse``/``verify``; without a box it
  takes the last number, so "3 shapes" and "there are 3" match 3).
* ``word``: the reply must name the gold answer and no other answer of the family (case, punctuation, plurals and a
  few synonyms such as "top" for "above" or "grey" for "gray" are ignored), so "Red." and "the circle is on the left"
  pass, "red or blue" does not.
* ``letter``: the same, with standalone capital letters ("B", "bar B"); a lone lower-case letter also counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from math_verify import parse, verify

from pgpo.answers import last_boxed
from pgpo.rewards import completion_text
from pgpo.tasks.easyvqa import EASY_VQA_VOCABULARY
from pgpo.tasks.families import FAMILIES

NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)
SYNONYMS = {
    "above": ("top", "over", "up", "higher", "upper"),
    "below": ("bottom", "under", "beneath", "underneath", "down", "lower"),
    "gray": ("grey",),
    "yes": ("yeah", "yep", "true"),
    "no": ("nope", "false"),
}
MAX_REPLY_CHARS = 2000
MAX_NUMBER_CHARS = 300


def final_answer(text: str) -> str:
    """The part of a reply that holds the answer: last ``\\boxed{}``, else last ``<answer>`` tag, else the text."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tags = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL | re.IGNORECASE)
    if tags:
        return tags[-1]
    return text


def words_to_digits(text: str) -> str:
    """Replace number words (zero..twenty) with digits: "three shapes" -> "3 shapes"."""
    return _NUMBER_WORD_RE.sub(lambda m: NUMBER_WORDS[m.group(1).lower()], text)


def check_number(gold: str, reply: str) -> bool:
    """math-verify comparison of a numeric gold answer with a reply (number words allowed)."""
    cand = words_to_digits(final_answer(reply))[-MAX_NUMBER_CHARS:]
    # parse() finds a \boxed or the last number itself. Timeouts are off so this also works outside the main thread
    # (math-verify's timeouts use signals); the candidate is kept short instead.
    target = parse(cand, parsing_timeout=None)
    if not target:
        return False
    return bool(verify(parse(gold, parsing_timeout=None), target, timeout_seconds=None))


def mentioned(reply: str, vocabulary: Sequence[str]) -> set[str]:
    """Which words of ``vocabulary`` (lower case) a reply names, allowing plurals and the synonyms above."""
    vocab = {v.lower() for v in vocabulary}
    lookup = {v: v for v in vocab}
    for canon, alts in SYNONYMS.items():
        if canon in vocab:
            lookup.update({a: canon for a in alts if a not in vocab})
    found = set()
    for tok in re.findall(r"[a-z0-9]+", reply.lower()):
        if tok not in lookup and tok.endswith("s") and tok[:-1] in lookup:
            tok = tok[:-1]
        if tok in lookup:
            found.add(lookup[tok])
    return found


def mentioned_letters(reply: str, letters: Sequence[str]) -> set[str]:
    """Capital letters of ``letters`` standing alone in a reply ("B", "bar B."); a reply that is one letter counts."""
    letters_up = {x.upper() for x in letters}
    bare = reply.strip().strip(".!*:()[]$ ").upper()
    if bare in letters_up:
        return {bare}
    found = set(re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", reply)) & letters_up
    found |= {m.upper() for m in re.findall(r"\bbar\s+([a-z])\b", reply, flags=re.IGNORECASE)} & letters_up
    return found


def answer_kind(family: str | None, gold: str) -> str:
    """``number``/``word``/``letter`` for a family, guessed from the gold answer for unknown families."""
    if family in FAMILIES:
        return FAMILIES[family].kind
    if re.fullmatch(r"-?\d+(\.\d+)?", gold.strip()):
        return "number"
    if re.fullmatch(r"[A-Z]", gold.strip()):
        return "letter"
    return "word"


def family_vocabulary(family: str | None) -> tuple[str, ...]:
    """Every answer a family can give (empty for unknown families)."""
    if family in FAMILIES:
        return FAMILIES[family].vocabulary
    return EASY_VQA_VOCABULARY.get(family or "", ())


def check(target: Mapping[str, Any] | str, predicted: str, answer: str | None = None) -> bool:
    """Is ``predicted`` (a model's reply) the right answer?

    ``target`` is a sample / dataset row (uses its ``answer``, ``family`` and ``choices``) or a family name, in which
    case ``answer`` must be given.
    """
    if isinstance(target, Mapping):
        family, gold, choices = target.get("family"), str(target["answer"]), target.get("choices") or []
    else:
        if answer is None:
            raise ValueError("check(family, predicted) needs the gold answer: check(family, predicted, answer=...)")
        family, gold, choices = target, str(answer), []
    reply = str(predicted)[-MAX_REPLY_CHARS:]
    kind = answer_kind(family, gold)
    if kind == "number":
        return check_number(gold, reply)
    vocab = {*family_vocabulary(family), *choices, gold}
    cand = final_answer(reply)
    if kind == "letter":
        return mentioned_letters(cand, sorted(vocab)) == {gold.upper()}
    return mentioned(cand, sorted(vocab)) == {gold.lower()}


def correctness_reward(
    completions: list[Any], answer: list[str], family: list[str] | None = None, choices: list[Any] | None = None, **_
) -> list[float]:
    """A TRL reward function: 1.0 for a correct completion, else 0.0 (dataset columns arrive as keyword lists)."""
    out = []
    for i, completion in enumerate(completions):
        row = {
            "answer": answer[i],
            "family": family[i] if family is not None else None,
            "choices": choices[i] if choices is not None else None,
        }
        out.append(float(check(row, completion_text(completion))))
    return out
