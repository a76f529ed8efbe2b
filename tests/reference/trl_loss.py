"""TRL's own GRPO-family loss (``GRPOTrainer._compute_loss``, TRL 1.16) on given tensors, called with a stub trainer:
what tests/test_loss.py holds equal to tests/reference/grpo_loss.py, and what the contract tests feed PGPO's
advantages to."""

from collections import defaultdict
from types import SimpleNamespace

import torch
from trl import GRPOTrainer


class _Acc:
    num_processes = 1

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(logps, old, adv, mask, loss_type, eps_low, eps_high, ref=None, beta=0.0, max_len=None, delta=None):
    """Run TRL's _compute_loss on given tensors: the model forward is replaced by a function returning ``logps``;
    ``delta`` is TRL's two-sided clip (``GRPOConfig.delta``)."""
    stub = SimpleNamespace(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        args=SimpleNamespace(delta=delta, use_bias_correction_kl=False, steps_per_generation=1),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True),
        accelerator=_Acc(),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        max_completion_length=max_len,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
    )
    B, T = logps.shape
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    return GRPOTrainer._compute_loss(stub, None, inputs)
