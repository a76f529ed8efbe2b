"""``pgpo inspect`` as a library call: :class:`InspectConfig` (every field is a flag of the command) and
:func:`inspect_answer`, which scores one answer and writes ``inspect.html``, ``inspect.png`` and ``tokens.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pgpo.shaping import PGPOShapingConfig


@dataclass
class InspectConfig:
    """Options of ``pgpo inspect``."""

    model: str = field(metadata={"help": "local model folder, hub id (offline cache), 'tiny-qwen' or 'demo-vlm'"})
    image: list[str] = field(metadata={"help": "image file(s) of the prompt"})
    prompt: str = field(metadata={"help": "the question about the image(s)"})
    out: str = field(metadata={"help": "output folder (inspect.html, inspect.png, tokens.json)"})
    completion: str | None = field(default=None, metadata={"help": "answer to score (default: generate it greedily)"})
    max_new_tokens: int = field(default=64, metadata={"help": "generation budget without --completion"})
    dependency_estimator: Literal["k3", "kl"] = field(
        default="k3", metadata={"help": "dependency estimator (the paper's: k3)"}
    )
    text_only_mode: Literal["mask", "remove_reindex", "blank"] = field(
        default="mask", metadata={"help": "the blind pass (the paper's: mask, positions kept)"}
    )
    pgpo_tau: float = field(default=PGPOShapingConfig.tau, metadata={"help": "PGPO's gate on I (Eq. 6)"})
    pgpo_beta: float = field(default=PGPOShapingConfig.beta, metadata={"help": "PGPO's amplification (Eq. 6)"})
    temperature: float = field(default=1.0, metadata={"help": "the rollouts' temperature (both passes)"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})

    def __post_init__(self):
        if not self.prompt.strip():
            raise ValueError("the prompt is empty (--prompt)")
        if self.completion is not None and not self.completion.strip():
            raise ValueError("the completion is empty (--completion); leave it out to generate one")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        self.shaping()  # tau / beta ranges, naming the option
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")

    def shaping(self) -> PGPOShapingConfig:
        return PGPOShapingConfig(tau=self.pgpo_tau, beta=self.pgpo_beta)


def load_images(paths: list[str]) -> list:
    """Open every image as RGB; ``ValueError`` naming the file when one is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ValueError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
    return images


def write_outputs(result, summary, out: Path, model_name: str, images: list) -> None:
    """``inspect.html`` (tokens coloured by I, tau marked, S and w~ on hover), ``inspect.png`` and ``tokens.json``."""
    from pgpo.inspection.render import render_html, render_png

    out.mkdir(parents=True, exist_ok=True)
    title = f"Visual dependency per token: {model_name}"
    note = (
        f"{'generated greedily' if result.generated else 'given completion'}; estimator {result.estimator}; blind "
        f"pass: {result.text_only_mode}; temperature {result.temperature:g}; tau {result.tau:g}, beta {result.beta:g}"
    )
    page = render_html(
        result.tokens,
        result.importance,
        result.tau,
        title=title,
        prompt=result.prompt,
        images=images,
        summary=summary.rows(),
        token_ids=result.token_ids,
        extra={"S": result.scores, "w~": result.weights, "logp": result.logprobs},
        note=note,
    )
    (out / "inspect.html").write_text(page, encoding="utf-8")
    render_png(result.tokens, result.importance, result.tau, out / "inspect.png", title=title, weights=result.weights)
    data = {
        "model": model_name,
        **{k: v for k, v in result.to_dict().items() if k not in ("tokens", "token_ids", "scores", "importance")},
        "summary": vars(summary),
        "tokens": [
            {"index": i, "token": t, "id": tid, "S": s, "I": imp, "w": w, "gated": imp >= result.tau, "logprob": lp}
            for i, (t, tid, s, imp, w, lp) in enumerate(
                zip(result.tokens, result.token_ids, result.scores, result.importance, result.weights, result.logprobs)
            )
        ],
    }
    for key in ("weights", "logprobs"):
        data.pop(key, None)
    (out / "tokens.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def inspect_answer(cfg: InspectConfig, model=None, processor=None):
    """Score one answer and write the three files; returns ``(TokenDependency, SparsitySummary)``."""
    from pgpo.inspection.tokens import score_tokens, sparsity_summary

    images = load_images(cfg.image)
    if model is None:
        from pgpo.models import load_model

        model, processor = load_model(cfg.model, device=cfg.device)
    result = score_tokens(
        model,
        processor,
        images,
        cfg.prompt,
        cfg.completion,
        max_new_tokens=cfg.max_new_tokens,
        estimator=cfg.dependency_estimator,
        text_only_mode=cfg.text_only_mode,
        temperature=cfg.temperature,
        shaping=cfg.shaping(),
    )
    summary = sparsity_summary(result.scores, cfg.shaping(), result.importance, result.weights)
    write_outputs(result, summary, Path(cfg.out), cfg.model, images)
    return result, summary
