"""Drawing helpers: a small supersampled Pillow canvas in unit coordinates, the palette and the shape set.

Everything is drawn at ``SUPERSAMPLE`` times the target size and box-averaged down (``Image.reduce``), so 64x64 images still have
clean anti-aliased edges. Coordinates are in ``[0, 1]`` (x to the right, y downwards), sizes are fractions of the side.
"""

from __future__ import annotations

import functools
import math
import random

from PIL import Image, ImageDraw, ImageFont

SUPERSAMPLE = 4

# Four saturated, easily named colours (a tiny vision encoder separates them well).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (22, 163, 74),
    "blue": (37, 99, 235),
    "yellow": (234, 179, 8),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

RGB = tuple[int, int, int]


def light_background(rng: random.Random) -> RGB:
    """A random near-white background (varies the pixels without hurting contrast)."""
    return tuple(rng.randint(232, 255) for _ in range(3))  # type: ignore[return-value]


class Canvas:
    """A square RGB canvas of side ``size`` pixels, drawn in unit coordinates."""

    def __init__(self, size: int, background: RGB = (255, 255, 255)):
        self.size = size
        self.side = size * SUPERSAMPLE
        self.im = Image.new("RGB", (self.side, self.side), background)
        self.draw = ImageDraw.Draw(self.im)

    def px(self, v: float) -> float:
        """Unit length -> supersampled pixels."""
        return v * self.side

    def shape(self, kind: str, cx: float, cy: float, r: float, fill: RGB) -> None:
        """Draw a filled ``circle``/``square``/``triangle`` of "radius" ``r`` (half the side) centred at (cx, cy).

        The square's side is ``1.8 r`` and the triangle fits the same circle, so the three look about equally big.
        """
        x, y, r = self.px(cx), self.px(cy), self.px(r)
        if kind == "circle":
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif kind == "square":
            h = 0.9 * r
            self.draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        elif kind == "triangle":
            pts = [(x + r * math.cos(a), y + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
            # Shift down a little so the triangle's visual centre sits at (cx, cy).
            dy = 0.2 * r
            self.draw.polygon([(px, py + dy) for px, py in pts], fill=fill)
        else:
            raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPES}")

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB | None = None, outline: RGB | None = None):
        """Axis-aligned rectangle in unit coordinates."""
        width = max(1, round(SUPERSAMPLE * 1.0)) if outline is not None else 0
        self.draw.rectangle(
            (self.px(x0), self.px(y0), self.px(x1), self.px(y1)), fill=fill, outline=outline, width=width
        )

    def line(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, width: float) -> None:
        """Line of ``width`` output pixels (round caps are approximated by small discs at the ends)."""
        w = max(1, round(width * SUPERSAMPLE))
        self.draw.line((self.px(x0), self.px(y0), self.px(x1), self.px(y1)), fill=fill, width=w)
        for x, y in ((x0, y0), (x1, y1)):
            self.draw.ellipse(
                (self.px(x) - w / 2, self.px(y) - w / 2, self.px(x) + w / 2, self.px(y) + w / 2), fill=fill
            )

    def circle(self, cx: float, cy: float, r: float, fill: RGB | None = None, outline: RGB | None = None, width=1.0):
        """Circle with optional outline of ``width`` output pixels."""
        x, y, r = self.px(cx), self.px(cy), self.px(r)
        w = max(1, round(width * SUPERSAMPLE))
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=w)

    def text(self, cx: float, cy: float, s: str, height: float, fill: RGB = (0, 0, 0)) -> None:
        """Text centred at (cx, cy), ``height`` a fraction of the side (Pillow's built-in font, no system fonts)."""
        font = _font(max(1, round(self.px(height))))
        self.draw.text((self.px(cx), self.px(cy)), s, fill=fill, font=font, anchor="mm")

    def image(self) -> Image.Image:
        """The finished ``size`` x ``size`` RGB image."""
        return self.im.reduce(SUPERSAMPLE)


@functools.lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def grid_positions(rng: random.Random, k: int, n: int = 3, jitter: float = 0.25) -> list[tuple[float, float]]:
    """Centres of ``k`` distinct cells of an ``n`` x ``n`` grid, each moved by up to ``jitter`` of a cell.

    Shapes of radius ``<= (0.5 - jitter) / n`` placed at these centres never overlap.
    """
    if k > n * n:
        raise ValueError(f"cannot place {k} shapes on a {n}x{n} grid")
    cell = 1.0 / n
    out = []
    for idx in rng.sample(range(n * n), k):
        row, col = divmod(idx, n)
        out.append(
            (
                (col + 0.5 + rng.uniform(-jitter, jitter)) * cell,
                (row + 0.5 + rng.uniform(-jitter, jitter)) * cell,
            )
        )
    return out
