"""The demo VLM: frozen MobileNetV2 -> pooled grid -> MLP projector -> image tokens spliced into SmolLM2 (Llama).

``PGPOVLMForConditionalGeneration`` follows the layout of transformers' own VLMs (LLaVA, Qwen2.5-VL):

* ``model`` (:class:`PGPOVLMModel`, the ``base_model``): embeds the text, overwrites the embeddings at the
  ``image_token_id`` positions with the projected image features, runs the Llama backbone and returns
  ``last_hidden_state`` (this is what TRL's fused LM head calls).
* ``lm_head``: tied to the input embeddings, as in SmolLM2.

``pixel_values`` is ``[num_images_in_batch, 3, H, W]``; the images fill the image-token positions of the batch in
row-major order, so a row may have zero, one or several images. ``generate`` uses the KV cache and feeds the image
only at the prefill step (transformers drops ``pixel_values`` after it).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, LlamaModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .configuration import PGPOVLMConfig


class PGPOVisionTower(nn.Module):
    """MobileNetV2's convolutional trunk (the first ``vision_blocks`` blocks of ``mobilenet_v2().features``) + adaptive
    average pooling.

    Returns ``[N, vision_grid**2, vision_hidden_size]`` features, cells in row-major order. When ``frozen`` the parameters get no
    gradient and the module stays in eval mode even under ``model.train()`` (BatchNorm uses ImageNet statistics).
    """

    def __init__(self, config: PGPOVLMConfig):
        super().__init__()
        import torchvision

        self.features = torchvision.models.mobilenet_v2().features[: config.vision_blocks]
        self.pool = nn.AdaptiveAvgPool2d(config.vision_grid)
        self.frozen = config.freeze_vision
        self.apply_freeze()

    def apply_freeze(self) -> None:
        """No gradients and eval mode when frozen (re-applied after ``from_pretrained``, which resets the flags)."""
        if self.frozen:
            self.requires_grad_(False)
            self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.features[0][0].weight.dtype

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Frozen: no autograd graph through MobileNetV2, unless the caller wants gradients w.r.t. the pixels.
        track = torch.is_grad_enabled() and (not self.frozen or pixel_values.requires_grad)
        with torch.set_grad_enabled(track):
            fmap = self.pool(self.features(pixel_values))  # [N, C, g, g]
        return fmap.flatten(2).transpose(1, 2)  # [N, g*g, C]


class PGPOProjector(nn.Module):
    """LayerNorm + 2-layer GELU MLP from the MobileNetV2 channels to the text hidden size (trainable)."""

    def __init__(self, config: PGPOVLMConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.vision_hidden_size)
        self.fc1 = nn.Linear(config.vision_hidden_size, config.projector_hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(features))))


class PGPOVLMPreTrainedModel(PreTrainedModel):
    """Shared settings of the PGPO VLM classes."""

    config_class = PGPOVLMConfig
    config: PGPOVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class PGPOVLMModel(PGPOVLMPreTrainedModel):
    """Vision tower + projector + Llama backbone; ``forward`` returns ``BaseModelOutputWithPast``."""

    def __init__(self, config: PGPOVLMConfig):
        super().__init__(config)
        self.vision_tower = PGPOVisionTower(config)
        self.projector = PGPOProjector(config)
        self.language_model = LlamaModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.embed_tokens = value

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, num_image_tokens, hidden]`` image token embeddings."""
        return self.projector(self.vision_tower(pixel_values))

    def merge_image_features(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write the image features, in order, at the ``image_token_id`` positions of ``inputs_embeds``."""
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embedding).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        n_tokens, n_features = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"{n_tokens} image tokens in the input but {image_features.shape[0]} image(s) x "
                f"{image_features.shape[1]} tokens = {n_features} image features"
            )
        features = image_features.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Text (+ image) -> Llama hidden states. ``cache`` is transformers 5's name of ``past_key_values``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and pixel_values.shape[0] > 0:
            image_features = self.get_image_features(pixel_values.to(self.vision_tower.dtype))
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        elif input_ids is not None and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError("the input has image tokens but no pixel_values")
        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class PGPOVLMForConditionalGeneration(PGPOVLMPreTrainedModel, GenerationMixin):
    """The PGPO demo VLM with a (tied) language-modelling head; works with ``generate`` and TRL's GRPOTrainer."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: PGPOVLMConfig):
        super().__init__(config)
        self.model = PGPOVLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then re-freeze the vision tower (loading re-creates its parameters)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.model.vision_tower.apply_freeze()
        return loaded

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, num_image_tokens, hidden]``."""
        return self.model.get_image_features(pixel_values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for the last ``logits_to_keep`` positions (0 = all); a causal-LM loss when ``labels`` is given."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
