"""PAPO's loss terms (Perception-Aware Policy Optimization, arXiv 2507.06448), as its code (MikeWangWZHL/PAPO) does them.

* ``masked_image_logps`` (a rollout input, :func:`masked_image_logps`): the rollout policy's log-probs of the sampled
  tokens on a masked copy of the image (no gradient; 14-px patches blackened with probability ``papo_mask_prob``, 0.6,
  on the raw image before any resizing, one mask per prompt: :func:`pgpo.text_only.blacken_image`), once per
  generation batch.
* ``papo_perception`` (the implicit perception loss, KL_prcp): with ``logp`` the current policy's log-probs of the
  sampled tokens on the clean image (with gradient) and ``logp_m`` the masked-image ones above::

      d = clamp(logp_m - logp, -20, 20);   k = clamp(e^d - d - 1, -10, 10);   term = -coef * mean_t(k)

  subtracted from the loss (the KL is *maximised*: the policy should depend on the image), coefficient 0.01 in PAPO's
  DAPO scripts and 0.02 in its GRPO scripts, averaged over the micro-batch's valid tokens.
* ``papo_masked_entropy``: ``+coef * mean_t(-logp_m)``, PAPO's entropy term on the masked image. In PAPO's default code
  ``logp_m`` is precomputed without gradient, so this term is a constant: it changes the logged loss, not the update
  (the maintainers say so in PAPO issue #20). Kept for fidelity of the loss value; its gradient is zero here too.
* The other half of PAPO's "double entropy" regulariser is ``entropy_penalty`` (:mod:`pgpo.loss_terms`) on the
  clean image, with gradient (0.03 in PAPO's DAPO scripts).
"""

from __future__ import annotations

import torch

from pgpo.data import image_values
from pgpo.loss_terms import LossContext, Rollouts, masked_mean, register_loss_term, register_rollout_input
from pgpo.text_only import IMAGE_KEYS, PER_TOKEN_KEYS, blacken_image

LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0
MASK_SALT = 1  # the masks' generator salt (the blind pass's patch blackout uses 0)


@register_rollout_input("masked_image_logps")
def masked_image_logps(rollouts: Rollouts) -> torch.Tensor:
    """PAPO's ``log pi_old`` of the sampled tokens with the image masked (one mask per prompt, on the raw image before
    any resizing), without gradient: ``[B, T]``."""
    output = rollouts.output
    image_processor = getattr(rollouts.processor, "image_processor", None)
    if image_processor is None or "pixel_values" not in output:
        raise ValueError("papo loss terms need a multimodal batch and a processor with an image_processor")
    masked = []
    for i, row in enumerate(rollouts.rows):
        images = image_values(row) or []  # TRL's order: "images" if the row has it, else [image]
        gen = rollouts.generator(MASK_SALT, i // rollouts.num_generations)  # one mask for the G rollouts of a prompt
        masked += [blacken_image(img, rollouts.args.papo_mask_prob, gen) for img in images]
    processed = image_processor(images=masked, return_tensors="pt")
    pixels = processed["pixel_values"].to(output["pixel_values"].device, output["pixel_values"].dtype)
    if pixels.shape != output["pixel_values"].shape or (
        "image_grid_thw" in processed
        and not torch.equal(processed["image_grid_thw"].cpu(), output["image_grid_thw"].cpu())
    ):
        raise RuntimeError("the masked images were processed to a different size than the originals")
    batch = {k: output[k] for k in IMAGE_KEYS + PER_TOKEN_KEYS if k in output}
    batch["pixel_values"] = pixels
    batch["input_ids"] = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    batch["attention_mask"] = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    return rollouts.logps(batch, output["completion_ids"].shape[1])


def perception_kl(logp: torch.Tensor, logp_masked: torch.Tensor) -> torch.Tensor:
    """Per-token k3 of PAPO's KL_prcp, with PAPO's two clamps (``[B, T]``)."""
    d = (logp_masked - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (d.exp() - d - 1).clamp(-KL_CLAMP, KL_CLAMP)


@register_loss_term("papo_perception", config=lambda args: args.papo_coef, needs=("masked_image_logps",))
def papo_perception(ctx: LossContext, coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    kl = masked_mean(perception_kl(ctx.logps, ctx.inputs["masked_image_logps"].to(ctx.logps.dtype)), ctx.mask)
    return -coef * kl, {"perception_kl": kl.item()}


@register_loss_term(
    "papo_masked_entropy", config=lambda args: args.papo_masked_entropy_coef, needs=("masked_image_logps",)
)
def papo_masked_entropy(ctx: LossContext, coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    value = masked_mean(-ctx.inputs["masked_image_logps"].to(ctx.logps.dtype), ctx.mask)
    return coef * value, {"masked_sampled_entropy": value.item()}
