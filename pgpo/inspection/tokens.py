"""Score one answer: each token's visual dependency ``S`` (Eq. 1), its normalised importance ``I`` (Eqs. 4-5) and the
weight ``w~`` PGPO would give it (Eqs. 6-7), with the same functions the trainer uses.

* :func:`score_tokens` runs a Hugging Face VLM on one prompt with its image(s): it generates the answer greedily when
  none is given, then scores it with :func:`pgpo.dependency.score_batch` (the blind pass and estimator of the trainer)
  and :func:`pgpo.shaping.pgpo_weights`.
* :func:`sparsity_summary` condenses one answer: the gate ``tau`` on ``I``, the tokens at or above it, how much of the
  total dependency the top 10% of tokens carry, and the mean weight on gated / other tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from pgpo.data import build_messages
from pgpo.dependency import ESTIMATORS, BlindPass, sampled_token_logps, score_batch
from pgpo.metrics import gate_summary, gate_sums, top_share
from pgpo.shaping import PGPOShapingConfig, pgpo_weights
from pgpo.text_only import TEXT_ONLY_MODES


@dataclass
class TokenDependency:
    """One completion, token by token (every list has one entry per completion token)."""

    tokens: list[str]  # decoded text of each token; "".join(tokens) == the decoded completion (special tokens kept)
    token_ids: list[int]
    scores: list[float]  # S_t >= 0 (nats; Eq. 1 by the chosen estimator)
    importance: list[float]  # I_t in [0, 1] (Eqs. 4-5, within this answer)
    weights: list[float]  # w~_t (Eqs. 6-7); their mean is 1
    logprobs: list[float]  # image-conditioned log-prob of each token (at `temperature`)
    prompt: str  # the user's question
    prompt_text: str  # the rendered chat prompt (with the image placeholders)
    completion: str  # the completion text (special tokens dropped)
    generated: bool  # True when the completion was generated here (greedy)
    estimator: str = "k3"
    text_only_mode: str = "mask"
    temperature: float = 1.0
    tau: float = PGPOShapingConfig.tau
    beta: float = PGPOShapingConfig.beta
    n_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of the model's first parameter (CPU / float32 for a model without parameters)."""
    param = next(iter(model.parameters()), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def batch_to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """The batch's tensors on ``device``, its floating-point ones (pixel values) in ``dtype``."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        out[key] = value
    return out


def _end_token_id(model, tokenizer) -> int | None:
    """The token the model ends an answer with: generation_config's (first) eos, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else tokenizer.eos_token_id


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def decode_tokens(tokenizer, ids: Sequence[int], context: int = 4) -> list[str]:
    """Text of each token such that ``"".join(result) == tokenizer.decode(ids)`` (special tokens kept).

    Each token's text is what it adds to the decoded prefix. A token that ends inside a multi-byte character (the
    decode ends with U+FFFD) gets ``""`` and the character goes to the token that completes it. Only ``context``
    tokens of left context are re-decoded per step, so the cost is linear in the length.
    """
    ids = [int(i) for i in ids]

    def dec(chunk):
        return tokenizer.decode(chunk, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    out: list[str] = []
    start = 0  # first token whose text has not been emitted yet
    for i in range(len(ids)):
        ctx = max(0, start - context)
        prev = dec(ids[ctx:start])
        cur = dec(ids[ctx : i + 1])
        if cur.endswith("\ufffd") and i + 1 < len(ids):
            out.append("")  # incomplete character: wait for the next token
            continue
        out.append(cur[len(prev) :] if cur.startswith(prev) else dec(ids[start : i + 1]))
        start = i + 1
    return out


def _as_image_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


@torch.no_grad()
def score_tokens(
    model,
    processor,
    images,
    prompt_text: str,
    completion_text: str | None = None,
    max_new_tokens: int = 64,
    estimator: str = "k3",
    text_only_mode: str = "mask",
    temperature: float = 1.0,
    shaping: PGPOShapingConfig | None = None,
    add_end_token: bool = True,
    system_prompt: str | None = None,
) -> TokenDependency:
    """``S``, ``I`` and ``w~`` of every token of the answer to ``prompt_text`` about ``images``.

    Args:
        model: a HF VLM whose config names its image tokens (Qwen2/2.5/3-VL, pgpo's demo VLM, LLaVA-style).
        processor: its processor (``apply_chat_template`` + ``__call__(images=, text=)``).
        images: one PIL image, a list of them, or ``None`` / ``[]`` (then every score is 0: the control).
        prompt_text: the user's question.
        completion_text: the answer to score; ``None`` generates it greedily (``max_new_tokens`` at most). A given
            text is tokenized without special tokens and followed by the model's end token (``add_end_token``), as
            the policy would have produced it.
        estimator, text_only_mode: as in training (:func:`pgpo.dependency.score_batch`).
        temperature: the rollouts' sampling temperature (both passes).
        shaping: ``tau`` / ``beta`` / ``eps`` / ``normalize`` of Eqs. 5-7 (default: the paper's).
        system_prompt: a system message (``None``: the chat template's default), as the policy was prompted.
    """
    shaping = shaping or PGPOShapingConfig()
    if not prompt_text or not prompt_text.strip():
        raise ValueError("the prompt is empty")
    if text_only_mode not in TEXT_ONLY_MODES:
        raise ValueError(f"text_only_mode must be one of {TEXT_ONLY_MODES}, got {text_only_mode!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if completion_text is None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    image_list = _as_image_list(images)
    tok = getattr(processor, "tokenizer", processor)
    device, dtype = model_device_dtype(model)

    chat = processor.apply_chat_template(
        build_messages(prompt_text, len(image_list), "{question}", system_prompt),
        add_generation_prompt=True,
        tokenize=False,
    )
    enc = processor(images=[image_list] if image_list else None, text=[chat], return_tensors="pt")
    enc = batch_to_device(dict(enc), device, dtype)
    prompt_len = enc["input_ids"].shape[1]

    if completion_text is None:
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        ids = out[0, prompt_len:].tolist()
        eos = _eos_ids(model, tok)
        cut = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        ids = ids[:cut]
        if not ids:
            raise ValueError("the model generated an empty completion")
    else:
        ids = tok(completion_text, add_special_tokens=False)["input_ids"]
        end = _end_token_id(model, tok)
        if add_end_token and end is not None:
            ids = ids + [end]
        if not ids:
            raise ValueError("the completion is empty")

    comp = torch.tensor([ids], dtype=torch.long, device=device)
    T = comp.shape[1]
    batch = dict(enc)
    batch["input_ids"] = torch.cat([enc["input_ids"], comp], 1)
    batch["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(comp)], 1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch:
            batch[key] = torch.cat([enc[key], torch.zeros_like(comp)], 1)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    logps = sampled_token_logps(model, batch, T, temperature)
    blind = BlindPass(estimator, text_only_mode, temperature, pad_token_id=pad_id)
    scores = score_batch(model, batch, T, blind, image_logps=logps if estimator == "k3" else None)
    weights, importance = pgpo_weights(scores, torch.ones_like(comp), shaping)
    return TokenDependency(
        tokens=decode_tokens(tok, ids),
        token_ids=[int(i) for i in ids],
        scores=[float(s) for s in scores[0].cpu()],
        importance=[float(s) for s in importance[0].cpu()],
        weights=[float(s) for s in weights[0].cpu()],
        logprobs=[float(s) for s in logps[0].float().cpu()],
        prompt=prompt_text,
        prompt_text=chat,
        completion=completion_text if completion_text is not None else tok.decode(ids, skip_special_tokens=True),
        generated=completion_text is None,
        estimator=estimator,
        text_only_mode=text_only_mode,
        temperature=float(temperature),
        tau=shaping.tau,
        beta=shaping.beta,
        n_images=len(image_list),
    )


@dataclass
class SparsitySummary:
    """How concentrated the visual dependency of one answer is, and what PGPO's weights do with it."""

    n_tokens: int
    tau: float  # the gate on I (Eq. 6)
    gated_frac: float  # fraction of tokens with I >= tau (amplified)
    n_gated: int
    top10_share: float  # share of sum(S) carried by the top 10% tokens (ceil, at least 1)
    mean: float  # mean S
    max: float
    total: float
    weight_gated: float  # mean w~ of the gated tokens (nan if none)
    weight_ungated: float  # mean w~ of the others (nan if none)

    def rows(self) -> list[tuple[str, str]]:
        """(label, formatted value) pairs, for tables."""
        return [
            ("tokens", str(self.n_tokens)),
            ("gate tau on I (Eq. 6)", f"{self.tau:.3g}"),
            ("tokens at or above the gate", f"{self.n_gated} ({self.gated_frac:.1%})"),
            ("mean weight w~: gated / other", f"{self.weight_gated:.3f} / {self.weight_ungated:.3f}"),
            ("top-10% tokens' share of total S", f"{self.top10_share:.1%}"),
            ("mean S (nats)", f"{self.mean:.4g}"),
            ("max S (nats)", f"{self.max:.4g}"),
            ("total S (nats)", f"{self.total:.4g}"),
        ]


def sparsity_summary(
    scores: Sequence[float], cfg: PGPOShapingConfig | None = None, importance=None, weights=None
) -> SparsitySummary:
    """Summarise one answer's scores; ``importance`` / ``weights`` are recomputed from ``scores`` when not given."""
    cfg = cfg or PGPOShapingConfig()
    s = torch.tensor([float(x) for x in scores], dtype=torch.float64)
    if s.numel() == 0:
        raise ValueError("no scores to summarise")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("scores must be finite and >= 0")
    if importance is None or weights is None:
        w, i = pgpo_weights(s[None], torch.ones(1, s.numel()), cfg)
        weights, importance = w[0], i[0]
    i = torch.as_tensor(importance, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    gated = i >= cfg.tau
    split = gate_summary(gate_sums(w, gated, torch.ones_like(gated)))  # the trainer's shaping/* metrics
    return SparsitySummary(
        n_tokens=int(s.numel()),
        tau=float(cfg.tau),
        n_gated=int(gated.sum()),
        top10_share=top_share(s),  # the trainer's dependency/top10_share
        mean=float(s.mean()),
        max=float(s.max()),
        total=float(s.sum()),
        **split,
    )
