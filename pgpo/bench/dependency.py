"""The visual dependency alone: k3 vs the exact chunked KL vs a naive full-logits KL, at several completion lengths.

All on the same processed batch (:func:`pgpo.bench.inputs.scored_batch`: image prompts plus ``length`` completion
tokens), through pgpo's public entry point :func:`pgpo.dependency.score_batch` with a
:class:`pgpo.dependency.BlindPass` of each estimator (the paper's masked blind pass):

* ``k3``: ``score_batch(model, batch, T, BlindPass("k3"), image_logps)``, what PGPO runs in the default configuration
  (``log pi_img`` comes from the training forward): the blind batch, one no-grad blind forward with the LM head
  applied chunk by chunk to the sampled tokens only, and ``e^d - 1 - d`` on ``[B, T]``.
* ``k3_own_pass``: the same without ``image_logps`` (the image-conditioned forward as well: the ``own_pass`` source).
* ``kl``: ``score_batch(model, batch, T, BlindPass("kl"))``, the exact full-vocabulary KL of Eq. 1 in chunks (both
  forwards).
* ``kl_naive``: both forwards' full ``[B, T, V]`` logits, float32 ``log_softmax`` and the KL in one go; skipped
  where it would need more than ``naive_max_gib``.
"""

from __future__ import annotations

import torch

from pgpo.bench.inputs import model_inputs, scored_batch
from pgpo.bench.measure import MiB, timed
from pgpo.dependency import BlindPass, sampled_token_logps, score_batch
from pgpo.text_only import counterfactual_batch, image_pass_position_ids, image_token_spec

# float32 [tokens, V] tensors alive at the naive KL's peak: two logits, two log-softmaxes, p and the product.
NAIVE_BUFFERS = 6


def naive_kl(model, batch: dict, blind: dict, T: int, temperature: float = 1.0) -> torch.Tensor:
    """``KL(pi_img || pi_blind)`` per completion token from the full logits of both passes (the reference)."""
    lp = torch.log_softmax(
        model(**batch, use_cache=False, logits_to_keep=T + 1).logits[:, :-1].float() / temperature, -1
    )
    lq = torch.log_softmax(
        model(**blind, use_cache=False, logits_to_keep=T + 1).logits[:, :-1].float() / temperature, -1
    )
    return (lp.exp() * (lp - lq)).sum(-1)


def naive_bytes(tokens: int, vocab: int) -> int:
    return NAIVE_BUFFERS * tokens * vocab * 4


def candidates(model, batch: dict, mask: torch.Tensor, T: int, chunk: int, naive: bool) -> dict:
    """Zero-argument callables of every estimator at one length (all no-grad)."""
    image_logps = sampled_token_logps(model, batch, T, chunk_size=chunk)  # what the training forward hands PGPO

    def score(estimator, image_logps=None):
        blind = BlindPass(estimator, chunk_size=chunk)
        return score_batch(model, batch, T, blind, image_logps, completion_mask=mask)

    fns = {
        "k3": lambda: score("k3", image_logps=image_logps),
        "k3_own_pass": lambda: score("k3"),
        "kl": lambda: score("kl"),
    }
    if naive:
        spec = image_token_spec(model.config)
        positions = image_pass_position_ids(model, batch)
        blind = counterfactual_batch(batch, T, "mask", spec, position_ids=positions)
        fns["kl_naive"] = lambda: naive_kl(model, batch, blind, T)
    return fns


@torch.no_grad()
def dependency_scaling(source, cfg, log=print) -> dict:
    """Time (median of ``cfg.repeats`` interleaved rounds) and peak extra memory of each estimator at each of
    ``cfg.length_list``, ``cfg.dep_batch`` rows."""
    model, processor = source.load()
    model = model.to(cfg.device).eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = []
    for length in cfg.length_list:
        raw = scored_batch(processor, cfg.dep_batch, length, cfg.image_size or source.image_size, cfg.seed)
        batch, mask = model_inputs(raw, cfg.device), raw["completion_mask"].to(cfg.device)
        tokens = cfg.dep_batch * length
        naive = naive_bytes(tokens, vocab) <= cfg.naive_max_gib * 2**30
        fns = candidates(model, batch, mask, length, cfg.chunk_size, naive)
        measured, stall = timed(fns, cfg.repeats, cfg.device)
        row = {
            "length": length,
            "tokens": tokens,
            "sequence": int(batch["input_ids"].shape[1]),
            "naive_estimate_bytes": naive_bytes(tokens, vocab),
            "stall": stall,
            **measured,
        }
        if naive:
            row["kl_vs_naive_max_abs_diff"] = (fns["kl"]() - fns["kl_naive"]()).abs().max().item()
        rows.append(row)
        log(
            f"  length {length} ({tokens} tokens): "
            + ", ".join(f"{n} {row[n]['s']:.3f}s {row[n]['peak_extra_bytes'] / MiB:.0f} MiB" for n in fns)
        )
        del fns
    return {
        "vocab": vocab,
        "batch": cfg.dep_batch,
        "chunk_size": cfg.chunk_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "rows": rows,
    }
