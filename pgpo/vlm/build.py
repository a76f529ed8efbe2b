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


def build_pgpo_vlm(
    image_size: int = 64,
    vision_grid: int = 2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    vision_blocks: int = 19,
) -> tuple[PGPOVLMForConditionalGeneration, PGPOVLMProcessor]:
    """A new VLM from the shipped parts: ImageNet MobileNetV2 (frozen), a fresh projector (seeded), SmolLM2-135M."""
    from transformers.initialization import no_init_weights

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
) -> tuple[PGPOVLMForConditionalGeneration, PGPOVLMProcessor]:
    """``(model, processor)``: a saved folder when ``path`` is given, else built from the shipped parts.

    Building dequantises SmolLM2's GGUF the first time (~15 s) and caches it (see
    :func:`pgpo.vlm.parts.smollm2_cache_dir`); later builds take a couple of seconds. ``image_size`` (pixels) and
    ``vision_grid`` (``vision_grid**2`` image tokens) and ``vision_blocks`` (how much of MobileNetV2 runs, see
    :class:`~pgpo.vlm.configuration.PGPOVLMConfig`) only apply when building; ``seed`` seeds the new projector.
    ``cache_dir`` is the folder of the dequantised SmolLM2 (default :func:`pgpo.paths.smollm2_dir`).
    """
    if path is not None:
        model = PGPOVLMForConditionalGeneration.from_pretrained(str(Path(path)), dtype=dtype)
        processor = PGPOVLMProcessor.from_pretrained(str(Path(path)))
        return model.eval(), processor
    model, processor = build_pgpo_vlm(
        image_size=image_size, vision_grid=vision_grid, seed=seed, cache_dir=cache_dir, vision_blocks=vision_blocks
    )
    return model.to(dtype), processor
