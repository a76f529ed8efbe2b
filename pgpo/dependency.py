"""Token visual dependency ``S_t`` (paper Eq. 1): how much the image changes the policy's next-token distribution.

    S_t = KL( pi(. | s_t, I) || pi(. | s_t) ),     s_t = (q, o_<t)

The right-hand side is the *blind pass* of :mod:`pgpo.text_only` (the visual tokens masked out, every position id kept).
Both sides are scored without gradient by the policy that sampled the rollouts, at the rollout temperature.

Two estimators (``dependency_estimator``):

* ``"k3"`` (default, the paper's, App. A.1): the single-sample "k3" estimate on the generated token
  ``x_t ~ pi(. | s_t, I)``: with ``d = log pi_blind(x_t) - log pi_img(x_t)``, ``S_t ~= e^d - 1 - d``
  (:func:`k3_dependency`). It is unbiased for the KL (``E[e^d] = 1`` under ``pi_img``), never negative, and needs
  only the log-probability of the sampled token from each pass, so no ``B x T x V`` divergence is formed.
* ``"kl"``: the exact full-vocabulary KL that Eq. 1 defines (:func:`token_kl`), in float32 log-space and in chunks
  of ``chunk_size`` tokens, so the extra memory is bounded by one chunk (three ``chunk x V`` float32 buffers).

Model level, for any Hugging Face VLM: :func:`score_batch` scores a processed prompt+completion batch (the image
pass, the blind pass and the estimator, their options one :class:`BlindPass`; the trainer's passes go through TRL's
kernel instead, :class:`pgpo.scoring.Scorer`); :func:`sampled_token_logps` is the log-prob of each sampled token with
the LM head applied chunk by chunk on the backbone's hidden states, with the model's logit post-processing
(``logit_scale`` and aliases, Gemma's softcap) as TRL's fused head applies it.

Every pass that feeds ``S`` runs dropout-free (:func:`dropout_free`: eval mode for the pass, each module's previous mode
back afterwards), as EasyR1, VPPO-RL and PAPO compute their log-probs: with a LoRA dropout of 0.05 a train-mode
scoring carries noise of the size of the image's effect itself. :func:`dropout_sites` names what would drop while the
model trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pgpo.text_only import BLIND_MODES, ImageTokenSpec, counterfactual_batch, image_pass_position_ids, image_token_spec

# 256 tokens x V float32 is ~155 MB at Qwen's V = 151,669 (three such buffers at the KL's peak). Measured on the CPU
# (docs/bench.md): as fast as 1024 or faster, 4x less memory.
DEFAULT_CHUNK_SIZE = 256
ESTIMATORS = ("k3", "kl")
# The default k3 applies no clamp (the paper states none). The only guard: d is capped at 80 so that e^d stays finite
# in float32 (e^80 ~ 5.5e34); a sampled token 80 nats less likely with the image than without it does not occur in
# practice, so this changes nothing but an overflow.
K3_MAX_LOG_RATIO = 80.0
# VPPO-RL's clamps (an option): d to [-20, 20], then S to [0, 10]. The d clamp changes nothing once S is clamped: S
# grows with |d| on each side of 0 and S(+-20) > 10, so this is exactly min(S, 10) (tested).
VPPO_K3_CLAMP = (20.0, 10.0)
_NON_FINITE = "visual dependency: non-finite logits (NaN or inf) in the scored completion positions"


def k3_dependency(
    logp_img: torch.Tensor,
    logp_blind: torch.Tensor,
    mask: torch.Tensor | None = None,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The paper's estimator (App. A.1): ``S = e^d - 1 - d`` with ``d = logp_blind - logp_img`` per sampled token.

    Args:
        logp_img, logp_blind: ``[B, T]`` log-probabilities of the sampled tokens with the image and in the blind pass.
        mask: ``[B, T]`` 0/1; positions where it is 0 are exactly 0 in the output (whatever the log-probs hold there).
        clamp: ``None`` (default, the paper's: no clamp, only an overflow guard on ``e^d``) or ``(d_max, s_max)``:
            ``d`` clamped to ``[-d_max, d_max]`` and ``S`` to ``[0, s_max]`` (VPPO's is :data:`VPPO_K3_CLAMP`).

    Returns:
        ``[B, T]`` float32 dependency, ``>= 0``. Computed as ``expm1(d) - d`` (a series for ``|d| < 1e-3``), so small
        dependencies keep their relative precision in float32.
    """
    if logp_img.shape != logp_blind.shape:
        raise ValueError(f"k3_dependency: image shape {tuple(logp_img.shape)} != blind shape {tuple(logp_blind.shape)}")
    valid = torch.ones_like(logp_img, dtype=torch.bool) if mask is None else mask.bool()
    if valid.shape != logp_img.shape:
        raise ValueError(f"k3_dependency: mask shape {tuple(valid.shape)} != log-prob shape {tuple(logp_img.shape)}")
    d = logp_blind.float() - logp_img.float()
    if not torch.isfinite(d[valid]).all():
        raise ValueError("k3_dependency: non-finite log-probabilities (NaN or inf) on valid completion tokens")
    d = d.clamp(-clamp[0], clamp[0]) if clamp is not None else d.clamp(max=K3_MAX_LOG_RATIO)
    series = d * d * (0.5 + d / 6.0)  # d^2/2 + d^3/6; the next term is d^2/12 of the first, < 1e-7 here
    s = torch.where(d.abs() < 1e-3, series, torch.expm1(d) - d).clamp_min(0.0)
    if clamp is not None:
        s = s.clamp(max=clamp[1])
    return torch.where(valid, s, torch.zeros_like(s))


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


def unwrap(model):
    """The underlying ``PreTrainedModel`` of a PEFT / DDP / compiled wrapper (the wrapper's forward is kept)."""
    inner = model
    for attr in ("module", "_orig_mod"):
        inner = getattr(inner, attr, inner)
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return inner


@contextmanager
def _modes_restored(model: torch.nn.Module) -> Iterator[None]:
    """On exit, every module of ``model`` is back in the mode (train / eval) it had on entry.

    ``model.train(previous)`` runs first, so the mode switch's own work happens (transformers re-selects its kernels,
    PEFT's DoRA clears its cache, a frozen part's ``train`` override keeps it in eval); then each module's flag is set
    to what it was, so a module someone put in eval inside a training model stays in eval whatever its class does.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        model.train(modes[0][1])
        for module, training in modes:
            module.training = training


def _drops(module: torch.nn.Module) -> bool:
    """Whether ``module`` drops activations in train mode: a ``nn.Dropout`` (or any ``_DropoutNd``) with ``p > 0``, or
    a float ``attention_dropout`` / ``dropout`` > 0 that Hugging Face attention applies functionally when training."""
    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
        return module.p > 0
    return any(
        isinstance(getattr(module, a, None), float) and getattr(module, a) > 0 for a in ("attention_dropout", "dropout")
    )


def dropout_sites(model) -> list[str]:
    """Names of the modules of ``model`` that drop activations while it trains (``[]``: training is dropout-free).

    Counted under ``model.train()`` (every module's mode restored afterwards), so a part that stays in eval when the
    model trains (the demo VLM's frozen vision tower) counts for nothing. TRL's ``disable_dropout=True`` sets every
    ``nn.Dropout``'s ``p`` to 0 (PEFT's LoRA dropout included) but not Hugging Face's ``attention_dropout`` floats.
    """
    if not isinstance(model, torch.nn.Module):
        return []
    with _modes_restored(model):
        model.train()
        return [name for name, module in model.named_modules() if module.training and _drops(module)]


@contextmanager
def dropout_free(model) -> Iterator[None]:
    """A scoring pass without dropout: ``model`` in eval mode inside, each module's previous mode back on exit.

    Spec section 1: ``S`` is scored "in eval mode (dropout off: EasyR1, VPPO-RL and PAPO compute every log-prob that
    way)". ``nn.Dropout`` (PEFT's LoRA dropout too) is the identity in eval mode and Hugging Face attention passes
    ``dropout=0`` when not training. Nesting is fine; a model that is not an ``nn.Module`` is left as it is.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    with _modes_restored(model):
        model.eval()
        yield


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
    inner = unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, "base_model", None)
    if head is None or backbone is None or backbone is inner:
        return None
    return backbone, _head_fn(head, getattr(inner, "config", None))


def _completion_states(model, batch: dict, logits_to_keep: int, split) -> torch.Tensor:
    """Hidden states (or logits, without ``split``) at the positions that predict the last ``logits_to_keep`` tokens,
    from a dropout-free forward (:func:`dropout_free`); a copy, not a view, so the states of the whole ``[B, P+T]``
    sequence are freed before the next forward."""
    with dropout_free(model):
        if split is not None:
            backbone, _ = split
            hidden = backbone(**batch, use_cache=False).last_hidden_state
        else:
            hidden = model(**batch, use_cache=False, logits_to_keep=logits_to_keep + 1).logits
    return hidden[:, -logits_to_keep - 1 : -1].contiguous()


def sampled_token_logps(
    model, batch: dict, logits_to_keep: int, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """``log pi(x_t | x_<t)`` of the last ``logits_to_keep`` tokens of ``batch["input_ids"]``, float32 ``[B, T]``.

    The selective log-softmax TRL uses for its log-probs: the LM head runs on ``chunk_size`` positions at a time, so
    the ``B x T x V`` logits never exist at once. ``batch`` may carry ``position_ids`` (the blind pass does). The
    forward is dropout-free (:func:`dropout_free`), whatever mode ``model`` is in.
    """
    T = logits_to_keep
    targets = batch["input_ids"][:, -T:]
    split = _hidden_and_head(model)
    states = _completion_states(model, batch, T, split)
    if split is None:
        logp = _log_probs(states.reshape(-1, states.shape[-1]), temperature)
        return logp.gather(-1, targets.reshape(-1, 1)).view(targets.shape)
    head = split[1]
    flat, flat_targets = states.reshape(-1, states.shape[-1]), targets.reshape(-1)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for start in range(0, flat.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        out[rows] = _log_probs(head(flat[rows]), temperature).gather(-1, flat_targets[rows, None]).squeeze(-1)
    return out.view(targets.shape)


@dataclass
class DependencyOutput:
    """Result of :func:`compute_visual_dependency` (all ``[B, T_completion]``)."""

    scores: torch.Tensor  # float32 KL per completion token, 0 where completion_mask is 0
    completion_mask: torch.Tensor  # the mask the scores were computed on
    logps: torch.Tensor | None = None  # image-conditioned log-prob of each completion token (old-policy log-probs)


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
    """The exact full-vocabulary KL of Eq. 1 (``dependency_estimator="kl"``) for the completions of a VLM batch.

    Args:
        model: any HF VLM (or a PEFT / accelerate wrapper of one).
        batch: model inputs with the image: ``input_ids`` ``[B, P+T]`` whose last ``logits_to_keep`` columns are the
            completion, ``attention_mask`` and the image tensors (``pixel_values``, ``image_grid_thw``, ...).
        text_batch: the blind inputs for the same completions (:func:`pgpo.text_only.counterfactual_batch`); its last
            ``logits_to_keep`` columns must be the same completion tokens.
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
    h_txt = _completion_states(model, text_batch, logits_to_keep, split)
    mask = completion_mask.bool()
    if split is not None:
        scores, logps = token_kl_from_hidden(
            h_img, h_txt, split[1], mask, chunk_size, temperature, completion if return_logps else None
        )
        return DependencyOutput(scores=scores, completion_mask=completion_mask, logps=logps)
    scores = token_kl(h_img, h_txt, mask, chunk_size, temperature)
    logps = None
    if return_logps:
        lp = torch.log_softmax(h_img.float() / temperature, dim=-1)
        logps = lp.gather(-1, completion[..., None]).squeeze(-1) * mask
    return DependencyOutput(scores=scores, completion_mask=completion_mask, logps=logps)


# BlindPass's fields and the PGPOConfig options they come from.
CONFIG_OPTIONS = {
    "estimator": "dependency_estimator",
    "text_only_mode": "text_only_mode",
    "temperature": "temperature",
    "mask_delimiters": "mask_vision_delimiters",
    "k3_clamp": "k3_clamp_values",
    "chunk_size": "dependency_chunk_size",
    "patch_prob": "patch_blackout_prob",
}


@dataclass(frozen=True)
class BlindPass:
    """How ``S`` is scored: the estimator, the blind pass and the model facts it needs; built once per run
    (:meth:`from_config`), read by :func:`score_batch`."""

    estimator: str = "k3"  # "k3" (the paper's) or "kl" (the exact full-vocabulary KL)
    text_only_mode: str = "mask"  # the blind pass (pgpo.text_only.BLIND_MODES)
    temperature: float = 1.0  # the rollout temperature (both passes)
    mask_delimiters: bool = False  # also hide <|vision_start|> / <|vision_end|> in the blind pass
    k3_clamp: tuple[float, float] | None = None  # None (the paper's) or (d_max, s_max) (VPPO_K3_CLAMP)
    chunk_size: int = DEFAULT_CHUNK_SIZE  # tokens per chunk of the LM head / the vocabulary KL
    patch_prob: float = 0.5  # text_only_mode="patch_blackout": the probability per patch
    spec: ImageTokenSpec | None = None  # the image token ids (None: read from the model config)
    pad_token_id: int = 0
    black: torch.Tensor | None = None  # patch_blackout: the black pixel after normalisation (text_only.black_pixel)

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.text_only_mode not in BLIND_MODES:
            raise ValueError(f"text_only_mode must be one of {tuple(BLIND_MODES)}, got {self.text_only_mode!r}")

    @classmethod
    def from_config(cls, args, **model_facts) -> BlindPass:
        """From a :class:`~pgpo.config.PGPOConfig`; ``model_facts``: ``spec``, ``pad_token_id``, ``black``."""
        return cls(**{name: getattr(args, option) for name, option in CONFIG_OPTIONS.items()}, **model_facts)

    def describe(self) -> str:
        return f"dependency_estimator={self.estimator}, text_only_mode={self.text_only_mode}, k3_clamp={self.k3_clamp}"


@torch.no_grad()
def score_batch(
    model,
    batch: dict,
    logits_to_keep: int,
    blind: BlindPass = BlindPass(),
    image_logps: torch.Tensor | None = None,
    logps_fn: Callable[[dict], torch.Tensor] | None = None,
    *,
    completion_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Visual dependency ``S_t`` (Eq. 1) of every completion token of a processed VLM batch, ``[B, logits_to_keep]``.

    Args:
        model: any HF VLM (or a PEFT / accelerate wrapper of one), in the state that sampled the completions.
        batch: ``input_ids`` / ``attention_mask`` ``[B, P+T]`` whose last ``logits_to_keep`` columns are the
            completion, plus the image tensors the processor made (``pixel_values``, ``image_grid_thw``,
            ``mm_token_type_ids``, ...).
        blind: the estimator and the blind pass (:class:`BlindPass`; the default is the paper's).
        image_logps: the image pass's log-probs of the sampled tokens when already known (a trainer's old-policy
            log-probs); the image-conditioned forward is then skipped (k3 only).
        logps_fn: ``batch -> [B, T]`` log-probs of the sampled tokens (default :func:`sampled_token_logps`); a trainer
            passes its own (TRL's fused LM head) so both passes use one kernel.
        completion_mask: ``[B, T]``; defaults to the last ``T`` columns of ``attention_mask``.
        generator: a seeded generator, for the modes with random masks (``"patch_blackout"``).

    Returns:
        float32 ``[B, T]``, ``>= 0``, exactly 0 where ``completion_mask`` is 0. Every pass (``logps_fn`` included) runs
        dropout-free (:func:`dropout_free`): scoring the same batch twice gives the same ``S``, whatever mode ``model``
        is in, and each module's mode is as before afterwards.
    """
    with dropout_free(model):
        T = logits_to_keep
        mask = batch["attention_mask"][:, -T:] if completion_mask is None else completion_mask
        needs = BLIND_MODES[blind.text_only_mode]
        blind_batch = counterfactual_batch(
            batch,
            T,
            blind.text_only_mode,
            blind.spec or image_token_spec(unwrap(model).config),
            position_ids=image_pass_position_ids(model, batch) if needs.positions else None,
            pad_token_id=blind.pad_token_id,
            mask_delimiters=blind.mask_delimiters,
            patch_prob=blind.patch_prob,
            black=blind.black,
            generator=generator,
        )
        if blind.estimator == "kl":
            return compute_visual_dependency(
                model, batch, blind_batch, T, mask, blind.chunk_size, blind.temperature
            ).scores
        logps = logps_fn or (lambda b: sampled_token_logps(model, b, T, blind.temperature, blind.chunk_size))
        if image_logps is None:
            image_logps = logps(batch)
        return k3_dependency(image_logps, logps(blind_batch), mask, clamp=blind.k3_clamp)
