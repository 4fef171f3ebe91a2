"""``python -m pixelfly``: the library's main job from the command line.

The ``demo`` command (the default) runs :mod:`pixelfly.experiments.demo`, which needs the
``experiments`` extra (``pip install pixelfly[experiments]``: matplotlib, tqdm,
scikit-learn); ``plan`` and ``layout`` need only the library.

    python -m pixelfly                      # demo: train dense vs Pixelfly MLP-Mixer on digits
    python -m pixelfly demo --model gpt2 --budget 0.25 --steps 300
    python -m pixelfly plan --model gpt2-small --budget 0.25
    python -m pixelfly layout --rows 16 --cols 32 --factors 2
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import defaults


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
    if args.model == "gpt2-small":
        from .budget import allocate_budget
        plan = allocate_budget(gpt2_small_layers(args.tokens), budget=args.budget,
                               low_rank_fraction=args.low_rank_fraction, block_size=args.block)
        print(f"GPT-2-small linear layers (HF shapes), T={args.tokens} tokens, budget {args.budget}, "
              f"block {args.block}")
        print(plan)
        return
    from .experiments.demo import DEMO_OVERRIDES
    from .models import build_model, example_input
    from .convert import plan as make_plan
    model = build_model(args.model, **DEMO_OVERRIDES[args.model])
    x = example_input(args.model, model.config, batch=args.batch)
    print(make_plan(model, x, budget=args.budget, low_rank_fraction=args.low_rank_fraction,
                    block_size=args.block))


def cmd_demo(args):
    try:
        from tqdm import tqdm  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the demo needs the experiments extra ({e.name} is missing): "
                          "pip install 'pixelfly[experiments]'") from None
    from .experiments.demo import main_demo
    main_demo(args)


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m pixelfly", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    demo = sub.add_parser("demo", help="train dense vs Pixelfly (the default command)")
    from .experiments.demo import add_arguments
    add_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    plan = sub.add_parser("plan", help="print the budget plan for a named model")
    plan.add_argument("--model", choices=["mixer", "vit", "gpt2", "gpt2-small"], default="gpt2-small")
    plan.add_argument("--budget", type=float, default=defaults.BUDGET)
    plan.add_argument("--low-rank-fraction", type=float, default=defaults.LOW_RANK_FRACTION)
    plan.add_argument("--tokens", type=int, default=1024, help="tokens per step (gpt2-small)")
    plan.add_argument("--batch", type=int, default=64, help="batch for tracing named models")
    plan.add_argument("--block", type=int, default=defaults.BLOCK_SIZE)
    plan.set_defaults(func=cmd_plan)
    lay = sub.add_parser("layout", help="draw a flat block butterfly layout")
    lay.add_argument("--rows", type=int, default=16)
    lay.add_argument("--cols", type=int, default=16)
    lay.add_argument("--factors", type=int, default=2)
    lay.add_argument("--butterfly-size", type=int, default=None)
    lay.set_defaults(func=cmd_layout)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["demo"] + argv
    args = ap.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
