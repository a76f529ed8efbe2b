"""Processor of the demo VLM: SmolLM2's tokenizer + three vision tokens, and a fixed-size ImageNet image processor.

Chat format (SmolLM2's ChatML, without its default system prompt): an ``{"type": "image"}`` content part renders as
``<|vision_start|><|image_pad|><|vision_end|>``; ``__call__`` expands each ``<|image_pad|>`` to ``num_image_tokens``
copies and returns ``input_ids``, ``attention_mask`` (left padded) and ``pixel_values`` ``[num_images, 3, H, W]``.
The calls TRL's GRPOTrainer makes (``apply_chat_template(conversation=[...], tokenize=True, return_dict=True)``,
``__call__(images=list_of_lists, text=..., padding=True, return_tensors="pt")``, ``batch_decode``) work unchanged.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_processing_base import ImageProcessingMixin

IMAGE_TOKEN = "<|image_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
VISION_TOKENS = (VISION_START_TOKEN, IMAGE_TOKEN, VISION_END_TOKEN)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROCESSOR_CONFIG = "processor_config.json"

# SmolLM2's ChatML template, extended to content lists with {"type": "image"} / {"type": "text"} parts. Unlike
# SmolLM2's own template it adds no default system prompt: ~20 tokens less per prompt, which is ~40% of the compute
# of a demo prompt on a CPU (pass a system message to get one).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] is not none %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + "".join(VISION_TOKENS) + "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _as_rgb(image) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    elif isinstance(image, torch.Tensor):
        image = Image.fromarray(image.detach().cpu().numpy())
    if not isinstance(image, Image.Image):
        raise TypeError(f"unsupported image type {type(image).__name__}")
    return image.convert("RGB")


def flatten_images(images) -> list:
    """``None`` / one image / a list / a list of per-sample lists (``None`` entries allowed) -> flat list."""
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for item in images:
        if item is None:
            continue
        flat.extend(flatten_images(item) if isinstance(item, (list, tuple)) else [item])
    return flat


class PGPOImageProcessor(ImageProcessingMixin):
    """Resize (bilinear) to ``image_size x image_size`` RGB, scale to [0, 1], normalise with ImageNet mean/std."""

    model_input_names = ["pixel_values"]

    def __init__(self, image_size: int = 64, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, **kwargs):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def preprocess_one(self, image) -> np.ndarray:
        """One image -> ``[3, image_size, image_size]`` float32 array."""
        image = _as_rgb(image)
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return array.transpose(2, 0, 1)

    def __call__(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Images (any nesting, see :func:`flatten_images`) -> ``{"pixel_values": [N, 3, S, S]}``."""
        flat = flatten_images(images)
        if flat:
            pixel_values = np.stack([self.preprocess_one(img) for img in flat])
        else:
            pixel_values = np.zeros((0, 3, self.image_size, self.image_size), np.float32)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    preprocess = __call__


def _images_in_conversation(conversation: list[dict]) -> list:
    images = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image":
                    image = part.get("image", part.get("url", part.get("path")))
                    if image is None:
                        raise ValueError("an image part has no 'image' (pass images in the messages to tokenize)")
                    images.append(image)
    return images


class PGPOVLMProcessor(ProcessorMixin):
    """Tokenizer + image processor of the PGPO demo VLM (see the module docstring)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, num_image_tokens=4):
        if image_processor is None:
            image_processor = PGPOImageProcessor()
        missing = [t for t in VISION_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.num_image_tokens = int(num_image_tokens)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        self.image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(VISION_START_TOKEN)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(VISION_END_TOKEN)

    # ------------------------------------------------------------------ text + images -> tensors
    def expand_image_tokens(self, text: str) -> str:
        """Each run of ``<|image_pad|>`` becomes exactly ``num_image_tokens`` of them."""
        return re.sub(f"(?:{re.escape(IMAGE_TOKEN)})+", IMAGE_TOKEN * self.num_image_tokens, text)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        padding: bool | str = False,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize ``text`` (one placeholder per image, in order) and preprocess ``images``.

        ``images``: ``None``, a flat list, or one list per text (``None`` or ``[]`` for a text without image).
        Extra keyword arguments go to the tokenizer (``truncation``, ``max_length``, ``padding_side`` ...).
        """
        if text is None:
            raise ValueError("PGPOVLMProcessor needs text (use .image_processor for images alone)")
        texts = [text] if isinstance(text, str) else list(text)
        flat = flatten_images(images)
        n_slots = sum(len(re.findall(f"(?:{re.escape(IMAGE_TOKEN)})+", t)) for t in texts)
        if n_slots != len(flat):
            raise ValueError(f"{n_slots} image placeholder(s) in the text but {len(flat)} image(s)")
        for key in ("images_kwargs", "text_kwargs", "videos", "audio"):
            kwargs.pop(key, None)
        kwargs.setdefault("add_special_tokens", False)
        encoded = self.tokenizer(
            [self.expand_image_tokens(t) for t in texts], padding=padding, return_tensors=return_tensors, **kwargs
        )
        data = dict(encoded)
        if images is not None:  # [0, 3, S, S] when every sample is text-only (TRL slices it per sample)
            data["pixel_values"] = self.image_processor(flat, return_tensors="pt")["pixel_values"]
        return BatchFeature(data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ chat template
    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        tools: list | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        padding: bool | str = False,
        return_tensors: str | None = None,
        **kwargs,
    ):
        """Render (and optionally tokenize) one conversation or a batch of them.

        ``tokenize=False``: a string (one conversation) or a list of strings (a batch). ``tokenize=True``: always
        batched, like transformers' processors: ``input_ids`` (a list of lists unless ``return_tensors``), and with
        ``return_dict=True`` also ``attention_mask`` and, when the messages carry images, ``pixel_values``.
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        for key in ("return_assistant_tokens_mask", "processor_kwargs", "mm_load_kwargs"):
            kwargs.pop(key, None)
        texts = [
            self.tokenizer.apply_chat_template(
                list(conv),
                chat_template=chat_template or self.chat_template,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **kwargs,
            )
            for conv in conversations
        ]
        if not tokenize:
            return texts if batched else texts[0]
        images = [_images_in_conversation(conv) for conv in conversations]
        has_images = any(images)
        out = self(images=images if has_images else None, text=texts, padding=padding, return_tensors=return_tensors)
        return out if return_dict else out["input_ids"]

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Tokenizer files, ``preprocessor_config.json``, ``chat_template.jinja`` and ``processor_config.json``."""
        if push_to_hub:
            raise NotImplementedError("PGPOVLMProcessor.save_pretrained does not push to the Hub")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        (folder / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        config = {"processor_class": type(self).__name__, "num_image_tokens": self.num_image_tokens}
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return [str(folder / PROCESSOR_CONFIG)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> PGPOVLMProcessor:
        """Load what :meth:`save_pretrained` wrote (a local folder)."""
        folder = Path(pretrained_model_name_or_path)
        config = json.loads((folder / PROCESSOR_CONFIG).read_text(encoding="utf-8"))
        template = folder / "chat_template.jinja"
        return cls(
            image_processor=PGPOImageProcessor.from_pretrained(str(folder)),
            tokenizer=AutoTokenizer.from_pretrained(str(folder)),
            chat_template=template.read_text(encoding="utf-8") if template.is_file() else None,
            num_image_tokens=kwargs.get("num_image_tokens", config.get("num_image_tokens", 4)),
        )
