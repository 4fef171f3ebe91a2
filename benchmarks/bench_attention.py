"""CPU benchmark of Pixelfly's block-sparse attention core against dense attention.

Methods (q, k, v: [1, 8, L, 64] float32, and timed again in bfloat16, all cores):
  * ``dense``: ``torch.nn.functional.scaled_dot_product_attention`` (the dense baseline);
  * ``pixelfly``: the block-sparse kernel ``pixelfly::bsattn_fwd`` (+ its backward) on a flat
    block butterfly layout (block 32, butterfly size 32, 3 factors: density 4/32 = 1/8);
  * ``pixelfly+lr``: the same plus the low-rank part (64 random features, one normaliser),
    i.e. ``PixelflyAttention``'s whole attention core.

Correctness is checked first: each method against the float64 oracle of
``pixelfly.reference`` (dense, masked and sparse + low-rank attention, written with L x L
matrices), on the first query rows of one head. Then forward+backward time (median of --reps; methods
interleaved within each rep so load from other processes hits them alike; inputs reused,
gradients reset) and peak memory. Memory method: peak resident-set growth of one
forward+backward, each (method, L) in a fresh subprocess: the child warms the method up on a
small problem (L = 256: code pages, thread pool), allocates and fills its inputs, resets
the kernel's RSS high-water mark (``/proc/self/clear_refs``), runs one step
and reports ``VmHWM - VmRSS(before)``. glibc serves large blocks with mmap and returns them,
so this is the step's peak working set
(workspace, saved tensors, outputs, gradients, and for the dense baseline whatever SDPA's
CPU kernels allocate), in one run with the timings so the ratios are comparable.

    python -m benchmarks.bench_attention                        # L = 1024, 2048, 4096
    python -m benchmarks.bench_attention --quick                # small, seconds
    python -m benchmarks.bench_attention --json out.json --plot out.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.peak import describe as describe_peak, measure as measure_peak
from pixelfly import reference
from pixelfly.attention import build_attention_layout, gaussian_features, sparse_lowrank_attention
from pixelfly.attention_ops import AttentionIndex

HEADS, HEAD_DIM, BLOCK = 8, 64, 32
BUTTERFLY, FACTORS, FEATURES = 32, 3, 64
METHODS = ("dense", "pixelfly", "pixelfly+lr")


def make_index(L):
    """Flat block butterfly; the butterfly size is capped by the grid (short --quick runs)."""
    return AttentionIndex(build_attention_layout(L // BLOCK, "pixelfly", n_factors=FACTORS,
                                                 butterfly_size=min(BUTTERFLY, L // BLOCK)))


def features(dtype=torch.float32):
    """The low-rank part's random feature projection (the same draw for the method and the
    oracle)."""
    return gaussian_features(FEATURES, HEAD_DIM, generator=torch.Generator().manual_seed(0)).to(dtype)


def method_fn(name, L):
    if name == "dense":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    idx = make_index(L)
    feats = features() if name == "pixelfly+lr" else None
    return lambda q, k, v: sparse_lowrank_attention(q, k, v, idx, BLOCK, features=feats)


def inputs(L, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, HEADS, L, HEAD_DIM, generator=g, dtype=dtype).requires_grad_()
            for _ in range(3)] + [torch.randn(1, HEADS, L, HEAD_DIM, generator=g, dtype=dtype)]


def check(name, L, rows=256):
    """Max error of the method's output and query gradient against the float64 oracle
    (``pixelfly.reference``: dense, masked or sparse + low-rank attention written with
    ``L x L`` matrices, independently of the code under test), on head 0's first ``rows``
    query rows (the oracle is given those queries and every key)."""
    q, k, v, g = inputs(L)
    out = method_fn(name, L)(q, k, v)
    q64 = q.detach()[:, :1, :rows].double().requires_grad_()
    k64, v64 = (t.detach()[:, :1].double() for t in (k, v))
    if name == "dense":
        ref = reference.dense_attention(q64, k64, v64)
    elif name == "pixelfly":
        ref, _ = reference.masked_attention(q64, k64, v64, make_index(L).layout, BLOCK)
    else:  # pixelfly+lr: SPEC 4's sparse + random-feature formula with the same features
        ref = reference.pixelfly_attention(q64, k64, v64, make_index(L).layout, BLOCK,
                                           features(torch.float64))
    err = (out[:, :1, :rows].double() - ref).abs().max().item()
    gq, = torch.autograd.grad(out[:, :1, :rows], q, g[:, :1, :rows])
    gq64, = torch.autograd.grad(ref, q64, g[:, :1, :rows].double())
    gerr = (gq[:, :1, :rows].double() - gq64).abs().max().item() / max(1.0, gq64.abs().max().item())
    return err, gerr


def time_fb(L, reps, dtype=torch.float32):
    """Median forward+backward seconds per method. Methods are interleaved within each rep
    (dense, pixelfly, pixelfly+lr, dense, ...) so that load from other processes on a shared
    machine hits them alike and the ratios stay meaningful."""
    q, k, v, g = inputs(L, dtype=dtype)
    fns = {m: method_fn(m, L) for m in METHODS}

    def step(fn):
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v).backward(g)

    for fn in fns.values():
        step(fn)  # warm-up
    times = {m: [] for m in METHODS}
    for _ in range(reps):
        for m, fn in fns.items():
            t0 = time.perf_counter()
            step(fn)
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(ts) for m, ts in times.items()}


def _child_memory(name, L):
    """Run in a subprocess: peak RSS growth (bytes) of one forward+backward
    (``pixelfly._memory.peak_rss_growth``), after a warm-up on a small problem."""
    from pixelfly._memory import peak_rss_growth
    wq, wk, wv, wg = inputs(256)  # warm-up: load code pages, thread pool, kernel caches
    method_fn(name, 256)(wq, wk, wv).backward(wg)
    del wq, wk, wv, wg
    q, k, v, g = inputs(L)
    fn = method_fn(name, L)
    print(json.dumps({"peak_bytes": peak_rss_growth(lambda: fn(q, k, v).backward(g))}))


def peak_memory(name, L, threads):
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "benchmarks.bench_attention", "--_child", name, str(L),
           "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]


def attention_flops(L, density):
    """FLOPs of one forward+backward in the attention matrix's kept blocks: 7 block GEMMs of
    2 b^2 d each (forward: S = q k^T, y = P v; backward: S again, dv, dP, dq, dk), per head.
    The low-rank part's feature maps and summaries are not counted."""
    return 14.0 * HEADS * HEAD_DIM * BLOCK ** 2 * density * (L // BLOCK) ** 2


def print_table(results, peak):
    print(f"\n{describe_peak(peak)}; 'of peak': effective GFLOP/s (kept blocks only) over the fp32 peak; "
          "bf16: the same step with bf16 q, k, v (SDPA in bf16 too)")
    print(f"{'L':>6} {'method':>12} {'density':>8} {'f+b ms':>9} {'vs dense':>9} {'GF/s':>7} {'of peak':>7} "
          f"{'peak MiB':>9} {'mem vs dense':>12} {'out err':>9} {'grad err':>9} {'bf16 ms':>9} {'bf16 vs':>8}")
    for r in results:
        bf = (f"{r['fb_s_bf16'] * 1e3:>9.1f} {r['speedup_vs_dense_bf16']:>7.2f}x" if "fb_s_bf16" in r
              else f"{'-':>9} {'-':>8}")
        print(f"{r['L']:>6} {r['method']:>12} {r['density']:>8.4f} {r['fb_s'] * 1e3:>9.1f} "
              f"{r['speedup_vs_dense']:>8.2f}x {r['gflops_effective']:>7.1f} {r['fraction_of_peak']:>7.2f} "
              f"{r['peak_bytes'] / 2**20:>9.1f} "
              f"{r['mem_ratio_vs_dense']:>11.3f}x {r['out_err']:>9.1e} {r['grad_err']:>9.1e} {bf}")


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in METHODS:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        Ls = [r["L"] for r in rs]
        a1.plot(Ls, [r["fb_s"] * 1e3 for r in rs], "o-", label=m)
        a2.plot(Ls, [r["peak_bytes"] / 2**20 for r in rs], "o-", label=m)
    for a, t in ((a1, "forward+backward time (ms)"), (a2, "peak memory growth (MiB)")):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("sequence length L")
        a.set_title(t)
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    fig.suptitle(f"attention core, 1 x {HEADS} heads x d={HEAD_DIM}, fp32, "
                 f"{torch.get_num_threads()} threads")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 512, 1024 only")
    ap.add_argument("--lengths", type=str, default=None, help="comma-separated L values")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 timings")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--plot", help="write a PNG plot here")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._child:
        _child_memory(args._child[0], int(args._child[1]))
        return 0
    lengths = ([512, 1024] if args.quick else [1024, 2048, 4096]) if args.lengths is None \
        else [int(x) for x in args.lengths.split(",")]

    peak = measure_peak(args.threads)
    print(describe_peak(peak))
    results = []
    with tqdm(total=len(lengths) * len(METHODS) * (2 if args.no_memory else 3) +
              (0 if args.no_bf16 else len(lengths)), desc="bench_attention") as bar:
        # correctness first, at every length (on the first rows of one head)
        checks = {}
        for L in lengths:
            for m in METHODS:
                checks[(L, m)] = check(m, L)
                err, gerr = checks[(L, m)]
                if not (err < 1e-4 and gerr < 1e-3):
                    raise SystemExit(f"correctness check failed: {m} at L={L}: out err {err:.2e}, "
                                     f"grad err {gerr:.2e}")
                bar.update()
        for L in lengths:
            row = {}
            fb = time_fb(L, args.reps)
            for m in METHODS:
                t = fb[m]
                bar.update()
                mem = float("nan") if args.no_memory else peak_memory(m, L, args.threads)
                if not args.no_memory:
                    bar.update()
                density = 1.0 if m == "dense" else make_index(L).density
                gf = attention_flops(L, density) / t / 1e9
                row[m] = dict(L=L, method=m, density=density, fb_s=t, peak_bytes=mem,
                              gflops_effective=gf, fraction_of_peak=gf / peak["fp32_best"],
                              out_err=checks[(L, m)][0], grad_err=checks[(L, m)][1])
            if not args.no_bf16:
                fb16 = time_fb(L, args.reps, torch.bfloat16)
                bar.update()
                for m in METHODS:
                    row[m]["fb_s_bf16"] = fb16[m]
                    row[m]["speedup_vs_dense_bf16"] = fb16["dense"] / fb16[m]
            for m in METHODS:
                row[m]["speedup_vs_dense"] = row["dense"]["fb_s"] / row[m]["fb_s"]
                row[m]["mem_ratio_vs_dense"] = row[m]["peak_bytes"] / max(1, row["dense"]["peak_bytes"])
                results.append(row[m])
    print_table(results, peak)
    meta = dict(peak=peak, machine=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, heads=HEADS, head_dim=HEAD_DIM, block=BLOCK,
                butterfly_size=BUTTERFLY, n_factors=FACTORS, n_random_features=FEATURES,
                memory_method="peak RSS growth (VmHWM after reset via /proc/self/clear_refs, "
                              "minus VmRSS before) of one forward+backward in a fresh "
                              "subprocess, inputs allocated beforehand")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
