"""PGPO and VPPO advantage shaping: hand-computed examples and properties (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpo.shaping import PGPOShapingConfig, VPPOShapingConfig, pgpo_shape, pgpo_weights, vppo_shape

S = torch.tensor([[0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
A = torch.tensor([1.0, -2.0])


def test_hand_computed_example_unbounded():
    # tau = 0.5 gates S = 1, 3 (row 0) and 2 (row 1); mean over gated = 2.
    # row 0: r = [0.5, 1 + 1/2, 1 + 3/2, 0.5] = [.5, 1.5, 2.5, .5], sum 5, L 4 -> w = 4 r / 5 = [.4, 1.2, 2, .4]
    # row 1: r = [1 + 2/2, .5] = [2, .5], sum 2.5, L 2 -> w = [1.6, .4]
    cfg = PGPOShapingConfig(gate="fixed", threshold=0.5, alpha=1.0, beta=0.5, w_min=0.0, w_max=100.0)
    out = pgpo_shape(A, S, MASK, cfg)
    torch.testing.assert_close(out.weights, torch.tensor([[0.4, 1.2, 2.0, 0.4], [1.6, 0.4, 0.0, 0.0]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[0.4, 1.2, 2.0, 0.4], [-3.2, -0.8, 0.0, 0.0]]))
    assert out.gate.tolist() == [[False, True, True, False], [True, False, False, False]]


def test_hand_computed_example_bounded():
    # w_max = 1.8 caps the 2.5-token: 1.8 + c (0.5 + 1.5 + 0.5) = 4 -> c = 0.88 -> w = [.44, 1.32, 1.8, .44]
    cfg = PGPOShapingConfig(gate="fixed", threshold=0.5, alpha=1.0, beta=0.5, w_min=0.0, w_max=1.8)
    w, _, _ = pgpo_weights(S, MASK, cfg)
    torch.testing.assert_close(w[0], torch.tensor([0.44, 1.32, 1.8, 0.44]), atol=1e-6, rtol=0)
    # row 1: r = [2, .5] -> unbounded w = [1.6, .4] is already inside the bounds and stays
    torch.testing.assert_close(w[1], torch.tensor([1.6, 0.4, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_bounds_unreachable_by_scaling_spread_the_rest_on_ungated():
    # beta = 0 (hard gate) and w_max = 1.5: the one gated token can carry at most 1.5 of the mass 3; the other
    # 1.5 is spread equally over the two ungated tokens.
    cfg = PGPOShapingConfig(gate="fixed", threshold=0.5, beta=0.0, w_min=0.0, w_max=1.5)
    w, _, _ = pgpo_weights(torch.tensor([[2.0, 0.0, 0.0]]), torch.ones(1, 3), cfg)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.75, 0.75]]))


def test_quantile_gate_default():
    # q = 0.8 over the 6 valid values [0,1,3,0,2,0]: torch.quantile (linear) -> 2.0; only S = 3 is gated
    w, gate, tau = pgpo_weights(S, MASK, PGPOShapingConfig())
    assert tau == pytest.approx(2.0)
    assert gate.sum() == 1 and gate[0, 2]
    torch.testing.assert_close(w[1, :2], torch.ones(2))  # row without a gated token stays GRPO


def test_vppo_hand_computed():
    # seq means: row0 = 4/4 = 1, row1 = 2/2 = 1 -> equal -> TAS factor 1; TGF p=0.5 keeps top 2 of row0, top 1 of row1
    out = vppo_shape(A, S, MASK, VPPOShapingConfig(top_p_tokens=0.5, advantage_scaling_min=0.8))
    assert out.gate.tolist() == [[False, True, True, False], [True, False, False, False]]
    torch.testing.assert_close(out.advantages, torch.tensor([[0.0, 1.0, 1.0, 0.0], [-2.0, 0.0, 0.0, 0.0]]))
    # unequal means: s = [1, 3] -> n = [0, 1], mean .5 -> factors m + (1-m) n / .5 = [.8, 1.2] (mean 1)
    S2 = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    out = vppo_shape(torch.ones(2), S2, torch.ones(2, 2), VPPOShapingConfig(top_p_tokens=1.0))
    torch.testing.assert_close(out.weights, torch.tensor([[0.8, 0.8], [1.2, 1.2]]))


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        pgpo_shape(A, S, MASK[:, :3])
    with pytest.raises(ValueError, match="one per sequence"):
        pgpo_shape(torch.ones(3), S, MASK)
    with pytest.raises(ValueError, match="non-finite"):
        pgpo_shape(A, torch.full_like(S, float("nan")), MASK)
    with pytest.raises(ValueError, match=">= 0"):
        pgpo_shape(A, -S - 1, MASK)
    with pytest.raises(ValueError, match="w_min"):
        PGPOShapingConfig(w_max=0.5)
    with pytest.raises(ValueError, match="beta"):
        PGPOShapingConfig(beta=1.5)
    with pytest.raises(ValueError, match="beta"):
        PGPOShapingConfig(beta=5e-324)


@st.composite
def batches(draw):
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    # sparse, heavy-tailed dependency like real KL: most tokens near 0, a few large
    dep = torch.distributions.Exponential(1.0).sample((B, T)) ** 3
    dep = dep * (torch.rand(B, T, generator=g) < draw(st.floats(0.0, 1.0)))
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[torch.rand(B, generator=g) < 0.3] = 0.0
    cfg = PGPOShapingConfig(
        gate=draw(st.sampled_from(["quantile", "fixed"])),
        quantile=draw(st.floats(0.0, 0.95)),
        threshold=draw(st.floats(0.0, 2.0)),
        alpha=draw(st.floats(0.0, 5.0)),
        beta=draw(st.one_of(st.just(0.0), st.floats(1e-200, 1.0))),  # the valid range (see PGPOShapingConfig)
        w_min=draw(st.floats(0.0, 1.0)),
        w_max=draw(st.floats(1.0, 10.0)),
    )
    return adv, dep.double(), mask, cfg


@settings(max_examples=300, deadline=None)
@given(batches())
def test_pgpo_properties(data):
    adv, dep, mask, cfg = data
    out = pgpo_shape(adv, dep, mask, cfg)
    w, A = out.weights, out.advantages
    L = mask.sum(-1).double()
    # mass of every sequence conserved: sum_t w = L_i and sum_t A_t = L_i A_i
    torch.testing.assert_close(w.sum(-1), L, atol=1e-6, rtol=0)
    torch.testing.assert_close(A.sum(-1), L * adv, atol=1e-6 * (1 + adv.abs().max().item()), rtol=0)
    # signs kept, zero advantages stay zero, masked tokens zero
    assert (w[mask] >= cfg.w_min - 1e-9).all() and (w[mask] <= cfg.w_max + 1e-9).all()
    assert ((A * adv[:, None]) >= 0).all()
    assert (A[adv == 0] == 0).all()
    assert (w[~mask] == 0).all()
    # gated tokens never get less weight than ungated ones of the same sequence
    for i in range(w.shape[0]):
        g, u = out.gate[i] & mask[i], ~out.gate[i] & mask[i]
        if g.any() and u.any():
            assert w[i][g].min() >= w[i][u].max() - 1e-9
    # w > 0 when the floor is positive
    if cfg.beta > 0 or cfg.w_min > 0:
        assert (w[mask] > 0).all()


@settings(max_examples=100, deadline=None)
@given(batches(), st.floats(0.01, 100.0))
def test_pgpo_quantile_gate_is_scale_invariant(data, scale):
    adv, dep, mask, cfg = data
    cfg = PGPOShapingConfig(**{**cfg.__dict__, "gate": "quantile"})
    w1, g1, _ = pgpo_weights(dep, mask, cfg)
    w2, g2, _ = pgpo_weights(dep * scale, mask, cfg)
    assert torch.equal(g1, g2) or math.isclose(scale, 1.0)
    torch.testing.assert_close(w1, w2, atol=1e-6, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_zero_dependency_is_grpo(data):
    adv, dep, mask, cfg = data
    out = pgpo_shape(adv, torch.zeros_like(dep), mask, cfg)
    if cfg.gate == "quantile" or cfg.threshold >= 0:
        torch.testing.assert_close(out.advantages, adv[:, None] * mask, atol=0, rtol=0)


@settings(max_examples=200, deadline=None)
@given(batches(), st.floats(0.05, 1.0), st.floats(0.0, 1.0))
def test_vppo_properties(data, p, m):
    adv, dep, mask, _ = data
    out = vppo_shape(adv, dep, mask, VPPOShapingConfig(top_p_tokens=p, advantage_scaling_min=m))
    L = mask.sum(-1)
    kept = out.gate.sum(-1)
    expected = torch.where(L > 0, torch.ceil(p * L - 1e-9).clamp_min(1), torch.zeros_like(L, dtype=torch.float64))
    assert torch.equal(kept.double(), expected)
    factors = out.weights.max(-1).values[L > 0]
    if factors.numel():
        assert (factors >= m - 1e-9).all()
        torch.testing.assert_close(factors.mean(), torch.tensor(1.0, dtype=factors.dtype), atol=1e-6, rtol=0)
    assert ((out.advantages * adv[:, None]) >= 0).all()
