"""Which tokens of an answer see the image: score one answer (:mod:`~pgpo.inspection.tokens`) and draw it
(:mod:`~pgpo.inspection.render`). ``pgpo inspect`` is the command; see ``docs/inspect.md``."""

from pgpo.inspection.render import render_html, render_png
from pgpo.inspection.tokens import SparsitySummary, TokenDependency, decode_tokens, score_tokens, sparsity_summary

__all__ = [
    "SparsitySummary",
    "TokenDependency",
    "decode_tokens",
    "render_html",
    "render_png",
    "score_tokens",
    "sparsity_summary",
]
