"""PAPO's loss terms (Perception-Aware Policy Optimization, arXiv 2507.06448), as its code (MikeWangWZHL/PAPO) does them.

* ``papo_perception`` (the implicit perception loss, KL_prcp): with ``logp`` the current policy's log-probs of the
  sampled tokens on the clean image (with gradient) and ``logp_m`` the rollout policy's on a masked copy of the image
  (no gradient; 14-px patches blackened with probability 0.6 on the raw image before any resizing, one mask per
  prompt: :func:`pgpo.text_only.blacken_image`)::

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

from pgpo.loss_terms import LossContext, masked_mean, register_loss_term

LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0


def perception_kl(logp: torch.Tensor, logp_masked: torch.Tensor) -> torch.Tensor:
    """Per-token k3 of PAPO's KL_prcp, with PAPO's two clamps (``[B, T]``)."""
    d = (logp_masked - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (d.exp() - d - 1).clamp(-KL_CLAMP, KL_CLAMP)


@register_loss_term("papo_perception", config=lambda args: args.papo_coef, needs=("masked_image_logps",))
def papo_perception(ctx: LossContext, coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    kl = masked_mean(perception_kl(ctx.logps, ctx.inputs["masked_image_logps"].to(ctx.logps.dtype)), ctx.mask)
    return -coef * kl / ctx.accumulation, {"perception_kl": kl.item()}


@register_loss_term(
    "papo_masked_entropy", config=lambda args: args.papo_masked_entropy_coef, needs=("masked_image_logps",)
)
def papo_masked_entropy(ctx: LossContext, coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    value = masked_mean(-ctx.inputs["masked_image_logps"].to(ctx.logps.dtype), ctx.mask)
    return coef * value / ctx.accumulation, {"masked_sampled_entropy": value.item()}
