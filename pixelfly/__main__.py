"""``python -m pixelfly``: the library's main job from the command line.

    python -m pixelfly                 # overview: a flat butterfly mask + a GPT-2-small budget plan
    python -m pixelfly layout --rows 16 --cols 32 --factors 2
    python -m pixelfly plan --budget 0.25 --tokens 1024
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def render(layout: np.ndarray) -> str:
    """Text picture of a block layout: one character per block."""
    return "\n".join("".join("#" if v else "." for v in row) for row in layout)


def gpt2_small_layers(tokens: int, n_layer: int = 12, d: int = 768):
    layers = []
    for i in range(n_layer):
        layers += [(f"h.{i}.attn.c_attn", 3 * d, d, tokens), (f"h.{i}.attn.c_proj", d, d, tokens),
                   (f"h.{i}.mlp.c_fc", 4 * d, d, tokens), (f"h.{i}.mlp.c_proj", d, 4 * d, tokens)]
    return layers


def cmd_layout(args):
    from .layouts import flat_butterfly_layout
    lay = flat_butterfly_layout(args.rows, args.cols, args.factors, args.butterfly_size)
    print(f"flat block butterfly, {args.rows}x{args.cols} blocks, m={args.factors}, "
          f"density {lay.mean():.4f}")
    print(render(lay))


def cmd_plan(args):
    from .budget import allocate_budget
    plan = allocate_budget(gpt2_small_layers(args.tokens), budget=args.budget,
                           low_rank_fraction=args.low_rank_fraction, block_size=args.block)
    print(f"GPT-2-small linear layers, T={args.tokens}, budget {args.budget}, block {args.block}")
    print(plan)


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m pixelfly", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    lay = sub.add_parser("layout", help="draw a flat block butterfly layout")
    lay.add_argument("--rows", type=int, default=16)
    lay.add_argument("--cols", type=int, default=16)
    lay.add_argument("--factors", type=int, default=2)
    lay.add_argument("--butterfly-size", type=int, default=None)
    lay.set_defaults(func=cmd_layout)
    plan = sub.add_parser("plan", help="budget plan for GPT-2-small-shaped layers")
    plan.add_argument("--budget", type=float, default=0.25)
    plan.add_argument("--low-rank-fraction", type=float, default=0.25)
    plan.add_argument("--tokens", type=int, default=1024)
    plan.add_argument("--block", type=int, default=32)
    plan.set_defaults(func=cmd_plan)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.cmd is None:
        cmd_layout(ap.parse_args(["layout"]))
        print()
        cmd_plan(ap.parse_args(["plan"]))
        return 0
    try:
        args.func(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
