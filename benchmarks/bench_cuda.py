"""CUDA benchmark of the block-sparse ops (native kernels and composite ops) against dense
cuBLAS and torch BSR.

For each weight shape (out x in) and density, on flat block butterfly layouts (SPEC
section 1, computed here in numpy), it first checks every op of each implementation
against a float64 dense reference (a wrong one is reported and not timed), then times with
CUDA events (median of --iters after --warmup):
  fwd      y = x B^T                      pixelfly bsmm_fwd | dense F.linear | torch BSR
  bwd      dx = dy B and dB = dy^T x     bsmm_bwd_x + bsmm_bwd_w | dense dy @ W + dy^T @ x
  fwd+bwd  the three together
for --impls native (csrc/cuda, selected with use_native_cuda) and composite (pure PyTorch,
the CUDA default), and prints times, effective TFLOP/s (2 * T * nnz * b1 * b2 per op;
dense: 2 * T * out * in per op), its ratio to dense cuBLAS and the forward's speed-up over
torch BSR. Exit status 1 if any implementation was wrong.

    python -m benchmarks.bench_cuda [--json bench-results/cuda.json] [--T 8192] [--block 32]

``--device cpu`` runs the same script on the CPU (native = the C kernels, composite = the
forced composite ops; host timers), a smoke test of the script itself on small shapes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

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
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: smoke-test the script on the CPU kernels")
    ap.add_argument("--impls", default="native,composite",
                    help="comma-separated: native (csrc/cuda kernels), composite (pure PyTorch)")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("bench_cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                 "run this benchmark on a machine with an NVIDIA GPU and a CUDA build of torch")
    import pixelfly.ops as pops
    impls = [i for i in args.impls.split(",") if i]
    if any(i not in ("native", "composite") for i in impls):
        sys.exit(f"bench_cuda: --impls must name native and/or composite, got {args.impls!r}")
    if on_gpu and "native" in impls and not pops.HAS_CUDA_KERNELS:
        print("bench_cuda: pixelfly was built without its CUDA kernels (pixelfly._ops_cuda "
              "missing): timing the composite ops only")
        impls.remove("native")
    ops = torch.ops.pixelfly
    wrong = []
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def select(impl):
        if on_gpu:
            pops.use_native_cuda(impl == "native")
        else:
            pops.use_composite("cpu", impl == "composite")
    b = args.block
    T = args.T

    def timeit(fn):
        for _ in range(args.warmup):
            fn()
        sync()
        times = []
        for _ in range(args.iters):
            if on_gpu:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                sync()
                times.append(s.elapsed_time(e))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return float(np.median(times))

    rows = []
    dev_name = torch.cuda.get_device_properties(0).name if on_gpu else "cpu"
    print(f"device: {dev_name}, torch {torch.__version__}, dtype {args.dtype}, T={T}, block {b}, "
          f"impls {impls}")
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
            tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 4e-3}[dt]
            good = []
            for impl in impls:
                select(impl)
                got = {"fwd": ops.bsmm_fwd(xs, blocks, *idx),
                       "bwd_x": ops.bsmm_bwd_x(dys, blocks, *idx),
                       "bwd_w": ops.bsmm_bwd_w(dys, xs, *idx, b, b)}
                bad = []
                for k in got:
                    err = (got[k].double() - ref[k]).abs().max().item()
                    scale = ref[k].abs().max().item()
                    if not err <= tol * max(scale, 1e-6):
                        bad.append(f"{k}: max error {err:.3e} vs scale {scale:.3e}")
                if bad:
                    wrong.append(f"{impl} {shape} density {dens_s}: " + "; ".join(bad))
                    print(f"bench_cuda: {impl} is WRONG at {shape} density {dens_s} ({bad}); "
                          "not timing it")
                else:
                    good.append(impl)

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
                        sync()
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
                td = timeit(dn[phase])
                tb = timeit(bsr_fn) if (phase == "fwd" and bsr_fn is not None) else None
                f_sp = 2.0 * T * nnz * b * b * nops[phase]
                f_dn = 2.0 * T * out_f * in_f * nops[phase]
                for impl in good:
                    select(impl)
                    ts = timeit(sp[phase])
                    row = dict(impl=impl, shape=shape, out=out_f, inp=in_f, T=T, block=b,
                               density=dens_s, butterfly_n=n, factors=m, nnz=nnz, phase=phase,
                               sparse_ms=ts, dense_ms=td, bsr_ms=tb,
                               bsr_impl=bsr_note if phase == "fwd" else None,
                               speedup_vs_dense=td / ts, speedup_vs_bsr=tb / ts if tb else None,
                               sparse_eff_tflops=f_sp / ts / 1e9, dense_tflops=f_dn / td / 1e9)
                    row["eff_over_dense_tflops"] = row["sparse_eff_tflops"] / row["dense_tflops"]
                    rows.append(row)
    select("composite" if on_gpu else "native")

    hdr = (f"{'impl':>9} {'shape':>11} {'dens':>5} {'phase':>8} {'sparse ms':>10} {'dense ms':>9} "
           f"{'bsr ms':>8} {'speedup':>8} {'eff TF/s':>9} {'dense TF/s':>10} {'eff/dense':>9} "
           f"{'vs BSR':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        bsr = f"{r['bsr_ms']:8.3f}" if r["bsr_ms"] is not None else f"{'n/a':>8}"
        vs = f"{r['speedup_vs_bsr']:6.2f}x" if r["speedup_vs_bsr"] else f"{'':>7}"
        print(f"{r['impl']:>9} {r['shape']:>11} {r['density']:>5} {r['phase']:>8} "
              f"{r['sparse_ms']:10.3f} {r['dense_ms']:9.3f} {bsr} {r['speedup_vs_dense']:7.2f}x "
              f"{r['sparse_eff_tflops']:9.1f} {r['dense_tflops']:10.1f} "
              f"{r['eff_over_dense_tflops']:9.2f} {vs}")
    notes = {r["shape"] + " " + r["density"]: r["bsr_impl"] for r in rows if r["phase"] == "fwd"}
    print("torch BSR forward used:", notes)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": dev_name, "torch": torch.__version__, "dtype": args.dtype,
                       "T": T, "block": b, "impls": impls, "wrong": wrong, "rows": rows}, f,
                      indent=1)
        print("wrote", args.json)
    if wrong:
        sys.exit("bench_cuda: WRONG results: " + " | ".join(wrong))


if __name__ == "__main__":
    main()
