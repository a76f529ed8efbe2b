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

Ground truth of what needs the image (:func:`reasoning_spans`)
--------------------------------------------------------------
Every template is written as a list of labelled spans, and :func:`reasoning` is their concatenation (one source of
truth). Each span has one of four labels:

* ``"image"``: a word that names scene content read off the image and neither given by the question nor entailed by
  the question plus the earlier text of the chain;
* ``"question"``: a content word copied from the question (the asked colour, shape, relation or extreme);
* ``"derived"``: a content word that follows from the question plus the earlier text (the final count once the shapes
  are listed, the verdict once the scene is listed, the answer in ``\\boxed{}``);
* ``"template"``: everything else: the family's fixed words, articles, punctuation and whitespace.

Spans hold no leading or trailing whitespace unless they are template (``"The "``, ``"red"``, ``" shapes are "``).
The rule per family (a sample's answer is always derived):

* ``count``: the listed shapes' shape words are image; the colour is question; the final number is derived. With one
  shape the chain says "The only red shape is ...": "only" is image (it states the count).
* ``compare``: the two counts are image; the two colour names (in the question's order) are question; the colour
  after "more" is derived.
* ``largest``: every colour and shape word is image (three distinct colours out of four and free shapes: none is
  entailed by the others).
* ``shape``: the colours after "The circle is", "the square is", "the triangle is" are image, except the last one
  when the first two did not include the asked colour: one shape of each kind in distinct colours, one of them the
  asked colour, so then it is entailed (derived). The asked colour is question, the final shape derived.
* ``exists``: the colours and shapes listed after "I see" are image; "a" / "no" of the verdict is derived (from the
  list); the verdict's colour and shape are question.
* ``spatial``: the position words ("top left", "bottom", "right", "middle") are image; the two shapes are question;
  the relation ("above", "left") is derived (the asked axis always falls in different thirds of the image).
* ``bars``: the ranked letters are image except the last one, which is entailed (the letters are always the
  family's first ``n_bars``, so the last is the one not yet said: derived); "tallest" / "shortest" is question; the
  final letter is derived.
* ``clock`` / ``clock12``: the direction ("straight up", "right", "straight down", "left") is image and the hour
  after it derived (the direction names it); an hour without a direction (clock12's 1, 2, 4, ...) is image.

Known limits of these labels: grammar that varies with the scene but names nothing is template, although a model
needs the image to choose it: list separators ("," vs " and" vs the ", so" that closes a list say how many items
remain), singular vs plural after a count, the prepositions of positions ("at" / "on" / "in"), and which branch of
``count``'s template is taken (the word after "The" is "only" for one shape, the question's colour otherwise: the
colour is labelled question, but choosing it says "more than one").

:func:`completion_spans` labels the whole taught completion (the ``<think>`` tags and the ``\\boxed{}`` markup
template, the boxed answer derived); :mod:`pgpo.inspection.groundtruth` maps the spans to tokens.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
COMPLETION_FORMAT = THINK_OPEN + "{reasoning}" + THINK_CLOSE + " \\boxed{{{answer}}}"
# Hour -> (fixed words before the direction, the direction): "points straight up", "points to the right".
_DIRECTIONS = {12: ("", "straight up"), 3: ("to the ", "right"), 6: ("", "straight down"), 9: ("to the ", "left")}

IMAGE, QUESTION, DERIVED, TEMPLATE = "image", "question", "derived", "template"
LABELS: tuple[str, ...] = (IMAGE, QUESTION, DERIVED, TEMPLATE)
Span = tuple[str, str]  # (text, label)


def taught_completion(sample: Mapping[str, Any]) -> str:
    """``<think>{reasoning}</think> \\boxed{answer}`` for a sample with a scene (see :func:`reasoning`)."""
    return COMPLETION_FORMAT.format(reasoning=reasoning(sample), answer=sample["answer"])


def reasoning(sample: Mapping[str, Any]) -> str:
    """The short reasoning chain for a sample, written from its ``scene`` (raises if the family has no template)."""
    return spans_text(reasoning_spans(sample))


def reasoning_spans(sample: Mapping[str, Any]) -> list[Span]:
    """The chain of :func:`reasoning` as ``(text, label)`` spans (labels: :data:`LABELS`; rules: the module
    docstring). Empty spans are dropped and neighbours with the same label merged."""
    family = sample["family"]
    if family not in _TEMPLATES:
        raise ValueError(f"no reasoning template for family {family!r}; known: {sorted(_TEMPLATES)}")
    scene = sample.get("scene")
    if not scene:
        raise ValueError(f"this {family!r} sample has no scene to reason from")
    return _merge(_TEMPLATES[family](sample, scene))


def completion_spans(sample: Mapping[str, Any], answer_format: str = COMPLETION_FORMAT) -> list[Span]:
    """The spans of the whole taught completion ``answer_format.format(reasoning=..., answer=...)``: the format's
    literal text (``<think>``, ``</think> \\boxed{``, ``}``) is template, ``{reasoning}`` is :func:`reasoning_spans`
    and ``{answer}`` is derived. The fields may not carry a conversion or format spec."""
    out: list[Span] = []
    for literal, field, spec, conversion in string.Formatter().parse(answer_format):
        out.append(_tpl(literal))
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"answer_format: {{{field}}} may not carry a conversion or format spec")
        if field == "reasoning":
            out.extend(reasoning_spans(sample))
        elif field == "answer":
            out.append(_der(str(sample["answer"])))
        else:
            raise ValueError(f"answer_format: unknown field {{{field}}} (only {{reasoning}} and {{answer}})")
    return _merge(out)


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


# --------------------------------------------------------------------------------------------- labelled spans
def _tpl(text: str) -> Span:
    return (text, TEMPLATE)


def _img(text: str) -> Span:
    return (text, IMAGE)


def _q(text: str) -> Span:
    return (text, QUESTION)


def _der(text: str) -> Span:
    return (text, DERIVED)


def spans_text(spans: Sequence[Span]) -> str:
    """The text of a list of spans (their concatenation)."""
    return "".join(text for text, _ in spans)


def _merge(spans: Sequence[Span]) -> list[Span]:
    """Drop empty spans and merge neighbours with the same label (the canonical form of every span list here)."""
    out: list[Span] = []
    for text, label in spans:
        if label not in LABELS:
            raise ValueError(f"unknown span label {label!r}; known: {LABELS}")
        if not text:
            continue
        if out and out[-1][1] == label:
            out[-1] = (out[-1][0] + text, label)
        else:
            out.append((text, label))
    return out


def _listed(items: Sequence[Sequence[Span]]) -> list[Span]:
    """:func:`join` on span lists: "a", "a and b", "a, b and c" (the separators are template)."""
    out: list[Span] = []
    for k, item in enumerate(items):
        if k:
            out.append(_tpl(" and " if k == len(items) - 1 else ", "))
        out.extend(item)
    return out


def _named_spans(o: Mapping[str, Any]) -> list[Span]:
    """ "a {colour} {shape}": the colour and the shape are read off the image."""
    return [_tpl("a "), _img(o["colour"]), _tpl(" "), _img(o["shape"])]


def _count(sample, scene) -> list[Span]:
    colour = sample["question"].split()[2]  # "How many {colour} shapes are there?"
    shapes = [o["shape"] for o in reading_order(scene["objects"]) if o["colour"] == colour]
    listed = _listed([[_tpl("a "), _img(shape)] for shape in shapes])
    n = len(shapes)
    if n == 1:
        # "only" is where the chain says that there is one: the count, read off the image.
        return [
            _tpl("The "),
            _img("only"),
            _tpl(" "),
            _q(colour),
            _tpl(" shape is "),
            *listed,
            _tpl(", so there is "),
            _der("1"),
            _tpl("."),
        ]
    return [_tpl("The "), _q(colour), _tpl(" shapes are "), *listed, _tpl(", so there are "), _der(str(n)), _tpl(".")]


def _compare(sample, scene) -> list[Span]:
    a, b = sample["choices"]  # in the question's order: "Are there more {a} or {b} shapes?"
    counts = {c: sum(o["colour"] == c for o in scene["objects"]) for c in (a, b)}

    def counted(colour: str) -> list[Span]:
        n = counts[colour]
        return [_img(str(n)), _tpl(" "), _q(colour), _tpl(" shape" if n == 1 else " shapes")]

    return [
        _tpl("I count "),
        *counted(a),
        _tpl(" and "),
        *counted(b),
        _tpl(", so there are more "),
        _der(sample["answer"]),
        _tpl(" shapes."),
    ]


def _largest(sample, scene) -> list[Span]:
    objects = reading_order(scene["objects"])
    big = max(objects, key=lambda o: o["r"])
    small = [_named_spans(o) for o in objects if o is not big]
    return [_tpl("The big shape is "), *_named_spans(big), _tpl(". The small ones are "), *_listed(small), _tpl(".")]


def _shape(sample, scene) -> list[Span]:
    colour = sample["question"].split()[-1].rstrip("?")  # "Which shape is {colour}?"
    by_shape = {o["shape"]: o["colour"] for o in scene["objects"]}
    order = ("circle", "square", "triangle")
    parts = []
    for k, shape in enumerate(order):
        said = [by_shape[s] for s in order[:k]]
        # One shape of each kind in distinct colours, one of them the asked colour: when the first two did not have
        # it, the last colour is the asked one (entailed); otherwise it is read off the image.
        last_is_asked = k == len(order) - 1 and colour not in said
        parts.append(
            [_tpl(f"{'The' if k == 0 else 'the'} {shape} is "), (by_shape[shape], DERIVED if last_is_asked else IMAGE)]
        )
    return [*_listed(parts), _tpl(", so the "), _q(colour), _tpl(" shape is the "), _der(sample["answer"]), _tpl(".")]


def _exists(sample, scene) -> list[Span]:
    _, _, _, colour, shape = sample["question"].rstrip("?").split()  # "Is there a {colour} {shape}?"
    seen = _listed([_named_spans(o) for o in reading_order(scene["objects"])])
    verdict = "a" if sample["answer"] == "yes" else "no"  # follows from the list just said
    return [
        _tpl("I see "),
        *seen,
        _tpl(". There is "),
        _der(verdict),
        _tpl(" "),
        _q(colour),
        _tpl(" "),
        _q(shape),
        _tpl("."),
    ]


def _where_spans(o: Mapping[str, Any]) -> list[Span]:
    vertical = ("top", None, "bottom")[min(2, int(o["y"] * 3))]
    horizontal = ("left", None, "right")[min(2, int(o["x"] * 3))]
    if vertical and horizontal:
        return [_tpl("at the "), _img(f"{vertical} {horizontal}")]
    if vertical:
        return [_tpl("at the "), _img(vertical)]
    if horizontal:
        return [_tpl("on the "), _img(horizontal)]
    return [_tpl("in the "), _img("middle")]


def _where(o: Mapping[str, Any]) -> str:
    return spans_text(_where_spans(o))


def _spatial(sample, scene) -> list[Span]:
    subject, reference = scene["objects"]  # drawn in this order: the question's subject, then its reference
    s, r, answer = subject["shape"], reference["shape"], sample["answer"]
    # The asked axis always falls in different thirds (Spatial's min_gap), so the positions entail the relation.
    relation = [_der(answer), _tpl(" of")] if answer in ("left", "right") else [_der(answer)]
    return [
        _tpl("The "),
        _q(s),
        _tpl(" is "),
        *_where_spans(subject),
        _tpl(" and the "),
        _q(r),
        _tpl(" is "),
        *_where_spans(reference),
        _tpl(", so the "),
        _q(s),
        _tpl(" is "),
        *relation,
        _tpl(" the "),
        _q(r),
        _tpl("."),
    ]


def _ranked_bars(scene) -> list[str]:
    return [b["label"] for b in sorted(scene["bars"], key=lambda b: -b["height"])]


def _bars(sample, scene) -> list[Span]:
    which = sample["question"].split()[-1].rstrip("?")  # "Which bar is the {tallest|shortest}?"
    ranked = _ranked_bars(scene)
    # The letters are always the family's first n; once all but one are ranked, the last one is entailed.
    letters = [[_img(x)] for x in ranked[:-1]] + [[_der(ranked[-1])]]
    return [
        _tpl("From tallest to shortest the bars are "),
        *_listed(letters),
        _tpl(", so the "),
        _q(which),
        _tpl(" is "),
        _der(sample["answer"]),
        _tpl("."),
    ]


def _clock(sample, scene) -> list[Span]:
    hour = int(scene["hour"])
    if hour in _DIRECTIONS:
        glue, direction = _DIRECTIONS[hour]
        # The direction names the hour: "at the 3" after "to the right" is entailed.
        return [_tpl(f"The hour hand points {glue}"), _img(direction), _tpl(", at the "), _der(str(hour)), _tpl(".")]
    return [_tpl("The hour hand points at the "), _img(str(hour)), _tpl(".")]


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
        return f"From tallest to shortest the bars are {join(_ranked_bars(scene))}."
    if "hour" in scene:
        return spans_text(_clock(sample, scene))
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
