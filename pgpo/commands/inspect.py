"""``pgpo inspect``: which tokens of an answer see the image (see ``docs/inspect.md``).

Example::

    pgpo inspect --model ckpt/ --image cat.png --prompt "How many cats?" --out inspect_out/

writes ``inspect_out/inspect.html`` (tokens coloured by visual dependency), ``inspect_out/inspect.png`` and
``inspect_out/tokens.json``, and prints the sparsity summary. ``--model tiny-qwen`` uses the tiny random Qwen2.5-VL
(smoke tests; its answers are noise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgpo.inputs import TEXT_ONLY_MODES
from pgpo.models import TINY_QWEN as TINY_MODEL


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgpo inspect",
        description="Per-token visual dependency KL(with image || text only) of one answer, as HTML + PNG + JSON.",
    )
    p.add_argument("--model", required=True, help=f"local model folder or hub id (offline cache), or {TINY_MODEL!r}")
    p.add_argument("--image", action="append", required=True, metavar="FILE", help="image file, repeatable")
    p.add_argument("--prompt", required=True, help="the question about the image(s)")
    p.add_argument("--completion", default=None, help="answer to score (default: generate it greedily)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation budget without --completion (64)")
    p.add_argument(
        "--threshold", type=float, default=None, help="fixed gate tau (default: PGPO's 0.8-quantile of this answer)"
    )
    p.add_argument("--text-only-mode", choices=TEXT_ONLY_MODES, default="remove", help="the no-image control")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature applied to both distributions (1.0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="output folder")
    return p


class InputError(ValueError):
    """A problem with what the user passed (exit code 2)."""


def load_images(paths: list[str]) -> list:
    """Open every image as RGB; :class:`InputError` naming the file when one is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"cannot read image {path}: {err}") from err
    return images


def print_summary(summary, result, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="visual dependency of the answer", show_header=False)
    table.add_column(style="dim")
    table.add_column()
    for label, value in summary.rows():
        table.add_row(label, value)
    console = Console()
    console.print(table)
    top = sorted(range(len(result.scores)), key=lambda i: -result.scores[i])[:5]
    shown = ", ".join(f"{json.dumps(result.tokens[i], ensure_ascii=False)} {result.scores[i]:.3g}" for i in top)
    console.print(f"most image-dependent tokens: {shown}", highlight=False)
    console.print(f"wrote {out / 'inspect.html'}, {out / 'inspect.png'}, {out / 'tokens.json'}", highlight=False)


def write_outputs(result, summary, out: Path, model_name: str, images: list) -> None:
    """``inspect.html``, ``inspect.png`` and ``tokens.json`` under ``out``."""
    from pgpo.inspect import render_html, render_png

    out.mkdir(parents=True, exist_ok=True)
    tau = summary.threshold
    title = f"Visual dependency per token: {model_name}"
    note = (
        f"{'generated greedily' if result.generated else 'given completion'}; text-only control: "
        f"{result.text_only_mode}; temperature {result.temperature:g}"
    )
    page = render_html(
        result.tokens,
        result.scores,
        tau,
        title=title,
        prompt=result.prompt,
        images=images,
        summary=summary,
        token_ids=result.token_ids,
        logprobs=result.logprobs,
        note=note,
    )
    (out / "inspect.html").write_text(page, encoding="utf-8")
    render_png(result.tokens, result.scores, tau, out / "inspect.png", title=title)
    data = {
        "model": model_name,
        "prompt": result.prompt,
        "completion": result.completion,
        "generated": result.generated,
        "text_only_mode": result.text_only_mode,
        "temperature": result.temperature,
        "n_images": result.n_images,
        "summary": vars(summary),
        "tokens": [
            {"index": i, "token": t, "id": tid, "dependency": s, "gated": s > tau, "logprob": lp}
            for i, (t, tid, s, lp) in enumerate(zip(result.tokens, result.token_ids, result.scores, result.logprobs))
        ],
    }
    (out / "tokens.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.prompt.strip():
            raise InputError("the prompt is empty (--prompt)")
        if args.completion is not None and not args.completion.strip():
            raise InputError("the completion is empty (--completion); leave it out to generate one")
        if args.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        if args.temperature <= 0:
            raise InputError(f"--temperature must be > 0, got {args.temperature}")
        images = load_images(args.image)
        from pgpo.models import load_model

        model, processor = load_model(args.model, device=args.device)

        from pgpo.inspect import score_tokens, sparsity_summary

        result = score_tokens(
            model,
            processor,
            images,
            args.prompt,
            args.completion,
            max_new_tokens=args.max_new_tokens,
            text_only_mode=args.text_only_mode,
            temperature=args.temperature,
        )
        summary = sparsity_summary(result.scores, args.threshold)
    except ValueError as err:  # InputError, and input problems found while scoring (e.g. an empty completion)
        print(f"pgpo inspect: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_outputs(result, summary, out, args.model, images)
    print_summary(summary, result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
