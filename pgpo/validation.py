"""Checks that turn bad training data, outputs and reward functions into errors that name the row, file or function.

* :func:`validate_dataset` runs once when the trainer starts, before any step. Every row must have a prompt with
  text; the dataset must not be empty; each row's image count must equal its prompt's image placeholders (TRL's rule,
  :func:`trl.data_utils.prepare_multimodal_messages`); every image must exist and decode *fully* (``Image.load()``:
  ``verify()`` passes a truncated JPEG); with the processor known, the prompt text must not contain the processor's
  vision special tokens (typed as text they become image placeholders) and every image size must pass the image
  processor's own rule (``get_number_of_image_patches``: Qwen2-VL's ``smart_resize`` refuses an aspect ratio
  above 200). Images are decoded on a thread pool, :data:`CHECK_BATCH` rows at a time (PIL releases the GIL while
  decoding). String paths in an image column are cast to images. Errors are ``ValueError("row 17: ...")``.
* :func:`check_for_processor` is the processor part alone, for a trainer that loads its processor itself
  (it reads image headers only).
* :func:`check_output_dir` probe-writes the output folder (creating it, as transformers would at its first save).
* :func:`check_free_space` compares the folder's free space with what the run will save there.
* :func:`named_reward` wraps a reward function: an exception is re-raised naming the function and the first sample
  that fails on its own; a result that is not one number (or ``None``) per completion, or a reward of +-inf, is an
  error naming the function and the sample; ``NaN`` rewards are returned as ``None`` (TRL's "unscorable": advantage
  0, counted in the ``rewards/unscorable_frac`` metric) instead of flowing into the advantages.
* :func:`check_loss`, :func:`check_grad_norm` run at every step: a non-finite loss or gradient norm is a
  ``FloatingPointError`` naming the step, raised before the optimizer applies it.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import numbers
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from pgpo.data import IMAGE_COLUMNS

logger = logging.getLogger(__name__)

CHECK_BATCH = 256  # rows whose images are decoded together (bounds the memory the check holds)
CHECK_THREADS = min(8, os.cpu_count() or 1)
# Special tokens whose text names them as visual: <|vision_start|>, <|image_pad|>, <image>, <start_of_image>, <IMG_CONTEXT>
_VISUAL_TOKEN_WORDS = re.compile(r"image|vision|video|img", re.IGNORECASE)


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


# ----------------------------------------------------------------------------------------------- images


def _image_size(value, where: str, decode: bool) -> tuple[int, int] | None:
    """``(width, height)`` of one image value; with ``decode`` the whole image is decoded. ``ValueError`` naming
    ``where`` when it is missing or cannot be read."""
    from PIL import Image

    if value is None:
        return None
    if isinstance(value, Image.Image):  # already in memory (e.g. a plain list)
        return value.size
    if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, str):
        data, path = None, value
    elif isinstance(value, bytes | bytearray):
        data, path = bytes(value), None
    else:
        return None  # arrays and the like: the processor's business
    if data is None and path is not None and not os.path.exists(path):
        raise ValueError(f"{where} file not found: {path}")
    if data is None and path is None:
        raise ValueError(f"{where} has neither bytes nor a path")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            if decode:
                img.load()  # a full decode: verify() reads headers only and passes truncated files
            return img.size
    except Exception as err:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
        raise ValueError(
            f"{where} {path or '<bytes>'} cannot be read as an image: {type(err).__name__}: {err}"
        ) from err


def _raw_image_columns(dataset):
    """``{column: dataset with that column undecoded}`` for the image columns (string paths already cast)."""
    import datasets

    out = {}
    for column in IMAGE_COLUMNS:
        if column not in dataset.column_names:
            continue
        feature = dataset.features[column]
        raw = dataset
        if isinstance(feature, datasets.Image):
            raw = dataset.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Sequence | datasets.List | list):
            inner = feature[0] if isinstance(feature, list) else feature.feature
            if isinstance(inner, datasets.Image):
                raw = dataset.cast_column(column, datasets.List(datasets.Image(decode=False)))
        out[column] = raw
    return out


def _row_images(values: dict, column_of_row: str | None, k: int) -> list:
    """The ``k``-th row's images of one batch, as TRL reads them (``images`` first, else ``[image]``)."""
    if column_of_row is None:
        return []
    value = values[column_of_row][k]
    if column_of_row == "images":
        return list(value or [])
    return [] if value is None else [value]


# ----------------------------------------------------------------------------------------------- prompts


def _placeholder_error(prompt, n_images: int, column: str | None) -> str | None:
    """TRL's rule for a row's images and ``{"type": "image"}`` parts (string prompts with images are refused)."""
    from trl.data_utils import prepare_multimodal_messages

    if isinstance(prompt, str):
        return (
            f"{column} holds {n_images} image(s) but the prompt is a plain string: multimodal training needs "
            'conversational prompts ([{"role": "user", "content": [{"type": "image"}, {"type": "text", ...}]}])'
            if n_images
            else None
        )
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        return f"the prompt is neither a string nor a list of messages: {str(prompt)[:80]}"
    try:
        prepare_multimodal_messages(prompt, images=[None] * n_images)
    except ValueError as err:
        parts = sum(
            isinstance(c, dict) and c.get("type") == "image" and "image" not in c
            for m in prompt
            if m.get("role") != "tool" and isinstance(m.get("content"), list)
            for c in m["content"]
        )
        return (
            f"{n_images} image(s) in {column or 'the row'} but {parts} image placeholder(s) "
            f'({{"type": "image"}} parts) in the prompt: each image needs exactly one ({err})'
        )
    return None


def vision_token_strings(processor, model=None) -> list[str]:
    """The texts of the processor's visual special tokens (image / video pads, vision start / end...)."""
    tok = getattr(processor, "tokenizer", processor)
    found = set(getattr(processor, "all_special_multimodal_tokens", None) or [])
    for owner in (processor, tok):
        for attr in ("image_token", "video_token", "boi_token", "eoi_token", "vision_start_token", "vision_end_token"):
            value = getattr(owner, attr, None)
            if isinstance(value, str) and value:
                found.add(value)
    decoder = getattr(tok, "added_tokens_decoder", None) or {}
    found |= {str(t) for t in decoder.values() if getattr(t, "special", False) and _VISUAL_TOKEN_WORDS.search(str(t))}
    config = getattr(model, "config", None)
    if config is not None and hasattr(tok, "convert_ids_to_tokens"):
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
            "image_token_index",
        ):
            token_id = getattr(config, name, None)
            if isinstance(token_id, int) and token_id >= 0:
                text = tok.convert_ids_to_tokens(token_id)
                if isinstance(text, str) and text:
                    found.add(text)
    return sorted(found)


# Families that train on fewer images per question than they can hold (docs/families.md): (at most, why).
MAX_IMAGES_PER_QUESTION = {
    "llava_onevision": (
        1,
        "TRL 1.16 does not pass the processor's batch_num_images to the model, so each image is cut as a single-image "
        "anyres one and the forward fails with 'Image features and image tokens do not match'; split the question "
        "into one image each, or use another family",
    )
}


class _ProcessorRules:
    """What the processor refuses, checked on text and image sizes without processing anything."""

    def __init__(self, processor, model=None):
        self.tokens = vision_token_strings(processor, model) if processor is not None else []
        image_processor = getattr(processor, "image_processor", None)
        self.patches = getattr(image_processor, "get_number_of_image_patches", None)
        self.name = type(image_processor).__name__
        self.model_type = getattr(getattr(model, "config", None), "model_type", None)
        self.max_images = MAX_IMAGES_PER_QUESTION.get(self.model_type)

    def count_error(self, n_images: int) -> str | None:
        if self.max_images is None or n_images <= self.max_images[0]:
            return None
        limit, why = self.max_images
        return f"{n_images} images in one question: {self.model_type} trains on at most {limit} per question ({why})"

    def text_error(self, text: str) -> str | None:
        for token in self.tokens:
            if token in text:
                return (
                    f"the prompt text contains {token!r}, a vision special token of the processor: the tokenizer "
                    "reads it as a real image/vision token, so the prompt's image tokens no longer match its images; "
                    "remove it from the text"
                )
        return None

    def size_error(self, size: tuple[int, int] | None, where: str) -> str | None:
        if size is None or self.patches is None:
            return None
        width, height = size
        try:
            self.patches(height, width, {})
        except (ValueError, ZeroDivisionError) as err:
            return f"{where} ({width}x{height} pixels) is refused by the image processor ({self.name}): {err}"
        return None


# ----------------------------------------------------------------------------------------------- the dataset


def _scan(dataset, check_images: bool, rules: _ProcessorRules | None, decode: bool, structure: bool) -> None:
    """One pass over the rows, :data:`CHECK_BATCH` at a time; raises for the first bad row (in row order)."""
    raws = {c: raw.select_columns([c]) for c, raw in _raw_image_columns(dataset).items()}
    column = next((c for c in IMAGE_COLUMNS if c in raws), None)  # TRL's order: "images" wins over "image"
    prompt_rows = dataset.select_columns(["prompt"])
    pool = ThreadPoolExecutor(CHECK_THREADS) if check_images and raws else None
    try:
        for start in range(0, len(dataset), CHECK_BATCH):
            stop = min(start + CHECK_BATCH, len(dataset))
            prompts = prompt_rows[start:stop]["prompt"]
            values = {column: raws[column][start:stop][column]} if column else {}
            errors: dict[int, str] = {}
            jobs = []
            for k, prompt in enumerate(prompts):
                i = start + k
                images = _row_images(values, column, k)
                problem = None
                if structure:
                    if not _prompt_text(prompt).strip():
                        problem = f"empty prompt (no text in {prompt!r})"
                    else:
                        problem = _placeholder_error(prompt, len(images), column)
                if problem is None and rules is not None:
                    problem = rules.text_error(_prompt_text(prompt)) or rules.count_error(len(images))
                if problem is not None:
                    errors[i] = problem
                    continue
                empty = next((j for j, v in enumerate(images) if v is None), None)
                if empty is not None:
                    errors[i] = f"{column}[{empty}] is None: remove empty entries from the list"
                    continue
                if pool is not None:
                    for j, value in enumerate(images):
                        where = column if column == "image" else f"{column}[{j}]"
                        jobs.append((i, where, pool.submit(_image_size, value, where, decode)))
            for i, where, job in jobs:
                if i in errors:
                    continue
                try:
                    size = job.result()
                except ValueError as err:
                    errors[i] = str(err)
                    continue
                if rules is not None:
                    problem = rules.size_error(size, where)
                    if problem is not None:
                        errors[i] = problem
            if errors:
                i = min(errors)
                raise ValueError(f"row {i}: {errors[i]}")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def validate_dataset(dataset, check_images: bool = True, processor=None, model=None):
    """Validate a TRL-format multimodal dataset (module docstring); returns it (with path columns cast to images).

    ``processor`` (and ``model``, for its config's vision token ids) add the processor's checks; without it call
    :func:`check_for_processor` once the processor is known.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return dataset  # iterable / dict datasets are checked lazily by TRL
    if "prompt" not in dataset.column_names:
        raise ValueError(f"the training dataset has no 'prompt' column (columns: {dataset.column_names})")
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty (0 rows): there is nothing to train on")
    feature = dataset.features.get("image")
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        if not check_images:
            for i, path in enumerate(dataset["image"]):
                if path is not None and not os.path.exists(path):
                    raise ValueError(f"row {i}: image file not found: {path}")
        dataset = dataset.cast_column("image", datasets.Image())
    rules = _ProcessorRules(processor, model) if processor is not None else None
    start = time.perf_counter()
    _scan(dataset, check_images, rules, decode=True, structure=True)
    logger.info("pgpo: checked the %d training rows in %.1f s", len(dataset), time.perf_counter() - start)
    return dataset


def check_for_processor(dataset, processor, model=None) -> None:
    """The processor's checks of :func:`validate_dataset` alone (image headers only, nothing decoded)."""
    import datasets

    if not isinstance(dataset, datasets.Dataset) or processor is None or len(dataset) == 0:
        return
    _scan(dataset, True, _ProcessorRules(processor, model), decode=False, structure=False)


def check_output_dir(path) -> None:
    """Probe-write ``path`` (created if missing) so that a read-only folder fails now, not at the first save."""
    if not path:
        return
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output_dir {path} is a file, not a folder: choose another --output_dir")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pgpo-write-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(
            f"output_dir {path} is not writable ({type(err).__name__}: {err.strerror or err}): checkpoints and the "
            "final model could not be saved; choose another --output_dir"
        ) from err


def check_free_space(output_dir, model, args) -> None:
    """Refuse a run whose saves do not fit the free space of ``output_dir``: the final model plus the checkpoints on
    disk at once, each the weights and (unless ``save_only_model``) AdamW's 2 moments per trainable parameter (torch
    keeps them in the parameter's dtype). A lower bound: the count of checkpoints is 1 when ``max_steps`` is not set."""
    from pgpo.checkpoint import is_peft_model

    params = list(model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    weights = trainable if is_peft_model(model) else sum(p.numel() * p.element_size() for p in params)
    moments = 0 if args.save_only_model else 2 * trainable
    checkpoints = _checkpoints_at_once(args)
    need = weights + checkpoints * (weights + moments)
    free = shutil.disk_usage(output_dir).free
    if free >= need:
        return
    raise ValueError(
        f"output_dir {output_dir} has {_size(free)} free, but this run writes about {_size(need)} there: the final "
        f"model ({_size(weights)}) and {checkpoints} checkpoint(s) on disk at once of {_size(weights + moments)} each "
        f"(weights {_size(weights)} + optimizer state {_size(moments)}). Lower it with --save_total_limit N (the "
        "checkpoints kept), --save_only_model true (checkpoints without the optimizer state: they cannot be resumed) "
        "or choose another --output_dir with more space"
    )


def _checkpoints_at_once(args) -> int:
    """Checkpoints on disk at once: transformers writes one before it deletes the oldest beyond ``save_total_limit``."""
    if args.save_strategy == "no":
        return 0
    if args.save_strategy != "steps" or args.max_steps <= 0:
        return 1  # their number is not known yet
    saves = args.max_steps // args.save_every()
    limit = args.save_total_limit
    return min(saves, limit + 1) if limit is not None and limit > 0 else saves


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# ----------------------------------------------------------------------------------------------- rewards


def _reward_value(r) -> float | None:
    """A reward as a float (``None`` stays ``None``); ``TypeError`` for a value that is not one real number."""
    if r is None:
        return None
    if isinstance(r, numbers.Real):  # int, float, bool, numpy scalars
        return float(r)
    if getattr(r, "ndim", None) == 0 and hasattr(r, "item"):  # 0-d torch / numpy arrays
        item = r.item()
        if isinstance(item, numbers.Real):
            return float(item)
    raise TypeError(type(r).__name__)


def named_reward(func, name: str):
    """Wrap a synchronous TRL reward function so failures name the function and the sample, and NaN becomes
    "unscorable"."""

    @functools.wraps(func)
    def wrapper(prompts, completions, **kwargs):
        try:
            rewards = func(prompts=prompts, completions=completions, **kwargs)
        except Exception as err:
            raise RuntimeError(
                f"reward function {name!r} raised {type(err).__name__}: {err} — "
                f"first failing sample: {_first_failing(func, prompts, completions, kwargs)}"
            ) from err
        n = len(prompts)
        if rewards is None or isinstance(rewards, str | bytes | dict) or not hasattr(rewards, "__len__"):
            raise TypeError(
                f"reward function {name!r} returned {type(rewards).__name__}, not a list of {n} rewards "
                "(one float per completion, None or NaN for unscorable)"
            )
        rewards = list(rewards)
        if len(rewards) != n:
            raise ValueError(
                f"reward function {name!r} returned {len(rewards)} rewards for {n} completions: it must return one "
                "per completion, in order (None or NaN for unscorable)"
            )
        out = []
        for i, r in enumerate(rewards):
            try:
                value = _reward_value(r)
            except TypeError:
                raise TypeError(
                    f"reward function {name!r} returned {r!r} ({type(r).__name__}) at batch position {i} "
                    f"({_describe_at(i, prompts, kwargs)}): a reward must be a number, or None for unscorable"
                ) from None
            if value is not None and math.isnan(value):
                value = None
            elif value is not None and math.isinf(value):
                raise ValueError(
                    f"reward function {name!r} returned {value} at batch position {i} "
                    f"({_describe_at(i, prompts, kwargs)}): rewards must be finite (None or NaN marks a sample "
                    "unscorable)"
                )
            out.append(value)
        return out

    return wrapper


def _one(i: int, n: int, kwargs: dict) -> dict:
    return {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}


def _describe_at(i: int, prompts, kwargs) -> str:
    row = {k: v[0] for k, v in _one(i, len(prompts), kwargs).items() if isinstance(v, list)}
    row["prompt"] = prompts[i]
    return describe(row)


def _first_failing(func, prompts, completions, kwargs) -> str:
    n = len(prompts)
    for i in range(n):
        try:
            func(prompts=[prompts[i]], completions=[completions[i]], **_one(i, n, kwargs))
        except Exception:
            return f"batch position {i} ({_describe_at(i, prompts, kwargs)})"
    return "none alone (it fails only on the whole batch)"


def check_loss(loss, step: int):
    """``loss`` (a tensor) when finite; else ``FloatingPointError`` naming ``step`` (nothing is applied from it)."""
    if not loss.isfinite().all():
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at step {step}: the model produced NaN/inf "
            "log-probabilities or the advantages are not finite; nothing was applied from this step"
        )
    return loss


def check_grad_norm(grad_norm, step: int, *, deepspeed: bool, loss_scaling: bool):
    """``grad_norm`` when ``None``, finite, or under fp16 ``loss_scaling`` (an inf/NaN gradient is then an expected
    overflow, and the scaler skips that step); else ``FloatingPointError`` naming ``step`` and whether the optimizer
    applied it (``deepspeed``: its engine steps inside backward)."""
    if grad_norm is None or loss_scaling or math.isfinite(float(grad_norm)):
        return grad_norm
    applied = (
        "DeepSpeed has applied it already (its engine steps inside backward)"
        if deepspeed
        else "the optimizer has not applied it: the weights are those before this step"
    )
    raise FloatingPointError(
        f"non-finite gradient norm ({float(grad_norm)}) at step {step}: the backward pass "
        f"produced NaN/inf gradients; {applied}"
    )
