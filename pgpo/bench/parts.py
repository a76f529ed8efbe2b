"""PGPO's extra work over DAPO in the default configuration, split, on one training micro-batch.

On a batch shaped like a training micro-batch (``cfg.batch`` rows, image prompts, ``cfg.completion_length``
completion tokens; :func:`pgpo.bench.inputs.scored_batch`), with pgpo's public functions:

* ``blind_batch``: :func:`pgpo.text_only.image_pass_position_ids` + :func:`pgpo.text_only.counterfactual_batch`
  (the visual tokens dropped, the original position ids kept);
* ``blind_forward``: :func:`pgpo.dependency.sampled_token_logps` on it (no grad; the trainer runs the same forward
  through TRL's fused LM head);
* ``k3``: :func:`pgpo.dependency.k3_dependency` on the two ``[B, T]`` log-probs;
* ``shaping``: the registered ``pgpo`` shaping (Eqs. 4-8) with the paper's constants.

For scale: ``image_forward`` is the same no-grad forward with the image (what ``own_pass`` adds, and the forward
part of a training step). When the step section ran, the parts' sum over a DAPO step predicts the default
configuration's PGPO/DAPO step-time ratio.
"""

from __future__ import annotations

import torch

from pgpo.bench.inputs import model_inputs, scored_batch
from pgpo.bench.measure import timed
from pgpo.dependency import k3_dependency, sampled_token_logps
from pgpo.shaping import PGPOShapingConfig, get_shaping
from pgpo.text_only import counterfactual_batch, image_pass_position_ids, image_token_spec

EXTRA = ("blind_batch", "blind_forward", "k3", "shaping")


@torch.no_grad()
def dependency_parts(source, cfg, step: dict | None = None) -> dict:
    model, processor = source.load()
    model = model.to(cfg.device).eval()
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
    image_logps = sampled_token_logps(model, batch, T, chunk_size=cfg.chunk_size)
    blind_logps = sampled_token_logps(model, blind, T, chunk_size=cfg.chunk_size)
    scores = k3_dependency(image_logps, blind_logps, mask)
    advantages = torch.randn(cfg.batch, generator=torch.Generator().manual_seed(cfg.seed)).to(cfg.device)
    fns = {
        "blind_batch": blind_batch,
        "blind_forward": lambda: sampled_token_logps(model, blind, T, chunk_size=cfg.chunk_size),
        "k3": lambda: k3_dependency(image_logps, blind_logps, mask),
        "shaping": lambda: shaping.fn(advantages, scores, mask, shaping_cfg),
        "image_forward": lambda: sampled_token_logps(model, batch, T, chunk_size=cfg.chunk_size),
    }
    parts, stall = timed(fns, cfg.repeats, cfg.device)
    extra = sum(parts[name]["s"] for name in EXTRA)
    extra_cpu = sum(parts[name]["cpu_s"] for name in EXTRA)
    result = {
        "parts": parts,
        "extra_s": extra,
        "extra_cpu_s": extra_cpu,
        "blind_over_image_forward": parts["blind_forward"]["s"] / parts["image_forward"]["s"],
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
        result["predicted_time_ratio"] = 1 + extra / dapo["step_s"]
        result["predicted_cpu_ratio"] = 1 + extra_cpu / dapo["cpu_s"]
        result["measured_time_ratio"] = default["ratios"]["dapo"]["time"]["paired_median"]
        result["measured_cpu_ratio"] = default["ratios"]["dapo"]["cpu"]["paired_median"]
    return result
