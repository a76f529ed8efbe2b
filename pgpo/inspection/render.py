"""Pure renderers of one answer's per-token values: a self-contained HTML page and a PNG (a heatmap of the text above
a bar chart), with a threshold marked. Lists of strings and floats in, a page / a figure out, so the demo report, a
notebook or ``pgpo inspect`` draw the same pictures. ``pgpo inspect`` colours tokens by PGPO's importance ``I``
(Eqs. 4-5) with the gate ``tau`` marked, and shows ``S`` and ``w~`` on hover.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

COLORMAP = "YlOrRd"  # sequential: white-ish (no dependency) -> dark red (the most image-dependent token)


# ----------------------------------------------------------------------------------------------------------------------
# Rendering (pure: lists of strings and floats in)
# ----------------------------------------------------------------------------------------------------------------------


def _check_pair(tokens: Sequence[str], scores: Sequence[float]) -> list[float]:
    """The values as floats; ValueError when the lengths differ or a value is not finite."""
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
    values: Sequence[float],
    threshold: float,
    title: str = "Visual dependency per token",
    prompt: str | None = None,
    images: Sequence | None = None,
    summary: Mapping | Sequence[tuple[str, str]] | None = None,
    token_ids: Sequence[int] | None = None,
    extra: Mapping[str, Sequence[float]] | None = None,
    note: str | None = None,
    cmap: str = COLORMAP,
    value_label: str = "I",
    value_help: str = "normalised visual dependency (Eqs. 4-5)",
) -> str:
    """A self-contained HTML page (inline CSS/JS, images as base64 PNG) of one answer's per-token values.

    Tokens are coloured on a sequential map from 0 to the largest value; tokens with ``value >= threshold`` are
    outlined; hovering shows the exact value and every column of ``extra`` (e.g. ``{"S": ..., "w~": ...}``) in the
    ``title`` attribute, mirrored in an info line. ``summary`` is a dict or ``(label, value)`` rows (a
    :class:`~pgpo.inspection.tokens.SparsitySummary`'s ``rows()``). ``images`` are PIL images / PNG bytes / paths.
    """
    vals = _check_pair(tokens, values)
    columns = {name: _check_pair(tokens, col) for name, col in (extra or {}).items()}
    threshold = float(threshold)
    vmax = _vmax(vals, threshold)
    if isinstance(summary, Mapping):
        rows = [(str(k), f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in summary.items()]
    else:
        rows = list(summary or [])

    spans = []
    for i, (token, value) in enumerate(zip(tokens, vals)):
        rgb = _rgb(value, vmax, cmap)
        gated = value >= threshold
        tip = f"#{i} {json.dumps(token, ensure_ascii=False)}"
        if token_ids is not None:
            tip += f"  id={int(token_ids[i])}"
        tip += f"  {value_label}={value:.4g}"
        tip += "".join(f"  {name}={col[i]:.4g}" for name, col in columns.items())
        tip += "  (at or above the gate)" if gated else ""
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
<h2>Answer: each token coloured by {html.escape(value_label)}, the {html.escape(value_help)}</h2>
<div class="legend"><span>{html.escape(value_label)}</span>
<div class="scale"><div class="ticks">{tau_html}</div>
<div class="bar" style="background:linear-gradient(to right,{stops})">{mark_html}</div>
<div class="ticks">{tick_html}</div></div>
<span><span class="swatch" style="background:#fff"></span> at or above the gate ({html.escape(value_label)} &ge; \u03c4 = {threshold:.4g})</span>
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
    values: Sequence[float],
    threshold: float,
    path: str | Path,
    title: str | None = None,
    max_tokens: int = 400,
    wrap_chars: int = 110,
    dpi: int = 110,
    cmap: str = COLORMAP,
    value_label: str = "I",
    weights: Sequence[float] | None = None,
    marked: Sequence[bool] | None = None,
    marked_label: str = "ground-truth perception token",
) -> Path:
    """A PNG of one answer's per-token values: the answer as wrapped, coloured text (a heatmap; tokens at or above
    the gate boxed) above a bar chart of the values with the gate ``threshold`` as a dashed line, and, when
    ``weights`` are given, PGPO's weight ``w~`` per token as a line on a second axis. Tokens where ``marked`` is
    true (say the ground-truth perception tokens of :mod:`pgpo.inspection.groundtruth`) are underlined in red in the
    text and flagged with a red triangle under their bar.

    Only the first ``max_tokens`` tokens are drawn (noted in the title). Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    vals = _check_pair(tokens, values)
    w_all = _check_pair(tokens, weights) if weights is not None else None
    if marked is not None and len(marked) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(marked)} marks")
    marks = [bool(m) for m in marked][:max_tokens] if marked is not None else None
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
        gated = vals[i] >= threshold
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
        if marks is not None and marks[i]:
            ax_t.plot([c + 0.1, c + w - 0.1], [ln + 0.95, ln + 0.95], color="#d62728", linewidth=2.2)

    x = list(range(len(vals)))
    ax_b.bar(x, vals, color=[cm(norm(v)) for v in vals], edgecolor="#555", linewidth=0.3, width=0.85)
    ax_b.axhline(threshold, color="#1f4fd1", linestyle="--", linewidth=1.2, label=f"gate \u03c4 = {threshold:.3g}")
    ax_b.set_ylabel(value_label)
    if marks is not None and any(marks):
        hit = [i for i, m in enumerate(marks) if m]
        ax_b.scatter(
            hit, [0] * len(hit), marker="^", color="#d62728", s=28, zorder=4, label=marked_label, clip_on=False
        )
    if w_all is not None:
        ax_w = ax_b.twinx()
        ax_w.plot(x, w_all[: len(vals)], color="#222", marker="o", markersize=2.5, linewidth=1.0, label="w~ (Eq. 7)")
        ax_w.axhline(1.0, color="#888", linewidth=0.6, linestyle=":")
        ax_w.set_ylabel("w~")
        ax_w.spines[["top"]].set_visible(False)
        ax_w.legend(loc="upper left", fontsize=8, frameon=False)
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
