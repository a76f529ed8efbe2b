"""``pgpo make-tiny OUT_DIR``: save the tiny random Qwen2.5-VL (real Qwen tokenizer) for offline runs and tests."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgpo make-tiny", description=__doc__)
    parser.add_argument("out_dir", help="folder to write config, weights and processor to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    print(f"saved tiny Qwen2.5-VL to {save_tiny_qwen25vl(args.out_dir, seed=args.seed)}")
    return 0
