r"""Benchmark adapters: each public benchmark's own column schema -> the rows the paper's protocol evaluates -> one
:class:`BenchmarkRecord` each.

Data is read from local files the user downloaded (parquet, jsonl/json, a ``save_to_disk`` folder, or a Hub-style
folder holding those plus its images); nothing is fetched from the Hugging Face Hub. Images may be stored inline (the
``datasets`` Image struct ``{"bytes", "path"}``) or as paths relative to the data file's folder.

Every adapter is one :class:`BenchmarkSpec`: the Hub dataset, its evaluation split(s), the columns it needs, which
rows the protocol keeps (``select``; the PGPO paper follows PAPO-Eval / VPPO, see ``docs/eval.md``), how many rows
that is on the public data (``expected_rows``, checked on load: a mismatch is logged as a warning naming both numbers)
and the converter to a record. Required columns are checked per row: a missing one, or an image that does not decode,
raises ``ValueError`` naming the benchmark, the row index and the column.

:data:`TABLE1_BENCHMARKS` are the eight columns of the paper's Table 1 in its order (``--benchmark all``).

Prompts: the adapter's ``question`` is the problem text with its options written out when the benchmark keeps them in
a separate column (MathVision, MathVista, We-Math); ``<image>`` placeholders are removed later by the prompt template
(:func:`pgpo.data.format_prompt`).
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pgpo.data import image_source, open_image, read_rows, split_names

MULTIPLE_CHOICE, FREE_FORM, FLOAT = "multiple_choice", "free_form", "float"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
logger = logging.getLogger(__name__)
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
    """How to read one benchmark: required columns, image columns, default splits, row selection and converter."""

    name: str
    title: str  # the column header of Table 1
    hf_id: str
    source: str  # where the schema was found
    required: tuple[str, ...]
    image_columns: tuple[str, ...]  # first non-empty one wins
    preferred_splits: tuple[str, ...]  # regular expressions, tried in order on a DatasetDict's split names
    convert: Callable[[Mapping[str, Any]], dict[str, Any]]
    select: Callable[[Mapping[str, Any]], bool] | None = None  # rows the protocol keeps (None: all)
    expected_rows: int | None = None  # rows selected from ONE default split of the public data
    selection: str = "all rows"  # the selection in words (logged, documented)
    subfolder: str | None = None  # a Hub-repo subfolder holding this config (MMMU-Pro: ``vision``)
    split_aliases: Callable[[str], list[str]] | None = (
        None  # other names of a split (DynaMath: sample3 = sample_variant3)
    )


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


def parse_options(value: Any) -> list[str] | None:
    """An options cell as a list: a list already, or a Python/JSON list literal string (``"['1', '2']"``), or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value).strip()
    if not text:
        return None
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return [str(v) for v in parsed] if isinstance(parsed, (list, tuple)) else None


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


MMMU_PRO_VISION_QUESTION = (
    "Answer the multiple-choice question shown in the image with the letter of the correct option."
)
"""The question text for MMMU-Pro's ``vision`` config, whose question and options are only in the screenshot. The
paper and PAPO-Eval do not publish theirs ([choice], ``docs/eval.md``); the paper's instruction is appended after it."""


def _mmmu_pro(row: Mapping[str, Any]) -> dict[str, Any]:
    """MMMU/MMMU_Pro, config ``vision``, split ``test`` (1,730 rows; folder ``vision/`` of the Hub repository).

    Columns (dataset card ``dataset_info``, https://huggingface.co/datasets/MMMU/MMMU_Pro, config ``vision``):
    ``id``, ``image`` (one screenshot holding the question AND its options), ``options`` (the option texts, a list or
    its string literal; used for grading only -- the model sees only the screenshot), ``answer`` (a letter A-J),
    ``subject``. The text prompt is :data:`MMMU_PRO_VISION_QUESTION`.
    """
    options = parse_options(row.get("options"))
    return {
        "id": _text(row["id"]),
        "question": MMMU_PRO_VISION_QUESTION,
        "answer": _text(row["answer"]),
        "choices": options,
        "answer_type": MULTIPLE_CHOICE,
        "extra": {k: _text(row.get(k)) for k in ("subject",) if k in row},
    }


MATHVERSE_VISION_VERSIONS = ("Vision Intensive", "Vision Dominant", "Vision Only")
"""MathVerse's vision-heavy problem versions: MathVerse_V is their multi-choice problems (PAPO's
``AI4Math_MathVerse_vision_dependent``)."""


def _mathverse_multi_choice(row: Mapping[str, Any]) -> bool:
    return _text(row.get("question_type")).lower() == "multi-choice"


def _mathverse_v(row: Mapping[str, Any]) -> bool:
    return _mathverse_multi_choice(row) and _text(row.get("problem_version")) in MATHVERSE_VISION_VERSIONS


def _dynamath_split_aliases(split: str) -> list[str]:
    """``sample_variant3`` <-> ``sample3``: the Hub's split names and its parquet file names (``data/sample3-*``)."""
    m = re.fullmatch(r"sample(?:_variant)?(\d+)", split)
    return [f"sample_variant{m.group(1)}", f"sample{m.group(1)}"] if m else [split]


_MATHVERSE_SOURCE = "https://huggingface.co/datasets/AI4Math/MathVerse"
BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec(
            "geo3k",
            "Geo3k",
            "hiyouga/geometry3k",
            "https://huggingface.co/datasets/hiyouga/geometry3k",
            ("problem", "answer"),
            ("images", "image"),
            ("test",),
            _geo3k,
            expected_rows=601,
            selection="test split",
        ),
        BenchmarkSpec(
            "mmk12",
            "MMK12",
            "FanqingM/MMK12",
            "https://huggingface.co/datasets/FanqingM/MMK12",
            ("question", "answer"),
            ("image", "images"),
            ("test",),
            _mmk12,
            expected_rows=2000,
            selection="test split",
        ),
        BenchmarkSpec(
            "mathverse",
            "MathVerse",
            "AI4Math/MathVerse",
            _MATHVERSE_SOURCE,
            ("sample_index", "question", "answer", "question_type"),
            ("image",),
            ("testmini",),
            _mathverse,
            select=_mathverse_multi_choice,
            expected_rows=2180,
            selection="testmini, multi-choice problems only (question_type == 'multi-choice'), of 3,940 rows",
        ),
        BenchmarkSpec(
            "dynamath",
            "DynaMath",
            "DynaMath/DynaMath_Sample",
            "https://huggingface.co/datasets/DynaMath/DynaMath_Sample",
            ("id", "question", "ground_truth", "answer_type"),
            ("decoded_image", "image"),
            (r"sample_variant1", r"sample1"),
            _dynamath,
            expected_rows=501,
            selection="split sample_variant1 (Hub files data/sample1-*.parquet)",
            split_aliases=_dynamath_split_aliases,
        ),
        BenchmarkSpec(
            "mathvision",
            "MathVision",
            "MathLLMs/MathVision",
            "https://huggingface.co/datasets/MathLLMs/MathVision",
            ("id", "question", "options", "answer"),
            ("decoded_image", "image"),
            ("test",),
            _mathvision,
            expected_rows=3040,
            selection="full test split",
        ),
        BenchmarkSpec(
            "logicvista",
            "LogicVista",
            "lscpku/LogicVista",
            "https://huggingface.co/datasets/lscpku/LogicVista",
            ("question", "answer"),
            ("image",),
            ("test",),
            _logicvista,
            expected_rows=448,
            selection="test split",
        ),
        BenchmarkSpec(
            "mmmu_pro",
            "MMMU-Pro",
            "MMMU/MMMU_Pro",
            "https://huggingface.co/datasets/MMMU/MMMU_Pro",
            ("id", "options", "answer"),
            ("image",),
            ("test",),
            _mmmu_pro,
            expected_rows=1730,
            selection="config vision, test split",
            subfolder="vision",
        ),
        BenchmarkSpec(
            "mathverse_v",
            "MathVerse_V",
            "AI4Math/MathVerse",
            _MATHVERSE_SOURCE,
            ("sample_index", "question", "answer", "question_type", "problem_version"),
            ("image",),
            ("testmini",),
            _mathverse,
            select=_mathverse_v,
            expected_rows=1308,
            selection="testmini, multi-choice problems of the Vision Intensive / Vision Dominant / Vision Only versions",
        ),
        BenchmarkSpec(
            "mathvista",
            "MathVista",
            "AI4Math/MathVista",
            "https://huggingface.co/datasets/AI4Math/MathVista",
            ("pid", "question", "choices", "answer", "question_type"),
            ("decoded_image", "image"),
            ("testmini",),
            _mathvista,
            expected_rows=1000,
            selection="testmini split (not a Table 1 column)",
        ),
        BenchmarkSpec(
            "wemath",
            "We-Math",
            "We-Math/We-Math",
            "https://huggingface.co/datasets/We-Math/We-Math",
            ("ID", "question", "option", "answer"),
            ("image_path", "image"),
            ("testmini",),
            _wemath,
            expected_rows=1740,
            selection="testmini split (not a Table 1 column)",
        ),
    )
}
TABLE1_BENCHMARKS = ("geo3k", "mmk12", "mathverse", "dynamath", "mathvision", "logicvista", "mmmu_pro", "mathverse_v")
"""The eight columns of the paper's Table 1, in its order (``--benchmark all``)."""
ALIASES = {
    "geometry3k": "geo3k",
    "we-math": "wemath",
    "math-vision": "mathvision",
    "mathv": "mathvision",
    "mmmu-pro": "mmmu_pro",
    "mmmupro": "mmmu_pro",
    "mathverse-v": "mathverse_v",
}


def get_spec(name: str) -> BenchmarkSpec:
    """The adapter for ``name`` (case-insensitive; ``geometry3k`` = ``geo3k``); ``ValueError`` if unknown."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (or 'all' for Table 1's eight)")
    return BENCHMARKS[key]


def expand_benchmarks(names: Sequence[str]) -> list[str]:
    """Canonical names, in order, ``all`` expanded to :data:`TABLE1_BENCHMARKS`; comma-separated entries allowed."""
    out: list[str] = []
    for entry in names:
        for name in (n for n in str(entry).split(",") if n.strip()):
            for key in TABLE1_BENCHMARKS if name.strip().lower() == "all" else (get_spec(name).name,):
                if key not in out:
                    out.append(key)
    if not out:
        raise ValueError("no benchmark given (use --benchmark NAME or --benchmark all)")
    return out


def _row_images(row: Mapping[str, Any], columns: Sequence[str]) -> list[Any] | None:
    for name in columns:
        value = row.get(name)
        if value is None or (isinstance(value, (str, list, tuple)) and not value):
            continue
        return [v for v in value if v is not None] if isinstance(value, (list, tuple)) else [value]
    return None


def _data_path(spec: BenchmarkSpec, path: Path) -> Path:
    """The folder of the benchmark's config inside a downloaded Hub repository (MMMU-Pro's ``vision/``), else ``path``."""
    if spec.subfolder and path.is_dir() and (path / spec.subfolder).is_dir():
        return path / spec.subfolder
    return path


def _resolve_split(spec: BenchmarkSpec, path: Path, split: str | None) -> str | None:
    """``split`` with each comma-separated name replaced by the alias present in the data (DynaMath ``sampleN``)."""
    if split is None or spec.split_aliases is None:
        return split
    present = split_names(path)
    out = []
    for name in (s for s in split.split(",") if s):
        out.append(next((a for a in spec.split_aliases(name) if a in present), name))
    return ",".join(out)


def _canonical_split(spec: BenchmarkSpec, split: str) -> str:
    return spec.split_aliases(split)[0] if spec.split_aliases else split


def load_benchmark(
    name: str,
    path: str | Path,
    split: str | None = None,
    limit: int | None = None,
    check_images: bool = True,
) -> list[BenchmarkRecord]:
    """Read benchmark ``name`` from local ``path``: the rows the protocol selects, as :class:`BenchmarkRecord` s.

    ``split`` picks split(s) of a DatasetDict / Hub folder (comma-separated for several); by default the benchmark's
    evaluation split. The protocol's row selection (``spec.select``) is applied, then ``limit`` keeps the first rows.
    Without a ``limit``, the number of selected rows is compared with ``spec.expected_rows`` (times the number of
    splits) and a mismatch is logged as a warning; no selected row at all is a ``ValueError`` naming ``path``.
    ``check_images`` decodes every image once so that a broken one fails now, naming its row. Ids missing in the data become the row index; duplicated ids get ``#<row>`` appended;
    with several splits the ids are ``<split>/<id>``.
    """
    spec = get_spec(name)
    path = _data_path(spec, Path(path).expanduser())
    rows, base = read_rows(path, split=_resolve_split(spec, path, split), preferred_splits=spec.preferred_splits)
    for i, row in enumerate(rows):
        missing = [c for c in spec.required if c not in row]
        if not any(c in row for c in spec.image_columns):
            missing.append(" or ".join(spec.image_columns))
        if missing:
            raise ValueError(
                f"{spec.name} row {i}: missing column(s) {missing} (expected the {spec.hf_id} schema); "
                f"columns present: {sorted(k for k in row if not k.startswith('__'))}"
            )
    indexed = [(i, row) for i, row in enumerate(rows) if spec.select is None or spec.select(row)]
    if not indexed:
        why = "it holds no rows" if not rows else f"none of its {len(rows)} rows is selected ({spec.selection})"
        raise ValueError(f"{spec.name}: no questions in {path}: {why}")
    splits_read = sorted({_canonical_split(spec, row["__split__"]) for row in rows if "__split__" in row})
    n_splits = len(splits_read) or 1
    if limit is None and spec.expected_rows is not None and len(indexed) != spec.expected_rows * n_splits:
        read = f"splits {', '.join(splits_read)}" if splits_read else f"split {split}" if split else spec.selection
        logger.warning(
            "%s: expected %s rows (%s of the public %s data, %s per split) but found %d in %s "
            "(a subset, another revision or the wrong split?)",
            spec.name,
            f"{spec.expected_rows * n_splits:,}",
            read,
            spec.hf_id,
            f"{spec.expected_rows:,}",
            len(indexed),
            path,
        )
    if limit is not None:
        indexed = indexed[: max(0, int(limit))]
    records: list[BenchmarkRecord] = []
    seen: set[str] = set()
    for i, row in indexed:
        try:
            fields = spec.convert(row)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{spec.name} row {i}: cannot read the row ({type(err).__name__}: {err})") from err
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
            rid = f"{_canonical_split(spec, row['__split__'])}/{rid}"
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
