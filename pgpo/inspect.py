"""Which tokens of an answer see the image: per-token visual dependency of one completion, as numbers, HTML and PNG.

Three layers, usable on their own:

* :func:`score_tokens` runs a Hugging Face VLM on one prompt with its image(s): it generates the answer greedily when
  none is given, and returns :class:`TokenDependency` -- each completion token's id, its decoded text and
  ``S_t = KL(pi(.|I, q, o_<t) || pi(.|q, o_<t))`` from :func:`pgpo.dependency.compute_visual_dependency` (the same
  function the trainer uses, so the numbers are the ones PGPO shapes with).
* :func:`sparsity_summary` condenses the scores: the gate threshold (PGPO's quantile gate on this answer, or a fixed
  one), the fraction of tokens over it, the share of the total dependency on the top 10% tokens, mean and max.
* :func:`render_html` and :func:`render_png` are pure renderers (lists of strings and floats in, a page / a figure
  out), so any other code -- the demo report, a notebook -- can draw the same pictures from its own scores.

See ``docs/inspect.md``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pgpo.data import build_messages
from pgpo.dependency import compute_visual_dependency
from pgpo.inputs import TEXT_ONLY_MODES, build_text_only_batch, image_token_spec
from pgpo.shaping import PGPOShapingConfig, gate_threshold

COLORMAP = "YlOrRd"  # sequential: white-ish (no dependency) -> dark red (the most image-dependent token)
TOP_SHARE_FRACTION = 0.1  # "top 10%" in the sparsity summary (same definition as the trainer's dependency/top10_share)


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TokenDependency:
    """Per-token visual dependency of one completion (all lists have one entry per completion token)."""

    tokens: list[str]  # decoded text of each token; "".join(tokens) == the decoded completion (special tokens kept)
    token_ids: list[int]
    scores: list[float]  # S_t >= 0 (nats)
    logprobs: list[float]  # image-conditioned log-prob of each token (at `temperature`)
    prompt: str  # the user's question
    prompt_text: str  # the rendered chat prompt (with the image placeholders)
    completion: str  # the completion text (special tokens dropped)
    generated: bool  # True when the completion was generated here (greedy)
    text_only_mode: str = "remove"
    temperature: float = 1.0
    n_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    param = next(iter(model.parameters()), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def _to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
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
    text_only_mode: str = "remove",
    temperature: float = 1.0,
    add_end_token: bool = True,
) -> TokenDependency:
    """Visual dependency of every token of the answer to ``prompt_text`` about ``images``.

    Args:
        model: a HF VLM whose config names its image tokens (``image_token_id`` and, for Qwen-style spans,
            ``vision_start_token_id`` / ``vision_end_token_id``): Qwen2/2.5/3-VL, pgpo's ``pgpo.vlm``, LLaVA-style.
        processor: its processor (``apply_chat_template`` + ``__call__(images=, text=)``).
        images: one PIL image, a list of them, or ``None`` / ``[]`` (then every score is 0: the control).
        prompt_text: the user's question.
        completion_text: the answer to score; ``None`` generates it greedily (``max_new_tokens`` at most). A given
            text is tokenized without special tokens and followed by the model's end token (``add_end_token``), as
            the policy would have produced it.
        text_only_mode: ``remove`` | ``blank`` | ``noise`` (see :mod:`pgpo.inputs`).
        temperature: applied to both distributions (use the rollouts' sampling temperature).
    """
    if not prompt_text or not prompt_text.strip():
        raise ValueError("the prompt is empty")
    if text_only_mode not in TEXT_ONLY_MODES:
        raise ValueError(f"text_only_mode must be one of {TEXT_ONLY_MODES}, got {text_only_mode!r}")
    if completion_text is None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    image_list = _as_image_list(images)
    tok = getattr(processor, "tokenizer", processor)
    device, dtype = _model_device_dtype(model)

    chat = processor.apply_chat_template(
        build_messages(prompt_text, len(image_list), "{question}"), add_generation_prompt=True, tokenize=False
    )
    enc = processor(images=[image_list] if image_list else None, text=[chat], return_tensors="pt")
    enc = _to_device(dict(enc), device, dtype)
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
    text_batch = build_text_only_batch(batch, T, image_token_spec(model.config), pad_id, mode=text_only_mode)
    dep = compute_visual_dependency(
        model, batch, text_batch, T, torch.ones_like(comp), temperature=temperature, return_logps=True
    )
    return TokenDependency(
        tokens=decode_tokens(tok, ids),
        token_ids=[int(i) for i in ids],
        scores=[float(s) for s in dep.scores[0].float().cpu()],
        logprobs=[float(s) for s in dep.logps[0].float().cpu()],
        prompt=prompt_text,
        prompt_text=chat,
        completion=completion_text if completion_text is not None else tok.decode(ids, skip_special_tokens=True),
        generated=completion_text is None,
        text_only_mode=text_only_mode,
        temperature=float(temperature),
        n_images=len(image_list),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class SparsitySummary:
    """How concentrated the visual dependency of one answer is."""

    n_tokens: int
    threshold: float  # the gate tau
    gate: str  # how tau was chosen, e.g. "quantile q=0.8 (PGPO default)" or "fixed"
    gated_frac: float  # fraction of tokens with S > tau
    n_gated: int
    top10_share: float  # share of sum(S) carried by the top 10% tokens (ceil, at least 1)
    mean: float
    max: float
    total: float

    def rows(self) -> list[tuple[str, str]]:
        """(label, formatted value) pairs, for tables."""
        return [
            ("tokens", str(self.n_tokens)),
            ("gate threshold", f"{self.threshold:.4g}  ({self.gate})"),
            ("tokens over the gate", f"{self.n_gated} ({self.gated_frac:.1%})"),
            ("top-10% tokens' share of total dependency", f"{self.top10_share:.1%}"),
            ("mean dependency (nats)", f"{self.mean:.4g}"),
            ("max dependency (nats)", f"{self.max:.4g}"),
            ("total dependency (nats)", f"{self.total:.4g}"),
        ]


def sparsity_summary(
    scores: Sequence[float], threshold: float | None = None, cfg: PGPOShapingConfig | None = None
) -> SparsitySummary:
    """Summarise one answer's scores. ``threshold=None`` uses ``cfg``'s gate (default: PGPO's 0.8-quantile gate)
    computed on this answer alone; a number is a fixed gate. A token is gated when ``S > threshold`` (as in PGPO)."""
    s = torch.tensor([float(x) for x in scores], dtype=torch.float64)
    if s.numel() == 0:
        raise ValueError("no scores to summarise")
    if not torch.isfinite(s).all():
        raise ValueError("scores must be finite")
    cfg = cfg or PGPOShapingConfig()
    if threshold is None:
        tau = gate_threshold(s[None], torch.ones(1, s.numel(), dtype=torch.bool), cfg)
        gate = f"quantile q={cfg.quantile:g} of this answer" if cfg.gate == "quantile" else "fixed (config)"
    else:
        tau, gate = float(threshold), "fixed"
    k = max(1, math.ceil(TOP_SHARE_FRACTION * s.numel()))
    total = float(s.sum())
    n_gated = int((s > tau).sum())
    return SparsitySummary(
        n_tokens=int(s.numel()),
        threshold=float(tau),
        gate=gate,
        gated_frac=n_gated / s.numel(),
        n_gated=n_gated,
        top10_share=float(s.topk(k).values.sum()) / total if total > 0 else 0.0,
        mean=float(s.mean()),
        max=float(s.max()),
        total=total,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Rendering (pure: lists of strings and floats in)
# ----------------------------------------------------------------------------------------------------------------------


def _check_pair(tokens: Sequence[str], scores: Sequence[float]) -> list[float]:
    if len(tokens) != len(scores):
        raise ValueError(f"{len(tokens)} tokens but {len(scores)} scores")
    vals = [float(x) for x in scores]
    if any(not math.isfinite(v) for v in vals):
        raise ValueError("scores must be finite")
    return vals


def _vmax(vals: Sequence[float], threshold: float | None) -> float:
    top = max([*vals, threshold if threshold is not None and math.isfinite(threshold) else 0.0, 0.0])
    return top if top > 0 else 1.0


def _rgb(value: float, vmax: float, cmap: str = COLORMAP) -> tuple[int, int, int]:
    from matplotlib import colormaps

    r, g, b, _ = colormaps[cmap](min(max(value / vmax, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text_colour(rgb: tuple[int, int, int]) -> str:
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return "#000" if luminance > 140 else "#fff"


def _png_b64(image) -> tuple[str, int]:
    """Base64 PNG of a PIL image, PNG/JPEG bytes, or a path; and the image's width."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, Path)):
        image = Image.open(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii"), image.width


def _img_tag(image, k: int) -> str:
    data, width = _png_b64(image)
    crisp = ' style="image-rendering:pixelated"' if width < 200 else ""  # small images: show their real pixels
    return f'<img alt="image {k + 1}"{crisp} src="data:image/png;base64,{data}">'


def _visible(token: str) -> str:
    """Escaped HTML for a token: newlines shown as a return arrow plus a line break, tabs as an arrow."""
    if token == "":
        return '<span class="empty">\u2205</span>'
    text = html.escape(token).replace("\t", "\u2192\t")
    return text.replace("\r\n", "\u21b5<br>").replace("\n", "\u21b5<br>")


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px;margin:0 0 12px}
h2{font-size:15px;margin:20px 0 8px;color:#444}
.top{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.images img{width:200px;max-height:280px;object-fit:contain;border:1px solid #ccc;margin:0 8px 8px 0}
.prompt{white-space:pre-wrap;background:#f5f5f5;border-radius:6px;padding:8px 10px;font-size:14px;max-width:640px}
.tokens{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,monospace;font-size:15px;line-height:2.1;
 white-space:pre-wrap;word-break:break-word;border:1px solid #ddd;border-radius:6px;padding:10px 12px}
.tok{padding:2px 1px;margin:0 1px;border-radius:3px;cursor:default;box-shadow:inset 0 0 0 1px rgba(0,0,0,.08)}
.tok.gated{outline:2px solid #1f4fd1;outline-offset:-1px;font-weight:600}
.tok:hover{outline:2px solid #000}
.empty{color:#999}
.legend{display:flex;align-items:center;gap:28px;font-size:13px;margin:10px 0;flex-wrap:wrap}
.scale{width:360px}
.bar{position:relative;width:360px;height:16px;border:1px solid #999}
.mark{position:absolute;top:-2px;bottom:-5px;width:0;border-left:2px dashed #1f4fd1}
.ticks{position:relative;width:360px;height:15px;font-size:11px;color:#555}
.ticks span{position:absolute;white-space:nowrap}
.ticks .lo{left:0}.ticks .hi{right:0}
.ticks .tau{color:#1f4fd1;font-weight:600}
.swatch{display:inline-block;width:22px;height:14px;outline:2px solid #1f4fd1;outline-offset:-1px;vertical-align:middle}
table{border-collapse:collapse;font-size:13px}
td{border-bottom:1px solid #eee;padding:3px 12px 3px 0}
td:first-child{color:#555}
#info{font-family:ui-monospace,monospace;font-size:13px;min-height:18px;color:#333;margin:6px 0}
.note{color:#666;font-size:12px}
"""

_JS = """
(function(){
  var info=document.getElementById('info');
  document.querySelectorAll('.tok').forEach(function(el){
    el.addEventListener('mouseenter',function(){info.textContent=el.getAttribute('title');});
  });
})();
"""


def render_html(
    tokens: Sequence[str],
    scores: Sequence[float],
    threshold: float,
    title: str = "Visual dependency per token",
    prompt: str | None = None,
    images: Sequence | None = None,
    summary: SparsitySummary | dict | Sequence[tuple[str, str]] | None = None,
    token_ids: Sequence[int] | None = None,
    logprobs: Sequence[float] | None = None,
    note: str | None = None,
    cmap: str = COLORMAP,
) -> str:
    """A self-contained HTML page (inline CSS/JS, images as base64 PNG) of one answer's per-token dependency.

    Tokens are coloured on a sequential map from 0 to the largest score; tokens with ``S > threshold`` are outlined;
    hovering shows the exact value (``title`` attribute, mirrored in an info line). ``summary`` is a
    :class:`SparsitySummary`, a dict or ``(label, value)`` rows; it defaults to :func:`sparsity_summary` at
    ``threshold``. ``images`` are PIL images / PNG bytes / paths.
    """
    vals = _check_pair(tokens, scores)
    threshold = float(threshold)
    vmax = _vmax(vals, threshold)
    if summary is None and vals:
        summary = sparsity_summary(vals, threshold)
    if isinstance(summary, SparsitySummary):
        rows = summary.rows()
    elif isinstance(summary, dict):
        rows = [(str(k), f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in summary.items()]
    else:
        rows = list(summary or [])

    spans = []
    for i, (token, value) in enumerate(zip(tokens, vals)):
        rgb = _rgb(value, vmax, cmap)
        gated = value > threshold
        tip = f"#{i} {json.dumps(token, ensure_ascii=False)}"
        if token_ids is not None:
            tip += f"  id={int(token_ids[i])}"
        tip += f"  S={value:.6g}"
        if logprobs is not None:
            tip += f"  logp={float(logprobs[i]):.4g}"
        tip += "  (over the gate)" if gated else ""
        spans.append(
            f'<span class="tok{" gated" if gated else ""}" data-i="{i}" data-s="{value:.6g}" '
            f'style="background:{_hex(rgb)};color:{_text_colour(rgb)}" title="{html.escape(tip, quote=True)}">'
            f"{_visible(token)}</span>"
        )

    stops = ",".join(f"{_hex(_rgb(x / 10 * vmax, vmax, cmap))} {x * 10}%" for x in range(11))
    mark = min(max(threshold / vmax, 0.0), 1.0) * 100 if math.isfinite(threshold) else None
    tick_html = f'<span class="lo">0</span><span class="hi">{vmax:.3g}</span>'
    tau_html = ""
    if mark is not None:  # the threshold's label sits above the bar, so it never collides with the end labels
        shift = "0" if mark < 12 else "-100%" if mark > 88 else "-50%"
        tau_html = (
            f'<span class="tau" style="left:{mark:.2f}%;transform:translateX({shift})">\u03c4 = {threshold:.3g}</span>'
        )
    mark_html = f'<div class="mark" style="left:{mark:.2f}%"></div>' if mark is not None else ""
    image_html = "".join(_img_tag(img, k) for k, img in enumerate(images or []))
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    prompt_html = f'<h2>Prompt</h2><div class="prompt">{html.escape(prompt)}</div>' if prompt else ""
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="top">
<div class="images">{image_html}</div>
<div>{prompt_html}
<h2>Summary</h2><table>{table}</table></div>
</div>
<h2>Answer: each token coloured by its visual dependency S = KL(with image || text only)</h2>
<div class="legend"><span>S (nats)</span>
<div class="scale"><div class="ticks">{tau_html}</div>
<div class="bar" style="background:linear-gradient(to right,{stops})">{mark_html}</div>
<div class="ticks">{tick_html}</div></div>
<span><span class="swatch" style="background:#fff"></span> over the gate (S &gt; \u03c4 = {threshold:.4g})</span>
</div>
<div id="info">hover a token for its exact value</div>
<div class="tokens">{"".join(spans)}</div>
{note_html}
<script>{_JS}</script>
</body></html>
"""


def _label(token: str) -> str:
    return token.replace("\n", "\u21b5").replace("\t", "\u2192") or "\u2205"


def render_png(
    tokens: Sequence[str],
    scores: Sequence[float],
    threshold: float,
    path: str | Path,
    title: str | None = None,
    max_tokens: int = 400,
    wrap_chars: int = 110,
    dpi: int = 110,
    cmap: str = COLORMAP,
) -> Path:
    """A PNG of one answer's per-token dependency: the answer as wrapped, coloured text (a heatmap; tokens over the
    gate boxed) above a bar chart of ``S`` per token with the gate ``threshold`` as a dashed line.

    Only the first ``max_tokens`` tokens are drawn (noted in the title). Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    vals = _check_pair(tokens, scores)
    threshold = float(threshold)
    n_all = len(vals)
    tokens, vals = list(tokens)[:max_tokens], vals[:max_tokens]
    vmax = _vmax(vals, threshold)
    norm = Normalize(0.0, vmax)
    from matplotlib import colormaps

    cm = colormaps[cmap]

    # Layout of the wrapped text (monospace: one unit per character), newline tokens break the line.
    placed, line, col = [], 0, 0
    for i, token in enumerate(tokens):
        label = _label(token)
        width = max(1, len(label))
        if col > 0 and col + width > wrap_chars:
            line, col = line + 1, 0
        placed.append((i, label, line, col, width))
        col += width
        if "\n" in token:
            line, col = line + 1, 0
    n_lines = (placed[-1][2] + 1) if placed else 1

    text_h = 0.28 * n_lines + 0.4
    bar_h = 3.2
    fig = Figure(figsize=(12, text_h + bar_h + 0.9), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=[text_h, bar_h], hspace=0.35)
    ax_t = fig.add_subplot(grid[0])
    ax_b = fig.add_subplot(grid[1])

    ax_t.set_xlim(0, wrap_chars)
    ax_t.set_ylim(n_lines, 0)
    ax_t.axis("off")
    # One layout unit per character: size the monospace font (advance ~0.6 em) so that a unit holds one character.
    width_pt = ax_t.get_position().width * fig.get_figwidth() * 72
    fontsize = min(10.0, 0.95 * width_pt / (wrap_chars * 0.6))
    for i, label, ln, c, w in placed:
        colour = cm(norm(vals[i]))
        gated = vals[i] > threshold
        ax_t.add_patch(_rect((c, ln + 0.08), w, 0.84, colour, "#1f4fd1" if gated else "none", 1.6 if gated else 0.0))
        lum = 0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]
        ax_t.text(
            c + w / 2,
            ln + 0.5,
            label,
            ha="center",
            va="center",
            family="monospace",
            fontsize=fontsize,
            color="black" if lum > 0.55 else "white",
        )

    x = list(range(len(vals)))
    ax_b.bar(x, vals, color=[cm(norm(v)) for v in vals], edgecolor="#555", linewidth=0.3, width=0.85)
    ax_b.axhline(threshold, color="#1f4fd1", linestyle="--", linewidth=1.2, label=f"gate \u03c4 = {threshold:.3g}")
    ax_b.set_ylabel("S (nats)")
    ax_b.set_xlim(-0.6, max(len(vals), 1) - 0.4)
    if len(vals) <= 80:
        ax_b.set_xticks(x)
        ax_b.set_xticklabels([_label(t) for t in tokens], rotation=90, family="monospace", fontsize=7)
    else:
        ax_b.set_xlabel("token index")
    ax_b.legend(loc="upper right", fontsize=8, frameon=False)
    ax_b.spines[["top", "right"]].set_visible(False)
    head = title or "Visual dependency per token"
    if n_all > len(vals):
        head += f" (first {len(vals)} of {n_all} tokens)"
    fig.suptitle(head, fontsize=11)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def _rect(xy, w, h, face, edge, lw):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, facecolor=face, edgecolor=edge, linewidth=lw)
