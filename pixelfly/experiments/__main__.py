"""``python -m pixelfly.experiments cv|lm|ntk|lra [--quick] [--seeds N] [--out DIR]``."""
from __future__ import annotations

import argparse
import importlib
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pixelfly.experiments",
                                 description="The seed paper's tables at laptop scale.")
    ap.add_argument("table", choices=("cv", "lm", "ntk", "lra"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline (< 2 min), not the numbers")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: the table's)")
    ap.add_argument("--out", default="results", help="output directory (default: results)")
    ap.add_argument("--estimate", action="store_true",
                    help="only time a few steps of each configuration and print the projected run time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    mod = importlib.import_module(f"pixelfly.experiments.{args.table}")
    from .results import machine_info, markdown
    size = "quick" if args.quick else "default"
    t0 = time.time()
    if args.estimate:
        try:
            secs = mod.estimate(size, seeds=args.seeds)
        except FileNotFoundError as e:
            print(f"{args.table}: data not available: {e}", file=sys.stderr)
            return 2
        info = machine_info()
        print(f"{args.table} ({size}): projected {secs / 60:.1f} min of training on this machine now "
              f"({info['torch_threads']} threads, load average {info['loadavg_1_5_15']}); "
              f"measured in {time.time() - t0:.0f} s")
        return 0
    try:
        rows, extra = mod.run(size, seeds=args.seeds, out_dir=args.out)
    except FileNotFoundError as e:
        print(f"{args.table}: data not available: {e}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if "lr_sweep" in extra:
        from .tune import LEARNING_RATES
        print(f"learning rates: each method at its best of {LEARNING_RATES} (AdamW, warmup + cosine), "
              "scored on a validation split of the training data (the lr column; lr_sweep in the JSON)")
    elif "lr" in extra:
        print(f"learning rate: {extra['lr']} for every row (AdamW, warmup + cosine)")
    print(f"{args.table}: {time.time() - t0:.0f} s, {torch.get_num_threads()} threads; written to {args.out}/{args.table}.json/.md/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
