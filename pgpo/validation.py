"""Checks that turn bad training data and failing reward functions into errors that name the sample.

* :func:`validate_dataset` runs once when the trainer starts: every prompt must carry text, and every image must
  exist and be readable (``PIL.Image.verify`` reads headers only, so this is cheap). String paths in an image
  column are cast to images. Errors are ``ValueError("row 17: ...")``.
* :func:`named_reward` wraps a reward function: an exception is re-raised naming the function and the first sample
  that fails on its own; ``NaN`` rewards are returned as ``None`` (TRL's "unscorable": advantage 0, counted in the
  ``rewards/unscorable_frac`` metric) instead of flowing into the advantages.
"""

from __future__ import annotations

import functools
import io
import math
import os

IMAGE_COLUMNS = ("image", "images")


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [c.get("text") or "" for c in content if isinstance(c, dict) and c.get("type") == "text"]
    return " ".join(parts)


def describe(row: dict, index: int | None = None) -> str:
    """A short human label of a sample: its index / id and the start of its question."""
    label = [f"row {index}"] if index is not None else []
    for key in ("id", "sample_id", "pid", "question_id"):
        if row.get(key) is not None:
            label.append(f"{key}={row[key]!r}")
            break
    text = _prompt_text(row.get("prompt")).strip().replace("\n", " ")
    if text:
        label.append(f"prompt {text[:60]!r}")
    return ", ".join(label) or "sample"


def _check_image(value, index: int, column: str) -> None:
    from PIL import Image

    if value is None:
        return
    if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, str):
        data, path = None, value
    else:  # already a PIL image (e.g. an in-memory list)
        return
    if data is None and path is not None and not os.path.exists(path):
        raise ValueError(f"row {index}: {column} file not found: {path}")
    if data is None and path is None:
        raise ValueError(f"row {index}: {column} has neither bytes nor a path")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            img.verify()
    except Exception as err:
        raise ValueError(f"row {index}: {column} {path or '<bytes>'} cannot be read as an image: {err}") from err


def validate_dataset(dataset, check_images: bool = True):
    """Validate a TRL-format multimodal dataset; returns it (with path columns cast to images)."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return dataset  # iterable / dict datasets are checked lazily by TRL
    if "prompt" not in dataset.column_names:
        raise ValueError(f"the training dataset has no 'prompt' column (columns: {dataset.column_names})")
    for i, prompt in enumerate(dataset["prompt"]):
        if not _prompt_text(prompt).strip():
            raise ValueError(f"row {i}: empty prompt (no text in {prompt!r})")
    for column in IMAGE_COLUMNS:
        if column not in dataset.column_names:
            continue
        feature = dataset.features[column]
        if column == "image" and isinstance(feature, datasets.Value) and feature.dtype == "string":
            for i, path in enumerate(dataset[column]):
                _check_image(path, i, column)
            dataset = dataset.cast_column(column, datasets.Image())
            feature = dataset.features[column]
        if not check_images:
            continue
        raw = dataset
        if isinstance(feature, datasets.Image):
            raw = dataset.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Sequence | list) and isinstance(
            getattr(feature, "feature", None) or feature[0], datasets.Image
        ):
            raw = dataset.cast_column(column, datasets.Sequence(datasets.Image(decode=False)))
        for i, value in enumerate(raw[column]):
            for v in value if isinstance(value, list) else [value]:
                _check_image(v, i, column)
    return dataset


def named_reward(func, name: str):
    """Wrap a synchronous TRL reward function so failures name the sample and NaN becomes "unscorable"."""

    @functools.wraps(func)
    def wrapper(prompts, completions, **kwargs):
        try:
            rewards = func(prompts=prompts, completions=completions, **kwargs)
        except Exception as err:
            raise RuntimeError(
                f"reward function {name!r} raised {type(err).__name__}: {err} — "
                f"first failing sample: {_first_failing(func, prompts, completions, kwargs)}"
            ) from err
        out = []
        for r in rewards:
            if r is not None and isinstance(r, float) and math.isnan(r):
                r = None
            out.append(r)
        return out

    return wrapper


def _first_failing(func, prompts, completions, kwargs) -> str:
    n = len(prompts)
    for i in range(n):
        one = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}
        try:
            func(prompts=[prompts[i]], completions=[completions[i]], **one)
        except Exception:
            row = {k: v[0] for k, v in one.items() if isinstance(v, list)}
            row["prompt"] = prompts[i]
            return f"batch position {i} ({describe(row)})"
    return "none alone (it fails only on the whole batch)"
