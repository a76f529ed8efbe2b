"""``pgpo make-tiny OUT_DIR [--arch NAME]``: save a tiny random VLM of one family (real processor) for offline runs
and tests; ``--arch`` is a transformers model type (docs/families.md), the default the tiny Qwen2.5-VL."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from pgpo.models.tiny import DEFAULT_ARCH, FAMILIES, save_tiny

    parser = argparse.ArgumentParser(prog="pgpo make-tiny", description=__doc__)
    parser.add_argument("out_dir", help="folder to write config, weights and processor to")
    parser.add_argument(
        "--arch", default=DEFAULT_ARCH, choices=list(FAMILIES), help=f"model family (default {DEFAULT_ARCH})"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    family = FAMILIES[args.arch]
    print(f"saved tiny {family.label} ({args.arch}) to {save_tiny(args.out_dir, args.arch, seed=args.seed)}")
    if family.refused:
        print(f"note: pgpo refuses {family.label} for visual dependency: {family.refused}")
    return 0
