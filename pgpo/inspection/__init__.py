"""Which tokens of an answer see the image: score one answer (:mod:`~pgpo.inspection.tokens`) and draw it
(:mod:`~pgpo.inspection.render`). ``pgpo inspect`` is the command; see ``docs/inspect.md``. Against ground truth:
:mod:`~pgpo.inspection.groundtruth` measures whether ``S`` finds the tokens of the taught completions that name what
is in the image."""

from pgpo.inspection.groundtruth import auroc, measure_perception, perception_stats, token_labels
from pgpo.inspection.render import render_html, render_png
from pgpo.inspection.tokens import SparsitySummary, TokenDependency, decode_tokens, score_tokens, sparsity_summary

__all__ = [
    "SparsitySummary",
    "TokenDependency",
    "auroc",
    "decode_tokens",
    "measure_perception",
    "perception_stats",
    "render_html",
    "render_png",
    "score_tokens",
    "sparsity_summary",
    "token_labels",
]
