"""A small real VLM from pretrained parts that ship in pip packages: ImageNet MobileNetV2 (frozen) -> MLP projector ->
SmolLM2-135M-Instruct. See ``docs/vlm.md``.

Importing this package registers ``pgpo_vlm`` with ``AutoConfig``, ``AutoModelForImageTextToText`` and
``AutoProcessor``.
"""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .build import build_pgpo_vlm, load_pgpo_vlm
from .configuration import PGPOVLMConfig
from .modeling import PGPOProjector, PGPOVisionTower, PGPOVLMForConditionalGeneration, PGPOVLMModel
from .parts import load_smollm2, mobilenet_weights_path, smollm2_cache_dir, smollm2_gguf_path
from .processing import CHAT_TEMPLATE, PGPOImageProcessor, PGPOVLMProcessor

AutoConfig.register(PGPOVLMConfig.model_type, PGPOVLMConfig, exist_ok=True)
AutoModelForImageTextToText.register(PGPOVLMConfig, PGPOVLMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(PGPOVLMConfig, PGPOVLMProcessor, exist_ok=True)

__all__ = [
    "CHAT_TEMPLATE",
    "PGPOImageProcessor",
    "PGPOProjector",
    "PGPOVLMConfig",
    "PGPOVLMForConditionalGeneration",
    "PGPOVLMModel",
    "PGPOVLMProcessor",
    "PGPOVisionTower",
    "build_pgpo_vlm",
    "load_pgpo_vlm",
    "load_smollm2",
    "mobilenet_weights_path",
    "smollm2_cache_dir",
    "smollm2_gguf_path",
]
