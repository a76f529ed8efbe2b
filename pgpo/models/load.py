"""``load_model(name_or_path)``: the one way pgpo's commands (``eval``, ``inspect``) get a model and its processor."""

from __future__ import annotations

import json
import os
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


def load_model(name_or_path: str, device: str | None = None, dtype: Any = None, **kw: Any):
    """``(model, processor)`` in eval mode on ``device`` (default :func:`default_device`).

    * ``"tiny-qwen"``: :func:`pgpo.models.tiny_qwen.build_tiny_qwen25vl` (random weights; ``kw`` go to it);
    * ``"demo-vlm"``: the demo VLM built from its shipped parts (:func:`pgpo.vlm.load_pgpo_vlm`; ``kw`` go to it);
    * a local folder: :func:`pgpo.vlm.load_pgpo_vlm` when its ``config.json`` says ``model_type: pgpo_vlm``, else
      ``AutoModelForImageTextToText`` + ``AutoProcessor``;
    * anything else: a Hugging Face Hub id, loaded with the Auto classes (from the local cache when offline).

    ``dtype`` defaults to bfloat16 on CUDA and float32 on the CPU. Raises ``ValueError`` with a readable message:
    ``model folder not found: ...`` for a missing path, ``cannot load model ...`` when loading fails, ``... has
    non-finite weights (NaN or inf) in N tensor(s): NAMES`` for a model that could only produce noise.
    """
    import torch

    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name_or_path == TINY_QWEN:
        from pgpo.models.tiny_qwen import build_tiny_qwen25vl

        model, processor = build_tiny_qwen25vl(**kw)
        return check_finite(model.to(device=device, dtype=dtype).eval(), name_or_path), processor
    if name_or_path == DEMO_VLM:
        from pgpo.vlm import load_pgpo_vlm

        model, processor = load_pgpo_vlm(dtype=dtype, **kw)
        return check_finite(model.to(device).eval(), name_or_path), processor
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if _model_type(folder) == "pgpo_vlm":
            from pgpo.vlm import load_pgpo_vlm

            model, processor = load_pgpo_vlm(folder, dtype=dtype)
            return check_finite(model.to(device).eval(), name_or_path), processor
    elif looks_like_path(name_or_path) or folder.exists():
        raise ValueError(f"model folder not found: {folder}")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(folder if folder.is_dir() else name_or_path), **kw)
        model = AutoModelForImageTextToText.from_pretrained(
            str(folder if folder.is_dir() else name_or_path), dtype=dtype, **kw
        )
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load model {name_or_path!r}: {err}") from err
    return check_finite(model.to(device).eval(), name_or_path), processor
