"""Throwaway-grade harness: the C block-sparse kernels (csrc/cpu/bsmm*.c) through ctypes,
run by a pool of threads the way csrc/torch/ops.cpp runs them (phase 0 then 1, contiguous
task ranges per thread), timed next to torch.nn.functional.linear in the same process.

    python benchmarks/bsmm_ctypes.py [--threads 2] [--reps 5] [--check]

Builds csrc/{core,cpu}/*.c into build/bsmm_ctypes/libpfcore.so with the library's flags
(-O3, no -march). Reports effective GFLOP/s (2*T*nnz*b1*b2/time) over dense GFLOP/s.
"""
import argparse
import ctypes as C
import glob
import os
import subprocess
import threading
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(out_dir=None):
    out_dir = out_dir or os.environ.get("PF_BSMM_OUT", os.path.join(ROOT, "build", "bsmm_ctypes"))
    os.makedirs(out_dir, exist_ok=True)
    so = os.path.join(out_dir, "libpfcore.so")
    src_dir = os.environ.get("PF_BSMM_SRC", os.path.join(ROOT, "csrc/cpu"))
    srcs = sorted(glob.glob(os.path.join(src_dir, "*.c")))
    subprocess.check_call(["gcc", "-O3", "-std=c11", "-fPIC", "-Wall", "-Wextra", "-fno-math-errno",
                           "-shared", "-I", os.path.join(ROOT, "csrc/include"), "-I", src_dir,
                           *os.environ.get("PF_BSMM_CFLAGS", "").split(), *srcs,
                           "-lm", "-o", so])
    return C.CDLL(so)


class Index(C.Structure):
    _fields_ = [(n, C.c_int64) for n in ("R", "C", "b1", "b2", "nnz")] + \
               [(n, C.c_void_p) for n in ("row_ptr", "col_idx", "col_ptr", "row_idx", "csc_blk")]


class Args(C.Structure):
    _fields_ = [("dtype", C.c_int), ("T", C.c_int64), ("ix", C.POINTER(Index)),
                ("x", C.c_void_p), ("ldx", C.c_int64), ("w", C.c_void_p),
                ("dy", C.c_void_p), ("ldy", C.c_int64), ("out", C.c_void_p), ("ldo", C.c_int64),
                ("work", C.c_void_p), ("isa", C.c_int), ("out_fresh", C.c_int)]


FWD, BWD_X, BWD_W = 0, 1, 2


def flat_butterfly(R, Cc, n, m):
    i = np.arange(R)[:, None] * n // R
    j = np.arange(Cc)[None, :] * n // Cc
    x = i ^ j
    keep = x == 0
    for s in range(m):
        keep |= x == (1 << s)
    return keep


def random_layout(R, Cc, density, seed=0):
    rng = np.random.default_rng(seed)
    k = round(density * R * Cc)
    flat = np.zeros(R * Cc, bool)
    flat[rng.choice(R * Cc, k, replace=False)] = True
    return flat.reshape(R, Cc)


class BSR:
    def __init__(self, layout, b1, b2):
        R, Cc = layout.shape
        rows, cols = np.nonzero(layout)
        self.row_ptr = np.zeros(R + 1, np.int64)
        np.add.at(self.row_ptr, rows + 1, 1)
        self.row_ptr = np.cumsum(self.row_ptr).astype(np.int64)
        self.col_idx = cols.astype(np.int64)
        order = np.lexsort((rows, cols))  # by column, then row
        self.col_ptr = np.zeros(Cc + 1, np.int64)
        np.add.at(self.col_ptr, cols + 1, 1)
        self.col_ptr = np.cumsum(self.col_ptr).astype(np.int64)
        self.row_idx = rows[order].astype(np.int64)
        self.csc_blk = order.astype(np.int64)
        self.ix = Index(R, Cc, b1, b2, len(cols), *(a.ctypes.data for a in (
            self.row_ptr, self.col_idx, self.col_ptr, self.row_idx, self.csc_blk)))
        self.layout, self.b1, self.b2, self.nnz = layout, b1, b2, len(cols)


class Runner:
    def __init__(self, lib, nthreads):
        self.lib, self.n = lib, nthreads
        lib.pf_bsmm_check.restype = C.c_char_p
        lib.pf_bsmm_workspace.restype = C.c_int64
        lib.pf_bsmm_num_tasks.restype = C.c_int64
        lib.pf_bsmm_run.argtypes = [C.c_int, C.c_int, C.POINTER(Args), C.c_int64, C.c_int64]
        self.barrier = threading.Barrier(nthreads + 1)
        self.job = None
        self.threads = [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in range(nthreads)]
        for t in self.threads:
            t.start()

    def _loop(self, k):
        while True:
            self.barrier.wait()
            op, phase, a, n = self.job
            b, e = n * k // self.n, n * (k + 1) // self.n
            if b < e:
                self.lib.pf_bsmm_run(op, phase, C.byref(a), b, e)
            self.barrier.wait()

    def __call__(self, op, a):
        err = self.lib.pf_bsmm_check(op, C.byref(a))
        assert err is None, err
        ws = self.lib.pf_bsmm_workspace(op, C.byref(a))
        if not hasattr(self, "_ws") or self._ws.numel() < ws:
            self._ws = torch.empty(max(ws, 1), dtype=torch.uint8)
        a.work = self._ws.data_ptr()
        for phase in (0, 1):
            n = self.lib.pf_bsmm_num_tasks(op, phase, C.byref(a))
            if n > 0:
                self.job = (op, phase, a, n)
                self.barrier.wait()
                self.barrier.wait()


def make_args(bsr, T, x=None, w=None, dy=None, out=None, isa=0):
    dt = 1 if (x if x is not None else dy).dtype == torch.bfloat16 else 0
    return Args(dt, T, C.pointer(bsr.ix), x.data_ptr() if x is not None else None,
                x.stride(0) if x is not None else 0, w.data_ptr() if w is not None else None,
                dy.data_ptr() if dy is not None else None, dy.stride(0) if dy is not None else 0,
                out.data_ptr(), out.stride(0) if out.dim() == 2 else bsr.b2, None, isa)


def timeit(f, reps):
    f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def timeit_pair(f, g, reps, clock="wall", nthreads=1):
    """Best-of-reps times of f and g, interleaved so both see the same machine load.
    clock="cpu": process CPU time / nthreads (robust when other jobs share the cores;
    slightly favours the C kernels, whose idle pool threads block while OpenMP spins)."""
    now = time.perf_counter if clock == "wall" else time.process_time
    div = 1 if clock == "wall" else nthreads
    f(); g()
    bf = bg = float("inf")
    for _ in range(reps):
        t = now(); f(); bf = min(bf, (now() - t) / div)
        t = now(); g(); bg = min(bg, (now() - t) / div)
    return bf, bg


def dense_from_blocks(bsr, w):
    R, Cc = bsr.layout.shape
    W = torch.zeros(R, Cc, bsr.b1, bsr.b2, dtype=w.dtype)
    rows = np.repeat(np.arange(R), np.diff(bsr.row_ptr))
    W[torch.from_numpy(rows), torch.from_numpy(bsr.col_idx)] = w
    return W.permute(0, 2, 1, 3).reshape(R * bsr.b1, Cc * bsr.b2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shapes", default="4096x4096,1024x4096")
    ap.add_argument("--layouts", default="butterfly,random")
    ap.add_argument("--ops", default="fwd,bwd_x,bwd_w")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lib = build()
    run = Runner(lib, args.threads)
    dt = getattr(torch, args.dtype)
    b = args.block
    T = args.T
    print(f"threads={args.threads} T={T} block={b} dtype={args.dtype} clock={args.clock}")
    print(f"{'shape':>10} {'layout':>9} {'dens':>5} {'op':>6} {'ms':>8} {'eff GF/s':>9} {'dense GF/s':>10} {'ratio':>6}")
    for shape in args.shapes.split(","):
        out_f, in_f = map(int, shape.split("x"))
        R, Cc = out_f // b, in_f // b
        x = torch.randn(T, in_f, dtype=dt)
        dy = torch.randn(T, out_f, dtype=dt)
        Wd = torch.randn(out_f, in_f, dtype=dt)
        dense = lambda: torch.nn.functional.linear(x, Wd)
        for lay in args.layouts.split(","):
            for dens in (4, 8, 16):
                if lay == "butterfly":
                    nmax = 1 << (min(R, Cc).bit_length() - 1)
                    cfg = None
                    for n in [nn for nn in (2 ** k for k in range(1, 20)) if nn <= nmax]:
                        m = n // dens - 1
                        if 1 <= m <= n.bit_length() - 1 and (m + 1) * dens == n:
                            cfg = (n, m)
                    if cfg is None:
                        continue
                    layout = flat_butterfly(R, Cc, *cfg)
                else:
                    layout = random_layout(R, Cc, 1 / dens)
                bsr = BSR(layout, b, b)
                w = torch.randn(bsr.nnz, b, b, dtype=dt)
                y = torch.empty(T, out_f, dtype=dt)
                dx = torch.empty(T, in_f, dtype=dt)
                dw = torch.empty(bsr.nnz, b, b, dtype=dt)
                ops = {"fwd": (FWD, make_args(bsr, T, x=x, w=w, out=y)),
                       "bwd_x": (BWD_X, make_args(bsr, T, w=w, dy=dy, out=dx)),
                       "bwd_w": (BWD_W, make_args(bsr, T, x=x, dy=dy, out=dw))}
                flops = 2 * T * bsr.nnz * b * b
                for name in args.ops.split(","):
                    op, a = ops[name]
                    t, t_dense = timeit_pair(lambda: run(op, a), dense, args.reps, args.clock, args.threads)
                    gf = flops / t / 1e9
                    gf_dense = 2 * T * out_f * in_f / t_dense / 1e9
                    print(f"{shape:>10} {lay:>9} 1/{dens:<3} {name:>6} {t*1e3:8.2f} {gf:9.1f} {gf_dense:10.1f} {gf/gf_dense:6.2f}", flush=True)
                if args.check:
                    W = dense_from_blocks(bsr, w).float()
                    tol = 1e-3 if dt == torch.float32 else 3e-2
                    e1 = (y.float() - x.float() @ W.t()).abs().max() / (x.float() @ W.t()).abs().max()
                    e2 = (dx.float() - dy.float() @ W).abs().max() / (dy.float() @ W).abs().max()
                    G = (dy.float().t() @ x.float()).reshape(R, b, Cc, b).permute(0, 2, 1, 3)
                    rows = np.repeat(np.arange(R), np.diff(bsr.row_ptr))
                    ref = G[torch.from_numpy(rows), torch.from_numpy(bsr.col_idx)]
                    e3 = (dw.float() - ref).abs().max() / ref.abs().max()
                    print(f"   check rel err fwd {e1:.2e} bwd_x {e2:.2e} bwd_w {e3:.2e}", "OK" if max(e1, e2, e3) < tol else "FAIL")


if __name__ == "__main__":
    main()
