"""PGPO's extra work over DAPO in the default configuration, split, on one training micro-batch.

On a batch shaped like a training micro-batch (``cfg.batch`` rows, image prompts, ``cfg.completion_length``
completion tokens; :func:`pgpo.bench.inputs.scored_batch`), with public functions:

* ``blind_batch``: :func:`pgpo.text_only.image_pass_position_ids` + :func:`pgpo.text_only.counterfactual_batch`
  (the visual tokens dropped, the original position ids kept);
* ``blind_forward_trl``: the no-grad blind forward through TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``
  with GRPOTrainer's outputs, log-probs and entropy; ``model(..., labels=..., fused_lm_head=True)``), the kernel
  :class:`pgpo.trainer.PGPOTrainer` scores both passes with. Off Triton devices (the CPU) TRL scores every position of
  the sequence, the prompt's included;
* ``blind_forward``: the same forward through :func:`pgpo.dependency.sampled_token_logps` (the LM head on the
  completion positions only; what ``score_batch`` uses outside a trainer);
* ``k3``: :func:`pgpo.dependency.k3_dependency` on the two ``[B, T]`` log-probs;
* ``shaping``: the registered ``pgpo`` shaping (Eqs. 4-8) with the paper's constants.

For scale: ``image_forward_trl`` / ``image_forward``, the same forwards with the image (what ``own_pass`` adds, and
the forward part of a training step). When the step section ran, PGPO's extra work as the trainer runs it (blind batch,
TRL blind forward, k3, shaping) over a DAPO step predicts the default configuration's PGPO/DAPO ratio.
"""

from __future__ import annotations

import copy

import torch
from trl.trainer.utils import add_fused_lm_head

from pgpo.bench.inputs import model_inputs, scored_batch
from pgpo.bench.measure import timed
from pgpo.dependency import k3_dependency, sampled_token_logps
from pgpo.shaping import PGPOShapingConfig, get_shaping
from pgpo.text_only import counterfactual_batch, image_pass_position_ids, image_token_spec

TRAINER_EXTRA = ("blind_batch", "blind_forward_trl", "k3", "shaping")
PGPO_KERNEL_EXTRA = ("blind_batch", "blind_forward", "k3", "shaping")


def fused_logps(model, batch: dict, T: int) -> torch.Tensor:
    """Log-probs of the last ``T`` tokens through TRL's fused LM head, as PGPOTrainer calls it (labels -100 on the
    prompt and the padding)."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :-T] = -100
    return model(**batch, labels=labels, fused_lm_head=True).log_probs[:, -T:].float()


@torch.no_grad()
def dependency_parts(source, cfg, step: dict | None = None) -> dict:
    model, processor = source.load()
    model = model.to(cfg.device).eval()
    fused = copy.deepcopy(model)
    add_fused_lm_head(fused, temperature=1.0, outputs=("log_probs", "entropy"))  # GRPOTrainer's call
    T = cfg.completion_length
    raw = scored_batch(processor, cfg.batch, T, cfg.image_size or source.image_size, cfg.seed)
    batch, mask = model_inputs(raw, cfg.device), raw["completion_mask"].to(cfg.device)
    spec = image_token_spec(model.config)
    pad = getattr(processor, "tokenizer", processor).pad_token_id or 0
    shaping, shaping_cfg = get_shaping("pgpo"), PGPOShapingConfig()

    def blind_batch() -> dict:
        positions = image_pass_position_ids(model, batch)
        return counterfactual_batch(batch, T, "mask", spec, position_ids=positions, pad_token_id=pad)

    blind = blind_batch()
    image_logps = fused_logps(fused, batch, T)
    blind_logps = fused_logps(fused, blind, T)
    scores = k3_dependency(image_logps, blind_logps, mask)
    advantages = torch.randn(cfg.batch, generator=torch.Generator().manual_seed(cfg.seed)).to(cfg.device)
    fns = {
        "blind_batch": blind_batch,
        "blind_forward_trl": lambda: fused_logps(fused, blind, T),
        "blind_forward": lambda: sampled_token_logps(model, blind, T, chunk_size=cfg.chunk_size),
        "k3": lambda: k3_dependency(image_logps, blind_logps, mask),
        "shaping": lambda: shaping.fn(advantages, scores, mask, shaping_cfg),
        "image_forward_trl": lambda: fused_logps(fused, batch, T),
        "image_forward": lambda: sampled_token_logps(model, batch, T, chunk_size=cfg.chunk_size),
    }
    parts, stall = timed(fns, cfg.repeats, cfg.device)
    result = {
        "parts": parts,
        "extra_s": sum(parts[name]["s"] for name in TRAINER_EXTRA),
        "extra_cpu_s": sum(parts[name]["cpu_s"] for name in TRAINER_EXTRA),
        "extra_pgpo_kernel_cpu_s": sum(parts[name]["cpu_s"] for name in PGPO_KERNEL_EXTRA),
        "blind_over_image_forward": parts["blind_forward"]["cpu_s"] / parts["image_forward"]["cpu_s"],
        "blind_over_image_forward_trl": parts["blind_forward_trl"]["cpu_s"] / parts["image_forward_trl"]["cpu_s"],
        "rows": cfg.batch,
        "completion_length": T,
        "image_sequence": int(batch["input_ids"].shape[1]),
        "blind_sequence": int(blind["input_ids"].shape[1]),
        "image_tokens_per_row": int((batch["input_ids"][0] == spec.image_token_id).sum()),
        "stall": stall,
    }
    default = (step or {}).get("default")
    if default:
        dapo = default["candidates"]["dapo"]
        result["predicted_time_ratio"] = 1 + result["extra_s"] / dapo["step_s"]
        result["predicted_cpu_ratio"] = 1 + result["extra_cpu_s"] / dapo["cpu_s"]
        result["measured_time_ratio"] = default["ratios"]["dapo"]["time"]["paired_median"]
        result["measured_cpu_ratio"] = default["ratios"]["dapo"]["cpu"]["paired_median"]
    return result
