"""``load_pgpo_vlm``: build the demo VLM from the shipped pretrained parts, or load a saved one."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .configuration import PGPOVLMConfig
from .modeling import PGPOVLMForConditionalGeneration
from .parts import load_mobilenet_v2_state_dict, load_smollm2
from .processing import PGPOImageProcessor, PGPOVLMProcessor


def _grow_embeddings(weight: torch.Tensor, n_new: int, seed: int) -> torch.Tensor:
    """Append ``n_new`` rows: the mean embedding plus a little seeded noise (so the new tokens are distinguishable)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n_new, weight.shape[1], generator=gen) * weight.std() * 0.1
    return torch.cat([weight, weight.mean(0, keepdim=True) + noise.to(weight.dtype)], dim=0)


LANGUAGES = ("smollm2", "words")
# The word LM's default shape (Llama): ~3 M parameters; one RL step of the demo costs ~1/20 of SmolLM2-135M's.
WORD_LM = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}


def word_lm(seed: int = 0, **shape):
    """``(LlamaForCausalLM, tokenizer)``: a randomly initialised (seeded) small Llama over the tasks' word-level
    vocabulary (:func:`pgpo.vlm.words.build_word_tokenizer`); ``shape`` overrides :data:`WORD_LM`'s fields."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from .words import build_word_tokenizer

    tokenizer = build_word_tokenizer()
    dims = {**WORD_LM, **shape}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        head_dim=dims["hidden_size"] // dims["num_attention_heads"],
        num_key_value_heads=dims["num_attention_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model, tokenizer


def build_pgpo_vlm(
    image_size: int = 64,
    vision_grid: int = 2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    vision_blocks: int = 19,
    language: str = "smollm2",
    lm_shape: dict | None = None,
) -> tuple[PGPOVLMForConditionalGeneration, PGPOVLMProcessor]:
    """A new VLM from the shipped parts: ImageNet MobileNetV2 (frozen), a fresh projector (seeded), and the language
    model ``language``: ``"smollm2"`` (SmolLM2-135M-Instruct, pretrained) or ``"words"`` (:func:`word_lm`, random,
    shaped by ``lm_shape``)."""
    from transformers.initialization import no_init_weights

    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if language == "words":
        text_model, tokenizer = word_lm(seed, **(lm_shape or {}))
    else:
        if lm_shape:
            raise ValueError("lm_shape applies to language='words' only (SmolLM2's shape is its own)")
        text_model, tokenizer = load_smollm2(cache_dir)
    processor = PGPOVLMProcessor(
        image_processor=PGPOImageProcessor(image_size=image_size),
        tokenizer=tokenizer,
        num_image_tokens=vision_grid * vision_grid,
    )
    vocab_size = len(processor.tokenizer)
    text_config = text_model.config.to_dict()
    text_config.update(vocab_size=vocab_size)
    for key in ("architectures", "_name_or_path", "transformers_version", "dtype"):
        text_config.pop(key, None)
    config = PGPOVLMConfig(
        text_config=text_config,
        image_size=image_size,
        vision_grid=vision_grid,
        vision_blocks=vision_blocks,
        image_token_id=processor.image_token_id,
        vision_start_token_id=processor.vision_start_token_id,
        vision_end_token_id=processor.vision_end_token_id,
    )
    with no_init_weights():
        model = PGPOVLMForConditionalGeneration(config)

    # LlamaForCausalLM's "model.*" is our "model.language_model.*"; its lm_head is tied to the embeddings, like ours.
    state = {
        f"model.language_model.{k.removeprefix('model.')}": v
        for k, v in text_model.state_dict().items()
        if k.startswith("model.")
    }
    embed_key = "model.language_model.embed_tokens.weight"
    state[embed_key] = _grow_embeddings(state[embed_key], vocab_size - state[embed_key].shape[0], seed)
    for key, value in load_mobilenet_v2_state_dict().items():
        if key.startswith("features.") and int(key.split(".")[1]) < vision_blocks:
            state[f"model.vision_tower.{key}"] = value
    projector, gen = model.model.projector, torch.Generator().manual_seed(seed)
    for module in (projector.fc1, projector.fc2):
        torch.nn.init.normal_(module.weight, std=0.02, generator=gen)
        torch.nn.init.zeros_(module.bias)
    torch.nn.init.ones_(projector.norm.weight)
    torch.nn.init.zeros_(projector.norm.bias)
    state.update({f"model.projector.{k}": v for k, v in projector.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weight mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = text_model.generation_config
    model.eval()
    return model, processor


def load_pgpo_vlm(
    path: str | os.PathLike | None = None,
    image_size: int = 64,
    vision_grid: int = 2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    vision_blocks: int = 19,
    language: str = "smollm2",
    lm_shape: dict | None = None,
) -> tuple[PGPOVLMForConditionalGeneration, PGPOVLMProcessor]:
    """``(model, processor)``: a saved folder when ``path`` is given, else built from the shipped parts.

    Building dequantises SmolLM2's GGUF the first time (~15 s) and caches it (see
    :func:`pgpo.vlm.parts.smollm2_cache_dir`); later builds take a couple of seconds. ``image_size`` (pixels) and
    ``vision_grid`` (``vision_grid**2`` image tokens) and ``vision_blocks`` (how much of MobileNetV2 runs, see
    :class:`~pgpo.vlm.configuration.PGPOVLMConfig`) only apply when building; ``seed`` seeds the new projector.
    ``cache_dir`` is the folder of the dequantised SmolLM2 (default :func:`pgpo.paths.smollm2_dir`); ``language``
    and ``lm_shape``: see :func:`build_pgpo_vlm`.
    """
    if path is not None:
        model = PGPOVLMForConditionalGeneration.from_pretrained(str(Path(path)), dtype=dtype)
        processor = PGPOVLMProcessor.from_pretrained(str(Path(path)))
        return model.eval(), processor
    model, processor = build_pgpo_vlm(
        image_size=image_size,
        vision_grid=vision_grid,
        seed=seed,
        cache_dir=cache_dir,
        vision_blocks=vision_blocks,
        language=language,
        lm_shape=lm_shape,
    )
    return model.to(dtype), processor
