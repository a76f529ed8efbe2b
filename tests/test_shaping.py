"""PGPO's Eqs. 4-8 against hand computations and exact rational arithmetic; properties (hypothesis); VPPO; registry;
the authors' development variant (pgpo_authors_dev) against hand computations and through the trainer."""

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpo.shaping import (
    SHAPING_METHODS,
    PGPOAuthorsDevConfig,
    PGPOShapingConfig,
    VPPOShapingConfig,
    authors_dev_shape,
    get_shaping,
    pgpo_shape,
    pgpo_weights,
    register_shaping,
    vppo_shape,
)
from pgpo.shaping.pgpo import ramp

# A response whose log(1 + S) is [0, 1, 2, 3, 4] (Eq. 4), so I = [0, .25, .5, .75, 1] (Eq. 5).
S_HAND = torch.expm1(torch.arange(5, dtype=torch.float64))[None]


def test_hand_computed_paper_defaults():
    """tau = 0.4, beta = 2 (Eq. 6): w = [0, .25/.4, 1 + 2(.1)/.6, 1 + 2(.35)/.6, 1 + 2(.6)/.6] = [0, 5/8, 4/3, 13/6, 3],
    sum 171/24; Eq. 7 with L = 5: w~ = w * 120/171 = [0, 25/57, 160/171, 260/171, 120/57]; Eq. 8 with A = -1.5."""
    out = pgpo_shape(torch.tensor([-1.5], dtype=torch.float64), S_HAND, torch.ones(1, 5), PGPOShapingConfig())
    expected = torch.tensor([[0, 25 / 57, 160 / 171, 260 / 171, 120 / 57]], dtype=torch.float64)
    torch.testing.assert_close(out.weights, expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(out.advantages, -1.5 * expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(out.extras["importance"][0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0]), atol=1e-7, rtol=0)
    assert out.gate.tolist() == [[False, False, True, True, True]]  # I >= tau


def exact_weights(log1p_s: list[int], tau: Fraction, beta: Fraction, normalize: bool = True) -> list[Fraction]:
    """Eqs. 5-7 in exact rational arithmetic (eps = 0), written from the paper, independent of the library."""
    lo, hi = min(log1p_s), max(log1p_s)
    importance = [Fraction(v - lo, hi - lo) for v in log1p_s]
    w = [i / tau if i < tau else 1 + beta * (i - tau) / (1 - tau) for i in importance]
    return [x * len(w) / sum(w) for x in w] if normalize else w


@pytest.mark.parametrize("tau", ["0.2", "0.4", "0.6"])
@pytest.mark.parametrize("beta", ["1", "2"])
@pytest.mark.parametrize("normalize", [True, False])
def test_table3_grid_against_exact_arithmetic(tau, beta, normalize):
    values = [0, 1, 2, 3, 4, 2, 0, 3]  # log(1 + S) of one response, ties and both ends included
    ref = exact_weights(values, Fraction(tau), Fraction(beta), normalize)
    S = torch.expm1(torch.tensor([values], dtype=torch.float64))
    w, _ = pgpo_weights(S, torch.ones(1, len(values)), PGPOShapingConfig(float(tau), float(beta), normalize=normalize))
    torch.testing.assert_close(w[0], torch.tensor([float(x) for x in ref], dtype=torch.float64), atol=1e-6, rtol=0)


def test_min_max_is_per_response_and_padding_is_zero():
    """Eq. 5 normalises within each response: the same scores in two rows give the same weights, whatever the other
    row holds, and padding positions never enter the min / max."""
    S = torch.zeros(2, 6, dtype=torch.float64)
    S[0, :5] = S_HAND[0]
    S[1, :5] = S_HAND[0] * 100.0
    S[0, 5] = 1e9  # padding of row 0: must be ignored
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    w, i = pgpo_weights(S, mask)
    assert (w[:, 5] == 0).all() and (i[:, 5] == 0).all()
    ref, _ = pgpo_weights(S_HAND, torch.ones(1, 5))
    torch.testing.assert_close(w[0, :5], ref[0])
    assert not torch.allclose(w[1, :5], ref[0])  # log compression: scaling S is not a no-op (Eq. 4)


def test_degenerate_responses_get_unit_weight():
    S = torch.tensor([[0.5, 0.5, 0.5, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    adv = torch.tensor([1.0, 2.0, 0.0, 5.0])
    out = pgpo_shape(adv, S, mask)
    torch.testing.assert_close(out.weights, mask.float())  # all equal; one token; all zero; empty -> nothing
    torch.testing.assert_close(out.advantages, adv[:, None] * mask)


def test_table2_ablations():
    S, mask = S_HAND, torch.ones(1, 5)
    i = torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    # suppression-only (tau = 1): every token on the ramp I / tau; the top one gets ~1 before Eq. 7
    w, _ = pgpo_weights(S, mask, PGPOShapingConfig(tau=1.0, normalize=False))
    torch.testing.assert_close(w[0], i, atol=1e-7, rtol=0)
    # boosting-only (tau = 0): w = 1 + beta I, nothing below 1 before Eq. 7
    w, _ = pgpo_weights(S, mask, PGPOShapingConfig(tau=0.0, beta=2.0, normalize=False))
    torch.testing.assert_close(w[0], 1 + 2 * i, atol=1e-7, rtol=0)
    # w/o Norm.: Eq. 6 as it is, total mass no longer L
    w, _ = pgpo_weights(S, mask, PGPOShapingConfig(normalize=False))
    torch.testing.assert_close(
        w[0], torch.tensor([0, 5 / 8, 4 / 3, 13 / 6, 3.0], dtype=torch.float64), atol=1e-7, rtol=0
    )
    assert w.sum() > 5
    # beta = 0 and tau = 0: every weight is exactly 1 (PGPO reduces to the base algorithm)
    w, _ = pgpo_weights(S, mask, PGPOShapingConfig(tau=0.0, beta=0.0))
    assert torch.equal(w, torch.ones_like(w))


def test_ramp_is_continuous_at_tau():
    for tau in (0.2, 0.4, 0.6):
        below = ramp(torch.tensor(tau - 1e-12, dtype=torch.float64), tau, 2.0)
        at = ramp(torch.tensor(tau, dtype=torch.float64), tau, 2.0)
        # continuous up to the eps of Eq. 6: tau / (tau + eps) = 1 - eps / tau
        assert abs(below.item() - 1.0) < 1e-6 and abs(at.item() - 1.0) < 1e-12


def test_bad_input_and_options():
    S, mask, A = S_HAND, torch.ones(1, 5), torch.ones(1)
    with pytest.raises(ValueError, match="shape"):
        pgpo_shape(A, S, mask[:, :3])
    with pytest.raises(ValueError, match="one per response"):
        pgpo_shape(torch.ones(3), S, mask)
    with pytest.raises(ValueError, match="non-finite"):
        pgpo_shape(A, torch.full_like(S, float("nan")), mask)
    with pytest.raises(ValueError, match=">= 0"):
        pgpo_shape(A, -S - 1, mask)
    for kwargs, name in [
        ({"tau": 1.5}, "pgpo_tau"),
        ({"tau": -0.1}, "pgpo_tau"),
        ({"tau": float("nan")}, "pgpo_tau"),
        ({"beta": -1.0}, "pgpo_beta"),
        ({"beta": float("inf")}, "pgpo_beta"),
        ({"eps": 0.0}, "pgpo_eps"),
    ]:
        with pytest.raises(ValueError, match=name):
            PGPOShapingConfig(**kwargs)


# ----------------------------------------------------------------------------------------------- properties


@st.composite
def batches(draw):
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    # sparse, heavy-tailed dependency like real k3 scores: most tokens near 0, a few large
    dep = torch.distributions.Exponential(1.0).sample((B, T)).double() ** 3
    dep = dep * (torch.rand(B, T, generator=g) < draw(st.floats(0.0, 1.0)))
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[torch.rand(B, generator=g) < 0.3] = 0.0
    cfg = PGPOShapingConfig(
        tau=draw(st.floats(0.0, 1.0)), beta=draw(st.floats(0.0, 5.0)), normalize=draw(st.booleans())
    )
    return adv, dep, mask, cfg


@settings(max_examples=300, deadline=None)
@given(batches())
def test_pgpo_properties(data):
    adv, dep, mask, cfg = data
    out = pgpo_shape(adv, dep, mask, cfg)
    w, A = out.weights, out.advantages
    L = mask.sum(-1).double()
    assert (w[~mask] == 0).all() and (A[~mask] == 0).all()
    assert (w[mask] >= 0).all()
    assert (A[adv == 0] == 0).all() and ((A * adv[:, None]) >= 0).all()
    if cfg.normalize:  # App. F: sum_t w~ = L_i, so sum_t A~ = L_i A_i
        torch.testing.assert_close(w.sum(-1), L, atol=1e-6, rtol=0)
        torch.testing.assert_close(A.sum(-1), L * adv, atol=1e-6 * (1 + adv.abs().max().item()), rtol=0)
    s_tilde = torch.log1p(dep)
    for b in range(w.shape[0]):
        s, wb = s_tilde[b][mask[b]], w[b][mask[b]]
        if s.numel() < 2:
            continue
        order = torch.argsort(s, stable=True)
        s, wb = s[order], wb[order]
        assert (wb[1:] >= wb[:-1] - 1e-9).all()  # App. G: monotone non-decreasing in S
        span = (s.max() - s.min()).item()
        if cfg.beta > 1e-3 and span > 0:  # App. H: strictly rank-preserving for beta > 0 (not below float resolution)
            distinct = (s[1:] - s[:-1]) > 1e-6 * span
            assert (wb[1:][distinct] > wb[:-1][distinct]).all()


@settings(max_examples=100, deadline=None)
@given(batches())
def test_group_advantage_mass_and_zero_mean_unchanged(data):
    """App. F: with group-normalised advantages (zero mean over the group) and equal lengths, the group's total
    token advantage stays 0, and every response's total is the uniform one."""
    _, dep, mask, cfg = data
    cfg = PGPOShapingConfig(cfg.tau, cfg.beta, normalize=True)
    full = torch.ones_like(mask)
    adv = torch.randn(dep.shape[0], dtype=torch.float64)
    adv = adv - adv.mean()
    out = pgpo_shape(adv, dep, full, cfg)
    T = dep.shape[1]
    torch.testing.assert_close(out.advantages.sum(-1), T * adv, atol=1e-6, rtol=0)
    assert abs(out.advantages.sum().item()) < 1e-6 * (1 + adv.abs().sum().item()) * T


@settings(max_examples=100, deadline=None)
@given(batches())
def test_zero_dependency_is_the_base_algorithm(data):
    adv, dep, mask, cfg = data
    out = pgpo_shape(adv, torch.zeros_like(dep), mask, cfg)
    torch.testing.assert_close(out.advantages, adv[:, None] * mask, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- VPPO


def test_vppo_hand_computed():
    S = torch.tensor([[0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    # seq means: row0 = 4/4 = 1, row1 = 2/2 = 1 -> equal -> TAS factor 1; TGF p=0.5 keeps top 2 of row0, top 1 of row1
    out = vppo_shape(torch.tensor([1.0, -2.0]), S, mask, VPPOShapingConfig(top_p_tokens=0.5, advantage_scaling_min=0.8))
    assert out.gate.tolist() == [[False, True, True, False], [True, False, False, False]]
    torch.testing.assert_close(out.advantages, torch.tensor([[0.0, 1.0, 1.0, 0.0], [-2.0, 0.0, 0.0, 0.0]]))
    # unequal means: s = [1, 3] -> n = [0, 1], mean .5 -> factors m + n (1-m) / .5 = [.8, 1.2] (mean 1)
    S2 = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    out = vppo_shape(torch.ones(2), S2, torch.ones(2, 2), VPPOShapingConfig(top_p_tokens=1.0))
    torch.testing.assert_close(out.weights, torch.tensor([[0.8, 0.8], [1.2, 1.2]]), atol=1e-6, rtol=0)


@settings(max_examples=200, deadline=None)
@given(batches(), st.floats(0.05, 1.0), st.floats(0.0, 1.0))
def test_vppo_properties(data, p, m):
    adv, dep, mask, _ = data
    out = vppo_shape(adv, dep, mask, VPPOShapingConfig(top_p_tokens=p, advantage_scaling_min=m))
    L = mask.sum(-1)
    kept = out.gate.sum(-1)
    assert torch.equal(kept.double(), torch.where(L > 0, torch.ceil(p * L - 1e-9), torch.zeros_like(L).double()))
    factors = out.extras["tas"][L > 0]
    if factors.numel() > 1 and not torch.allclose(factors, torch.ones_like(factors)):
        assert (factors >= m - 1e-6).all()
        torch.testing.assert_close(factors.mean(), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert ((out.advantages * adv[:, None]) >= 0).all()


# ----------------------------------------------------------------------------------------------- registry


def test_registry_names_and_unknown_name():
    assert {"none", "pgpo", "vppo"} <= set(SHAPING_METHODS)
    assert get_shaping("pgpo").fn is pgpo_shape and get_shaping("pgpo").per_response
    assert not get_shaping("vppo").per_response  # TAS normalises over the batch
    with pytest.raises(ValueError, match="unknown advantage_shaping 'ppo'.*registered methods"):
        get_shaping("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register_shaping("pgpo", config=lambda args: None)(lambda *a: None)


def test_a_new_method_is_one_function(tmp_path):
    """One registered function, and nothing else, is a method the whole way: PGPOConfig accepts its name and builds
    its config from the flat options, and the trainer hands the loss that function's advantages and logs its gate."""
    import math

    from reference.trainers import make_trainer

    from pgpo.shaping import ShapingResult

    @register_shaping("_test_double", config=lambda args: 2.0 * args.pgpo_beta)
    def double(advantages, dependency, mask, cfg):
        w = mask.to(advantages.dtype) * cfg
        return ShapingResult(advantages=advantages[:, None] * w, weights=w, gate=mask.bool())

    try:
        trainer = make_trainer(tmp_path, "pgpo", advantage_shaping="_test_double", pgpo_beta=1.5, max_steps=1)
        assert trainer.args.shaping_config() == 3.0
        calls = []
        original = trainer._shape_advantages

        def keep(batch, scores, mode):
            before = batch["advantages"].clone()
            original(batch, scores, mode)
            calls.append((before, batch["completion_mask"].clone(), batch["advantages"].clone()))

        trainer._shape_advantages = keep
        trainer.train()
    finally:
        SHAPING_METHODS.pop("_test_double")
    assert calls and any((before != 0).any() for before, *_ in calls)
    for before, mask, after in calls:
        torch.testing.assert_close(after, (3.0 * before[:, None] * mask).to(after.dtype), atol=1e-6, rtol=0)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 1 and math.isfinite(logs[0]["loss"]) and logs[0]["shaping/gated_frac"] == 1.0


# ----------------------------------------------------------------------------------------------- pgpo_authors_dev
# The authors' development variant (pgpo/shaping/pgpo_authors_dev.py): each response's gate tau_i is its I at ascending
# rank min(floor(q L), L - 1); below it w = max(f, I / tau_i); at or above it w = 1 + beta (I - tau_i) / (1 - tau_i);
# no Eq. 7. Every expected number below is worked out by hand from those lines (eps = 0; tolerances cover eps).


def test_authors_dev_hand_computed_defaults():
    """q = 0.4, f = 0.1, beta = 2 on log(1 + S) = [0, 1, 2, 3, 4]: I = [0, .25, .5, .75, 1] (Eqs. 4-5); L = 5, rank
    floor(0.4 * 5) = 2, so tau = .5. Below: max(.1, 0/.5) = .1 (the floor), .25/.5 = .5. At/above: 1 + 2 (0)/.5 = 1,
    1 + 2 (.25)/.5 = 2, 1 + 2 (.5)/.5 = 3. Not rescaled: the weights sum to 6.6, not L = 5. A = -1.5 multiplies them."""
    out = authors_dev_shape(torch.tensor([-1.5], dtype=torch.float64), S_HAND, torch.ones(1, 5), PGPOAuthorsDevConfig())
    expected = torch.tensor([[0.1, 0.5, 1.0, 2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(out.weights, expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(out.advantages, -1.5 * expected, atol=1e-7, rtol=0)
    assert abs(out.weights.sum().item() - 6.6) < 1e-6  # no Eq. 7
    assert out.gate.tolist() == [[False, False, True, True, True]]  # I >= tau = .5
    torch.testing.assert_close(out.extras["threshold"], torch.full((1, 5), 0.5), atol=1e-7, rtol=0)
    torch.testing.assert_close(out.extras["importance"][0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0]), atol=1e-7, rtol=0)
    # the paper's form on the same response is different (fixed tau .4, no floor, Eq. 7): see the pgpo hand test above
    assert not torch.allclose(
        pgpo_shape(torch.ones(1, dtype=torch.float64), S_HAND, torch.ones(1, 5)).weights, expected
    )


def test_authors_dev_hand_computed_ties_padding_and_options():
    """Row 0: log(1 + S) = [0, 1, 2, 4, 8, 8] then padding (S = 1e9, ignored): I = [0, 1/8, 1/4, 1/2, 1, 1], L = 6.
    q = .4: rank floor(2.4) = 2, sorted I [0, 1/8, 1/4, 1/2, 1, 1] -> tau = 1/4. w = [max(.1, 0) = .1, (1/8)/(1/4) = .5,
    1, 1 + 2 (1/4)/(3/4) = 5/3, 1 + 2 (3/4)/(3/4) = 3, 3].
    Row 1, same scores, q = .7, f = .3, beta = 1: rank floor(4.2) = 4 -> tau = 1 (the tied maximum). w = [max(.3, 0),
    max(.3, 1/8), max(.3, 1/4)] = .3 each (the floor binds three tokens), 1/2 / 1 = .5, and 1 + 1 (1 - 1)/(1 - 1) = 1
    for both maxima (the numerator is exactly 0)."""
    row = [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    S = torch.zeros(1, 7, dtype=torch.float64)
    S[0, :6] = torch.expm1(torch.tensor(row, dtype=torch.float64))
    S[0, 6] = 1e9
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    out = authors_dev_shape(torch.tensor([2.0], dtype=torch.float64), S, mask)
    w0 = torch.tensor([[0.1, 0.5, 1.0, 5 / 3, 3.0, 3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out.weights, w0, atol=1e-7, rtol=0)
    torch.testing.assert_close(out.advantages, 2.0 * w0, atol=1e-7, rtol=0)
    assert out.gate.tolist() == [[False, False, True, True, True, True, False]]
    assert out.extras["threshold"][0, 6] == 0 and out.extras["importance"][0, 6] == 0
    out = authors_dev_shape(torch.ones(1), S, mask, PGPOAuthorsDevConfig(quantile=0.7, floor=0.3, beta=1.0))
    w1 = torch.tensor([[0.3, 0.3, 0.3, 0.5, 1.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out.weights.double(), w1, atol=1e-7, rtol=0)
    assert out.gate.tolist() == [[False, False, False, False, True, True, False]]


def test_authors_dev_degenerate_responses():
    """All scores equal, one token, all zero: I = 0 everywhere, tau = 0, every token 1 + beta * 0 = 1. Empty: nothing.
    A 2-token response with log(1 + S) = [0, 1] (I = [0, 1]): rank floor(0.4 * 2) = 0 -> tau = 0, nothing suppressed,
    w = [1 + 2 * 0, 1 + 2 * 1] = [1, 3]."""
    S = torch.tensor(
        [[0.5, 0.5, 0.5, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    )
    S[4, 1] = torch.expm1(torch.tensor(1.0))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    adv = torch.tensor([1.0, 2.0, -1.0, 5.0, 0.5])
    out = authors_dev_shape(adv, S, mask)
    expected = mask.float()
    expected[4, 1] = 3.0
    torch.testing.assert_close(out.weights, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.advantages, adv[:, None] * expected, atol=1e-6, rtol=0)
    assert not out.gate[3].any() and out.gate[:3].sum().item() == 3 + 1 + 4  # every valid token is at the gate
    out = authors_dev_shape(torch.zeros(5), S, mask)
    assert (out.advantages == 0).all()  # A = 0 stays 0


def test_authors_dev_quantile_rank():
    """log(1 + S) = 0, 1, ..., 99 (I = t / 99), L = 100. q = .29: rank floor(29) = 29 (in decimal, although
    .29 * 100 = 28.999... in float64), so exactly 29 tokens are suppressed. q = 1: rank min(100, 99) = 99 -> tau = 1,
    every token but the maximum suppressed. q = 0: tau = min I = 0, none suppressed."""
    S = torch.expm1(torch.arange(100, dtype=torch.float64))[None]
    mask = torch.ones(1, 100)
    for q, n_below, tau in [(0.29, 29, 29 / 99), (1.0, 99, 1.0), (0.0, 0, 0.0), (0.4, 40, 40 / 99)]:
        out = authors_dev_shape(torch.ones(1), S, mask, PGPOAuthorsDevConfig(quantile=q, floor=0.0))
        assert (~out.gate).sum().item() == n_below, q
        assert abs(out.extras["threshold"][0, 0].item() - tau) < 1e-6, q


def test_authors_dev_options_are_validated():
    for kwargs, name in [
        ({"quantile": 1.5}, "pgpo_authors_dev_quantile"),
        ({"quantile": -0.1}, "pgpo_authors_dev_quantile"),
        ({"quantile": float("nan")}, "pgpo_authors_dev_quantile"),
        ({"floor": -0.1}, "pgpo_authors_dev_floor"),
        ({"floor": 1.5}, "pgpo_authors_dev_floor"),
        ({"beta": -1.0}, "pgpo_beta"),
        ({"eps": 0.0}, "pgpo_eps"),
    ]:
        with pytest.raises(ValueError, match=name):
            PGPOAuthorsDevConfig(**kwargs)


def test_authors_dev_config_fields(tmp_path):
    """PGPOConfig's flat fields build the method's config (beta and eps shared with the paper's form)."""
    from pgpo.config import PGPOConfig

    base = dict(output_dir=str(tmp_path), use_cpu=True, advantage_shaping="pgpo_authors_dev")
    args = PGPOConfig(**base)
    assert args.shaping_config() == PGPOAuthorsDevConfig(quantile=0.4, floor=0.1, beta=2.0, eps=1e-8)
    args = PGPOConfig(**base, pgpo_authors_dev_quantile=0.6, pgpo_authors_dev_floor=0.0, pgpo_beta=1.0)
    assert args.shaping_config() == PGPOAuthorsDevConfig(quantile=0.6, floor=0.0, beta=1.0)
    for kwargs, name in [
        ({"pgpo_authors_dev_quantile": 2.0}, "pgpo_authors_dev_quantile"),
        ({"pgpo_authors_dev_floor": float("inf")}, "pgpo_authors_dev_floor"),
    ]:
        with pytest.raises(ValueError, match=name):
            PGPOConfig(**base, **kwargs)
    method = get_shaping("pgpo_authors_dev")
    assert method.fn is authors_dev_shape and method.per_response and method.needs_dependency


@settings(max_examples=150, deadline=None)
@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_authors_dev_properties(data, q, f):
    """Weights in [f, 1) below the gate and [1, 1 + beta] at or above it; at most floor(q L) tokens below; monotone in S
    (App. G); padding 0; the sign of A kept; each response shaped on its own (per_response)."""
    adv, dep, mask, pcfg = data
    cfg = PGPOAuthorsDevConfig(quantile=q, floor=f, beta=pcfg.beta)
    out = authors_dev_shape(adv, dep, mask, cfg)
    w, gate = out.weights, out.gate
    assert (w[~mask] == 0).all() and (out.advantages[~mask] == 0).all()
    below = mask & ~gate
    assert (w[below] >= f - 1e-12).all() and ((w[below] < 1) | (w[below] == f)).all()  # f = 1: below = 1
    assert (w[gate] >= 1 - 1e-12).all() and (w[gate] <= 1 + cfg.beta + 1e-9).all()
    L = mask.sum(-1)
    assert (below.sum(-1) <= torch.floor(L.double() * q + 1e-9)).all()
    assert ((out.advantages * adv[:, None]) >= 0).all()
    s_tilde = torch.log1p(dep)
    for b in range(w.shape[0]):
        s, wb = s_tilde[b][mask[b]], w[b][mask[b]]
        order = torch.argsort(s, stable=True)
        assert (wb[order][1:] >= wb[order][:-1] - 1e-9).all()
        alone = authors_dev_shape(adv[b : b + 1], dep[b : b + 1], mask[b : b + 1], cfg)
        torch.testing.assert_close(alone.weights[0], w[b], atol=0, rtol=0)


def test_authors_dev_trains_through_the_trainer(tmp_path):
    """One step of PGPOTrainer with advantage_shaping='pgpo_authors_dev' (non-default options): the trainer hands the
    loss exactly this method's advantages, built from the flat PGPOConfig fields, and the model trains."""
    import math

    from reference.trainers import make_trainer

    trainer = make_trainer(
        tmp_path,
        "pgpo",
        advantage_shaping="pgpo_authors_dev",
        pgpo_authors_dev_quantile=0.5,
        pgpo_authors_dev_floor=0.2,
        pgpo_beta=1.5,
        max_steps=1,
    )
    calls = []
    original = trainer._shape_advantages

    def keep(batch, scores, mode):
        before = batch["advantages"].clone()
        original(batch, scores, mode)
        calls.append((before, scores.clone(), batch["completion_mask"].clone(), batch["advantages"].clone()))

    trainer._shape_advantages = keep
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    cfg = PGPOAuthorsDevConfig(quantile=0.5, floor=0.2, beta=1.5)
    assert calls and any((before != 0).any() for before, *_ in calls)
    for before, scores, mask, after in calls:
        expected = authors_dev_shape(before, scores, mask, cfg).advantages
        torch.testing.assert_close(after, expected.to(after.dtype), atol=1e-6, rtol=1e-6)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 1 and math.isfinite(logs[0]["loss"])
    assert 0 < logs[0]["shaping/gated_frac"] < 1
    assert logs[0]["shaping/weight_gated"] > 1 > logs[0]["shaping/weight_ungated"] >= 0.2
    assert any(not torch.equal(params[n], p) for n, p in trainer.model.named_parameters() if n in params)
