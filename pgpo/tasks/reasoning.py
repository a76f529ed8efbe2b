"""Taught completions in the paper's format: ``<think> short reasoning </think> \\boxed{answer}``.

The reasoning is written from the sample's known scene (``sample["scene"]``, what the family drew), so it is always
true of the image. Its tokens are of two kinds, which is the setting PGPO is about:

* tokens that need the image: the colours, shapes, counts, sizes, positions and bar letters read off the scene;
* tokens that do not: the template words and the reasoning glue ("The", "shapes are", "so there are"), and often the
  final answer once the chain has named what it saw.

Each family has one fixed template (a small model learns one phrasing faster than several):

* ``count``: "The red shapes are a circle and a triangle, so there are 2." (1: "The only red shape is a circle, ...")
* ``compare``: "I count 3 yellow shapes and 1 red shape, so there are more yellow shapes."
* ``largest``: "The big shape is a yellow square. The small ones are a red circle and a blue triangle."
* ``shape``: "The circle is blue, the square is red and the triangle is green, so the red shape is the square."
* ``exists``: "I see a blue circle, a red square and a green triangle. There is no red circle."
* ``spatial``: "The square is at the top left and the circle is at the bottom, so the square is above the circle."
* ``bars``: "From tallest to shortest the bars are B, C and A, so the tallest is B."
* ``clock`` / ``clock12``: "The hour hand points to the right, at the 3."

Objects are named in reading order (top row first, left to right), so the order is learnable from the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
COMPLETION_FORMAT = THINK_OPEN + "{reasoning}" + THINK_CLOSE + " \\boxed{{{answer}}}"
_DIRECTIONS = {12: "straight up", 3: "to the right", 6: "straight down", 9: "to the left"}


def taught_completion(sample: Mapping[str, Any]) -> str:
    """``<think>{reasoning}</think> \\boxed{answer}`` for a sample with a scene (see :func:`reasoning`)."""
    return COMPLETION_FORMAT.format(reasoning=reasoning(sample), answer=sample["answer"])


def reasoning(sample: Mapping[str, Any]) -> str:
    """The short reasoning chain for a sample, written from its ``scene`` (raises if the family has no template)."""
    family = sample["family"]
    if family not in _TEMPLATES:
        raise ValueError(f"no reasoning template for family {family!r}; known: {sorted(_TEMPLATES)}")
    scene = sample.get("scene")
    if not scene:
        raise ValueError(f"this {family!r} sample has no scene to reason from")
    return _TEMPLATES[family](sample, scene)


def reading_order(objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Objects top row first, left to right within a row (rows are thirds of the image)."""
    return sorted(objects, key=lambda o: (min(2, int(o["y"] * 3)), o["x"]))


def join(items: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _named(o: Mapping[str, Any]) -> str:
    return f"a {o['colour']} {o['shape']}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _count(sample, scene) -> str:
    colour = sample["question"].split()[2]  # "How many {colour} shapes are there?"
    shapes = [f"a {o['shape']}" for o in reading_order(scene["objects"]) if o["colour"] == colour]
    n = len(shapes)
    if n == 1:
        return f"The only {colour} shape is {shapes[0]}, so there is 1."
    return f"The {colour} shapes are {join(shapes)}, so there are {n}."


def _compare(sample, scene) -> str:
    a, b = sample["choices"]
    counts = {c: sum(o["colour"] == c for o in scene["objects"]) for c in (a, b)}
    return (
        f"I count {_plural(counts[a], a + ' shape')} and {_plural(counts[b], b + ' shape')}, "
        f"so there are more {sample['answer']} shapes."
    )


def _largest(sample, scene) -> str:
    objects = reading_order(scene["objects"])
    big = max(objects, key=lambda o: o["r"])
    small = [_named(o) for o in objects if o is not big]
    return f"The big shape is {_named(big)}. The small ones are {join(small)}."


def _shape(sample, scene) -> str:
    colour = sample["question"].split()[-1].rstrip("?")  # "Which shape is {colour}?"
    by_shape = {o["shape"]: o["colour"] for o in scene["objects"]}
    parts = [f"the {shape} is {by_shape[shape]}" for shape in ("circle", "square", "triangle")]
    text = join(parts)
    return f"{text[0].upper()}{text[1:]}, so the {colour} shape is the {sample['answer']}."


def _exists(sample, scene) -> str:
    _, _, _, colour, shape = sample["question"].rstrip("?").split()  # "Is there a {colour} {shape}?"
    seen = join([_named(o) for o in reading_order(scene["objects"])])
    verdict = f"There is a {colour} {shape}." if sample["answer"] == "yes" else f"There is no {colour} {shape}."
    return f"I see {seen}. {verdict}"


def _where(o: Mapping[str, Any]) -> str:
    vertical = ("top", None, "bottom")[min(2, int(o["y"] * 3))]
    horizontal = ("left", None, "right")[min(2, int(o["x"] * 3))]
    if vertical and horizontal:
        return f"at the {vertical} {horizontal}"
    if vertical:
        return f"at the {vertical}"
    if horizontal:
        return f"on the {horizontal}"
    return "in the middle"


def _spatial(sample, scene) -> str:
    subject, reference = scene["objects"]  # drawn in this order: the question's subject, then its reference
    s, r, answer = subject["shape"], reference["shape"], sample["answer"]
    relation = f"{answer} of" if answer in ("left", "right") else answer
    return f"The {s} is {_where(subject)} and the {r} is {_where(reference)}, so the {s} is {relation} the {r}."


def _bars(sample, scene) -> str:
    which = sample["question"].split()[-1].rstrip("?")  # "Which bar is the {tallest|shortest}?"
    ranked = [b["label"] for b in sorted(scene["bars"], key=lambda b: -b["height"])]
    return f"From tallest to shortest the bars are {join(ranked)}, so the {which} is {sample['answer']}."


def _clock(sample, scene) -> str:
    hour = int(scene["hour"])
    if hour in _DIRECTIONS:
        return f"The hour hand points {_DIRECTIONS[hour]}, at the {hour}."
    return f"The hour hand points at the {hour}."


def describe(sample: Mapping[str, Any]) -> str:
    """A one-sentence description of the whole scene (a caption), whatever the question.

    Shape scenes: "I see a big yellow square, a red circle and a blue triangle." (reading order; "big" for the
    large shape of ``largest``); ``spatial`` adds positions ("I see a red square at the top left and a blue circle
    at the bottom."); bar charts rank the bars, clocks say where the hand points.
    """
    scene = sample.get("scene")
    if not scene:
        raise ValueError(f"this {sample['family']!r} sample has no scene to describe")
    if "bars" in scene:
        ranked = [b["label"] for b in sorted(scene["bars"], key=lambda b: -b["height"])]
        return f"From tallest to shortest the bars are {join(ranked)}."
    if "hour" in scene:
        return _clock(sample, scene)
    objects = reading_order(scene["objects"])
    if sample["family"] == "spatial":
        return f"I see {join([f'{_named(o)} {_where(o)}' for o in objects])}."
    return f"I see {join([_named(o).replace('a ', 'a big ', 1) if o['r'] >= 0.15 else _named(o) for o in objects])}."


_TEMPLATES = {
    "count": _count,
    "compare": _compare,
    "largest": _largest,
    "shape": _shape,
    "exists": _exists,
    "spatial": _spatial,
    "bars": _bars,
    "clock": _clock,
    "clock12": _clock,
}
