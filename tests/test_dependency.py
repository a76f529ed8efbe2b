"""Visual dependency: the k3 estimator and the exact KL against float64 references, chunking, memory, bad input."""

import math

import pytest
import torch

from pgpo.dependency import VPPO_K3_CLAMP, k3_dependency, sampled_token_logps, token_kl, token_kl_from_hidden


def k3_reference(logp_img, logp_blind):
    """Float64, from the definition (App. A.1): r = p_blind / p_img, S = (r - 1) - log r."""
    r = torch.exp(logp_blind.double() - logp_img.double())
    return (r - 1) - torch.log(r)


def test_k3_matches_float64_reference_and_masks():
    g = torch.Generator().manual_seed(0)
    lp_img = -torch.rand(4, 9, generator=g) * 6
    lp_blind = -torch.rand(4, 9, generator=g) * 6
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[2, 5:] = False
    lp_img[2, 7] = float("nan")  # masked positions may hold anything
    got = k3_dependency(lp_img, lp_blind, mask)
    assert got.dtype == torch.float32 and (got >= 0).all() and (got[~mask] == 0).all()
    torch.testing.assert_close(got.double()[mask], k3_reference(lp_img, lp_blind)[mask], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("d", [1e-7, -3e-6, 1e-4, -9e-4, 2e-3, 0.3, -5.0, 12.0])
def test_k3_keeps_relative_precision_for_small_and_large_d(d):
    lp_img = torch.tensor([[-2.0]])
    lp_blind = (lp_img.double() + d).float()
    d32 = lp_blind.double() - lp_img.double()  # the d float32 inputs can carry
    exact = torch.expm1(d32) - d32
    torch.testing.assert_close(k3_dependency(lp_img, lp_blind).double(), exact, rtol=1e-4, atol=0)


def test_k3_is_an_unbiased_estimate_of_the_kl():
    """Mean of k3 over tokens sampled from pi_img -> KL(pi_img || pi_blind) on a toy distribution (Eq. 1)."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64) * 1.5, 0)
    q = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64) * 1.5, 0)
    exact = (p * (p.log() - q.log())).sum().item()
    x = torch.multinomial(p, 400_000, replacement=True, generator=g)
    s = k3_dependency(p.log()[x].float()[None], q.log()[x].float()[None])[0].double()
    stderr = s.std().item() / math.sqrt(s.numel())
    assert abs(s.mean().item() - exact) < 4 * stderr, (s.mean().item(), exact, stderr)
    assert stderr < 0.02 * exact  # the test can tell a biased estimator apart (e.g. d^2/2 or |d|)
    half_sq = (0.5 * (q.log()[x] - p.log()[x]) ** 2).mean().item()
    assert abs(half_sq - exact) > 10 * stderr


def test_k3_clamps_and_overflow_guard():
    lp_img = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    lp_blind = torch.tensor([[-1.0 + 30, -1.0 - 30, -1.0 + 200, -1.0 + 5]])
    default = k3_dependency(lp_img, lp_blind)
    assert torch.isfinite(default).all()  # d = 200: only the overflow guard, e^80
    torch.testing.assert_close(
        default[0, :2].double(),
        torch.tensor([math.exp(30) - 31, math.exp(-30) + 29], dtype=torch.float64),
        rtol=1e-5,
        atol=0,
    )
    vppo = k3_dependency(lp_img, lp_blind, clamp=VPPO_K3_CLAMP)
    assert vppo[0, :3].tolist() == [10.0, 10.0, 10.0]  # d in [-20, 20], then S <= 10
    assert vppo[0, 3] == 10.0  # e^5 - 6 = 142 > 10
    small = k3_dependency(torch.tensor([[-1.0]]), torch.tensor([[-0.5]]), clamp=VPPO_K3_CLAMP)
    assert small.item() == pytest.approx(math.exp(0.5) - 1.5, rel=1e-6)  # inside the clamps: unchanged


def test_k3_bad_input():
    with pytest.raises(ValueError, match="shape"):
        k3_dependency(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mask shape"):
        k3_dependency(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="non-finite"):
        k3_dependency(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="non-finite"):
        k3_dependency(torch.zeros(1, 2), torch.tensor([[0.0, -float("inf")]]))


def test_sampled_token_logps_equal_the_models_log_softmax(tiny_qwen):
    """The chunked selective log-softmax == log_softmax of the model's own logits, gathered at the next tokens."""
    model, _ = tiny_qwen
    ids = torch.randint(0, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        got = sampled_token_logps(model, batch, 5, temperature=0.7, chunk_size=4)
        logits = model(**batch).logits[:, -6:-1].float() / 0.7
    ref = torch.log_softmax(logits, -1).gather(-1, ids[:, -5:, None]).squeeze(-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def brute_kl(a, b):
    """Float64 reference: sum_v p (log p - log q), written out from the definition."""
    a, b = a.double(), b.double()
    p = torch.exp(a - torch.logsumexp(a, -1, keepdim=True))
    q = torch.exp(b - torch.logsumexp(b, -1, keepdim=True))
    return (p * (torch.log(p) - torch.log(q))).sum(-1)


def test_matches_float64_bruteforce():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 500, generator=g) * 4
    b = torch.randn(3, 7, 500, generator=g) * 4
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    got = token_kl(a, b, mask, chunk_size=4)
    ref = brute_kl(a, b) * mask
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    assert (got[~mask] == 0).all()


def test_direction_is_image_given_text():
    a = torch.tensor([[5.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.0]])
    forward, backward = token_kl(a, b), token_kl(b, a)
    torch.testing.assert_close(forward.double(), brute_kl(a, b), atol=1e-6, rtol=0)
    assert not torch.allclose(forward, backward)


def test_identical_distributions_give_zero_and_bf16_inputs_work():
    a = torch.randn(2, 5, 64).to(torch.bfloat16)
    out = token_kl(a, a.clone())
    assert (out == 0).all()


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_equals_unchunked(chunk):
    a, b = torch.randn(2, 9, 300), torch.randn(2, 9, 300)
    torch.testing.assert_close(token_kl(a, b, chunk_size=chunk), token_kl(a, b, chunk_size=10**6), atol=0, rtol=0)


def test_extreme_but_finite_logits_stay_finite():
    a = torch.tensor([[[1e4, -1e4, 0.0]]])
    b = torch.tensor([[[-1e4, 1e4, 0.0]]])
    out = token_kl(a, b)
    assert torch.isfinite(out).all() and out.item() > 1e3


def test_temperature_applies_to_both_and_leaves_inputs_untouched():
    a, b = torch.randn(4, 50), torch.randn(4, 50)
    a0, b0 = a.clone(), b.clone()
    torch.testing.assert_close(token_kl(a, b, temperature=2.0).double(), brute_kl(a / 2, b / 2), atol=1e-5, rtol=1e-5)
    assert torch.equal(a, a0) and torch.equal(b, b0)


def test_from_hidden_matches_logits_path_and_returns_logps():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 200, bias=False)
    h1, h2 = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    targets = torch.randint(0, 200, (2, 6))
    with torch.no_grad():
        dep, logps = token_kl_from_hidden(h1, h2, head, mask, chunk_size=5, temperature=0.7, target_ids=targets)
        ref = token_kl(head(h1), head(h2), mask, temperature=0.7)
        ref_lp = torch.log_softmax(head(h1) / 0.7, -1).gather(-1, targets[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(dep, ref)
    torch.testing.assert_close(logps, ref_lp)


@pytest.mark.parametrize(
    "a,b,mask,msg",
    [
        (torch.zeros(2, 3, 5), torch.zeros(2, 4, 5), None, "shape"),
        (torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.ones(2, 4), "mask shape"),
        (torch.full((1, 2, 5), float("nan")), torch.zeros(1, 2, 5), None, "non-finite"),
        (torch.zeros(1, 2, 5), torch.full((1, 2, 5), float("inf")), None, "non-finite"),
        # one -inf on either side (a banned token): 0 * inf or p * -inf in the KL, never a silent finite value
        (
            torch.zeros(1, 2, 5).index_fill_(2, torch.tensor([3]), -float("inf")),
            torch.zeros(1, 2, 5),
            None,
            "non-finite",
        ),
        (
            torch.zeros(1, 2, 5),
            torch.zeros(1, 2, 5).index_fill_(2, torch.tensor([3]), -float("inf")),
            None,
            "non-finite",
        ),
    ],
)
def test_bad_input_raises_clear_error(a, b, mask, msg):
    with pytest.raises(ValueError, match=msg):
        token_kl(a, b, mask)


def test_nonfinite_on_masked_positions_is_ignored():
    a, b = torch.zeros(1, 3, 5), torch.zeros(1, 3, 5)
    a[0, 2] = float("nan")
    out = token_kl(a, b, torch.tensor([[1, 1, 0]]))
    assert torch.isfinite(out).all() and out[0, 2] == 0


def _peak_cpu_bytes(fn):
    """Peak of live CPU tensor bytes allocated while ``fn`` runs (PyTorch profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each op's own allocations (self_cpu_memory_usage, frees included), replayed in start order.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_peak_memory_is_bounded_by_one_chunk():
    """chunk_size=1: extra memory < 2x one chunk's logits (image + text-only row, float32); full would be ~T x more."""
    T, V = 64, 50_000
    a, b = torch.randn(1, T, V), torch.randn(1, T, V)
    one_chunk = 2 * V * 4  # the image-conditioned and text-only logits of one token, float32
    peak_chunked = _peak_cpu_bytes(lambda: token_kl(a, b, chunk_size=1))
    peak_full = _peak_cpu_bytes(lambda: token_kl(a, b, chunk_size=T))
    assert peak_chunked < 2 * one_chunk, (peak_chunked, one_chunk)
    assert peak_full > 10 * peak_chunked  # the measurement can see the difference


def test_from_hidden_peak_memory_is_three_chunk_buffers():
    """token_kl_from_hidden keeps at most three chunk x V float32 buffers alive (log p, log q, one transient)."""
    H, V, chunk = 16, 40_000, 8
    head = torch.nn.Linear(H, V, bias=False).requires_grad_(False)
    hi, ht = torch.randn(2, 32, H), torch.randn(2, 32, H)
    peak = _peak_cpu_bytes(lambda: token_kl_from_hidden(hi, ht, head, chunk_size=chunk))
    buffer = chunk * V * 4
    assert 2 * buffer < peak <= 3 * buffer + 64 * 1024, (peak, buffer)


@pytest.mark.parametrize(
    "model_type,extra",
    [("gemma2", {"final_logit_softcapping": 2.0}), ("cohere", {"logit_scale": 0.25})],
)
def test_compute_visual_dependency_applies_the_models_logit_postprocessing(model_type, extra):
    """Softcapped (Gemma 2) and scaled (Cohere) heads: the log-probs equal log_softmax of the model's own logits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from pgpo.dependency import compute_visual_dependency, logit_postprocess

    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        **extra,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # large logits, so the post-processing matters
        model.get_output_embeddings().weight.mul_(30.0)
    scale, softcap = logit_postprocess(model.config)
    assert (scale, softcap) == (extra.get("logit_scale", 1.0), extra.get("final_logit_softcapping"))
    ids = torch.randint(0, 96, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    T = 4
    out = compute_visual_dependency(model, batch, batch, T, torch.ones(2, T), chunk_size=3, return_logps=True)
    with torch.no_grad():
        logits = model(**batch).logits[:, -T - 1 : -1].float()
    ref = torch.log_softmax(logits, -1).gather(-1, ids[:, -T:, None]).squeeze(-1)
    torch.testing.assert_close(out.logps, ref, rtol=1e-4, atol=1e-4)
    raw = torch.log_softmax(model.get_output_embeddings()(model.base_model(**batch).last_hidden_state), -1)
    assert not torch.allclose(raw[:, -T - 1 : -1].gather(-1, ids[:, -T:, None]).squeeze(-1), ref, atol=1e-2)
    assert torch.all(out.scores.abs() < 1e-5)  # same inputs on both sides


def test_the_vppo_clamp_is_min_s_10_its_d_clamp_changes_nothing():
    """k3_clamp='vppo' (d to [-20, 20], then S to [0, 10]) == min(S, 10) of the unclamped S, for every d: S grows with
    |d| on each side of 0 and S(+-20) > 10, so a plain S <= 10 clamp would be the same option."""
    d = torch.cat([torch.linspace(-200.0, 200.0, 40_001), torch.tensor([-20.0, 20.0, 2.5, -11.0])])[None]
    unclamped = k3_dependency(torch.zeros_like(d), d)
    vppo = k3_dependency(torch.zeros_like(d), d, clamp=VPPO_K3_CLAMP)
    assert torch.equal(vppo, unclamped.clamp(max=10.0))
    assert (vppo == 10.0).any() and (vppo < 10.0).any()


def worked_example():
    """docs/method.md's example: one response of 8 tokens, d = log pi_blind - log pi_img per token: a token the image
    makes far less likely (d = +5.5, S = 238), an image-driven neighbour (d = -3: 20x likelier with the image,
    S = 2.05) and six tokens the image does not change (d = 0). Returns {clamp: (S, w~)} with Eqs. 4-7's defaults."""
    from pgpo.shaping.pgpo import pgpo_weights

    d = torch.tensor([[5.5, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = {}
    for name, clamp in (("none", None), ("vppo", VPPO_K3_CLAMP)):
        s = k3_dependency(torch.zeros_like(d), d, clamp=clamp)
        w, _ = pgpo_weights(s, torch.ones_like(d))
        out[name] = (s[0], w[0].float())
    return out


def test_worked_example_one_token_at_d_5_5_changes_the_weights():
    """Without a clamp the d = +5.5 token sets the top of Eq. 5's min-max, so its image-driven neighbour falls under
    tau (I = 0.20, w~ = 1.16); clamped at S = 10 the neighbour is gated (I = 0.47, w~ = 2.31)."""
    ex = worked_example()
    (s_none, w_none), (s_vppo, w_vppo) = ex["none"], ex["vppo"]
    assert s_none[0].item() == pytest.approx(math.exp(5.5) - 6.5, rel=1e-5) and s_vppo[0].item() == 10.0
    assert s_none[1].item() == pytest.approx(math.exp(-3.0) + 2.0, rel=1e-5) == s_vppo[1].item()
    assert [round(w, 2) for w in w_none[:2].tolist()] == [6.84, 1.16]
    assert [round(w, 2) for w in w_vppo[:2].tolist()] == [5.69, 2.31]
    assert (w_none[2:] == 0).all() and (w_vppo[2:] == 0).all()  # I = 0 -> w = 0 (Eq. 6) either way
    assert w_none.sum().item() == pytest.approx(8.0) and w_vppo.sum().item() == pytest.approx(8.0)  # Eq. 7


def test_docs_state_the_worked_example_as_computed():
    """docs/method.md's clamp section quotes the numbers the functions give (not hand-copied ones that drift)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    section = text[text.index("### The k3 clamp") :]
    ex = worked_example()
    for name in ("none", "vppo"):
        s, w = ex[name]
        for value in (f"{s[0].item():.0f}" if name == "none" else "10", f"{w[0].item():.2f}", f"{w[1].item():.2f}"):
            assert value in section, (name, value)
