"""The models ``pgpo bench`` runs on (``--model``), each built offline: no weights are downloaded.

* ``tiny-qwen``: :func:`pgpo.models.tiny_qwen.build_tiny_qwen25vl`, a ~20M-parameter random Qwen2.5-VL with the real
  Qwen tokenizer (V = 151,669, H = 64); 16 image tokens at the default 112 px.
* ``demo-vlm``: pgpo's demo VLM (:func:`pgpo.vlm.load_pgpo_vlm`: MobileNetV2 -> projector -> SmolLM2-135M; V = 49,155,
  H = 576), 4 image tokens.
* ``qwen25vl-3b``: the Qwen2.5-VL-3B configuration with random weights, bf16 (3.75 B parameters), ~1k image tokens at
  the default 896 px (a 32 x 32 grid of merged patches); for ``--device cuda``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

MODELS = ("tiny-qwen", "demo-vlm", "qwen25vl-3b")

# Qwen2.5-VL-3B-Instruct's config.json, as keyword arguments of Qwen2_5_VLConfig.
QWEN25VL_3B_TEXT = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    max_position_embeddings=128000,
    rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    tie_word_embeddings=True,
)
QWEN25VL_3B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=2048,
    fullatt_block_indexes=[7, 15, 23, 31],
    window_size=112,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
# 28 x 28 pixels per merged image token: 896 px -> 32 x 32 = 1,024 image tokens.
QWEN25VL_3B_IMAGE_SIZE = 896


@dataclass
class ModelSource:
    """A model to benchmark: ``load()`` returns a fresh ``(model, processor)``, the same weights every time."""

    name: str
    load: Callable[[], tuple]
    note: str
    image_size: int  # default side of the prompt images, pixels


class ModelUnavailable(RuntimeError):
    """The requested model cannot be built here."""


def qwen25vl_3b_config(tokenizer, text: dict | None = None, vision: dict | None = None):
    """``Qwen2_5_VLConfig`` of Qwen2.5-VL-3B with the tokenizer's special ids; ``text`` / ``vision`` override fields
    (a smaller variant of the same code path, e.g. for a CPU test)."""
    from transformers import Qwen2_5_VLConfig

    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    return Qwen2_5_VLConfig(
        text_config={**QWEN25VL_3B_TEXT, "pad_token_id": tokenizer.pad_token_id, **(text or {})},
        vision_config={**QWEN25VL_3B_VISION, **(vision or {})},
        **ids,
    )


def qwen25vl_3b_source(
    device: str, seed: int = 0, text: dict | None = None, vision: dict | None = None, dtype=torch.bfloat16
) -> ModelSource:
    """Random-init Qwen2.5-VL-3B (or the variant ``text`` / ``vision`` describe), built on ``device`` from a config."""
    from transformers import AutoModelForImageTextToText

    from pgpo.models.tiny_qwen import build_tiny_qwen25vl_processor

    side = QWEN25VL_3B_IMAGE_SIZE
    processor = build_tiny_qwen25vl_processor(min_pixels=28 * 28 * 16, max_pixels=side * side)
    tok = processor.tokenizer
    config = qwen25vl_3b_config(tok, text, vision)

    def load():
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
        return model.eval(), processor

    variant = "" if text is None and vision is None else " (reduced variant)"
    note = f"random-init Qwen2.5-VL-3B config{variant}, {str(dtype).removeprefix('torch.')}"
    return ModelSource("qwen25vl-3b", load, note, side)


def resolve_model(name: str, device: str = "cpu", seed: int = 0) -> ModelSource:
    """One of :data:`MODELS`; :class:`ModelUnavailable` if it cannot be built here."""
    if name == "tiny-qwen":
        from pgpo.models.tiny_qwen import build_tiny_qwen25vl, build_tiny_qwen25vl_processor

        processor = build_tiny_qwen25vl_processor()
        return ModelSource(
            name,
            lambda: build_tiny_qwen25vl(seed=seed, processor=processor),
            "random tiny Qwen2.5-VL, real tokenizer",
            112,
        )
    if name == "demo-vlm":
        try:
            from pgpo.vlm import load_pgpo_vlm

            built = load_pgpo_vlm(seed=seed)
        except (ImportError, OSError, RuntimeError) as err:
            raise ModelUnavailable(f"demo-vlm cannot be built here: {err}") from err
        return ModelSource(
            name,
            lambda: (copy.deepcopy(built[0]), built[1]),
            "pgpo's demo VLM (MobileNetV2 + projector + SmolLM2-135M)",
            64,
        )
    if name == "qwen25vl-3b":
        return qwen25vl_3b_source(device, seed)
    raise ModelUnavailable(f"unknown model {name!r}; choose from {MODELS}")
