"""Seeded, balanced sample generation and the train/test split.

* Sample ``i`` of ``generate(family, n, seed)`` depends only on ``(family, seed, split, i)``: the same seed gives the
  same samples, and ``generate(f, m, s)`` is a prefix of ``generate(f, n, s)`` for ``m <= n``.
* Answers are balanced: consecutive blocks of ``len(family.targets())`` samples each hit every target once (in a
  seeded random order), so the answer counts differ by at most one block.
* ``split="train"`` / ``"test"`` use disjoint seed streams *and* keep only images whose content hash falls in the
  split's half, so no test image can appear in train, whatever the seeds (a rejected draw is redrawn).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, TypedDict

from PIL import Image

from pgpo.tasks.families import DEFAULT_FAMILIES, Family, get_family

SPLITS = ("train", "test")
DEFAULT_SIZE = 96
MAX_REDRAWS = 200


class Sample(TypedDict, total=False):
    """One task instance. ``scene`` (what was drawn, see :data:`pgpo.tasks.families.Scene`) is absent for samples
    that do not come from a family's ``make`` (e.g. easy-VQA)."""

    image: Image.Image
    question: str
    answer: str
    family: str
    choices: list[str] | None
    scene: dict


def image_digest(image: Image.Image) -> str:
    """A content hash of an image (mode, size and pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def split_of_image(image: Image.Image) -> str:
    """Which split an image belongs to: a fixed half of the hash space each."""
    return SPLITS[int(image_digest(image)[0], 16) & 1]


def _rng(*parts: Any) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, so this is stable across runs and PYTHONHASHSEED.
    return random.Random("pgpo.tasks/" + "/".join(map(str, parts)))


def generate_one(family: str | Family, index: int, seed: int = 0, size: int = DEFAULT_SIZE, split: str | None = None):
    """Sample ``index`` of ``generate(family, ..., seed, size, split)``."""
    fam = get_family(family)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    stream = split or "any"
    targets = fam.targets()
    block, pos = divmod(index, len(targets))
    order = list(range(len(targets)))
    _rng(fam.name, stream, seed, "block", block).shuffle(order)
    target = targets[order[pos]]
    rng = _rng(fam.name, stream, seed, "sample", index)
    for _ in range(MAX_REDRAWS):
        made = fam.make(rng, target, size)
        image, question, answer, choices = made[:4]
        scene = made[4] if len(made) > 4 else {}  # a family written before scenes existed returns 4 items
        if split is None or split_of_image(image) == split:
            return Sample(image=image, question=question, answer=answer, family=fam.name, choices=choices, scene=scene)
    raise RuntimeError(f"{fam.name}: no {split} image in {MAX_REDRAWS} draws (too little variation?)")


def generate(
    family: str | Family, n: int, seed: int = 0, size: int = DEFAULT_SIZE, split: str | None = None
) -> list[Sample]:
    """``n`` balanced samples of one family. ``split`` restricts to that split's images (see module docstring)."""
    return [generate_one(family, i, seed, size, split) for i in range(n)]


def make_split(
    split: str,
    n: int,
    seed: int = 0,
    families: tuple[str, ...] | list[str] = DEFAULT_FAMILIES,
    size: int = DEFAULT_SIZE,
    shuffle: bool = True,
) -> list[Sample]:
    """``n`` samples of ``split`` ("train" or "test") spread evenly over ``families`` (first ones get the remainder).

    Train and test never share an image. With ``shuffle`` the families are mixed in a seeded order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not families:
        raise ValueError("need at least one family")
    per, extra = divmod(n, len(families))
    samples: list[Sample] = []
    for k, fam in enumerate(families):
        samples += generate(fam, per + (k < extra), seed, size, split)
    if shuffle:
        _rng("shuffle", split, seed, n, ",".join(families)).shuffle(samples)
    return samples
