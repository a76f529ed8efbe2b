"""The one way pgpo's commands get a model: :func:`load_pgpo_model` (pgpo's own models, for ``train`` too) and
:func:`load_model` (any model, for ``eval`` and ``inspect``); and the reference model TRL builds for a policy passed as
an instance (:func:`reference_is_a_copy`)."""

from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TINY_QWEN = "tiny-qwen"
DEMO_VLM = "demo-vlm"
BUILTIN_MODELS = (TINY_QWEN, DEMO_VLM)


def looks_like_path(name: str) -> bool:
    """True for ``./x``, ``../x``, ``/x``, ``~/x``, ``x/`` or ``a/b/c``; False for a hub id such as ``Qwen/Qwen2.5-VL-3B``."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def default_device() -> str:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (one GPU per process under ``accelerate launch``), else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def check_finite(model: Any, name: str) -> Any:
    """``model``, or ``ValueError`` naming the parameters that hold NaN or inf (one ``isfinite`` per tensor)."""
    import torch

    bad = [key for key, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"model {name!r} has non-finite weights (NaN or inf) in {len(bad)} tensor(s): {shown}")
    return model


def missing_model(name: str) -> str | None:
    """The clear error for a model argument that is meant as a local folder and exists nowhere (else ``None``).

    Meant as a folder: it starts with ``.``, ``/`` or ``~``, or has more than one path separator (a hub id has one:
    ``org/name``). A name with one separator (``runs/tiny-qwen`` or ``Qwen/Qwen2.5-VL-3B-Instruct``) is a folder that
    exists nowhere when it is not a local folder, not a hub repo in the local hub cache, and either the folder before
    the separator exists here or the hub is offline (``HF_HUB_OFFLINE``). pgpo's own names (:data:`BUILTIN_MODELS`)
    and anything else are left to the loaders (the hub).
    """
    if name in BUILTIN_MODELS:
        return None
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return None if os.path.isdir(path) else f"model path is a file, not a model folder: {path}"
    found = f"model folder not found: {os.path.abspath(path)}"
    separators = name.count(os.sep) + (name.count(os.altsep) if os.altsep else 0)
    if looks_like_path(name) or separators > 1:
        return found
    if separators == 1 and not _cached(name):
        if os.path.isdir(os.path.dirname(path)):
            return found
        if _hub_offline():
            return f"{found}; nor is it a hub repo in the local cache (the hub is offline: HF_HUB_OFFLINE)"
    return None


def _cached(repo_id: str) -> bool:
    """Whether the local hub cache holds a config of ``repo_id`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def load_pgpo_model(name_or_path: str, dtype: Any = None, **kw: Any):
    """``(model, processor)`` for pgpo's own models, ``None`` for anything transformers loads (a hub id or a folder of
    a transformers model). Raises ``ValueError`` for a model folder that does not exist (:func:`missing_model`).

    * ``"tiny-qwen"``: :func:`pgpo.models.tiny_qwen.build_tiny_qwen25vl` (random weights; ``kw`` go to it);
    * ``"demo-vlm"``: the demo VLM built from its shipped parts (:func:`pgpo.vlm.load_pgpo_vlm`; ``kw`` go to it);
    * a local folder whose ``config.json`` says ``model_type: pgpo_vlm``: :func:`pgpo.vlm.load_pgpo_vlm`.

    The model's ``config._name_or_path`` is the name given, so that a run records what it trained
    (:mod:`pgpo.run_folder`). The model is in train mode, on the CPU, in ``dtype`` (default: as built or saved).
    """
    missing = missing_model(name_or_path)
    if missing:
        raise ValueError(missing)
    if name_or_path == TINY_QWEN:
        from pgpo.models.tiny_qwen import build_tiny_qwen25vl

        model, processor = build_tiny_qwen25vl(**kw)
    elif name_or_path == DEMO_VLM:
        from pgpo.vlm import load_pgpo_vlm

        model, processor = load_pgpo_vlm(**kw)
    elif _model_type(Path(name_or_path).expanduser()) == "pgpo_vlm":
        from pgpo.vlm import load_pgpo_vlm

        model, processor = load_pgpo_vlm(Path(name_or_path).expanduser())
    else:
        return None
    if dtype is not None:
        model = model.to(dtype)
    model.config._name_or_path = name_or_path
    return model.train(), processor


def load_model(name_or_path: str, device: str | None = None, dtype: Any = None, **kw: Any):
    """``(model, processor)`` in eval mode on ``device`` (default :func:`default_device`), for inference.

    pgpo's own models through :func:`load_pgpo_model` (``kw`` go to their builders); anything else is a folder or a
    Hugging Face Hub id, loaded with ``AutoModelForImageTextToText`` + ``AutoProcessor`` (from the local cache when
    offline). ``dtype`` defaults to bfloat16 on CUDA and float32 on the CPU. Raises ``ValueError`` with a readable
    message: ``model folder not found: ...`` for a missing path, ``cannot load model ...`` when loading fails, ``...
    has non-finite weights (NaN or inf) in N tensor(s): NAMES`` for a model that could only produce noise.
    """
    import torch

    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    own = load_pgpo_model(name_or_path, dtype=dtype, **kw)
    if own is not None:
        model, processor = own
        return check_finite(model.to(device).eval(), name_or_path), processor
    from transformers import AutoModelForImageTextToText, AutoProcessor

    source = str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().is_dir() else name_or_path
    try:
        processor = AutoProcessor.from_pretrained(source, **kw)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **kw)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load model {name_or_path!r}: {err}") from err
    return check_finite(model.to(device).eval(), name_or_path), processor


@contextmanager
def reference_is_a_copy(model, config, peft_config):
    """A policy passed as a model instance gets a copy of itself as the reference model (``beta > 0``, no PEFT).

    TRL rebuilds the reference from ``model.config._name_or_path`` (``create_model_from_path``, with transformers'
    auto classes), which fails for a model built in memory (``tiny-qwen``, ``demo-vlm``) or one whose class
    transformers does not know (pgpo's demo VLM: ``'PGPOVLMConfig' object has no attribute 'auto_map'``), and gives a
    reference other than the policy for an instance changed after loading. The copy is the policy as passed."""
    import torch
    import trl.trainer.grpo_trainer as grpo

    from pgpo.checkpoint import is_peft_model

    instance = isinstance(model, torch.nn.Module) and not is_peft_model(model)
    if not instance or not getattr(config, "beta", 0.0) or peft_config is not None:
        yield
        return
    reference, build = copy.deepcopy(model), grpo.create_model_from_path
    grpo.create_model_from_path = lambda *args, **kwargs: reference
    try:
        yield
    finally:
        grpo.create_model_from_path = build
