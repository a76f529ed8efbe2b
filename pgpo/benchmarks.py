r"""Benchmark adapters: each public benchmark's own column schema -> one :class:`BenchmarkRecord`.

Data is read from local files the user downloaded (parquet, jsonl/json, a ``save_to_disk`` folder, or a folder holding
one of those plus its images); nothing is fetched from the Hugging Face Hub. Images may be stored inline (the
``datasets`` Image struct ``{"bytes", "path"}``) or as paths relative to the data file's folder.

The schemas below were looked up in the datasets' cards (``dataset_info`` in the README front matter) and in public
evaluation code that reads them (lmms-eval, VLMEvalKit, EasyR1/VPPO/PAPO evaluation scripts); the source of each is in
its adapter's docstring. Required columns are checked per row: a missing one, or an image that does not decode, raises
``ValueError`` naming the benchmark and the row index.

Prompts: the adapter's ``question`` is the problem text with its options written out when the benchmark keeps them in a
separate column (MathVision, MathVista, We-Math); ``<image>`` placeholders are removed later by the prompt template
(:func:`pgpo.data.format_prompt`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pgpo.data import image_source, open_image, read_rows

MULTIPLE_CHOICE, FREE_FORM, FLOAT = "multiple_choice", "free_form", "float"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CHOICE_LINE_RE = re.compile(r"^\s*\(?([A-H])\)?\s*[.:：、)]\s*(.+?)\s*$")


@dataclass
class BenchmarkRecord:
    """One benchmark question in the common form. ``images`` hold undecoded sources (see :meth:`load_images`)."""

    id: str
    question: str
    images: list[Any]
    answer: str
    choices: list[str] | None = None
    answer_type: str = FREE_FORM  # "multiple_choice" | "free_form" | "float"
    precision: float | None = None  # decimals for answer_type "float" (MathVista); None = DynaMath's 1e-3 tolerance
    extra: dict[str, Any] = field(default_factory=dict)

    def load_images(self) -> list[Image.Image]:
        """The images, decoded to RGB PIL images."""
        return [open_image(src) for src in self.images]


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to read one benchmark: its required columns, image columns, default splits and row converter."""

    name: str
    hf_id: str
    source: str  # where the schema was found
    required: tuple[str, ...]
    image_columns: tuple[str, ...]  # first non-empty one wins
    preferred_splits: tuple[str, ...]  # regular expressions, tried in order on a DatasetDict's split names
    convert: Callable[[Mapping[str, Any]], dict[str, Any]]


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def parse_inline_choices(text: str) -> list[str] | None:
    """Options written one per line inside a question (``A: 30°`` / ``A. 30`` / ``(A) 30``), in letter order, or None.

    The letters must run A, B, C, ... without gaps (at least two), otherwise None.
    """
    found: dict[str, str] = {}
    for line in str(text or "").splitlines():
        m = _CHOICE_LINE_RE.match(line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    letters = sorted(found)
    if len(letters) < 2 or letters != list(_LETTERS[: len(letters)]):
        return None
    return [found[c] for c in letters]


def parse_option_string(text: str) -> list[str] | None:
    """We-Math's ``option`` field, ``"A. 200.96;B. 3215.36;C. 6280;D. 32; E. No correct answer"``, as a list."""
    parts = [p.strip() for p in re.split(r";\s*(?=\(?[A-H]\)?\s*[.:：、)])", str(text or "")) if p.strip()]
    out = []
    for i, part in enumerate(parts):
        m = re.match(r"^\(?([A-H])\)?\s*[.:：、)]\s*(.*)$", part, flags=re.DOTALL)
        if not m or m.group(1) != _LETTERS[i]:
            return None
        out.append(m.group(2).strip())
    return out or None


def render_choices(question: str, choices: Sequence[str] | None) -> str:
    """``question`` followed by ``Choices:`` and one ``(A) option`` line per choice (unchanged without choices)."""
    if not choices:
        return question
    lines = [f"({_LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return question.rstrip() + "\nChoices:\n" + "\n".join(lines)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _is_letter_answer(answer: str) -> bool:
    return bool(re.fullmatch(r"\(?[A-H]\)?(?:\s*,\s*\(?[A-H]\)?)*", answer.strip()))


def _float_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN -> None


# ----------------------------------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------------------------------


def _mathverse(row: Mapping[str, Any]) -> dict[str, Any]:
    """AI4Math/MathVerse ``testmini`` (3,940 rows).

    Columns (dataset card ``dataset_info``, https://huggingface.co/datasets/AI4Math/MathVerse/blob/main/README.md, and
    lmms-eval ``tasks/mathverse/utils.py``): ``sample_index``, ``problem_index``, ``problem_version``, ``question``,
    ``image`` (Image), ``answer``, ``question_type`` (``multi-choice`` / ``free-form``), ``metadata`` (struct),
    ``query_wo``, ``query_cot``, ``question_for_eval``. Multiple-choice questions list their options inside
    ``question`` (``Choices:`` then ``A:...`` lines) and the answer is the letter. The "Vision Only" version has an
    empty ``question`` (the problem is drawn in the image); ``query_wo`` is used for it.
    """
    question = _text(row.get("question")) or _text(row.get("query_wo")) or _text(row.get("question_for_eval"))
    mc = _text(row.get("question_type")).lower().startswith("multi")
    return {
        "id": _text(row["sample_index"]),
        "question": question,
        "answer": _text(row["answer"]),
        "choices": parse_inline_choices(question) if mc else None,
        "answer_type": MULTIPLE_CHOICE if mc else FREE_FORM,
        "extra": {k: _text(row.get(k)) for k in ("problem_index", "problem_version") if k in row},
    }


def _mathvision(row: Mapping[str, Any]) -> dict[str, Any]:
    """MathLLMs/MathVision ``test`` (3,040 rows; ``testmini`` 304).

    Columns (dataset card, https://huggingface.co/datasets/MathLLMs/MathVision, and its ``eval.yaml``: input
    ``question``, image ``decoded_image``, target ``answer``, choices ``options``): ``id``, ``question``, ``options``
    (list, empty for free-form), ``image`` (relative path ``images/<id>.jpg``), ``decoded_image`` (Image), ``answer``
    (a letter when there are options), ``solution``, ``level``, ``subject``. Questions contain ``<image1>``.
    """
    options = [str(o) for o in (row.get("options") or [])]
    return {
        "id": _text(row["id"]),
        "question": render_choices(_text(row["question"]), options),
        "answer": _text(row["answer"]),
        "choices": options or None,
        "answer_type": MULTIPLE_CHOICE if options else FREE_FORM,
        "extra": {k: _text(row.get(k)) for k in ("level", "subject") if k in row},
    }


def _mathvista(row: Mapping[str, Any]) -> dict[str, Any]:
    """AI4Math/MathVista ``testmini`` (1,000 rows; ``test`` has no answers).

    Columns (dataset card ``dataset_info``, https://huggingface.co/datasets/AI4Math/MathVista/blob/main/README.md):
    ``pid``, ``question``, ``image`` (path), ``decoded_image`` (Image), ``choices`` (list or None), ``unit``,
    ``precision`` (float), ``answer``, ``question_type`` (``multi_choice`` / ``free_form``), ``answer_type``
    (``text`` / ``integer`` / ``float`` / ``list``), ``metadata`` (struct), ``query`` (the official prompt: hint,
    question and choices). The multiple-choice ``answer`` is the option *text*, not a letter. ``query`` is used as
    the question when present.
    """
    choices = [str(c) for c in (row.get("choices") or [])] or None
    mc = _text(row.get("question_type")) == "multi_choice" and bool(choices)
    question = _text(row.get("query")) or render_choices(_text(row["question"]), choices if mc else None)
    kind = _text(row.get("answer_type"))
    answer_type = MULTIPLE_CHOICE if mc else (FLOAT if kind == "float" else FREE_FORM)
    return {
        "id": _text(row["pid"]),
        "question": question,
        "answer": _text(row["answer"]),
        "choices": choices if mc else None,
        "answer_type": answer_type,
        "precision": _float_or_none(row.get("precision")) if answer_type == FLOAT else None,
        "extra": {"unit": _text(row.get("unit")), "mathvista_answer_type": kind},
    }


def _wemath(row: Mapping[str, Any]) -> dict[str, Any]:
    """We-Math/We-Math ``testmini`` (1,740 rows).

    Columns (We-Math GitHub README data format and VLMEvalKit / lmms-eval readers; the HF parquet stores the picture
    in ``image_path`` as an Image): ``ID``, ``split``, ``knowledge concept``, ``question``, ``option``
    (``"A. 200.96;B. 3215.36;..."``), ``answer`` (a letter), ``image_path``, ``key`` (``2steps_1``...),
    ``question number``, ``knowledge concept description``.
    """
    options = parse_option_string(_text(row["option"]))
    question = _text(row["question"])
    question = render_choices(question, options) if options else f"{question}\nOptions: {_text(row['option'])}"
    return {
        "id": _text(row["ID"]),
        "question": question,
        "answer": _text(row["answer"]),
        "choices": options,
        "answer_type": MULTIPLE_CHOICE,
        "extra": {k: _text(row.get(k)) for k in ("key", "question number") if k in row},
    }


def _logicvista(row: Mapping[str, Any]) -> dict[str, Any]:
    """lscpku/LogicVista ``test`` (448 rows).

    Columns (observed schema documented in public eval code reading ``lscpku/LogicVista``): ``question`` (options are
    part of the text), ``answer`` (a letter, or several such as ``A, C``), ``reasoning``, ``image`` (Image), ``skill``,
    ``broad_capability``, ``specific_capability``, ``imagesource``, ``sourcelink``, ``liscenced``, ``id``.
    """
    question = _text(row["question"])
    answer = _text(row["answer"])
    return {
        "id": _text(row.get("id")),
        "question": question,
        "answer": answer,
        "choices": parse_inline_choices(question),
        "answer_type": MULTIPLE_CHOICE if _is_letter_answer(answer) else FREE_FORM,
        "extra": {k: _text(row.get(k)) for k in ("skill",) if k in row},
    }


def _dynamath(row: Mapping[str, Any]) -> dict[str, Any]:
    """DynaMath/DynaMath_Sample, splits ``sample_variant1`` ... ``sample_variant10`` (501 rows each).

    Columns (dataset card ``dataset_info``, https://huggingface.co/datasets/DynaMath/DynaMath_Sample): ``id``,
    ``question``, ``image`` (path), ``decoded_image`` (Image), ``ground_truth``, ``answer_type`` (``multiple choice``
    / ``float`` / ``free form``), ``subject``, ``knowledge_level``. Floats are graded with DynaMath's absolute
    tolerance 1e-3. Several variant splits may be evaluated together (ids get the split name as a prefix).
    """
    kind = _text(row["answer_type"]).lower()
    answer_type = MULTIPLE_CHOICE if kind.startswith("multiple") else FLOAT if kind == "float" else FREE_FORM
    question = _text(row["question"])
    return {
        "id": _text(row["id"]),
        "question": question,
        "answer": _text(row["ground_truth"]),
        "choices": parse_inline_choices(question) if answer_type == MULTIPLE_CHOICE else None,
        "answer_type": answer_type,
        "extra": {k: _text(row.get(k)) for k in ("subject", "knowledge_level") if k in row},
    }


def _geo3k(row: Mapping[str, Any]) -> dict[str, Any]:
    """hiyouga/geometry3k ``test`` (601 rows; ``train`` 2,101, ``validation`` 300).

    Columns (dataset card ``dataset_info``, https://huggingface.co/datasets/hiyouga/geometry3k/blob/main/README.md):
    ``images`` (list of Image), ``problem`` (starts with ``<image>``), ``answer``, and in the current revision also
    ``id``, ``choices`` and ``ground_truth`` (the option letter). Evaluated free-form on ``problem`` / ``answer``, as
    in EasyR1 and VPPO (the options are not shown).
    """
    return {
        "id": _text(row.get("id")),
        "question": _text(row["problem"]),
        "answer": _text(row["answer"]),
        "choices": None,
        "answer_type": FREE_FORM,
        "extra": {},
    }


def _mmk12(row: Mapping[str, Any]) -> dict[str, Any]:
    """FanqingM/MMK12 ``test`` (2,000 rows: math, physics, chemistry, biology).

    Columns (lmms-eval ``tasks/mmk12`` and MMK12 preprocessing scripts reading the dataset): ``id``, ``subject``,
    ``image`` (Image), ``question`` (options written inline as ``A. ...`` lines), ``answer`` (the option letter; the
    ``train`` split has free-form answers).
    """
    question = _text(row["question"])
    answer = _text(row["answer"])
    mc = _is_letter_answer(answer)
    return {
        "id": _text(row.get("id")),
        "question": question,
        "answer": answer,
        "choices": parse_inline_choices(question) if mc else None,
        "answer_type": MULTIPLE_CHOICE if mc else FREE_FORM,
        "extra": {k: _text(row.get(k)) for k in ("subject",) if k in row},
    }


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec(
            "mathverse",
            "AI4Math/MathVerse",
            "https://huggingface.co/datasets/AI4Math/MathVerse",
            ("sample_index", "question", "answer", "question_type"),
            ("image",),
            ("testmini",),
            _mathverse,
        ),
        BenchmarkSpec(
            "mathvision",
            "MathLLMs/MathVision",
            "https://huggingface.co/datasets/MathLLMs/MathVision",
            ("id", "question", "options", "answer"),
            ("decoded_image", "image"),
            ("test", "testmini"),
            _mathvision,
        ),
        BenchmarkSpec(
            "mathvista",
            "AI4Math/MathVista",
            "https://huggingface.co/datasets/AI4Math/MathVista",
            ("pid", "question", "choices", "answer", "question_type"),
            ("decoded_image", "image"),
            ("testmini",),
            _mathvista,
        ),
        BenchmarkSpec(
            "wemath",
            "We-Math/We-Math",
            "https://huggingface.co/datasets/We-Math/We-Math",
            ("ID", "question", "option", "answer"),
            ("image_path", "image"),
            ("testmini",),
            _wemath,
        ),
        BenchmarkSpec(
            "logicvista",
            "lscpku/LogicVista",
            "https://huggingface.co/datasets/lscpku/LogicVista",
            ("question", "answer"),
            ("image",),
            ("test",),
            _logicvista,
        ),
        BenchmarkSpec(
            "dynamath",
            "DynaMath/DynaMath_Sample",
            "https://huggingface.co/datasets/DynaMath/DynaMath_Sample",
            ("id", "question", "ground_truth", "answer_type"),
            ("decoded_image", "image"),
            (r"sample_variant\d+", r"sample\d+"),
            _dynamath,
        ),
        BenchmarkSpec(
            "geo3k",
            "hiyouga/geometry3k",
            "https://huggingface.co/datasets/hiyouga/geometry3k",
            ("problem", "answer"),
            ("images", "image"),
            ("test",),
            _geo3k,
        ),
        BenchmarkSpec(
            "mmk12",
            "FanqingM/MMK12",
            "https://huggingface.co/datasets/FanqingM/MMK12",
            ("question", "answer"),
            ("image", "images"),
            ("test",),
            _mmk12,
        ),
    )
}
ALIASES = {"geometry3k": "geo3k", "we-math": "wemath", "math-vision": "mathvision", "mathv": "mathvision"}


def get_spec(name: str) -> BenchmarkSpec:
    """The adapter for ``name`` (case-insensitive; ``geometry3k`` = ``geo3k``); ``ValueError`` if unknown."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def _row_images(row: Mapping[str, Any], columns: Sequence[str]) -> list[Any] | None:
    for name in columns:
        value = row.get(name)
        if value is None or (isinstance(value, (str, list, tuple)) and not value):
            continue
        return [v for v in value if v is not None] if isinstance(value, (list, tuple)) else [value]
    return None


def load_benchmark(
    name: str,
    path: str | Path,
    split: str | None = None,
    limit: int | None = None,
    check_images: bool = True,
) -> list[BenchmarkRecord]:
    """Read benchmark ``name`` from local ``path`` into :class:`BenchmarkRecord` s (first ``limit`` rows).

    ``split`` picks a split of a ``save_to_disk`` DatasetDict (comma-separated for several); by default the
    benchmark's usual evaluation split. ``check_images`` decodes every image once so that a broken one fails now,
    naming its row. Ids missing in the data become the row index; duplicated ids get ``#<row>`` appended.
    """
    spec = get_spec(name)
    rows, base = read_rows(path, split=split, preferred_splits=spec.preferred_splits)
    if limit is not None:
        rows = rows[: max(0, int(limit))]
    records: list[BenchmarkRecord] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        missing = [c for c in spec.required if c not in row]
        if not any(c in row for c in spec.image_columns):
            missing.append(" or ".join(spec.image_columns))
        if missing:
            raise ValueError(
                f"{spec.name} row {i}: missing column(s) {missing} (expected the {spec.hf_id} schema); "
                f"columns present: {sorted(k for k in row if not k.startswith('__'))}"
            )
        fields = spec.convert(row)
        values = _row_images(row, spec.image_columns)
        if not values:
            raise ValueError(f"{spec.name} row {i}: no image in column(s) {list(spec.image_columns)}")
        sources = []
        for j, value in enumerate(values):
            try:
                source = image_source(value, base)
                if check_images:
                    open_image(source)
            except ValueError as err:
                raise ValueError(f"{spec.name} row {i}: image {j}: {err}") from err
            sources.append(source)
        rid = fields["id"] or str(i)
        if "__split__" in row:
            rid = f"{row['__split__']}/{rid}"
        if rid in seen:
            rid = f"{rid}#{i}"
        seen.add(rid)
        if not fields["answer"]:
            raise ValueError(f"{spec.name} row {i}: empty answer (is this a split without gold answers?)")
        records.append(
            BenchmarkRecord(
                id=rid,
                question=fields["question"],
                images=sources,
                answer=fields["answer"],
                choices=fields.get("choices"),
                answer_type=fields.get("answer_type", FREE_FORM),
                precision=fields.get("precision"),
                extra=fields.get("extra", {}),
            )
        )
    return records
