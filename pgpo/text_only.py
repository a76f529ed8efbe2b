"""The blind pass: the same prompt and completion with the image made invisible (paper Eq. 1 and App. A.1).

Eq. 1 compares ``pi(. | s_t, I)`` with ``pi(. | s_t)``. The paper forms ``pi(. | s_t)`` with a second forward of the
same sequence in which "the attention mask of all visual tokens is set to False, blinding the text tokens to the
visual prefix while preserving their original positional indices". It rejects removing the image (that shifts the
positions of every later token) and a zero image. Modes (``text_only_mode``):

* ``"mask"`` (default, the paper's): the visual placeholder tokens (``<|image_pad|>`` / ``<|video_pad|>`` of
  Qwen2/2.5/3-VL, the image-token run of LLaVA-style models and of pgpo's demo VLM) become invisible and every
  other token keeps the position id it had in the image-conditioned pass (:func:`image_pass_position_ids`; Qwen's
  3-row M-RoPE ids included). Implemented the cheap way that gives the same numbers: the masked tokens are dropped
  from the sequence and the remaining tokens' original position ids are passed explicitly. A masked key contributes
  nothing to any query, so every kept token's output equals the literal full-length masked forward's (tested against
  one). No image tensors are passed: the vision tower does not run. ``<|vision_start|>`` / ``<|vision_end|>`` stay
  visible by default; ``mask_delimiters=True`` hides them too (spec, a choice the paper leaves open).
* ``"remove_reindex"`` (NOT the paper's; pgpo's earlier behaviour): each image's whole span is deleted and the model
  recomputes positions, so every token after the image moves.
* ``"blank"``: the ids are kept and ``pixel_values`` are zeroed (the mean image after the processor's normalisation;
  also rejected by the paper, kept for comparison).
* ``"patch_blackout"`` (VPPO's perturbation, arXiv 2510.09285): the ids are kept and each 14-px cell of the processed
  image is blackened with probability ``p`` (0.5), a fresh mask per rollout, from a seeded generator
  (:func:`blacken_patches`). On Qwen2/2.5/3-VL every row of ``pixel_values`` is one 14-px patch, so the cells are
  exactly the ViT's patches of the resized image; "black" is pixel value 0 after the processor's normalisation
  (:func:`black_pixel`). VPPO-RL blackens the image before the processor's own resize to multiples of 28, with an
  unseeded generator; here the mask is aligned to the model's patches and reproducible.

PAPO's mask (arXiv 2507.06448; 0.6, one mask per prompt, on the raw image before any resizing) is
:func:`blacken_image` on PIL images.

Everything here is pure tensor code; the token ids come from the model config (:func:`image_token_spec`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class ModeNeeds:
    """What a blind-pass mode needs besides the batch."""

    positions: bool = False  # the image pass's position ids (image_pass_position_ids)
    generator: bool = False  # a seeded generator (random masks)


# The one list of blind-pass modes (``text_only_mode``), with what each needs; the config's choices come from it.
BLIND_MODES: dict[str, ModeNeeds] = {
    "mask": ModeNeeds(positions=True),
    "remove_reindex": ModeNeeds(),
    "blank": ModeNeeds(),
    "patch_blackout": ModeNeeds(generator=True),
}
TEXT_ONLY_MODES: tuple[str, ...] = tuple(BLIND_MODES)
TextOnlyMode = Literal[TEXT_ONLY_MODES]  # PGPOConfig.text_only_mode's type: TRL's parser reads its choices
PATCH_SIZE = 14  # VPPO's and PAPO's cell size; the ViT patch of Qwen2/2.5/3-VL
# Keys of a processed batch that carry the image: the one list (the trainer, the scorer and the bench use it).
IMAGE_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "pixel_attention_mask",
    "image_sizes",
    "spatial_shapes",
    "image_position_ids",
    "num_images",
    "num_tiles",
)
# Per-token type ids (image = 1, video = 2, text = 0); all text in a blind batch.
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class ImageTokenSpec:
    """How a model marks images in ``input_ids``."""

    image_token_id: int
    video_token_id: int | None = None
    start_token_id: int | None = None  # e.g. <|vision_start|>; None for LLaVA-style runs of image tokens
    end_token_id: int | None = None  # e.g. <|vision_end|>

    def hidden_ids(self, mask_delimiters: bool = False) -> list[int]:
        """The token ids the blind pass makes invisible."""
        ids = [self.image_token_id] + ([self.video_token_id] if self.video_token_id is not None else [])
        if mask_delimiters:
            ids += [i for i in (self.start_token_id, self.end_token_id) if i is not None]
        return ids


def image_token_spec(config) -> ImageTokenSpec:
    """Read the image token ids from a HF config (Qwen2/2.5/3-VL, LLaVA-style, pgpo's demo VLM)."""
    image_id = getattr(config, "image_token_id", None)
    if image_id is None:
        image_id = getattr(config, "image_token_index", None)
    if image_id is None:
        raise ValueError(
            f"cannot find the image token id in {type(config).__name__} (expected `image_token_id` or "
            "`image_token_index`); pass an ImageTokenSpec explicitly"
        )
    video_id = getattr(config, "video_token_id", None)
    return ImageTokenSpec(
        image_token_id=int(image_id),
        video_token_id=None if video_id is None else int(video_id),
        start_token_id=getattr(config, "vision_start_token_id", None),
        end_token_id=getattr(config, "vision_end_token_id", None),
    )


# ----------------------------------------------------------------------------------------------- positions


def _position_owner(model):
    """The module whose forward derives position ids from the batch (Qwen-VL's ``compute_3d_position_ids``)."""
    inner = model
    for attr in ("module", "_orig_mod"):  # DDP / DeepSpeed / torch.compile wrappers
        inner = getattr(inner, attr, inner)
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    for candidate in (inner, getattr(inner, "model", None), getattr(inner, "base_model", None)):
        if candidate is not None and hasattr(candidate, "compute_3d_position_ids"):
            return candidate
    return None


def image_pass_position_ids(model, batch: dict) -> torch.Tensor:
    """The position ids the model's image-conditioned forward uses for ``batch``, computed without running it.

    Qwen2/2.5/3-VL (M-RoPE): the model's own ``compute_3d_position_ids`` (``[3, B, L]``; it derives the ids from
    ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and the image grids, exactly as its forward does when no
    ``position_ids`` are passed). Every other HF decoder: ``arange(L)`` per row (``[B, L]``), what the model uses when
    the caller passes no ``position_ids`` (TRL passes none).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    owner = _position_owner(model)
    if owner is not None:
        params = inspect.signature(owner.compute_3d_position_ids).parameters
        extra = {
            k: batch.get(k)
            for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")
            if k in params
        }
        positions = owner.compute_3d_position_ids(
            input_ids=ids, inputs_embeds=None, attention_mask=mask, cache=None, **extra
        )
        if positions is not None:
            return positions
    return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)


# ----------------------------------------------------------------------------------------------- the blind batch


def _check_batch(batch: dict, logits_to_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if ids.shape != mask.shape:
        raise ValueError(f"input_ids shape {tuple(ids.shape)} != attention_mask shape {tuple(mask.shape)}")
    if not 0 < logits_to_keep < ids.shape[1]:
        raise ValueError(f"logits_to_keep={logits_to_keep} must be in (0, {ids.shape[1]})")
    return ids, mask


def blind_batch(
    batch: dict,
    logits_to_keep: int,
    spec: ImageTokenSpec,
    position_ids: torch.Tensor,
    pad_token_id: int = 0,
    mask_delimiters: bool = False,
) -> dict:
    """The paper's blind pass (``text_only_mode="mask"``), as a shorter batch with the original positions.

    Args:
        batch: ``input_ids`` / ``attention_mask`` ``[B, P+T]`` (prompt, then the ``T = logits_to_keep`` completion
            columns), as TRL builds them (prompts left-padded).
        position_ids: the image-conditioned pass's ids, ``[B, P+T]`` or ``[R, B, P+T]``
            (:func:`image_pass_position_ids`).
        mask_delimiters: also hide ``<|vision_start|>`` / ``<|vision_end|>``.

    Returns:
        ``input_ids``, ``attention_mask`` and ``position_ids`` with the hidden prompt tokens (and the prompt's padding)
        dropped and the kept prompt tokens right-aligned before the unchanged ``T`` completion columns; no image
        tensors; per-token type ids (if the batch had them) all 0.
    """
    ids, mask = _check_batch(batch, logits_to_keep)
    if position_ids.shape[-2:] != ids.shape or position_ids.dim() not in (2, 3):
        raise ValueError(f"position_ids shape {tuple(position_ids.shape)} does not fit input_ids {tuple(ids.shape)}")
    P = ids.shape[1] - logits_to_keep
    hidden = torch.isin(ids, torch.tensor(spec.hidden_ids(mask_delimiters), device=ids.device))
    bad = hidden[:, P:] & mask[:, P:].bool()
    if bad.any():
        row = int(bad.any(1).nonzero()[0])
        raise ValueError(
            f"row {row}: image tokens inside the completion (tool images) are not supported by the blind pass"
        )
    keep = mask[:, :P].bool() & ~hidden[:, :P]
    width = int(keep.sum(1).max())
    # Stable sort puts each row's dropped prompt columns first and its kept ones last, in their original order; the
    # last `width` columns are the new prompt, right-aligned (rows with fewer kept tokens get dropped columns -> pads).
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, P - width :]
    new_keep = keep.gather(1, order)
    prompt_ids = torch.where(new_keep, ids[:, :P].gather(1, order), torch.full_like(order, pad_token_id))
    if position_ids.dim() == 2:
        prompt_pos = position_ids[:, :P].gather(1, order)
        completion_pos = position_ids[:, P:]
    else:
        prompt_pos = position_ids[:, :, :P].gather(2, order.expand(position_ids.shape[0], -1, -1))
        completion_pos = position_ids[:, :, P:]
    prompt_pos = prompt_pos.masked_fill(~new_keep, 0)
    out = {
        "input_ids": torch.cat([prompt_ids, ids[:, P:]], dim=1),
        "attention_mask": torch.cat([new_keep.to(mask.dtype), mask[:, P:]], dim=1),
        "position_ids": torch.cat([prompt_pos, completion_pos], dim=-1),
    }
    for key in PER_TOKEN_KEYS:
        if key in batch:
            out[key] = torch.zeros_like(out["input_ids"])
    return out


def image_span_keep_mask(ids: torch.Tensor, spec: ImageTokenSpec, row: int = 0) -> torch.Tensor:
    """Bool mask over a 1-D id sequence: False on every image span token (delimiters included), True elsewhere.

    Raises ``ValueError`` for a span that is opened and never closed (or closed without being opened).
    """
    keep = torch.ones_like(ids, dtype=torch.bool)
    if spec.start_token_id is not None and spec.end_token_id is not None:
        starts = (ids == spec.start_token_id).nonzero().flatten().tolist()
        ends = (ids == spec.end_token_id).nonzero().flatten().tolist()
        if (
            len(starts) != len(ends)
            or any(s >= e for s, e in zip(starts, ends))
            or any(e > s2 for e, s2 in zip(ends[:-1], starts[1:]))
        ):
            raise ValueError(
                f"row {row}: unbalanced image span: {len(starts)} vision_start token(s) at {starts} and "
                f"{len(ends)} vision_end token(s) at {ends} (an image span that is not closed?)"
            )
        for s, e in zip(starts, ends):
            keep[s : e + 1] = False
        stray = torch.isin(ids, torch.tensor(spec.hidden_ids(), device=ids.device)) & keep
        if stray.any():
            raise ValueError(f"row {row}: image token(s) outside any vision_start/vision_end span")
    else:
        keep &= ~torch.isin(ids, torch.tensor(spec.hidden_ids(), device=ids.device))
    return keep


def _pad_rows(rows: list[torch.Tensor], pad_value: int, side: str) -> torch.Tensor:
    width = max((r.numel() for r in rows), default=0)
    out = rows[0].new_full((len(rows), width), pad_value) if rows else torch.empty(0, 0, dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "left":
            out[i, width - r.numel() :] = r
        else:
            out[i, : r.numel()] = r
    return out


def _padding_side(mask: torch.Tensor) -> str:
    """'left' if padding sits at the start of rows, else 'right' (no padding at all counts as left)."""
    if mask.numel() == 0 or bool(mask[:, -1].all()):
        return "left"
    return "right"


def text_only_prompt(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    spec: ImageTokenSpec,
    pad_token_id: int,
    padding_side: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delete every image span from a padded prompt batch; returns re-padded ``(ids, mask)`` (``remove_reindex``)."""
    if prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"prompt_ids shape {tuple(prompt_ids.shape)} != prompt_mask shape {tuple(prompt_mask.shape)}")
    side = padding_side or _padding_side(prompt_mask)
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    rows = []
    for i in range(prompt_ids.shape[0]):
        ids = prompt_ids[i][prompt_mask[i].bool()]
        rows.append(ids[image_span_keep_mask(ids, spec, row=i)])
    new_ids = _pad_rows(rows, pad_token_id, side)
    new_mask = _pad_rows([torch.ones_like(r) for r in rows], 0, side)
    return new_ids.to(prompt_ids.device), new_mask.to(prompt_mask.device)


def remove_reindex_batch(batch: dict, logits_to_keep: int, spec: ImageTokenSpec, pad_token_id: int = 0) -> dict:
    """``text_only_mode="remove_reindex"`` (not the paper's): image spans deleted, prompts re-padded, no image
    tensors and no position ids, so the model recomputes (shifted) positions."""
    ids, mask = _check_batch(batch, logits_to_keep)
    completion_ids, completion_mask = ids[:, -logits_to_keep:], mask[:, -logits_to_keep:]
    new_prompt, new_prompt_mask = text_only_prompt(
        ids[:, :-logits_to_keep], mask[:, :-logits_to_keep], spec, pad_token_id
    )
    out = {k: v for k, v in batch.items() if k not in IMAGE_KEYS and k not in PER_TOKEN_KEYS and k != "position_ids"}
    out["input_ids"] = torch.cat([new_prompt, completion_ids], dim=1)
    out["attention_mask"] = torch.cat([new_prompt_mask, completion_mask], dim=1)
    for key in PER_TOKEN_KEYS:
        if key in batch:
            out[key] = torch.zeros_like(out["input_ids"])
    return out


def blank_batch(batch: dict, logits_to_keep: int) -> dict:
    """``text_only_mode="blank"``: the same ids, ``pixel_values`` zeroed (not the paper's)."""
    _check_batch(batch, logits_to_keep)
    out = dict(batch)
    if "pixel_values" in batch:
        out["pixel_values"] = torch.zeros_like(batch["pixel_values"])
    return out


# ----------------------------------------------------------------------------------------------- patch blackening


def black_pixel(image_processor) -> torch.Tensor:
    """``[C]``: the value a black pixel (0) has after the image processor's rescaling and normalisation."""
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    if mean is None or std is None or not getattr(image_processor, "do_normalize", True):
        return torch.zeros(3)
    return -torch.tensor(mean, dtype=torch.float64) / torch.tensor(std, dtype=torch.float64)


def blacken_patches(
    pixel_values: torch.Tensor,
    prob: float,
    black: torch.Tensor,
    generator: torch.Generator,
    patch_size: int = PATCH_SIZE,
) -> torch.Tensor:
    """Blacken each patch of processed images with probability ``prob``, independently (a new tensor).

    ``pixel_values`` is either Qwen-VL's flattened patches ``[n_patches, C * T * P * P]`` (each row one ``P``-px patch,
    channel-major: every row is a cell) or images ``[N, C, H, W]`` (cells of ``patch_size`` px from the top-left,
    partial cells at the right and bottom edges included). ``black`` is :func:`black_pixel`.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"patch blackout probability must be in [0, 1], got {prob}")
    out = pixel_values.clone()
    black = black.to(out.dtype).to(out.device)
    if out.dim() == 2:
        channels = black.numel()
        if out.shape[1] % channels:
            raise ValueError(f"pixel_values rows of {out.shape[1]} values do not split into {channels} channels")
        row = black.repeat_interleave(out.shape[1] // channels)
        hit = torch.rand(out.shape[0], generator=generator).to(out.device) < prob
        out[hit] = row
        return out
    if out.dim() != 4:
        raise ValueError(f"pixel_values must be [n_patches, D] or [N, C, H, W], got {tuple(out.shape)}")
    n, c, h, w = out.shape
    cells = torch.rand(n, -(-h // patch_size), -(-w // patch_size), generator=generator) < prob
    hit = cells.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, :h, :w].to(out.device)
    return torch.where(hit[:, None], black.view(1, c, 1, 1).expand_as(out), out)


def blacken_image(image, prob: float, generator: torch.Generator, patch_size: int = PATCH_SIZE):
    """PAPO's mask on a raw PIL image (before any resizing): each ``patch_size``-px cell black with probability
    ``prob``; returns a new RGB image of the same size."""
    import numpy as np
    from PIL import Image

    array = np.array(image.convert("RGB"))
    h, w = array.shape[:2]
    cells = (torch.rand(-(-h // patch_size), -(-w // patch_size), generator=generator) < prob).numpy()
    hit = cells.repeat(patch_size, 0).repeat(patch_size, 1)[:h, :w]
    array[hit] = 0
    return Image.fromarray(array)


def patch_blackout_batch(
    batch: dict, logits_to_keep: int, prob: float, black: torch.Tensor, generator: torch.Generator
) -> dict:
    """``text_only_mode="patch_blackout"``: the same ids, ``pixel_values`` with blackened patches (VPPO)."""
    _check_batch(batch, logits_to_keep)
    out = dict(batch)
    if "pixel_values" in batch:
        out["pixel_values"] = blacken_patches(batch["pixel_values"], prob, black, generator)
    return out


def counterfactual_batch(
    batch: dict,
    logits_to_keep: int,
    mode: str,
    spec: ImageTokenSpec,
    *,
    position_ids: torch.Tensor | None = None,
    pad_token_id: int = 0,
    mask_delimiters: bool = False,
    patch_prob: float = 0.5,
    black: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """The "without the image" counterpart of a prompt+completion batch in the given mode (see the module docstring).

    Its last ``logits_to_keep`` columns are the same completion tokens, in the same order. ``position_ids`` are for
    the modes that keep the image pass's positions, ``patch_prob``, ``black`` and ``generator`` for
    ``"patch_blackout"`` (:data:`BLIND_MODES`).
    """
    if mode not in BLIND_MODES:
        raise ValueError(f"text_only_mode must be one of {TEXT_ONLY_MODES}, got {mode!r}")
    needs = BLIND_MODES[mode]
    if needs.positions and position_ids is None:
        raise ValueError(f"text_only_mode={mode!r} needs the image-conditioned pass's position_ids")
    if needs.generator and (black is None or generator is None):
        raise ValueError(f"text_only_mode={mode!r} needs the black pixel value and a seeded generator")
    if mode == "mask":
        return blind_batch(batch, logits_to_keep, spec, position_ids, pad_token_id, mask_delimiters)
    if mode == "remove_reindex":
        return remove_reindex_batch(batch, logits_to_keep, spec, pad_token_id)
    if mode == "blank":
        return blank_batch(batch, logits_to_keep)
    return patch_blackout_batch(batch, logits_to_keep, patch_prob, black, generator)


# ----------------------------------------------------------------------------------------------- text-only rows
# Rows without an image in a multimodal batch (pgpo.data's text_only="keep"): a micro-batch of text-only rows reaches
# the model with empty image tensors, which Qwen-VL's vision tower rejects; the blind pass of a text-only row is the
# row itself, so its dependency is 0.
def _drop_empty_image_inputs(module, args, kwargs):
    """Forward pre-hook: image tensors holding no image (a micro-batch of text-only rows) are not passed on."""
    empty = [k for k in IMAGE_KEYS if isinstance(kwargs.get(k), torch.Tensor) and kwargs[k].shape[:1] == (0,)]
    if not empty:
        return None
    return args, {k: v for k, v in kwargs.items() if k not in empty}


def allow_text_only_micro_batches(model) -> None:
    """The model's backbone gets no image tensors at all, instead of empty ones, for a micro-batch without images."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, "base_model", inner)
    if isinstance(backbone, torch.nn.Module):
        backbone.register_forward_pre_hook(_drop_empty_image_inputs, with_kwargs=True)


def zero_text_only_rows(
    scores: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, spec: ImageTokenSpec | None
) -> torch.Tensor:
    """Dependency 0, exactly, for rows whose prompt has no visual token (not the float noise of two passes)."""
    if spec is None:
        return scores
    hidden = torch.tensor(spec.hidden_ids(), device=prompt_ids.device)
    visual = (torch.isin(prompt_ids, hidden) & prompt_mask.bool()).any(dim=1)
    return scores if bool(visual.all()) else scores * visual[:, None].to(scores.dtype)
