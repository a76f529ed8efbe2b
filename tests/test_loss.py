"""The reference GRPO-family loss (tests/reference/grpo_loss.py, written from the papers) against TRL's own
``GRPOTrainer._compute_loss`` (TRL 1.16, called with a stub trainer): the loss PGPO's per-token advantages go into."""

import pytest
import torch
from reference.grpo_loss import policy_loss
from reference.trl_loss import trl_loss


def _tensors(seed, per_token):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 7
    base = torch.randn(B, T, generator=g, dtype=torch.float64) - 2
    old = base + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = base + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T if per_token else 1, generator=g, dtype=torch.float64).squeeze(-1)
    mask = (torch.arange(T)[None] < torch.tensor([[7], [5], [3], [6]])).long()
    return base, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_equal_trl(loss_type, per_token, beta):
    base, old, ref, adv, mask = _tensors(0, per_token)
    x1 = base.clone().requires_grad_(True)
    x2 = base.clone().requires_grad_(True)
    ours, _ = policy_loss(
        x1, old, adv, mask, loss_type, 0.2, 0.28, ref if beta else None, beta, max_completion_length=7
    )
    theirs = trl_loss(x2, old, adv, mask, loss_type, 0.2, 0.28, ref if beta else None, beta, max_len=7)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=0)
    assert x1.grad.abs().sum() > 0


def test_per_token_ones_equals_sequence_advantage():
    base, old, _, adv, mask = _tensors(1, per_token=False)
    a, _ = policy_loss(base, old, adv, mask)
    b, _ = policy_loss(base, old, adv[:, None] * torch.ones_like(base), mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_clipping_and_bad_input():
    logps = torch.zeros(1, 2)
    old = torch.tensor([[-1.0, 1.0]])  # ratios e and 1/e: both outside [0.8, 1.2]
    loss, stats = policy_loss(logps, old, torch.tensor([1.0]), torch.ones(1, 2))
    assert stats["clip_ratio/high_mean"] == 0.5
    # positive advantage: min(rho A, clip(rho) A) -> 1.2 for rho=e and 1/e for rho=1/e
    torch.testing.assert_close(loss, -torch.tensor((1.2 + torch.e**-1) / 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), loss_type="ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), loss_type="dr_grpo")
