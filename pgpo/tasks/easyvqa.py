"""Adapter for the ``easy-vqa`` package: 64x64 single-shape images with yes/no, shape and colour questions.

Samples use the same format as the procedural families; the family names say what kind of answer is asked for:
``easyvqa_yesno`` (yes/no), ``easyvqa_shape`` (circle/rectangle/triangle) and ``easyvqa_color`` (8 colours).
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

from PIL import Image

EASY_VQA_VOCABULARY: dict[str, tuple[str, ...]] = {
    "easyvqa_yesno": ("yes", "no"),
    "easyvqa_shape": ("circle", "rectangle", "triangle"),
    "easyvqa_color": ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow"),
}


def easy_vqa_family(answer: str) -> str:
    """The sub-family of an easy-VQA answer."""
    for family, vocab in EASY_VQA_VOCABULARY.items():
        if answer in vocab:
            return family
    raise ValueError(f"unexpected easy-VQA answer {answer!r}")


def load_easy_vqa(split: str, n: int | None = None, seed: int = 0, size: int = 64, balanced: bool = True) -> list[dict]:
    """Questions of easy-VQA's ``"train"`` (38,575 on 4,000 images) or ``"test"`` (9,673 on 1,000 images) split.

    ``n=None`` returns every question (in a seeded order, answers as they come: about 74% yes/no). With ``n`` and
    ``balanced`` the ``n`` questions are spread evenly over the three sub-families and, within each, over the answers
    (yes/no: over the answers *per question text*, see :func:`_balanced`), so chance is ``1 / len(choices)`` and the
    question text does not give the answer away; without ``balanced`` they are a seeded random subset. Images are opened with
    PIL as RGB and resized to ``size`` (bicubic) when it is not 64.
    """
    import easy_vqa  # the package, imported lazily: it reads its JSON files from disk

    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"pgpo.tasks/easy_vqa/{split}/{seed}")
    order = list(range(len(questions)))
    rng.shuffle(order)
    if n is not None and balanced:
        order = _balanced(order, questions, answers, n)
    elif n is not None:
        order = order[:n]
    cache: dict[int, Image.Image] = {}
    samples = []
    for i in order:
        image_id = image_ids[i]
        if image_id not in cache:
            with Image.open(paths[image_id]) as im:
                im = im.convert("RGB")
                cache[image_id] = im if im.size == (size, size) else im.resize((size, size), Image.Resampling.BICUBIC)
        family = easy_vqa_family(answers[i])
        samples.append(
            {
                "image": cache[image_id],
                "question": questions[i][0].upper() + questions[i][1:],
                "answer": answers[i],
                "family": family,
                "choices": list(EASY_VQA_VOCABULARY[family]),
            }
        )
    return samples


def _balanced(order: list[int], questions: list[str], answers: list[str], n: int) -> list[int]:
    """``n`` indices from ``order``, spread evenly over the sub-families and, within each, over the answers.

    Yes/no questions are also balanced per question text: easy-VQA's own yes/no answers follow the wording ("is there
    a <colour> shape?" is mostly "no", "is there not ..." mostly "yes"), so a text-only model would get ~83% on them.
    Here every yes/no question text comes with as many "yes" as "no" answers (up to the last round).
    """
    # pools[family][group][answer]: indices in seeded order; the group is the question text for yes/no, else None.
    pools: dict[str, dict[str | None, dict[str, list[int]]]] = {
        f: defaultdict(lambda: defaultdict(list)) for f in EASY_VQA_VOCABULARY
    }
    for i in order:
        family = easy_vqa_family(answers[i])
        group = questions[i].lower() if family == "easyvqa_yesno" else None
        pools[family][group][answers[i]].append(i)
    families = list(EASY_VQA_VOCABULARY)
    per, extra = divmod(n, len(families))
    picked: list[int] = []
    for k, family in enumerate(families):
        quota = per + (k < extra)
        stream = _round_robin(pools[family], EASY_VQA_VOCABULARY[family])
        taken = [i for _, i in zip(range(quota), stream)]
        if len(taken) < quota:
            raise ValueError(f"easy-VQA has only {len(taken)} balanced {family} questions in this split; ask for fewer")
        picked += taken
    rank = {i: r for r, i in enumerate(order)}  # mix families again in the seeded order
    return sorted(picked, key=rank.__getitem__)


def _round_robin(groups: dict, vocab: tuple[str, ...]):
    """Round ``j`` yields the ``j``-th index of every answer of every group that still has all answers."""
    for j in itertools.count():
        live = [g for g in groups.values() if all(len(g[a]) > j for a in vocab)]
        if not live:
            return
        for g in live:
            for a in vocab:
                yield g[a][j]
