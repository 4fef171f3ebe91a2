"""CUDA benchmark of the block-sparse kernels against dense cuBLAS and torch BSR.

For each weight shape (out x in) and density, on flat block butterfly layouts (SPEC
section 1, computed here in numpy), it first checks every op against a dense reference,
then times with CUDA events:
  fwd      y = x B^T                      pixelfly bsmm_fwd | dense F.linear | torch BSR
  bwd      dx = dy B and dB = dy^T x     bsmm_bwd_x + bsmm_bwd_w | dense dy @ W + dy^T @ x
  fwd+bwd  the three together
and prints times, speed-up vs dense in the same run, effective TFLOP/s
(2 * T * nnz * b1 * b2 per op; dense: 2 * T * out * in per op) and its ratio to dense.

    python -m benchmarks.bench_cuda [--json bench-results/cuda.json] [--T 8192] [--block 32]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np


def flat_butterfly(R, C, density):
    """Flat block butterfly layout (bool R x C) of the given density (SPEC section 1).

    Picks butterfly size n (power of two <= min(R, C)) and factor count m (1 <= m <= log2 n)
    with (m + 1) / n == density, preferring more factors; cell map p = i*n//R, q = j*n//C,
    keep iff p ^ q in {0} U {2^s : s < m}."""
    best = None
    n = 2
    while n <= min(R, C):
        for m in range(1, int(math.log2(n)) + 1):
            if abs((m + 1) / n - density) < 1e-12 and (best is None or m > best[1]):
                best = (n, m)
        n *= 2
    if best is None:
        raise ValueError(f"no flat butterfly of density {density} on a {R} x {C} grid")
    n, m = best
    p = (np.arange(R) * n // R)[:, None]
    q = (np.arange(C) * n // C)[None, :]
    xor = p ^ q
    keep = (xor == 0)
    for s in range(m):
        keep |= xor == (1 << s)
    return keep, n, m


def csr_index(layout):
    R, C = layout.shape
    rows, cols = np.nonzero(layout)
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=R))]).astype(np.int64)
    order = np.lexsort((rows, cols))
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=C))]).astype(np.int64)
    return row_ptr, cols.astype(np.int64), col_ptr, rows[order].astype(np.int64), order.astype(np.int64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results to this path")
    ap.add_argument("--T", type=int, default=8192, help="rows of x (tokens)")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--shapes", default="4096x4096,4096x16384",
                    help="comma-separated out x in weight shapes")
    ap.add_argument("--densities", default="1/4,1/8,1/16")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    if not torch.cuda.is_available():
        sys.exit("bench_cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                 "run this benchmark on a machine with an NVIDIA GPU and a CUDA build of torch")
    import pixelfly  # noqa: F401
    try:
        import pixelfly.ops as pops
        has_cuda = getattr(pops, "HAS_CUDA_KERNELS", True)
    except ImportError:
        has_cuda = True
    if not has_cuda:
        sys.exit("bench_cuda: pixelfly was built without its CUDA kernels (pixelfly._ops_cuda "
                 "missing); rebuild with PIXELFLY_CUDA=1")
    ops = torch.ops.pixelfly
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = torch.device("cuda")
    b = args.block
    T = args.T

    def timeit(fn):
        for _ in range(args.warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        return float(np.median(times))

    rows = []
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, torch {torch.__version__}, dtype {args.dtype}, T={T}, block {b}")
    for shape in args.shapes.split(","):
        out_f, in_f = (int(v) for v in shape.lower().split("x"))
        R, C = out_f // b, in_f // b
        x = torch.randn(T, in_f, device=dev, dtype=dt)
        dy = torch.randn(T, out_f, device=dev, dtype=dt)
        for dens_s in args.densities.split(","):
            num, den = (dens_s.split("/") + ["1"])[:2]
            density = float(num) / float(den)
            layout, n, m = flat_butterfly(R, C, density)
            nnz = int(layout.sum())
            idx = [torch.as_tensor(a, device=dev) for a in csr_index(layout)]
            blocks = (torch.randn(nnz, b, b, device=dev) / math.sqrt(in_f * density)).to(dt)
            # Dense masked weight with the same values.
            rr, cc = np.nonzero(layout)
            W = torch.zeros(R, C, b, b, device=dev, dtype=dt)
            W[torch.as_tensor(rr, device=dev), torch.as_tensor(cc, device=dev)] = blocks
            W = W.permute(0, 2, 1, 3).reshape(out_f, in_f).contiguous()

            # ---- correctness first (fp32/fp64 reference on a slice of T)
            tc = min(T, 512)
            xs, dys = x[:tc], dy[:tc]
            W64 = W.double()
            ref = {"fwd": xs.double() @ W64.T, "bwd_x": dys.double() @ W64}
            dW = dys.double().T @ xs.double()
            ref["bwd_w"] = dW.reshape(R, b, C, b).permute(0, 2, 1, 3)[
                torch.as_tensor(rr, device=dev), torch.as_tensor(cc, device=dev)]
            got = {"fwd": ops.bsmm_fwd(xs, blocks, *idx), "bwd_x": ops.bsmm_bwd_x(dys, blocks, *idx),
                   "bwd_w": ops.bsmm_bwd_w(dys, xs, *idx, b, b)}
            tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 4e-3}[dt]
            for k in got:
                err = (got[k].double() - ref[k]).abs().max().item()
                scale = ref[k].abs().max().item()
                if not err <= tol * max(scale, 1e-6):
                    sys.exit(f"bench_cuda: {k} is WRONG at {shape} density {dens_s}: max error "
                             f"{err:.3e} vs scale {scale:.3e}; not timing a wrong kernel")

            # ---- torch BSR (forward only, where it runs)
            bsr_fn, bsr_note = None, ""
            try:
                Wbsr = W.to_sparse_bsr((b, b))
                cands = [("F.linear", lambda: F.linear(x, Wbsr)),
                         ("bsr @ x.T", lambda: (Wbsr @ x.T).T),
                         ("torch.sparse.mm", lambda: torch.sparse.mm(Wbsr, x.T).T)]
                for name, fn in cands:
                    try:
                        yb = fn()
                        torch.cuda.synchronize()
                        e = (yb[:tc].double() - ref["fwd"]).abs().max().item()
                        if e <= tol * max(ref["fwd"].abs().max().item(), 1e-6):
                            bsr_fn, bsr_note = fn, name
                            break
                        bsr_note = f"{name}: wrong result"
                    except Exception as ex:  # noqa: BLE001 - report and try the next form
                        bsr_note = f"{name}: {type(ex).__name__}"
            except Exception as ex:  # noqa: BLE001
                bsr_note = f"to_sparse_bsr: {type(ex).__name__}"

            sp = {
                "fwd": lambda: ops.bsmm_fwd(x, blocks, *idx),
                "bwd": lambda: (ops.bsmm_bwd_x(dy, blocks, *idx),
                                ops.bsmm_bwd_w(dy, x, *idx, b, b)),
                "fwd+bwd": lambda: (ops.bsmm_fwd(x, blocks, *idx), ops.bsmm_bwd_x(dy, blocks, *idx),
                                    ops.bsmm_bwd_w(dy, x, *idx, b, b)),
                "bwd_x": lambda: ops.bsmm_bwd_x(dy, blocks, *idx),
                "bwd_w": lambda: ops.bsmm_bwd_w(dy, x, *idx, b, b),
            }
            dn = {
                "fwd": lambda: F.linear(x, W),
                "bwd": lambda: (dy @ W, dy.T @ x),
                "fwd+bwd": lambda: (F.linear(x, W), dy @ W, dy.T @ x),
                "bwd_x": lambda: dy @ W,
                "bwd_w": lambda: dy.T @ x,
            }
            nops = {"fwd": 1, "bwd": 2, "fwd+bwd": 3, "bwd_x": 1, "bwd_w": 1}
            for phase in ["fwd", "bwd_x", "bwd_w", "bwd", "fwd+bwd"]:
                ts = timeit(sp[phase])
                td = timeit(dn[phase])
                tb = timeit(bsr_fn) if (phase == "fwd" and bsr_fn is not None) else None
                f_sp = 2.0 * T * nnz * b * b * nops[phase]
                f_dn = 2.0 * T * out_f * in_f * nops[phase]
                row = dict(shape=shape, out=out_f, inp=in_f, T=T, block=b, density=dens_s,
                           butterfly_n=n, factors=m, nnz=nnz, phase=phase,
                           sparse_ms=ts, dense_ms=td, bsr_ms=tb,
                           bsr_impl=bsr_note if phase == "fwd" else None,
                           speedup_vs_dense=td / ts,
                           sparse_eff_tflops=f_sp / ts / 1e9, dense_tflops=f_dn / td / 1e9)
                row["eff_over_dense_tflops"] = row["sparse_eff_tflops"] / row["dense_tflops"]
                rows.append(row)

    hdr = (f"{'shape':>11} {'dens':>5} {'phase':>8} {'sparse ms':>10} {'dense ms':>9} "
           f"{'bsr ms':>8} {'speedup':>8} {'eff TF/s':>9} {'dense TF/s':>10} {'eff/dense':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        bsr = f"{r['bsr_ms']:8.3f}" if r["bsr_ms"] is not None else f"{'n/a':>8}"
        print(f"{r['shape']:>11} {r['density']:>5} {r['phase']:>8} {r['sparse_ms']:10.3f} "
              f"{r['dense_ms']:9.3f} {bsr} {r['speedup_vs_dense']:7.2f}x "
              f"{r['sparse_eff_tflops']:9.1f} {r['dense_tflops']:10.1f} "
              f"{r['eff_over_dense_tflops']:9.2f}")
    notes = {r["shape"] + " " + r["density"]: r["bsr_impl"] for r in rows if r["phase"] == "fwd"}
    print("torch BSR forward used:", notes)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "dtype": args.dtype,
                       "T": T, "block": b, "rows": rows}, f, indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
