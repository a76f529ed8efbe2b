"""``python -m pgpo.tasks``: print the chance table (and optionally save one example image per family)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pgpo.tasks.chance import chance_report, format_chance_report
from pgpo.tasks.families import DEFAULT_FAMILIES, FAMILIES
from pgpo.tasks.generate import DEFAULT_SIZE, generate, make_split


def save_examples(out_dir: str | Path, families=tuple(FAMILIES), size: int = DEFAULT_SIZE, seed: int = 0) -> list[Path]:
    """Write ``tasks_<family>.png`` (one test-split example each) and return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fam in families:
        s = generate(fam, 1, seed, size, split="test")[0]
        path = out / f"tasks_{fam}.png"
        s["image"].save(path)
        print(f"{path}: {s['question']} -> {s['answer']}   (choices {s['choices']})")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pgpo.tasks", description=__doc__)
    ap.add_argument("--n-train", type=int, default=4000, help="train samples in all (spread over the families)")
    ap.add_argument("--n-test", type=int, default=2000, help="test samples in all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help="comma-separated; 'all' for every family")
    ap.add_argument(
        "--easy-vqa", action="store_true", help="also report the easy-VQA adapter (balanced, at most 12000/3000)"
    )
    ap.add_argument("--save-examples", metavar="DIR", help="write one tasks_<family>.png per family into DIR")
    args = ap.parse_args(argv)

    families = tuple(FAMILIES) if args.families == "all" else tuple(args.families.split(","))
    if args.save_examples:
        save_examples(args.save_examples, families, args.size, args.seed)
    t0 = time.perf_counter()
    train = make_split("train", args.n_train, args.seed, families, args.size)
    test = make_split("test", args.n_test, args.seed, families, args.size)
    secs = time.perf_counter() - t0
    print(f"\n# Chance table: {args.n_train} train / {args.n_test} test, seed {args.seed}, {args.size}px "
          f"({secs:.1f} s to draw)\n")  # fmt: skip
    print(format_chance_report(chance_report(train, test)))
    if args.easy_vqa:
        from pgpo.tasks.easyvqa import load_easy_vqa

        # Balanced subsets are capped by the rarest answers (391 'triangle' questions in test, 604 'brown' in train).
        etrain = load_easy_vqa("train", min(args.n_train, 12000), args.seed)
        etest = load_easy_vqa("test", min(args.n_test, 3000), args.seed)
        print(f"\n# easy-VQA (balanced): {len(etrain)} train / {len(etest)} test questions\n")
        print(format_chance_report(chance_report(etrain, etest)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
