"""``pgpo eval``: accuracy@k of a local model on multimodal reasoning benchmarks (see ``docs/eval.md``).

Example::

    pgpo eval --model ckpt/ --benchmark mathverse --benchmark mathvista --data data/ --k 8 --temperature 1.0 \\
        --max-new-tokens 2048 --out results/

``--data`` is given once per ``--benchmark`` (paired in order), or once as a folder holding one entry per benchmark
(``data/mathverse/``, ``data/mathvista.parquet``, ...). Rerunning the same command resumes: samples already in
``OUT/<benchmark>.jsonl`` are not generated again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgpo.benchmarks import BENCHMARKS, get_spec
from pgpo.data import DATA_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgpo eval",
        description="Evaluate a model on multimodal reasoning benchmarks (accuracy@k), resumably.",
    )
    p.add_argument("--model", required=True, help="local model folder (transformers / vLLM format)")
    p.add_argument(
        "--benchmark",
        action="append",
        required=True,
        metavar="NAME",
        help=f"benchmark to run, repeatable; one of: {', '.join(BENCHMARKS)}",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="PATH",
        help="benchmark data: one per --benchmark, or one folder with an entry per benchmark "
        "(parquet / jsonl / json / save_to_disk folder / folder with images)",
    )
    p.add_argument("--k", type=int, default=1, help="samples per question (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="generation budget per sample (default 1024)")
    p.add_argument("--out", required=True, help="output folder for <benchmark>.jsonl, summary.md, summary.json")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions of each benchmark")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default 8; vLLM 512)")
    p.add_argument("--split", default=None, help="split of a save_to_disk DatasetDict (default: the usual one)")
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto", help="generation backend")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def resolve_data(benchmarks: list[str], data: list[str]) -> list[tuple[str, Path]]:
    """Pair each benchmark with its data path (see the module docstring)."""
    names = [get_spec(b).name for b in benchmarks]
    paths = [Path(d).expanduser() for d in data]
    if len(paths) == len(names) and not (len(paths) == 1 and _entry(paths[0], names[0]) is not None):
        return list(zip(names, paths))
    if len(paths) != 1:
        raise ValueError(f"got {len(names)} --benchmark and {len(paths)} --data; give one --data per benchmark or one")
    root = paths[0]
    pairs = []
    for name in names:
        entry = _entry(root, name)
        if entry is None:
            tried = ", ".join(str(root / (name + s)) for s in ("", *DATA_SUFFIXES))
            raise ValueError(f"no data for {name} under {root} (tried {tried})")
        pairs.append((name, entry))
    return pairs


def _entry(root: Path, name: str) -> Path | None:
    spec = get_spec(name)
    candidates = {name, spec.name, spec.hf_id.split("/")[-1], spec.hf_id.split("/")[-1].lower()}
    for cand in candidates:
        for suffix in ("", *DATA_SUFFIXES):
            path = root / (cand + suffix)
            if path.exists():
                return path
    return None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from pgpo.evaluate import evaluate

    try:
        pairs = resolve_data(args.benchmark, args.data)
        evaluate(
            args.model,
            pairs,
            args.out,
            k=args.k,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            batch_size=args.batch_size,
            split=args.split,
            backend=args.backend,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"pgpo eval: error: {err}", file=sys.stderr)
        return 2
    print(f"results in {Path(args.out) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
