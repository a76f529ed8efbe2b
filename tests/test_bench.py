"""``pgpo bench`` smoke test: it runs on the tiny model with tiny sizes and returns finite ratios (no timing checks)."""

import copy
import json
import math

from pgpo.bench import BenchOptions, ModelSource, StepSetup, run_bench


def test_bench_runs_on_the_tiny_model_and_returns_finite_ratios(tiny_qwen):
    model, processor = tiny_qwen
    source = ModelSource("tiny-qwen", lambda: (copy.deepcopy(model), processor))
    setup = StepSetup(batch=2, num_generations=2, completion_length=2, steps=1, warmup=0, image_size=56, chunk_size=4)
    options = BenchOptions(
        setup=setup,
        repeats=1,
        configs=("aligned", "aligned_own"),
        memory_when_timed=True,
        dep_batch=1,
        dep_lengths=[4, 8],
        chunk_sweep=[2],
        kl_from_logits=False,
    )
    result = run_bench(options, log=lambda msg: None, source=source)

    aligned, own = result["aligned"], result["aligned_own"]
    assert not aligned["pgpo_shares_trl_old_logps_pass"] and not own["pgpo_shares_trl_old_logps_pass"]
    assert aligned["pgpo_scores_in_training_forward"] and not own["pgpo_scores_in_training_forward"]
    for r in (aligned, own):
        for key in ("time_ratio", "memory_ratio", "memory_extra_ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["grpo"]["peak_extra_bytes"] > 0 and r["pgpo"]["resident_bytes"] > 0
    parts = result["parts"]
    assert parts["shapes"]["text_batch_seq_len"] < parts["shapes"]["image_batch_seq_len"]  # image span removed
    assert all(math.isfinite(p["s"]) and p["s"] >= 0 for p in parts["parts"].values())
    derived = parts["derived"]
    assert math.isfinite(derived["text_over_image_forward"])
    # the own-pass configuration is predicted to cost the image-conditioned forward more than the training-forward one
    assert derived["predicted_time_ratio_aligned_own"] > derived["predicted_time_ratio_aligned"] > 1

    one_chunk, two_chunks = result["dependency"]["rows"]
    assert (one_chunk["tokens"], two_chunks["tokens"]) == (4, 8)
    assert max(one_chunk["max_abs_diff_vs_naive"], two_chunks["max_abs_diff_vs_naive"]) < 1e-4
    # beyond one chunk the chunked KL's peak does not grow with the length; the naive one's does
    assert two_chunks["chunked"]["peak_extra_bytes"] <= 1.05 * one_chunk["chunked"]["peak_extra_bytes"]
    assert two_chunks["naive"]["peak_extra_bytes"] > 1.5 * one_chunk["naive"]["peak_extra_bytes"]
    json.dumps(result)  # JSON-ready
