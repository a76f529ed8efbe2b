"""Does the visual dependency ``S`` find the perception tokens? A measurement against ground truth.

The taught completions of :mod:`pgpo.tasks` are written from each sample's known scene, so which of their words name
what is in the image is known (:func:`pgpo.tasks.reasoning.completion_spans`: ``"image"``, ``"question"``,
``"derived"``, ``"template"``). This module

* maps those labelled spans to the tokens of any Hugging Face fast tokenizer (:func:`token_labels`);
* condenses per-token ``S``, ``I`` and ``w~`` against the labels (:func:`perception_stats`, :func:`auroc`): how well
  ``S`` ranks image tokens above the rest, how precise PGPO's gate ``I >= tau`` is on them, and whether the weight
  mass ``w~`` concentrates on them;
* runs a VLM on the taught completions, teacher-forced, and measures it (:func:`measure_perception`) with the same
  functions the trainer uses (:func:`pgpo.dependency.score_batch`, k3 against the paper's masked blind pass;
  :func:`pgpo.shaping.pgpo.pgpo_weights`, Eqs. 4-7 per response).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pgpo.dependency import BlindPass, sampled_token_logps, score_batch
from pgpo.inspection.tokens import batch_to_device, decode_tokens, model_device_dtype
from pgpo.shaping.pgpo import PGPOShapingConfig, pgpo_weights
from pgpo.tasks.hf import DEFAULT_PROMPT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, to_messages
from pgpo.tasks.reasoning import COMPLETION_FORMAT, IMAGE, LABELS, TEMPLATE, completion_spans, spans_text

Spans = Sequence[tuple[str, str]]


# ----------------------------------------------------------------------------------------------- tokens
def token_labels(tokenizer, text: str, spans: Spans) -> list[str]:
    """One label per token of ``tokenizer(text, add_special_tokens=False)``, from the character offsets of a fast
    tokenizer (``return_offsets_mapping``).

    A token is ``"image"`` when any of its characters lies in an ``"image"`` span, else it takes the label of the
    span that holds most of its characters (ties: the first in :data:`pgpo.tasks.reasoning.LABELS` order). Only the
    token's non-whitespace characters count when it has any, so that a word's leading space (``" circle"``) or a lone
    space token (Qwen's ``" "`` before a digit) goes with what it is made of. A token without characters (a special
    token the tokenizer inserted) is ``"template"``.
    """
    if spans_text(spans) != text:
        raise ValueError("the spans do not join to the text")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("token_labels needs a fast tokenizer (character offsets)")
    chars = [label for piece, label in spans for _ in piece]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for start, end in enc["offset_mapping"]:
        where = range(max(0, start), min(end, len(text)))
        where = [k for k in where if not text[k].isspace()] or list(where)
        held = [chars[k] for k in where]
        if not held:
            out.append(TEMPLATE)
        elif IMAGE in held:
            out.append(IMAGE)
        else:
            out.append(max(LABELS, key=lambda label: (held.count(label), -LABELS.index(label))))
    return out


# ----------------------------------------------------------------------------------------------- statistics
def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for ``positives`` (bool) vs the rest: the Mann-Whitney probability that
    a random positive scores above a random negative, ties counted 1/2 (average ranks), in float64. ``nan`` when
    either class is empty."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    p = torch.as_tensor(positives).flatten().bool()
    if s.shape != p.shape:
        raise ValueError(f"auroc: {s.numel()} scores but {p.numel()} labels")
    if not torch.isfinite(s).all():
        raise ValueError("auroc: non-finite scores")
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    ranks = (counts.cumsum(0) - (counts - 1) / 2)[inverse]  # 1-based average ranks
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _flatten(values, lengths: Sequence[int], what: str) -> torch.Tensor:
    rows = []
    for b, n in enumerate(lengths):
        row = torch.as_tensor(values[b], dtype=torch.float64).flatten()
        if row.numel() < n:
            raise ValueError(f"perception_stats: response {b} has {n} labels but {row.numel()} values of {what}")
        rows.append(row[:n])
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def perception_stats(
    S,
    I,  # noqa: E741  (the paper's name)
    w,
    labels: Sequence[Sequence[str]],
    tau: float = PGPOShapingConfig.tau,
) -> dict[str, Any]:
    """``S``, ``I`` and ``w~`` of a set of responses against their token labels.

    Args:
        S, I, w: per response, the visual dependency, the importance (Eq. 5) and the weight (Eq. 7) of each token:
            ``[B, T]`` tensors or lists of per-response sequences; response ``b``'s valid tokens are its first
            ``len(labels[b])`` (padding after them is ignored).
        labels: per response, one label of :data:`pgpo.tasks.reasoning.LABELS` per valid token.
        tau: the gate ``I >= tau`` of Eq. 6.

    Returns a dict over all valid tokens together: ``n_responses``, ``n_tokens``, ``n_image``, ``auroc`` (of ``S``,
    image vs the rest) and ``auroc_importance`` (of ``I``), ``gate_precision`` (image share of the gated tokens) and
    ``gate_recall`` (gated share of the image tokens), ``gated_share`` (gated share of all tokens),
    ``image_weight_share`` (``sum w~`` over image tokens / ``sum w~``) next to ``image_token_share`` (image share of
    the tokens: the weight concentrates on image tokens when the first is larger), and per label ``n_by_label``,
    ``mean_S`` and ``mean_weight`` (``nan`` for an empty label or class).
    """
    lengths = [len(row) for row in labels]
    flat = [label for row in labels for label in row]
    unknown = sorted(set(flat) - set(LABELS))
    if unknown:
        raise ValueError(f"perception_stats: unknown labels {unknown}; known: {LABELS}")
    s, i, weights = (_flatten(v, lengths, name) for v, name in ((S, "S"), (I, "I"), (w, "w")))
    image = torch.tensor([label == IMAGE for label in flat], dtype=torch.bool)
    gated = i >= tau
    n, n_image, n_gated = len(flat), int(image.sum()), int(gated.sum())
    hits = int((gated & image).sum())
    by_label = {label: torch.tensor([x == label for x in flat], dtype=torch.bool) for label in LABELS}
    return {
        "n_responses": len(labels),
        "n_tokens": n,
        "n_image": n_image,
        "auroc": auroc(s, image),
        "auroc_importance": auroc(i, image),
        "gate_precision": _ratio(hits, n_gated),
        "gate_recall": _ratio(hits, n_image),
        "gated_share": _ratio(n_gated, n),
        "image_weight_share": _ratio(float(weights[image].sum()), float(weights.sum())),
        "image_token_share": _ratio(n_image, n),
        "n_by_label": {label: int(m.sum()) for label, m in by_label.items()},
        "mean_S": {label: float(s[m].mean()) if m.any() else math.nan for label, m in by_label.items()},
        "mean_weight": {label: float(weights[m].mean()) if m.any() else math.nan for label, m in by_label.items()},
    }


# ----------------------------------------------------------------------------------------------- the measurement
def _prompt_batch(processor, samples, prompt_template: str, system_prompt: str | None) -> dict:
    """The task prompts, rendered as the warm start's SFTCollator does, processed with their images, left padded."""
    prompts = [
        processor.apply_chat_template(
            to_messages(s, prompt_template, system_prompt), add_generation_prompt=True, tokenize=False
        )
        for s in samples
    ]
    return dict(
        processor(
            images=[[s["image"]] for s in samples],
            text=prompts,
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        )
    )


@torch.no_grad()
def measure_perception(
    model,
    processor,
    samples: Sequence[Mapping[str, Any]],
    tau: float = PGPOShapingConfig.tau,
    beta: float = PGPOShapingConfig.beta,
    batch_size: int = 16,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    answer_format: str = COMPLETION_FORMAT,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Teacher-force each sample's taught completion after its task prompt and measure ``S`` against the labels.

    The prompt is the warm start's (``processor.apply_chat_template(to_messages(sample, prompt_template,
    system_prompt), add_generation_prompt=True)`` with the image); the completion is
    ``answer_format.format(reasoning=..., answer=...)`` (by default :func:`pgpo.tasks.reasoning.taught_completion`)
    followed by the tokenizer's EOS, tokenized as one text without special tokens; the EOS is labelled template.
    ``S`` is k3 against the paper's masked blind pass (:func:`pgpo.dependency.score_batch`, at ``temperature``);
    ``I`` and ``w~`` are Eqs. 4-7 within each response (:func:`pgpo.shaping.pgpo.pgpo_weights` with ``tau`` /
    ``beta``; ``w~`` is the shaped advantage of a response with ``A = 1``). Prompts are left padded and completions
    right padded within a batch of ``batch_size``, as in training.

    Returns ``{"overall": perception_stats, "families": {family: perception_stats}, "responses": [...], "tau",
    "beta", "n_samples"}``; each response is ``{"family", "token_ids", "tokens", "labels", "S", "I", "w"}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not samples:
        raise ValueError("no samples to measure")
    shaping = PGPOShapingConfig(tau=tau, beta=beta)
    tok = getattr(processor, "tokenizer", processor)
    if tok.eos_token is None:
        raise ValueError("the tokenizer has no EOS token to end the completions with")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device, dtype = model_device_dtype(model)
    responses = []
    for first in range(0, len(samples), batch_size):
        chunk = samples[first : first + batch_size]
        enc = _prompt_batch(processor, chunk, prompt_template, system_prompt)
        rows = []
        for s in chunk:
            spans = [*completion_spans(s, answer_format), (tok.eos_token, TEMPLATE)]
            text = spans_text(spans)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            labels = token_labels(tok, text, spans)
            rows.append((ids, labels))
        T = max(len(ids) for ids, _ in rows)
        comp = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, (ids, _) in enumerate(rows):
            comp[b, : len(ids)] = torch.tensor(ids)
            mask[b, : len(ids)] = 1
        batch = dict(enc)
        batch["input_ids"] = torch.cat([enc["input_ids"], comp], 1)
        batch["attention_mask"] = torch.cat([enc["attention_mask"], mask], 1)
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in batch:
                batch[key] = torch.cat([enc[key], torch.zeros_like(comp)], 1)
        batch = batch_to_device(batch, device, dtype)
        comp_mask = mask.to(device)
        logps = sampled_token_logps(model, batch, T, temperature)
        blind = BlindPass("k3", "mask", temperature, pad_token_id=pad_id)
        dep = score_batch(model, batch, T, blind, image_logps=logps, completion_mask=comp_mask)
        weights, imp = pgpo_weights(dep, comp_mask, shaping)
        dep, imp, weights = (x.double().cpu() for x in (dep, imp, weights))
        for b, (s, (ids, labels)) in enumerate(zip(chunk, rows)):
            n = len(ids)
            responses.append(
                {
                    "family": s["family"],
                    "token_ids": ids,
                    "tokens": decode_tokens(tok, ids),
                    "labels": labels,
                    "S": dep[b, :n].tolist(),
                    "I": imp[b, :n].tolist(),
                    "w": weights[b, :n].tolist(),
                }
            )

    def stats(rs):
        return perception_stats(
            [r["S"] for r in rs], [r["I"] for r in rs], [r["w"] for r in rs], [r["labels"] for r in rs], tau
        )

    families = sorted({r["family"] for r in responses})
    return {
        "overall": stats(responses),
        "families": {f: stats([r for r in responses if r["family"] == f]) for f in families},
        "responses": responses,
        "tau": float(tau),
        "beta": float(beta),
        "n_samples": len(responses),
    }
