"""CPU benchmark: the composite (pure-PyTorch) block-sparse ops against the native C kernels.

Flat block butterfly weight (blocks of 32) at the given shape and density; times fwd,
bwd_x, bwd_w and their sum (fwd+bwd) for both implementations in the same run, after
checking that they agree. The issue's target: composite fwd+bwd within 3x of native at
4096x4096, T=4096, density 1/8.

    python -m benchmarks.bench_composite [--shape 4096x4096] [--T 4096] [--density 1/8]
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from benchmarks.timing import timeit
from pixelfly import choose_config, composite, ops
from pixelfly.layouts import BlockIndex, flat_butterfly_layout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x4096", help="out x in")
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--density", default="1/8")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp64"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}[args.dtype]
    out_f, in_f = (int(v) for v in args.shape.split("x"))
    num, den = (args.density.split("/") + ["1"])[:2]
    b, T = args.block, args.T
    n, m, _ = choose_config(out_f, in_f, float(num) / float(den), b, low_rank_fraction=0.0)
    layout = flat_butterfly_layout(out_f // b, in_f // b, m, n)
    it = ops.index_tensors(BlockIndex.from_layout(layout))
    nnz = int(layout.sum())
    torch.manual_seed(0)
    x = torch.randn(T, in_f, dtype=dt)
    dy = torch.randn(T, out_f, dtype=dt)
    w = (torch.randn(nnz, b, b) / (in_f * float(num) / float(den)) ** 0.5).to(dt)
    impls = {
        "native": (lambda: ops._ops_ns.bsmm_fwd(x, w, *it), lambda: ops._ops_ns.bsmm_bwd_x(dy, w, *it),
                   lambda: ops._ops_ns.bsmm_bwd_w(dy, x, *it, b, b)),
        "composite": (lambda: composite.bsmm_fwd(x, w, *it), lambda: composite.bsmm_bwd_x(dy, w, *it),
                      lambda: composite.bsmm_bwd_w(dy, x, *it, b, b)),
    }
    for fn_n, fn_c in zip(impls["native"], impls["composite"]):
        a, c = fn_n().double(), fn_c().double()
        err = ((a - c).abs().max() / a.abs().max().clamp_min(1e-30)).item()
        if err > (2e-2 if dt == torch.bfloat16 else 1e-4):
            raise SystemExit(f"composite and native disagree: relative error {err:.3e}")
    rows = {}
    for name, fns in impls.items():
        ms = [1e3 * timeit(f, args.reps) for f in fns]
        rows[name] = dict(zip(["fwd", "bwd_x", "bwd_w"], ms), total=sum(ms))
    print(f"{args.shape} T={T} density {args.density} block {b} {args.dtype}, "
          f"{torch.get_num_threads()} threads (median of {args.reps}, ms)")
    print(f"{'':>10} {'fwd':>8} {'bwd_x':>8} {'bwd_w':>8} {'fwd+bwd':>8}")
    for name, r in rows.items():
        print(f"{name:>10} {r['fwd']:8.1f} {r['bwd_x']:8.1f} {r['bwd_w']:8.1f} {r['total']:8.1f}")
    ratio = rows["composite"]["total"] / rows["native"]["total"]
    print(f"composite / native fwd+bwd: {ratio:.2f}x")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(shape=args.shape, T=T, density=args.density, block=b, dtype=args.dtype,
                           threads=torch.get_num_threads(), ms=rows, ratio=ratio), f, indent=1)


if __name__ == "__main__":
    main()
