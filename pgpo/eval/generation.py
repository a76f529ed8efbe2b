"""Generators for evaluation: transformers ``generate`` (batched, left padding) and vLLM offline inference.

A generator completes a batch of :class:`GenerationRequest` s and returns one :class:`Completion` per request (a
``str`` that also says whether it hit the token budget). Both apply exactly the given sampling settings -- never the
model's own ``generation_config`` defaults (Qwen2.5-VL ships ``top_k=1``, which would make "sampling" greedy) -- and the
image pixel cap of PAPO-Eval (:func:`cap_pixels`) before the processor sees an image.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


@dataclass
class GenerationRequest:
    """One prompt to complete: chat ``messages`` (with ``{"type": "image"}`` entries) and its ``images`` in order."""

    messages: list[dict[str, Any]]
    images: list[Image.Image]


class Completion(str):
    """A completion's text, plus ``truncated`` (it stopped at the token budget, no end-of-sequence; None: unknown)
    and ``num_tokens`` (generated tokens; None: unknown). A ``str`` so that anything expecting text works on it."""

    truncated: bool | None
    num_tokens: int | None

    def __new__(cls, text: str, truncated: bool | None = None, num_tokens: int | None = None) -> Completion:
        obj = super().__new__(cls, text)
        obj.truncated, obj.num_tokens = truncated, num_tokens
        return obj


class Generator(Protocol):
    """Anything that completes a batch of requests (one string or :class:`Completion` per request, same order)."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]: ...


@dataclass(frozen=True)
class SamplingSettings:
    """What a generator needs: sampling (``temperature`` 0 = greedy; ``top_k`` 0 = off) and the image pixel cap."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    max_pixels: int | None = None
    min_pixels: int | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


def cap_pixels(image: Image.Image, max_pixels: int | None = None, min_pixels: int | None = None) -> Image.Image:
    """PAPO-Eval's image preprocessing (LLaMA-Factory ``mm_plugin``, ``image_max_pixels=768*768``,
    ``image_min_pixels=32*32``): an image with more than ``max_pixels`` pixels is scaled by ``sqrt(max / (w*h))``
    (sides truncated to integers), one with fewer than ``min_pixels`` scaled up the same way; then the ``qwen2_vl``
    plugin's guards: sides at least 28 pixels, aspect ratio at most 200 (clamped to 180). RGB. ``None`` = no cap."""
    if max_pixels and image.width * image.height > max_pixels:
        factor = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if min_pixels and image.width * image.height < min_pixels:
        factor = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if max_pixels or min_pixels:
        if min(image.width, image.height) < 28:
            image = image.resize((max(image.width, 28), max(image.height, 28)))
        if image.width / image.height > 200:
            image = image.resize((image.height * 180, image.height))
        if image.height / image.width > 200:
            image = image.resize((image.width, image.width * 180))
    return image.convert("RGB") if image.mode != "RGB" else image


# ----------------------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------------------


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return set(ids)


class HFGenerator:
    """transformers ``generate``: batched, left-padded, greedy at ``temperature == 0`` else sampling with exactly the
    given ``top_p`` / ``top_k`` (0 = off), no repetition penalty."""

    def __init__(
        self,
        model,
        processor,
        temperature: float = 0.0,
        max_new_tokens: int = 1024,
        top_p: float = 1.0,
        top_k: int = 0,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
    ):
        import torch
        from transformers import GenerationConfig

        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_pixels, self.min_pixels = max_pixels, min_pixels
        self.max_new_tokens = max_new_tokens
        eos = model.generation_config.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        sample = temperature > 0
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=(top_k or 0) if sample else None,
            repetition_penalty=1.0,
            eos_token_id=eos,
            pad_token_id=pad[0] if isinstance(pad, list) else pad,
        )
        self._eos = _eos_ids(model, self.tokenizer)
        self._torch = torch

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        if not requests:
            return []
        texts = [
            self.processor.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests
        ]
        # one list per prompt: processors that take several images per prompt (Gemma 3's) read a flat list as one
        images = [[cap_pixels(img, self.max_pixels, self.min_pixels) for img in r.images] for r in requests]
        images = images if any(images) else None
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        finally:
            self.tokenizer.padding_side = old_side
        inputs = inputs.to(self.model.device)
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config)
        new_tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        completions = []
        for ids in new_tokens:
            end = next((i for i, t in enumerate(ids) if t in self._eos), None)
            kept = ids if end is None else ids[: end + 1]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            completions.append(Completion(text, truncated=end is None, num_tokens=len(kept)))
        return completions


# ----------------------------------------------------------------------------------------------------------------------
# vLLM
# ----------------------------------------------------------------------------------------------------------------------


class VLLMGenerator:  # pragma: no cover - needs a GPU and vllm
    """vLLM offline generation: one request per sample (vLLM batches them and caches the shared prompt prefix);
    ``tensor_parallel_size`` splits the model over that many GPUs."""

    def __init__(
        self,
        model_path: str | Path,
        settings: SamplingSettings,
        seed: int = 0,
        max_images: int = 8,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        **llm_kwargs: Any,
    ):
        from transformers import AutoProcessor
        from vllm import LLM, SamplingParams

        self.settings = settings
        self.processor = AutoProcessor.from_pretrained(str(model_path))
        self.llm = LLM(
            model=str(model_path),
            seed=seed,
            limit_mm_per_prompt={"image": max_images},
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            **llm_kwargs,
        )
        sample = settings.temperature > 0
        # No per-request seed: identical prompts in one batch (the k samples) must not share a random stream.
        self.params = SamplingParams(
            temperature=settings.temperature,
            top_p=settings.top_p if sample else 1.0,
            top_k=(settings.top_k or -1) if sample else -1,
            max_tokens=settings.max_new_tokens,
            repetition_penalty=1.0,
            skip_special_tokens=True,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        inputs = []
        for r in requests:
            prompt = self.processor.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            item: dict[str, Any] = {"prompt": prompt}
            if r.images:
                images = [cap_pixels(img, self.settings.max_pixels, self.settings.min_pixels) for img in r.images]
                item["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
            inputs.append(item)
        outputs = self.llm.generate(inputs, self.params, use_tqdm=False)
        return [
            Completion(
                o.outputs[0].text,
                truncated=o.outputs[0].finish_reason == "length",
                num_tokens=len(o.outputs[0].token_ids),
            )
            for o in outputs
        ]


def vllm_available() -> bool:
    """True when ``vllm`` is importable and a CUDA device is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_backend(model: str | Path, backend: str = "auto") -> str:
    """The backend :func:`make_generator` uses for ``model``: ``vllm`` or ``hf`` (``ValueError`` when impossible)."""
    from pgpo.models import BUILTIN_MODELS

    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', not {backend!r}")
    builtin = str(model) in BUILTIN_MODELS
    if backend == "vllm" and (builtin or not vllm_available()):
        why = f"{model!r} is a pgpo-built model" if builtin else "it needs the vllm package and a CUDA device"
        raise ValueError(f"backend 'vllm' is not possible here: {why}")
    return "vllm" if backend == "vllm" or (backend == "auto" and not builtin and vllm_available()) else "hf"


def make_generator(
    model: str | Path,
    settings: SamplingSettings,
    backend: str = "auto",
    seed: int = 0,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
) -> tuple[Generator, str]:
    """``(generator, backend name)``: vLLM when available (``backend="auto"``) and ``model`` is a folder or hub id,
    else transformers with :func:`pgpo.models.load_model` (which also knows ``tiny-qwen`` and ``demo-vlm``)."""
    from pgpo.models import load_model

    if resolve_backend(model, backend) == "vllm":
        generator = VLLMGenerator(
            model,
            settings,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        return generator, "vllm"
    import torch

    torch.manual_seed(seed)
    model_obj, processor = load_model(str(model))
    generator = HFGenerator(
        model_obj,
        processor,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_pixels=settings.max_pixels,
        min_pixels=settings.min_pixels,
    )
    return generator, "hf"
