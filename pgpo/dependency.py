"""Token visual dependency: ``S_t = KL(pi(.|I, q, o_<t) || pi(.|q, o_<t))`` for every completion token.

Two layers:

* :func:`token_kl` / :func:`token_kl_from_hidden` are pure tensor functions. They take the image-conditioned and the
  text-only next-token scores of the same completion positions and return the per-token KL over the full vocabulary,
  computed in float32 log-space and in chunks of ``chunk_size`` valid tokens, so the extra memory is bounded by one
  chunk (three ``chunk x V`` float32 buffers), never by ``B x T x V``.
* :func:`compute_visual_dependency` runs the two no-grad forwards of a Hugging Face VLM (with the image, and on the
  text-only batch of :mod:`pgpo.inputs`) and returns ``[B, T_completion]`` scores aligned to the completion tokens.
  When the model exposes ``base_model`` + ``get_output_embeddings()`` (every HF ``*ForConditionalGeneration`` /
  ``*ForCausalLM``), only the backbone's hidden states are kept and the LM head is applied chunk by chunk, so the
  ``B x T x V`` logits are never materialised at all. The head applies the model's logit post-processing the way TRL's
  fused head does (``logit_scale`` and its aliases, then Gemma-style ``final_logit_softcapping``). The image-conditioned log-probability of each sampled token comes
  out of the same pass (``return_logps=True``), so a trainer can use it as the old-policy log-prob instead of running the
  image-conditioned forward a second time.

Direction and conventions (paper, Sec. 3; see docs/method.md): KL(image || text-only); scored without gradient by the
policy that sampled the rollouts; temperature applied to both distributions when the trainer samples at ``T != 1``;
padding / prompt positions are exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# 256 tokens x V float32 is ~155 MB at Qwen's V = 151,669 (three such buffers at the peak). Measured on the CPU
# (docs/bench.md): as fast as 1024 or faster, 4x less memory; from ~300 completion tokens per batch a 1024 chunk set
# PGPO's peak above GRPO's.
DEFAULT_CHUNK_SIZE = 256
_NON_FINITE = "visual dependency: non-finite logits (NaN or inf) in the scored completion positions"


def _check_pair(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: image-conditioned shape {tuple(a.shape)} != text-only shape {tuple(b.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(a.shape[:-1]):
        raise ValueError(f"{what}: mask shape {tuple(mask.shape)} does not match the token dims {tuple(a.shape[:-1])}")


def _log_probs(rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log-softmax of a ``[n, V]`` chunk; ``rows`` must be a fresh copy (it is scaled in place)."""
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return _log_probs_fp32(rows, temperature)


def _log_probs_fp32(rows: torch.Tensor, temperature: float) -> torch.Tensor:
    rows = rows.float()
    if temperature != 1.0:
        rows.div_(temperature)
    # No finiteness check here (it costs five passes over the chunk): a NaN or +-inf logit on either side always makes
    # that row's KL NaN, so the callers check the [n] result once (_check_finite).
    return torch.log_softmax(rows, dim=-1)


def _check_finite(kl: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(kl).all():
        raise ValueError(_NON_FINITE)
    return kl


def _kl_rows(logp: torch.Tensor, txt: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p || softmax(txt)) per row of a ``[n, V]`` chunk, in float32, from ``logp = log p`` (consumed in place).

    Memory: at most three ``n x V`` float32 buffers are alive at once (log p, log q, and one transient), because the
    difference and ``p`` are formed in place and the final sum is a batched row dot product (no ``n x V`` product).
    """
    diff = _log_probs(txt, temperature)  # log q
    del txt
    with torch.autocast(device_type=diff.device.type, enabled=False):
        diff.sub_(logp)  # log q - log p
        p = logp.exp_()  # p, in place of log p
        kl = torch.bmm(p.unsqueeze(1), diff.unsqueeze(2)).view(-1).neg_()  # sum_v p (log p - log q)
    # Rounding can give -1e-8 for identical rows; KL is >= 0 by definition. NaN stays NaN (clamp keeps it).
    return kl.clamp_min_(0.0)


def token_kl(
    logits_img: torch.Tensor,
    logits_txt: torch.Tensor,
    mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token ``KL(softmax(logits_img) || softmax(logits_txt))`` over the last (vocabulary) dim.

    Args:
        logits_img, logits_txt: ``[..., V]`` scores of the same positions, with and without the image.
        mask: ``[...]`` bool/0-1; positions where it is 0 are not computed and are exactly 0 in the output.
        chunk_size: number of valid tokens per chunk; peak extra memory is O(chunk_size * V).
        temperature: divides both logits (use the sampling temperature of the rollouts).

    Returns:
        ``[...]`` float32 dependency, >= 0, 0 on masked positions.
    """
    _check_pair(logits_img, logits_txt, mask, "token_kl")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = logits_img.shape[:-1]
    vocab = logits_img.shape[-1]
    flat_img = logits_img.reshape(-1, vocab)
    flat_txt = logits_txt.reshape(-1, vocab)
    out = torch.zeros(flat_img.shape[0], dtype=torch.float32, device=logits_img.device)
    idx = torch.arange(flat_img.shape[0], device=logits_img.device)
    if mask is not None:
        idx = idx[mask.reshape(-1).bool()]
    for start in range(0, idx.numel(), chunk_size):
        rows = idx[start : start + chunk_size]
        out[rows] = _kl_rows(_log_probs(flat_img[rows], temperature), flat_txt[rows], temperature)
    return _check_finite(out).reshape(lead)


def token_kl_from_hidden(
    hidden_img: torch.Tensor,
    hidden_txt: torch.Tensor,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    target_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like :func:`token_kl`, but from ``[B, T, H]`` hidden states: the LM head is applied one chunk at a time.

    If ``target_ids`` (``[B, T]``) is given, also returns the image-conditioned log-prob of those tokens (the old-policy
    log-probs of the sampled completion), taken from the same logits; otherwise the second value is ``None``.
    """
    _check_pair(hidden_img, hidden_txt, mask, "token_kl_from_hidden")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = hidden_img.shape[:-1]
    flat_img = hidden_img.reshape(-1, hidden_img.shape[-1])
    flat_txt = hidden_txt.reshape(-1, hidden_txt.shape[-1])
    dep = torch.zeros(flat_img.shape[0], dtype=torch.float32, device=hidden_img.device)
    logps = None if target_ids is None else torch.zeros_like(dep)
    flat_targets = None if target_ids is None else target_ids.reshape(-1)
    idx = torch.arange(flat_img.shape[0], device=hidden_img.device)
    if mask is not None:
        idx = idx[mask.reshape(-1).bool()]
    for start in range(0, idx.numel(), chunk_size):
        rows = idx[start : start + chunk_size]
        logp = _log_probs(lm_head(flat_img[rows]), temperature)
        if logps is not None:
            logps[rows] = logp.gather(-1, flat_targets[rows, None]).squeeze(-1)
        dep[rows] = _kl_rows(logp, lm_head(flat_txt[rows]), temperature)
    _check_finite(dep)
    return dep.reshape(lead), None if logps is None else logps.reshape(lead)


@dataclass
class DependencyOutput:
    """Result of :func:`compute_visual_dependency` (all ``[B, T_completion]``)."""

    scores: torch.Tensor  # float32 KL per completion token, 0 where completion_mask is 0
    completion_mask: torch.Tensor  # the mask the scores were computed on
    logps: torch.Tensor | None = None  # image-conditioned log-prob of each completion token (old-policy log-probs)


def _unwrap(model):
    """The underlying ``PreTrainedModel`` of a PEFT / DDP / compiled wrapper (the wrapper's forward is kept)."""
    inner = model
    for attr in ("module", "_orig_mod"):
        inner = getattr(inner, attr, inner)
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return inner


def logit_postprocess(config) -> tuple[float, float | None]:
    """``(scale, softcap)`` a model applies to ``lm_head(h)``: ``logits = softcap * tanh(scale * lm_head(h) / softcap)``.

    Mirrors TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``, which GRPO's log-probs come from): the scale
    is ``logit_scale`` (Cohere), else ``output_multiplier``, else ``lm_head_multiplier`` (Falcon-H1), else
    ``1 / logits_scaling`` (Granite, MiniCPM3; HyperCLOVA X multiplies); the softcap is ``final_logit_softcapping``
    (Gemma 2/3). On a VLM these live on the text config.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text, "logit_scale", None)
    for alias in ("output_multiplier", "lm_head_multiplier"):
        scale = getattr(text, alias, None) if scale is None else scale
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if getattr(text, "model_type", "") == "hyperclovax" else 1 / text.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(text, "final_logit_softcapping", None)


def _head_fn(head: torch.nn.Module, config) -> Callable[[torch.Tensor], torch.Tensor]:
    scale, softcap = logit_postprocess(config)
    if scale == 1.0 and not softcap:
        return head

    def apply(h: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        if scale != 1.0:
            logits = logits * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


def _hidden_and_head(model):
    """Return ``(backbone, lm_head)`` when the model splits like HF causal LMs do, else ``None``.

    ``lm_head`` is a callable ``[n, H] -> [n, V]`` that includes the model's logit post-processing
    (:func:`logit_postprocess`).
    """
    inner = _unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, "base_model", None)
    if head is None or backbone is None or backbone is inner:
        return None
    return backbone, _head_fn(head, getattr(inner, "config", None))


def _completion_states(model, batch: dict, logits_to_keep: int, split) -> torch.Tensor:
    """Hidden states (or logits, without ``split``) at the positions that predict the last ``logits_to_keep`` tokens."""
    if split is not None:
        backbone, _ = split
        hidden = backbone(**batch, use_cache=False).last_hidden_state
    else:
        hidden = model(**batch, use_cache=False, logits_to_keep=logits_to_keep + 1).logits
    return _completion_positions(hidden, logits_to_keep)


def _completion_positions(hidden: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
    """``[B, T, ...]`` at the positions that predict the last ``T`` tokens; a copy, not a view, so the states of the
    whole ``[B, P+T]`` sequence are freed before the next forward."""
    return hidden[:, -logits_to_keep - 1 : -1].contiguous()


@torch.no_grad()
def compute_visual_dependency(
    model,
    batch: dict,
    text_batch: dict,
    logits_to_keep: int,
    completion_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    return_logps: bool = False,
) -> DependencyOutput:
    """Per-token visual dependency of the completions in a processed VLM batch.

    Args:
        model: any HF VLM (or a PEFT / accelerate wrapper of one).
        batch: model inputs with the image: ``input_ids`` ``[B, P+T]`` whose last ``logits_to_keep`` columns are the
            completion, ``attention_mask`` and the image tensors (``pixel_values``, ``image_grid_thw``, ...).
        text_batch: the text-only inputs for the same completions (see :func:`pgpo.inputs.build_text_only_batch`);
            its last ``logits_to_keep`` columns must be the same completion tokens.
        logits_to_keep: completion length ``T``.
        completion_mask: ``[B, T]``; 0 marks padding after EOS.
        chunk_size: valid tokens per KL chunk.
        temperature: sampling temperature of the rollouts (applied to both distributions).
        return_logps: also return the image-conditioned log-probs of the completion tokens.
    """
    ids, tids = batch["input_ids"], text_batch["input_ids"]
    if ids.shape[0] != tids.shape[0]:
        raise ValueError(f"batch size mismatch: {ids.shape[0]} with image, {tids.shape[0]} text-only")
    if logits_to_keep < 1 or logits_to_keep > min(ids.shape[1], tids.shape[1]) - 1:
        raise ValueError(f"logits_to_keep={logits_to_keep} does not fit sequences of length {ids.shape[1]}")
    completion = ids[:, -logits_to_keep:]
    if not torch.equal(completion, tids[:, -logits_to_keep:]):
        raise ValueError("the text-only batch's completion tokens differ from the image-conditioned batch's")
    if tuple(completion_mask.shape) != tuple(completion.shape):
        raise ValueError(
            f"completion_mask shape {tuple(completion_mask.shape)} != completion {tuple(completion.shape)}"
        )

    split = _hidden_and_head(model)
    h_img = _completion_states(model, batch, logits_to_keep, split)
    if split is not None:
        return dependency_given_image_states(
            model, h_img, text_batch, logits_to_keep, completion_mask, chunk_size, temperature, return_logps
        )
    h_txt = _completion_states(model, text_batch, logits_to_keep, split)
    mask = completion_mask.bool()
    scores = token_kl(h_img, h_txt, mask, chunk_size, temperature)
    logps = None
    if return_logps:
        lp = torch.log_softmax(h_img.float() / temperature, dim=-1)
        logps = lp.gather(-1, completion[..., None]).squeeze(-1) * mask
    return DependencyOutput(scores=scores, completion_mask=completion_mask, logps=logps)


def splits_into_backbone_and_head(model) -> bool:
    """Whether :func:`dependency_given_image_states` can score this model (HF ``base_model`` + output embeddings)."""
    return _hidden_and_head(model) is not None


def image_states_hook(model, logits_to_keep: int, sink: list[torch.Tensor]):
    """Register a forward hook that appends the backbone's detached ``[B, T, H]`` completion-predicting hidden states
    to ``sink`` every time the model runs; returns the hook handle (call ``.remove()``).

    Lets a trainer take ``p_image`` from a forward it runs anyway (the training forward) instead of a second one.
    """
    backbone, _ = _hidden_and_head(model)

    def keep(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        sink.append(_completion_positions(hidden.detach(), logits_to_keep))

    return backbone.register_forward_hook(keep)


@torch.no_grad()
def dependency_given_image_states(
    model,
    image_states: torch.Tensor,
    text_batch: dict,
    logits_to_keep: int,
    completion_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    return_logps: bool = False,
) -> DependencyOutput:
    """The second half of :func:`compute_visual_dependency`: the text-only forward and the KL, given the backbone's
    image-conditioned hidden states ``[B, T, H]`` at the completion-predicting positions (from
    :func:`image_states_hook` or a forward of our own). Needs :func:`splits_into_backbone_and_head`.
    """
    split = _hidden_and_head(model)
    if split is None:
        raise ValueError("dependency_given_image_states needs a model with base_model and get_output_embeddings()")
    completion = text_batch["input_ids"][:, -logits_to_keep:]
    if tuple(image_states.shape[:2]) != tuple(completion.shape):
        raise ValueError(
            f"image states {tuple(image_states.shape)} do not match the completion {tuple(completion.shape)}"
        )
    h_txt = _completion_states(model, text_batch, logits_to_keep, split)
    scores, logps = token_kl_from_hidden(
        image_states,
        h_txt,
        split[1],
        completion_mask.bool(),
        chunk_size,
        temperature,
        completion if return_logps else None,
    )
    return DependencyOutput(scores=scores, completion_mask=completion_mask, logps=logps)
