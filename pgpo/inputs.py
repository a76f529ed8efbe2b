"""Text-only inputs: the same prompt and completion with the image taken out.

PGPO's dependency compares the policy with the image to the policy "conditioned on the text alone" (paper, Sec. 3):
the image's tokens are removed from the prompt. Three modes (``text_only_mode``):

* ``"remove"`` (default, the paper's definition): delete every image's token span — ``<|vision_start|> ...
  <|vision_end|>`` for Qwen2-VL / Qwen2.5-VL / Qwen3-VL (and pgpo's demo VLM), or the contiguous run of image
  placeholder tokens for LLaVA-style models — and drop the image tensors. The completion tokens stay identical and
  remain the last ``T`` columns; prompts are re-padded on the same side as the input (left for TRL).
* ``"blank"``: keep the ids, replace ``pixel_values`` by zeros (the mean image after the processor's normalisation).
* ``"noise"``: keep the ids, replace ``pixel_values`` by standard Gaussian noise (seeded), like VPPO's perturbation.

Everything here is pure tensor code; the token ids come from the model config (:func:`image_token_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEXT_ONLY_MODES = ("remove", "blank", "noise")
# Keys of a processed batch that carry the image (dropped in "remove" mode). Anything else that is per-token
# (attention_mask, mm_token_type_ids, token_type_ids) is rebuilt below.
IMAGE_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "spatial_shapes",
    "image_position_ids",
    "num_images",
    "num_tiles",
)
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class ImageTokenSpec:
    """How a model marks an image in ``input_ids``."""

    image_token_id: int
    start_token_id: int | None = None  # e.g. <|vision_start|>; None for LLaVA-style runs of image tokens
    end_token_id: int | None = None  # e.g. <|vision_end|>


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
    return ImageTokenSpec(
        image_token_id=int(image_id),
        start_token_id=getattr(config, "vision_start_token_id", None),
        end_token_id=getattr(config, "vision_end_token_id", None),
    )


def image_span_keep_mask(ids: torch.Tensor, spec: ImageTokenSpec, row: int = 0) -> torch.Tensor:
    """Bool mask over a 1-D id sequence: False on every image span token, True elsewhere.

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
        stray = (ids == spec.image_token_id) & keep
        if stray.any():
            raise ValueError(f"row {row}: image token(s) outside any vision_start/vision_end span")
    else:
        keep &= ids != spec.image_token_id
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
    """Remove every image span from a padded prompt batch; returns re-padded ``(ids, mask)``."""
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


def build_text_only_batch(
    batch: dict,
    logits_to_keep: int,
    spec: ImageTokenSpec,
    pad_token_id: int,
    mode: str = "remove",
    noise_seed: int = 0,
) -> dict:
    """The text-only counterpart of a processed prompt+completion batch.

    ``batch`` holds ``input_ids``/``attention_mask`` ``[B, P+T]`` (prompt, then the ``T = logits_to_keep`` completion
    columns) and the image tensors. The result has the same completion columns, last, token for token.
    """
    if mode not in TEXT_ONLY_MODES:
        raise ValueError(f"text_only_mode must be one of {TEXT_ONLY_MODES}, got {mode!r}")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if ids.shape != mask.shape:
        raise ValueError(f"input_ids shape {tuple(ids.shape)} != attention_mask shape {tuple(mask.shape)}")
    if not 0 < logits_to_keep < ids.shape[1]:
        raise ValueError(f"logits_to_keep={logits_to_keep} must be in (0, {ids.shape[1]})")
    if mode != "remove":
        out = dict(batch)
        if "pixel_values" in batch:
            pv = batch["pixel_values"]
            if mode == "blank":
                out["pixel_values"] = torch.zeros_like(pv)
            else:
                gen = torch.Generator(device="cpu").manual_seed(noise_seed)
                out["pixel_values"] = torch.randn(pv.shape, generator=gen, dtype=torch.float32).to(pv)
        return out

    completion_ids, completion_mask = ids[:, -logits_to_keep:], mask[:, -logits_to_keep:]
    new_prompt, new_prompt_mask = text_only_prompt(
        ids[:, :-logits_to_keep], mask[:, :-logits_to_keep], spec, pad_token_id
    )
    out = {k: v for k, v in batch.items() if k not in IMAGE_KEYS and k not in PER_TOKEN_KEYS}
    out["input_ids"] = torch.cat([new_prompt, completion_ids], dim=1)
    out["attention_mask"] = torch.cat([new_prompt_mask, completion_mask], dim=1)
    for key in PER_TOKEN_KEYS:  # no image tokens remain: every token is text (type 0)
        if key in batch:
            out[key] = torch.zeros_like(out["input_ids"])
    return out
