"""The task families: each draws one scene for a requested answer and asks one short question about it.

A family is a small object with

* ``name`` and ``kind`` (``"number"``, ``"word"`` or ``"letter"``: how :func:`pgpo.tasks.check.check` reads answers),
* ``vocabulary``: every answer the family can give (used by the checker to spot answers that name two options),
* ``targets()``: the list the generator cycles through in shuffled blocks, so answers come out balanced,
* ``make(rng, target, size) -> (image, question, answer, choices, scene)``: ``scene`` is what was drawn, as plain
  JSON-able data (see :data:`Scene`), from which :mod:`pgpo.tasks.reasoning` writes a reasoning chain.

The question text never depends on the answer (only on things drawn independently of it), so a text-only model can do
no better than chance; :func:`pgpo.tasks.chance.chance_report` measures that.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence

from PIL import Image

from pgpo.tasks.draw import COLOUR_NAMES, COLOURS, SHAPES, Canvas, grid_positions, light_background

# What a family drew, as plain data: shape scenes give ``{"objects": [{"colour", "shape", "x", "y", "r"}, ...]}``
# (centres and radii in unit coordinates, in drawing order), bar charts ``{"bars": [{"label", "height"}, ...]}``,
# clocks ``{"hour": int}``. Recording it takes no random draws, so the images are the same as without it.
Scene = dict
Made = tuple[Image.Image, str, str, list[str], Scene]

# Shape radius on the 3x3 grid (fraction of the side) and how far a centre may move inside its cell.
GRID_R = (0.1, 0.12)
GRID_JITTER = 0.1


class Family:
    """Base class of a task family (see the module docstring)."""

    name: str = ""
    kind: str = "word"
    vocabulary: tuple[str, ...] = ()

    def targets(self) -> list[Hashable]:
        """What the generator balances over; by default the answers themselves."""
        return list(self.vocabulary)

    def make(self, rng: random.Random, target: Hashable, size: int) -> Made:
        """Draw one sample whose answer is determined by ``target``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _obj(colour: str, shape: str, x: float, y: float, r: float) -> dict:
    return {"colour": colour, "shape": shape, "x": round(x, 4), "y": round(y, 4), "r": round(r, 4)}


def _scatter(canvas: Canvas, rng: random.Random, items: Sequence[tuple[str, str]]) -> Scene:
    """Draw ``(colour, shape)`` items on distinct cells of a 3x3 grid; returns the scene."""
    objects = []
    for (colour, shape), (x, y) in zip(items, grid_positions(rng, len(items), 3, GRID_JITTER)):
        r = rng.uniform(*GRID_R)
        canvas.shape(shape, x, y, r, COLOURS[colour])
        objects.append(_obj(colour, shape, x, y, r))
    return {"objects": objects}


class Count(Family):
    """ "How many red shapes are there?" -> 1..max_count, with 0-3 shapes of other colours as distractors."""

    name = "count"
    kind = "number"

    def __init__(self, max_count: int = 4, max_distractors: int = 3):
        if not 1 <= max_count <= 9:
            raise ValueError("max_count must be in 1..9 (3x3 grid)")
        self.max_count = max_count
        self.max_distractors = max_distractors
        self.vocabulary = tuple(str(i) for i in range(1, max_count + 1))

    def make(self, rng, target, size):
        n = int(target)
        colour = rng.choice(COLOUR_NAMES)
        others = [c for c in COLOUR_NAMES if c != colour]
        n_distract = rng.randint(0, min(self.max_distractors, 9 - n))
        items = [(colour, rng.choice(SHAPES)) for _ in range(n)]
        items += [(rng.choice(others), rng.choice(SHAPES)) for _ in range(n_distract)]
        canvas = Canvas(size, light_background(rng))
        scene = _scatter(canvas, rng, items)
        return canvas.image(), f"How many {colour} shapes are there?", str(n), list(self.vocabulary), scene


class Compare(Family):
    """ "Are there more red or blue shapes?" -> the colour with more shapes (2-4 vs fewer, plus 0-1 distractor)."""

    name = "compare"
    kind = "word"
    vocabulary = COLOUR_NAMES

    def targets(self):
        # Balance the winning colour *and* whether it is named first in the question.
        return [(colour, first) for colour in COLOUR_NAMES for first in (True, False)]

    def make(self, rng, target, size):
        winner, winner_first = target
        loser = rng.choice([c for c in COLOUR_NAMES if c != winner])
        third = rng.choice([c for c in COLOUR_NAMES if c not in (winner, loser)])
        n_win = rng.randint(2, 4)
        n_lose = rng.randint(1, n_win - 1)
        items = [(winner, rng.choice(SHAPES)) for _ in range(n_win)]
        items += [(loser, rng.choice(SHAPES)) for _ in range(n_lose)]
        items += [(third, rng.choice(SHAPES)) for _ in range(rng.randint(0, 1))]
        canvas = Canvas(size, light_background(rng))
        scene = _scatter(canvas, rng, items)
        a, b = (winner, loser) if winner_first else (loser, winner)
        return canvas.image(), f"Are there more {a} or {b} shapes?", winner, [a, b], scene


class Spatial(Family):
    """ "Is the circle left or right of the square?" / "... above or below ..." with two shapes, clearly apart."""

    name = "spatial"
    kind = "word"
    vocabulary = ("left", "right", "above", "below")
    AXES = {"x": ("left", "right"), "y": ("above", "below")}

    def __init__(self, min_gap: float = 0.35, radius: tuple[float, float] = (0.11, 0.14)):
        self.min_gap = min_gap
        self.radius = radius

    def targets(self):
        return [(axis, answer) for axis, pair in self.AXES.items() for answer in pair]

    def make(self, rng, target, size):
        axis, answer = target
        subject, reference = rng.sample(SHAPES, 2)
        # Along the asked axis: subject before (left/above) or after the reference, at least min_gap apart.
        lo, hi = 0.2, 0.8
        a = rng.uniform(lo, hi - self.min_gap)
        b = rng.uniform(a + self.min_gap, hi)
        s_main, r_main = (a, b) if answer in ("left", "above") else (b, a)
        s_other, r_other = rng.uniform(lo, hi), rng.uniform(lo, hi)
        s_xy = (s_main, s_other) if axis == "x" else (s_other, s_main)
        r_xy = (r_main, r_other) if axis == "x" else (r_other, r_main)
        canvas = Canvas(size, light_background(rng))
        objects = []
        for shape, (x, y) in ((subject, s_xy), (reference, r_xy)):
            r, colour = rng.uniform(*self.radius), rng.choice(COLOUR_NAMES)
            canvas.shape(shape, x, y, r, COLOURS[colour])
            objects.append(_obj(colour, shape, x, y, r))
        first, second = self.AXES[axis]
        relation = f"{first} or {second} of" if axis == "x" else f"{first} or {second}"
        question = f"Is the {subject} {relation} the {reference}?"
        return canvas.image(), question, answer, [first, second], {"objects": objects}


class Bars(Family):
    """A bar chart with bars labelled A, B, C: "Which bar is the tallest?" / "... the shortest?" -> a letter."""

    name = "bars"
    kind = "letter"

    def __init__(self, n_bars: int = 3, margin: float = 0.15):
        if not 2 <= n_bars <= 6:
            raise ValueError("n_bars must be in 2..6")
        self.n_bars = n_bars
        self.margin = margin
        self.vocabulary = tuple("ABCDEF"[:n_bars])

    def targets(self):
        return [(which, letter) for which in ("tallest", "shortest") for letter in self.vocabulary]

    def make(self, rng, target, size):
        which, letter = target
        k = self.vocabulary.index(letter)
        lo, hi = 0.12, 0.72  # bar heights as fractions of the side
        if which == "tallest":
            top = rng.uniform(lo + 2 * self.margin, hi)
            heights = [rng.uniform(lo, top - self.margin) for _ in range(self.n_bars)]
            heights[k] = top
        else:
            bottom = rng.uniform(lo, hi - 2 * self.margin)
            heights = [rng.uniform(bottom + self.margin, hi) for _ in range(self.n_bars)]
            heights[k] = bottom
        canvas = Canvas(size, light_background(rng))
        colour = COLOURS[rng.choice(COLOUR_NAMES)]
        base, left, right = 0.8, 0.08, 0.92
        slot = (right - left) / self.n_bars
        for i, h in enumerate(heights):
            x0 = left + (i + 0.15) * slot
            canvas.rect(x0, base - h, x0 + 0.7 * slot, base, fill=colour)
            canvas.text(x0 + 0.35 * slot, 0.9, self.vocabulary[i], 0.16)
        canvas.line(left, base, right, base, (40, 40, 40), 1.0)
        scene = {"bars": [{"label": self.vocabulary[i], "height": round(h, 4)} for i, h in enumerate(heights)]}
        return canvas.image(), f"Which bar is the {which}?", letter, list(self.vocabulary), scene


class Clock(Family):
    """An analogue clock with only an hour hand: "What hour does the clock show?" -> one of ``hours``."""

    name = "clock"
    kind = "number"

    def __init__(self, hours: Sequence[int] = (12, 3, 6, 9), name: str = "clock"):
        if not hours or any(not 1 <= h <= 12 for h in hours):
            raise ValueError("hours must be in 1..12")
        self.name = name
        self.vocabulary = tuple(str(h) for h in hours)

    def make(self, rng, target, size):
        hour = int(target)
        canvas = Canvas(size, light_background(rng))
        cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
        r = rng.uniform(0.38, 0.44)
        face = tuple(rng.randint(225, 255) for _ in range(3))
        ink = (30, 30, 30)
        canvas.circle(cx, cy, r, fill=face, outline=ink, width=1.5)
        for h in range(12):
            a = math.radians(h * 30)
            inner = 0.72 if h % 3 == 0 else 0.84
            width = 2.5 if h == 0 else 1.5 if h % 3 == 0 else 0.8  # the 12 tick is thickest: which way is up
            canvas.line(cx + inner * r * math.sin(a), cy - inner * r * math.cos(a), cx + 0.95 * r * math.sin(a),
                        cy - 0.95 * r * math.cos(a), ink, width)  # fmt: skip
        a = math.radians((hour % 12) * 30)
        hand = COLOURS[rng.choice(("red", "blue"))]
        length = rng.uniform(0.55, 0.65) * r
        canvas.line(cx, cy, cx + length * math.sin(a), cy - length * math.cos(a), hand, 3.0)
        canvas.circle(cx, cy, 0.08 * r, fill=ink)
        return canvas.image(), "What hour does the clock show?", str(hour), list(self.vocabulary), {"hour": hour}


class Largest(Family):
    """ "What colour is the largest shape?" -> a colour; three shapes of distinct colours, one clearly bigger."""

    name = "largest"
    kind = "word"
    vocabulary = COLOUR_NAMES

    def make(self, rng, target, size):
        colours = [target] + rng.sample([c for c in COLOUR_NAMES if c != target], 2)
        canvas = Canvas(size, light_background(rng))
        positions = grid_positions(rng, 3, 2, 0.05)  # 2x2 grid: cells of 0.5, room for a big shape
        objects = []
        for i, (colour, (x, y)) in enumerate(zip(colours, positions)):
            r = rng.uniform(0.17, 0.2) if i == 0 else rng.uniform(0.07, 0.1)
            shape = rng.choice(SHAPES)
            canvas.shape(shape, x, y, r, COLOURS[colour])
            objects.append(_obj(colour, shape, x, y, r))
        question = "What colour is the largest shape?"
        return canvas.image(), question, target, list(self.vocabulary), {"objects": objects}


class ShapeOf(Family):
    """ "Which shape is red?" -> circle/square/triangle; one shape of each kind, in distinct colours."""

    name = "shape"
    kind = "word"
    vocabulary = SHAPES

    def make(self, rng, target, size):
        colours = rng.sample(COLOUR_NAMES, len(SHAPES))
        items = list(zip(colours, SHAPES))
        canvas = Canvas(size, light_background(rng))
        scene = _scatter(canvas, rng, items)
        asked = colours[SHAPES.index(target)]
        return canvas.image(), f"Which shape is {asked}?", target, list(self.vocabulary), scene


class Exists(Family):
    """ "Is there a red circle?" -> yes/no, among 2-4 shapes; "no" scenes often share the colour or the shape."""

    name = "exists"
    kind = "word"
    vocabulary = ("yes", "no")

    def make(self, rng, target, size):
        colour, shape = rng.choice(COLOUR_NAMES), rng.choice(SHAPES)
        others = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) != (colour, shape)]
        n = rng.randint(2, 4)
        items = [rng.choice(others) for _ in range(n)]
        if target == "yes":
            items[rng.randrange(n)] = (colour, shape)
        canvas = Canvas(size, light_background(rng))
        scene = _scatter(canvas, rng, items)
        return canvas.image(), f"Is there a {colour} {shape}?", target, list(self.vocabulary), scene


# The registry. ``DEFAULT_FAMILIES`` is what make_split uses unless told otherwise.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Count(),
        Compare(),
        Spatial(),
        Bars(),
        Clock(),
        Largest(),
        ShapeOf(),
        Exists(),
        Clock(hours=range(1, 13), name="clock12"),
    )
}
DEFAULT_FAMILIES: tuple[str, ...] = ("count", "compare", "spatial", "bars", "clock", "largest", "shape", "exists")


def get_family(family: str | Family) -> Family:
    """Look a family up by name (or pass a :class:`Family` instance through)."""
    if isinstance(family, Family):
        return family
    try:
        return FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown task family {family!r}; known: {sorted(FAMILIES)}") from None


def family_names(values: Sequence[str]) -> tuple[str, ...]:
    """Family names from command-line values, comma- or space-separated (``["count,clock"]`` and ``["count",
    "clock"]`` alike), ``all`` for every family; ``ValueError`` for an unknown name or none."""
    names = tuple(x.strip() for value in values for x in value.split(",") if x.strip())
    if names == ("all",):
        return tuple(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        problem = f"unknown {unknown}" if unknown else "none given"
        raise ValueError(f"--families: {problem}; choose from {tuple(FAMILIES)} or 'all'")
    return names
