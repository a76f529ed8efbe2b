r"""RLVR training data in the trainer's format, from ViRL39K-style records, ``save_to_disk`` folders or JSONL + images.

The output is a ``datasets.Dataset`` with the columns TRL's ``GRPOTrainer`` expects for a VLM:

* ``prompt``: conversational, ``[{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": q}]}]``
  with one ``{"type": "image"}`` per image (images first) and the question wrapped in :data:`PAPER_PROMPT_TEMPLATE`;
* ``image`` (one PIL image per row, when every row has exactly one) or ``images`` (a list per row, otherwise);
* ``answer``: the gold answer as a string (an outer ``\boxed{...}`` is removed: ViRL39K stores ``\boxed{17}``);
* ``id`` when the records have one (``qid`` or ``id``).

Input records need a question (column ``question``, or ``problem`` as in geometry3k and the Kun-Xiang ViRL39K
mirror), an ``answer`` and their images (``image`` or ``images``: one value or a list; each a PIL image, raw bytes, a
``{"bytes", "path"}`` dict as stored by ``datasets``, or a path relative to the data file's folder or ``image_root``).
``<image>`` placeholders in the question text are removed (the prompt's image entries replace them).

ViRL39K (https://huggingface.co/datasets/TIGER-Lab/ViRL39K, dataset card "3. Dataset Keys"; column list confirmed by
public preprocessing code, e.g. verl/EasyR1 ports): one parquet file ``39Krelease.parquet`` with columns ``qid``,
``question`` (contains ``<image>`` placeholders), ``answer`` (always ``\boxed{...}``), ``image`` (a list of relative
paths such as ``images/Processed-xxx-0.jpg``, resolved against the parquet's folder where ``images.zip`` is
unpacked), ``category``, ``source``, ``PassRate_32BTrained``, ``PassRate_7BBase``. A few rows (source DeepScaleR) have
no image; they are dropped by default (``text_only="drop"``).

Bad input -- a missing column, a missing or undecodable image -- raises ``ValueError`` naming the row index.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from pgpo.answers import unwrap_boxed

logger = logging.getLogger(__name__)

PAPER_INSTRUCTION = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> tags. "
    "Then, provide your final answer enclosed within \\boxed{}."
)
PAPER_PROMPT_TEMPLATE = "{question}\n\n" + PAPER_INSTRUCTION.replace("{}", "{{}}")
"""The paper's prompt (PGPO Sec. 5.1 / App. A, the same for training and evaluation): the question, then the
instruction above. The wording is the paper's; the blank line between question and instruction is PAPO's
``examples/format_prompt/math_perception.jinja`` (``{{ content | trim }}``, blank line, instruction), which the paper
follows. ``{question}`` is the only field (``\\boxed{{}}`` is an escaped brace pair for ``str.format``)."""

PAPER_SYSTEM_PROMPT = "You are a helpful assistant."
"""The paper's system message (also Qwen2.5-VL's default system prompt and LLaMA-Factory's ``qwen2_vl`` default)."""

EASYR1_PROMPT_TEMPLATE = (
    "{question}\nYou FIRST think about the reasoning process as an internal monologue and then provide the final "
    "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in "
    "\\boxed{{}}."
)
"""EasyR1's math format prompt (``examples/format_prompt/math.jinja`` in hiyouga/EasyR1), NOT the paper's; kept as
the named template ``easyr1``."""

PROMPT_TEMPLATES = {"paper": PAPER_PROMPT_TEMPLATE, "easyr1": EASYR1_PROMPT_TEMPLATE, "plain": "{question}"}
"""Named prompt templates (:func:`resolve_prompt_template`)."""

QUESTION_COLUMNS = ("question", "problem")
IMAGE_COLUMNS = ("images", "image")
"""The image columns, in TRL's order: a row's images are its ``images`` list if it has that column, else ``[image]``."""
ID_COLUMNS = ("qid", "id")
_PLACEHOLDER_RE = re.compile(r"<\s*image[\s_]*\d*\s*>", re.IGNORECASE)
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


# ----------------------------------------------------------------------------------------------------------------------
# Prompt
# ----------------------------------------------------------------------------------------------------------------------


def strip_image_placeholders(text: str) -> str:
    """Remove ``<image>``, ``<image1>``, ``<image 2>``, ``<image_3>`` placeholders and tidy the whitespace left over."""
    text = _PLACEHOLDER_RE.sub("", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip()


def resolve_prompt_template(template: str | None) -> str:
    """A template by name (``paper``, ``easyr1``, ``plain``; None = ``paper``) or itself when it has ``{question}``.

    Raises ``ValueError`` for anything else (a typo in a name must not become the literal prompt).
    """
    if template is None:
        return PAPER_PROMPT_TEMPLATE
    if template in PROMPT_TEMPLATES:
        return PROMPT_TEMPLATES[template]
    if "{question}" not in template:
        raise ValueError(
            f"prompt template {template!r} is neither a name ({', '.join(PROMPT_TEMPLATES)}) nor a template with "
            "a {question} field"
        )
    return template


def format_prompt(question: str, prompt_template: str = PAPER_PROMPT_TEMPLATE) -> str:
    """The user text for a question: placeholders stripped, then ``prompt_template.format(question=...)``."""
    return prompt_template.format(question=strip_image_placeholders(question))


def build_messages(
    question: str,
    n_images: int,
    prompt_template: str = PAPER_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """The one prompt builder: chat messages for a question with ``n_images`` images (images first).

    ``[{"role": "system", ...}]`` (only when ``system_prompt`` is given; without one, the chat template's default
    applies -- Qwen2.5-VL's is the paper's "You are a helpful assistant.") then
    ``{"role": "user", "content": [{"type": "image"} * n_images, {"type": "text", "text": ...}]}``. All contents are
    lists of parts, so a dataset column holding these messages has one Arrow type.
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": format_prompt(question, prompt_template)})
    messages.append({"role": "user", "content": content})
    return messages


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


def _resolve(path: str, root: Path | None) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or root is None:
        return p
    return root / p


def image_source(value: Any, root: Path | None = None) -> Any:
    """A ``datasets.Image``-storable form of one image value: a PIL image or a ``{"bytes", "path"}`` dict.

    Paths become absolute (relative ones are resolved against ``root``). Raises ``ValueError`` for an unknown type,
    a missing file or an empty value; does not decode (see :func:`open_image`).
    """
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return {"bytes": bytes(value["bytes"]), "path": value.get("path")}
        if value.get("path"):
            return image_source(str(value["path"]), root)
        raise ValueError("image dict has neither 'bytes' nor 'path'")
    if isinstance(value, str):
        if value.startswith("data:image") and "," in value:
            return {"bytes": base64.b64decode(value.split(",", 1)[1]), "path": None}
        if not value.strip():
            raise ValueError("empty image path")
        path = _resolve(value, root)
        if not path.is_file():
            raise ValueError(f"image file not found: {path}")
        return {"bytes": None, "path": str(path.resolve())}
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def open_image(value: Any, root: Path | None = None, convert: str | None = "RGB") -> Image.Image:
    """Decode one image value (PIL, bytes, ``{"bytes", "path"}`` dict, data URL or path) fully; ``ValueError`` if it
    cannot be read."""
    source = image_source(value, root)
    try:
        if isinstance(source, Image.Image):
            img = source
            img.load()
        elif source.get("bytes"):
            img = Image.open(io.BytesIO(source["bytes"]))
            img.load()
        else:
            with Image.open(source["path"]) as f:
                f.load()
                img = f.copy()
    except Exception as err:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
        where = "" if isinstance(source, Image.Image) or source.get("bytes") else f" {source['path']}"
        raise ValueError(f"cannot decode image{where}: {type(err).__name__}: {err}") from err
    return img.convert(convert) if convert and img.mode != convert else img


def image_values(row: Mapping[str, Any], columns: Sequence[str] = IMAGE_COLUMNS) -> list[Any] | None:
    """The row's images as a list (None when the row has none of ``columns``); a single value becomes ``[value]``."""
    for name in columns:
        if name in row:
            value = row[name]
            if value is None:
                return []
            if isinstance(value, (list, tuple)):
                return [v for v in value if v is not None]
            return [value]
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------------


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json"))


_SHARD_RE = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")


def _split_name(path: Path) -> str:
    """``data/test-00000-of-00001-abc.parquet`` -> ``test``; ``testmini.parquet`` -> ``testmini``."""
    m = _SHARD_RE.match(path.name)
    return m.group("split") if m else path.stem


def folder_sources(folder: Path) -> dict[str, list[Path]] | Path:
    """What a downloaded dataset folder holds: its data files grouped by split (parquet preferred over jsonl/json,
    looked for in the folder and in ``data/``, Hub-style shard names ``<split>-00000-of-00001*.parquet`` grouped), or
    the single ``save_to_disk`` folder inside it."""
    for sub in (folder, folder / "data"):
        if not sub.is_dir():
            continue
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix == ".parquet")
        files = files or sorted(p for p in sub.iterdir() if p.is_file() and p.suffix in (".jsonl", ".json"))
        files = [p for p in files if p.name not in ("dataset_info.json", "state.json", "dataset_dict.json")]
        if files:
            groups: dict[str, list[Path]] = {}
            for p in files:
                groups.setdefault(_split_name(p), []).append(p)
            return groups
    saved = [p for p in sorted(folder.iterdir()) if _is_saved_dataset(p)]
    if len(saved) == 1:
        return saved[0]
    raise ValueError(f"{folder}: no parquet/jsonl/json file and no single save_to_disk dataset found")


def _read_json(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {line_no + 1} is not valid JSON: {err}") from err
        return rows
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, Mapping):  # {"data": [...]} or {id: record}
        data = data.get("data") if isinstance(data.get("data"), list) else list(data.values())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return data


def _read_parquet(paths: Sequence[Path]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(pq.read_table(p).to_pylist())  # Image features come back as {"bytes", "path"} dicts
    return rows


def _choose_split(names: Sequence[str], split: str | None, preferred: Sequence[str], where: Path) -> list[str]:
    if split is not None:
        chosen = [s for s in split.split(",") if s]
        missing = [s for s in chosen if s not in names]
        if missing:
            raise ValueError(f"{where}: no split {missing} (splits: {list(names)})")
        return chosen
    if len(names) == 1:
        return list(names)
    for pref in preferred:
        matches = [n for n in names if re.fullmatch(pref, n)]
        if matches:
            return matches
    raise ValueError(f"{where}: several splits {list(names)}; choose one with split=... (--split)")


def _read_files(paths: Sequence[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    parquet = [p for p in paths if p.suffix == ".parquet"]
    if parquet:
        rows.extend(_read_parquet(parquet))
    for p in paths:
        if p.suffix in (".jsonl", ".json"):
            rows.extend(_read_json(p))
    return rows


def split_names(path: str | Path) -> list[str]:
    """The split names in ``path`` (a Hub-style folder or a ``save_to_disk`` DatasetDict); ``[]`` for a single file,
    a single ``Dataset`` or a path that does not exist."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return []
    if not _is_saved_dataset(path):
        try:
            sources = folder_sources(path)
        except ValueError:
            return []
        if not isinstance(sources, Path):
            return list(sources)
        path = sources
    if (path / "dataset_dict.json").is_file():
        try:
            return list(json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", []))
        except (OSError, json.JSONDecodeError):
            return []
    return []


def read_rows(
    path: str | Path, split: str | None = None, preferred_splits: Sequence[str] = ("train",)
) -> tuple[list[dict[str, Any]], Path]:
    """Rows (plain dicts, images undecoded) and the folder that relative image paths are resolved against.

    ``path`` is a parquet / jsonl / json file, a ``save_to_disk`` folder, or a downloaded dataset folder (see
    :func:`folder_sources`). With several splits, ``split`` (comma-separated for several) picks them, else the first
    of ``preferred_splits`` (regular expressions) that matches a split name; with more than one split chosen each row
    gets a ``__split__`` key.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"data path does not exist: {path}")
    base = path if path.is_dir() else path.parent
    if path.is_dir() and not _is_saved_dataset(path):
        sources = folder_sources(path)
        if isinstance(sources, Path):
            path = sources
        else:
            names = _choose_split(list(sources), split, preferred_splits, path)
            rows = []
            for name in names:
                part = _read_files(sources[name])
                if len(names) > 1:
                    for r in part:
                        r["__split__"] = name
                rows.extend(part)
            return rows, base
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            names = _choose_split(list(loaded.keys()), split, preferred_splits, path)
            rows = []
            for name in names:
                part = loaded[name].with_format("arrow")[:].to_pylist()
                if len(names) > 1:
                    for r in part:
                        r["__split__"] = name
                rows.extend(part)
            return rows, base
        return loaded.with_format("arrow")[:].to_pylist(), base
    if path.suffix in DATA_SUFFIXES:
        return _read_files([path]), base
    raise ValueError(f"{path}: unsupported data file (expected .parquet, .jsonl, .json or a save_to_disk folder)")


# ----------------------------------------------------------------------------------------------------------------------
# Records -> trainer dataset
# ----------------------------------------------------------------------------------------------------------------------


def _first_key(row: Mapping[str, Any], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in row and row[n] is not None), None)


def records_to_dataset(
    records: Iterable[Mapping[str, Any]],
    image_root: str | Path | None = None,
    prompt_template: str = PAPER_PROMPT_TEMPLATE,
    check_images: bool = True,
    text_only: str = "drop",
) -> datasets.Dataset:
    """Convert question/answer/image records (see the module docstring) to the trainer's ``Dataset``.

    ``check_images`` decodes every image once so that a broken file fails here, naming its row, rather than in the
    middle of training. ``text_only`` says what to do with rows without an image: ``"drop"`` (logged), ``"error"``,
    or ``"keep"`` (then the ``images`` column is used, with an empty list for those rows).
    """
    if text_only not in ("drop", "error", "keep"):
        raise ValueError(f"text_only must be 'drop', 'error' or 'keep', not {text_only!r}")
    root = Path(image_root).expanduser() if image_root is not None else None
    prompts, images, answers, ids = [], [], [], []
    dropped = 0
    for i, row in enumerate(records):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {i}: expected a record (dict), got {type(row).__name__}")
        q_key = _first_key(row, QUESTION_COLUMNS)
        if q_key is None:
            raise ValueError(f"row {i}: missing column 'question' (or 'problem'); columns: {sorted(row)}")
        if "answer" not in row or row["answer"] is None:
            raise ValueError(f"row {i}: missing column 'answer'; columns: {sorted(row)}")
        values = image_values(row)
        if values is None:
            raise ValueError(f"row {i}: missing column 'image' (or 'images'); columns: {sorted(row)}")
        if not values:
            if text_only == "error":
                raise ValueError(f"row {i}: no image (text_only='error')")
            if text_only == "drop":
                dropped += 1
                continue
        sources = []
        for j, value in enumerate(values):
            try:
                source = image_source(value, root)
                if check_images:
                    open_image(source, root)
            except ValueError as err:
                raise ValueError(f"row {i}: image {j}: {err}") from err
            sources.append(source)
        prompts.append(build_messages(str(row[q_key]), len(sources), prompt_template))
        images.append(sources)
        answers.append(unwrap_boxed(row["answer"]))
        id_key = _first_key(row, ID_COLUMNS)
        ids.append(str(row[id_key]) if id_key else None)
    if dropped:
        logger.warning("dropped %d text-only rows (no image); pass text_only='keep' to keep them", dropped)
    if not prompts:
        raise ValueError("no usable rows (every row was empty or text-only)")
    single = all(len(x) == 1 for x in images)
    columns: dict[str, Any] = {"prompt": prompts}
    feats: dict[str, Any] = {
        "prompt": datasets.List(
            {
                "role": datasets.Value("string"),
                "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
            }
        )
    }
    if single:
        columns["image"], feats["image"] = [x[0] for x in images], datasets.Image()
    else:
        columns["images"], feats["images"] = images, datasets.List(datasets.Image())
    columns["answer"], feats["answer"] = answers, datasets.Value("string")
    if any(x is not None for x in ids):
        columns["id"], feats["id"] = ids, datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(feats))


def load_rlvr_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    split: str | None = None,
    prompt_template: str = PAPER_PROMPT_TEMPLATE,
    limit: int | None = None,
    check_images: bool = True,
    text_only: str = "drop",
) -> datasets.Dataset:
    """Load RLVR training data from ``path`` into the trainer's format (see the module docstring).

    ``path`` is a ViRL39K-style parquet (``39Krelease.parquet`` next to its ``images/`` folder), a JSONL/JSON file
    of records with image paths (relative to ``image_root``, by default the file's folder), a ``save_to_disk`` folder
    (``Dataset`` or ``DatasetDict``; ``split`` picks the split, default ``train``), or a downloaded dataset folder
    holding one of those (relative image paths then resolve against that folder).
    ``limit`` keeps the first rows only.
    """
    rows, base = read_rows(path, split=split, preferred_splits=("train",))
    if limit is not None:
        rows = rows[: max(0, int(limit))]
    return records_to_dataset(
        rows,
        image_root=image_root if image_root is not None else base,
        prompt_template=prompt_template,
        check_images=check_images,
        text_only=text_only,
    )
