"""``PGPOVLMConfig``: a frozen MobileNetV2 + MLP projector + SmolLM2 (Llama) vision-language model."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

MOBILENET_V2_CHANNELS = 1280  # channels of MobileNetV2's last feature map (stride 32)
# Channels and stride of the feature map after the first k blocks of ``mobilenet_v2().features`` (k = 1..19).
MOBILENET_V2_BLOCK_CHANNELS = (32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280)
MOBILENET_V2_BLOCK_STRIDES = (2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)


class PGPOVLMConfig(PretrainedConfig):
    """Configuration of :class:`~pgpo.vlm.modeling.PGPOVLMForConditionalGeneration`.

    Args:
        text_config: the language model's ``LlamaConfig`` (SmolLM2-135M-Instruct's, with the vocabulary grown by the
            three vision tokens).
        image_size: side in pixels of the square image fed to MobileNetV2 (with all 19 blocks, stride 32: 64 -> a 2x2
            feature map, 96 -> 3x3, 128 -> 4x4).
        vision_grid: the feature map is average-pooled to ``vision_grid x vision_grid`` cells, one image token each.
        num_image_tokens: ``vision_grid ** 2`` (derived; given only for readability of the saved config).
        vision_blocks: how many blocks of ``mobilenet_v2().features`` run (1..19): 19 = the whole trunk (1280
            channels, stride 32), 14 = up to the last stride-16 stage (96 channels), 18 = 320 channels, stride 32.
        vision_hidden_size: channels of that feature map (derived from ``vision_blocks``).
        projector_hidden_size: width of the projector MLP's hidden layer (defaults to the text hidden size).
        freeze_vision: keep MobileNetV2 frozen (no gradients, BatchNorm always in eval mode).
        image_token_id / vision_start_token_id / vision_end_token_id: ids of ``<|image_pad|>``,
            ``<|vision_start|>`` and ``<|vision_end|>``. An image is the span
            ``<|vision_start|> <|image_pad|> * num_image_tokens <|vision_end|>`` (as in Qwen2.5-VL).
    """

    model_type = "pgpo_vlm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PretrainedConfig | None = None
    image_size: int = 64
    vision_grid: int = 2
    num_image_tokens: int | None = None
    vision_blocks: int = len(MOBILENET_V2_BLOCK_CHANNELS)
    vision_hidden_size: int | None = None
    projector_hidden_size: int | None = None
    freeze_vision: bool = True
    image_token_id: int | None = None
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_grid < 1 or self.image_size < 32:
            raise ValueError(f"need vision_grid >= 1 and image_size >= 32, got {self.vision_grid}, {self.image_size}")
        if not 1 <= self.vision_blocks <= len(MOBILENET_V2_BLOCK_CHANNELS):
            raise ValueError(
                f"vision_blocks must be in 1..{len(MOBILENET_V2_BLOCK_CHANNELS)}, got {self.vision_blocks}"
            )
        channels = MOBILENET_V2_BLOCK_CHANNELS[self.vision_blocks - 1]
        if self.vision_hidden_size is None:
            self.vision_hidden_size = channels
        elif self.vision_hidden_size != channels:
            raise ValueError(f"vision_hidden_size={self.vision_hidden_size} but vision_blocks={self.vision_blocks}")
        expected = self.vision_grid * self.vision_grid
        if self.num_image_tokens is None:
            self.num_image_tokens = expected
        elif self.num_image_tokens != expected:
            raise ValueError(f"num_image_tokens={self.num_image_tokens} but vision_grid={self.vision_grid}")
        if self.projector_hidden_size is None:
            self.projector_hidden_size = self.text_config.hidden_size
        self.tie_word_embeddings = bool(self.tie_word_embeddings and self.text_config.tie_word_embeddings)
