"""CPU benchmark of the block-sparse kernels and PixelflyLinear against dense PyTorch.

Measures the machine's peak first (``benchmarks.peak``: fp32 FMA per ISA, bf16 dot products
where the CPU has AVX512_BF16), checks correctness (every method against the float64
masked-dense reference on a slice of the rows; bf16 kernels at most twice dense bf16's own
error), then times the kernels in fp32 and bf16 and the modules' forward, backward and
forward+backward in the same run, and prints ratios against dense PyTorch and fractions of
the peak; effective GFLOP/s count nonzero-block FLOPs only. Block sizes 16 and 64 run the
kernels beside block 32; the modules also run under bf16 autocast (against nn.Linear under
autocast) and at a few rows (T = 1, 8, 64: per-call overhead).

    python -m benchmarks.bench_linear                      # the issue's full grid
    python -m benchmarks.bench_linear --quick              # small shapes, seconds
    python -m benchmarks.bench_linear --small-only --json results/linear_small.json  # few rows
    python -m benchmarks.bench_linear --json out.json --plot out.png
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from benchmarks.timing import timeit
from benchmarks.peak import describe as describe_peak, measure as measure_peak, tile_rate
from pixelfly import PixelflyLinear, _C, choose_config, ops, reference
from pixelfly.layouts import BlockIndex, flat_butterfly_layout


def phases(forward, params, x):
    """Timers for forward, backward (given a forward), forward+backward of a module-like fn."""
    gy = None

    def fwd():
        with torch.no_grad():
            return forward(x)

    def fwdbwd():
        nonlocal gy
        y = forward(x)
        gy = torch.ones_like(y) if gy is None else gy
        y.backward(gy)
        for p in params:
            p.grad = None
        x.grad = None
    return fwd, fwdbwd


def check(name, got, want, tol):
    err = (got.double() - want).abs().max().item() / max(1.0, want.abs().max().item())
    if err > tol:
        raise SystemExit(f"correctness check failed for {name}: relative error {err:.2e} > {tol}")
    return err


SUBSAMPLE = 64  # dense bf16 without bf16 arithmetic: timed on 1/64 of the rows, scaled


def slow_bf16(dtype=torch.bfloat16) -> bool:
    """Whether PyTorch's dense ``dtype`` matmul is its slow fallback on this CPU (bf16
    without AVX512_BF16)."""
    return dtype == torch.bfloat16 and not _C.has_avx512_bf16()


def autocast(fn):
    """``fn`` run under ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    def run(inp):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(inp)
    return run


def bench_kernels(dtype, x, gy, blocks, it, lay, W, block, reps, peak_gflops, t_dense=None,
                  tile_probe=None):
    """fwd / bwd_x / bwd_w of the kernels and of dense PyTorch in ``dtype``, after a check
    against the float64 reference (bf16: at most twice dense bf16's own error). ``t_dense``:
    dense timings of the same shape and dtype measured before (they do not depend on the
    block size), else measured here. ``tile_probe``: for kernels that run the fp32 tiles,
    ``() -> GFLOP/s`` of the tile probe (the fp32 register tile in L1, ``benchmarks.peak``),
    run right before each kernel's timing (on a shared VM the rate the load path allows
    moves within seconds), else None."""
    xd, gd, bd, Wd = (t.to(dtype) for t in (x, gy, blocks, W))
    b1 = b2 = block
    xs, gs = x[:64].double(), gy[:64].double()
    want = {"fwd": reference.bsmm_fwd(xs, blocks.double(), lay),
            "bwd_x": reference.bsmm_bwd_x(gs, blocks.double(), lay),
            "bwd_w": reference.bsmm_bwd_w(gs, xs, lay, b1, b2)}
    got = {"fwd": ops.bsmm_fwd(xd[:64], bd, *it), "bwd_x": ops.bsmm_bwd_x(gd[:64], bd, *it),
           "bwd_w": ops.bsmm_bwd_w(gd[:64], xd[:64], *it, b1=b1, b2=b2)}
    mask = reference.layout_to_mask(lay, b1, b2).double()
    Wm = reference.blocks_to_dense(blocks.double(), lay)
    base = {"fwd": (F.linear(xd[:64], Wm.to(dtype)), xs @ Wm.t()),
            "bwd_x": (gd[:64] @ Wm.to(dtype), gs @ Wm),
            "bwd_w": ((gd[:64].t() @ xd[:64]) * mask.to(dtype), (gs.t() @ xs) * mask)}
    for op in want:
        tol = 1e-4 if dtype == torch.float32 else 2 * check(f"dense {op}", *base[op], float("inf")) + 1e-6
        check(f"bsmm_{op} ({dtype})", got[op], want[op], tol)
    flops_sparse = 2.0 * x.shape[0] * it[1].numel() * b1 * b2
    flops_dense = 2.0 * x.shape[0] * W.numel()
    if t_dense is None:
        # dense bf16 on a CPU without bf16 arithmetic runs PyTorch's slow fallback (on an
        # AVX2 EPYC 0.8 s for x W^T but 63 s for dy W on 512 x 4096 x 4096, 100x fp32's):
        # timed once on 1/SUBSAMPLE of the rows and scaled (its time is linear in the rows)
        k = SUBSAMPLE if slow_bf16(dtype) else 1
        xk, gk = xd[:max(1, xd.shape[0] // k)], gd[:max(1, gd.shape[0] // k)]
        dr, dw = (1, 0) if k > 1 else (reps, 1)
        scale = xd.shape[0] / max(1, xk.shape[0])
        t_dense = {"fwd": scale * timeit(lambda: F.linear(xk, Wd), dr, dw),
                   "bwd_x": scale * timeit(lambda: gk @ Wd, dr, dw),
                   "bwd_w": scale * timeit(lambda: gk.t() @ xk, dr, dw)}
    run = {"fwd": lambda: ops.bsmm_fwd(xd, bd, *it), "bwd_x": lambda: ops.bsmm_bwd_x(gd, bd, *it),
           "bwd_w": lambda: ops.bsmm_bwd_w(gd, xd, *it, b1=b1, b2=b2)}
    tile, t_kern = {}, {}
    for op, fn in run.items():
        tile[op] = tile_probe() if tile_probe else None
        t_kern[op] = timeit(fn, reps)
    return {op: {"time_s": t_kern[op], "dense_time_s": t_dense[op],
                 "gflops_effective": flops_sparse / t_kern[op] / 1e9,
                 "gflops_dense": flops_dense / t_dense[op] / 1e9,
                 "efficiency_vs_dense": (flops_sparse / t_kern[op]) / (flops_dense / t_dense[op]),
                 "fraction_of_peak": flops_sparse / t_kern[op] / 1e9 / peak_gflops,
                 "dense_fraction_of_peak": flops_dense / t_dense[op] / 1e9 / peak_gflops,
                 "tile_gflops": tile[op],
                 "fraction_of_tile": flops_sparse / t_kern[op] / 1e9 / tile[op] if tile[op] else None,
                 "speedup_vs_dense": t_dense[op] / t_kern[op]}
            for op in t_kern}


def kernel_block(out_f, in_f, density, block, x, gy, W, reps, peak, dense_rows=None):
    """The kernels (fp32, bf16) on a pure flat butterfly of ``density`` with ``block``-sized
    blocks; ``dense_rows``: a row of the same shape whose dense timings are reused."""
    n, m, _ = choose_config(out_f, in_f, density, block, low_rank_fraction=0.0)
    layout = flat_butterfly_layout(out_f // block, in_f // block, m, n)
    idx = BlockIndex.from_layout(layout)
    it = ops.index_tensors(idx)
    blocks = torch.randn(idx.nnz, block, block) / (idx.nnz * block * block / out_f) ** 0.5
    lay = torch.as_tensor(layout)
    row = {"kernel_layout": {"butterfly_size": n, "n_factors": m, "nnz": idx.nnz,
                             "density": idx.nnz / layout.size}}
    # bf16 kernels are measured against the bf16 peak where the CPU has one, else against
    # the fp32 FMA peak and the fp32 tile probe (they widen to fp32 and run the fp32 tiles)
    native = peak["bf16_gflops"] is not None
    probe = functools.partial(tile_rate, peak["threads"])
    for key, dt, pk, tk in (("kernels", torch.float32, peak["fp32_best"], probe),
                            ("kernels_bf16", torch.bfloat16, peak["bf16_gflops"] or peak["fp32_best"],
                             None if native else probe)):
        td = None if dense_rows is None else {op: k["dense_time_s"] for op, k in dense_rows[key].items()}
        row[key] = bench_kernels(dt, x, gy, blocks, it, lay, W, block, reps, pk, td, tk)
    return row


def bench_shape(out_f, in_f, T, density, block, reps, results, bar, peak, other_blocks=()):
    dense = nn.Linear(in_f, out_f)
    x = torch.randn(T, in_f, requires_grad=True)
    xs = x.detach()[:64].double()
    row = {"shape": f"{out_f}x{in_f}", "T": T, "density": density, "block": block}
    gy = torch.randn(T, out_f)
    xd = x.detach()
    W = dense.weight.detach()
    row.update(kernel_block(out_f, in_f, density, block, xd, gy, W, reps, peak))
    # other block sizes: the same kernels, compared with block `block`'s fraction of peak
    row["other_blocks"] = {str(b): kernel_block(out_f, in_f, density, b, xd, gy, W, reps, peak, row)
                           for b in other_blocks}
    bar.update()

    # modules: dense, masked dense (the authors' release), PixelflyLinear, BSR (fwd only)
    pf = PixelflyLinear.from_dense(dense, block_size=block, density=density)
    mask = reference.layout_to_mask(pf.layout, block, block).float()
    check("PixelflyLinear", pf(xs.float()), pf.to_dense().double()(xs), 1e-4)

    def masked(inp):
        return F.linear(inp, dense.weight * mask, dense.bias)
    modules = {"dense": (dense, list(dense.parameters())),
               "masked_dense": (masked, list(dense.parameters())),
               "pixelfly": (pf, list(pf.parameters()))}
    # under bf16 autocast (how users train): nn.Linear and PixelflyLinear; dense bf16 on a
    # CPU without bf16 arithmetic is PyTorch's slow fallback: timed as in bench_kernels
    modules["dense_bf16_autocast"] = (autocast(dense), list(dense.parameters()))
    modules["pixelfly_bf16_autocast"] = (autocast(pf), list(pf.parameters()))
    timings = {}
    for name, (fn, params) in modules.items():
        sub = name == "dense_bf16_autocast" and slow_bf16()
        xin = x[:max(1, T // SUBSAMPLE)].detach().requires_grad_() if sub else x
        fwd, fwdbwd = phases(fn, params, xin)
        r, w, scale = (1, 0, T / xin.shape[0]) if sub else (reps, 1, 1.0)
        tf, tfb = scale * timeit(fwd, r, w), scale * timeit(fwdbwd, r, w)
        timings[name] = {"fwd": tf, "fwdbwd": tfb, "bwd": max(tfb - tf, 0.0)}
        bar.update()
    # the layer's fwd+bwd effective GFLOP/s (block-sparse + low-rank FLOPs) over the peak
    b1, b2 = pf.block_size
    layer_flops = 3 * 2.0 * T * (pf.index.nnz * b1 * b2 + pf.rank * (in_f + out_f))
    row["layer_fraction_of_peak"] = {
        "fp32": layer_flops / timings["pixelfly"]["fwdbwd"] / 1e9 / peak["fp32_best"],
        "bf16_autocast": layer_flops / timings["pixelfly_bf16_autocast"]["fwdbwd"] / 1e9
        / (peak["bf16_gflops"] or peak["fp32_best"])}
    bsr = (dense.weight.detach() * mask).to_sparse_bsr((block, block))
    try:
        timings["torch_bsr"] = {"fwd": timeit(lambda: torch.nn.functional.linear(xd, bsr), reps)}
        check("torch_bsr", torch.nn.functional.linear(xs.float(), bsr), xs @ (dense.weight.double() * mask.double()).t(), 1e-4)
    except (RuntimeError, NotImplementedError) as e:  # BSR support varies across builds
        timings["torch_bsr"] = {"error": str(e).splitlines()[0]}
    bar.update()
    row["pixelfly_config"] = {"butterfly_size": pf.butterfly_size, "n_factors": pf.n_factors,
                              "rank": pf.rank, "density": pf.density}
    row["modules"] = timings
    base = timings["dense"]
    row["speedup_vs_dense"] = {name: {ph: base[ph] / t[ph] for ph in t if ph in base and t[ph] > 0}
                               for name, t in timings.items() if "error" not in t}
    ac = timings["dense_bf16_autocast"]
    row["autocast_speedup"] = {ph: ac[ph] / timings["pixelfly_bf16_autocast"][ph]
                               for ph in ("fwd", "bwd", "fwdbwd") if timings["pixelfly_bf16_autocast"][ph] > 0}
    if "error" not in timings["torch_bsr"]:
        row["kernel_fwd_vs_bsr"] = timings["torch_bsr"]["fwd"] / row["kernels"]["fwd"]["time_s"]
    results.append(row)


def fmt_fraction(f) -> str:
    return "-" if f is None else f"{f:.2f}"


def print_table(results, peak, small=()):
    print(f"\n{describe_peak(peak)}")
    if slow_bf16():
        print(f"(dense bf16 is PyTorch's fallback on this CPU: timed on 1/{SUBSAMPLE} of the rows, scaled)")
    print("Kernels (pure flat butterfly at the density; ratios measured in this run; "
          "'of peak': effective GFLOP/s over the peak above, bf16 over the bf16 peak if any; "
          "'of tile': over the fp32 tile probe, the register tile in L1, run right before each kernel)")
    print(f"{'shape':>10} {'dens':>6} {'block':>5} {'dtype':>5} {'op':>6} {'eff GF/s':>9} {'of peak':>7} "
          f"{'of tile':>7} {'dense GF/s':>10} {'dense/peak':>10} {'eff/dense':>9} {'speedup':>8}")
    for r in results:
        for block, kr in [(r["block"], r)] + [(int(b), k) for b, k in r.get("other_blocks", {}).items()]:
            for dt, key in (("fp32", "kernels"), ("bf16", "kernels_bf16")):
                for op, k in kr[key].items():
                    print(f"{r['shape']:>10} {r['density']:>6.4f} {block:>5} {dt:>5} {op:>6} "
                          f"{k['gflops_effective']:>9.1f} {k['fraction_of_peak']:>7.2f} "
                          f"{fmt_fraction(k['fraction_of_tile']):>7} {k['gflops_dense']:>10.1f} "
                          f"{k['dense_fraction_of_peak']:>10.2f} {k['efficiency_vs_dense']:>9.2f} "
                          f"{k['speedup_vs_dense']:>7.2f}x")
    print("\nModules: speedup over nn.Linear (fwd / bwd / fwd+bwd); BSR forward only; the layer's "
          "fwd+bwd fraction of peak; under bf16 autocast over nn.Linear under bf16 autocast")
    for r in results:
        s = r["speedup_vs_dense"]
        cfg = r["pixelfly_config"]
        fp = r["layer_fraction_of_peak"]
        line = (f"{r['shape']:>10} d={r['density']:.4f} pixelfly(n={cfg['butterfly_size']},m={cfg['n_factors']},"
                f"r={cfg['rank']}) {s['pixelfly']['fwd']:.2f}x/{s['pixelfly'].get('bwd', 0):.2f}x/"
                f"{s['pixelfly']['fwdbwd']:.2f}x  masked-dense {s['masked_dense']['fwdbwd']:.2f}x")
        if "kernel_fwd_vs_bsr" in r:
            line += f"  bsr-fwd {s['torch_bsr']['fwd']:.2f}x  kernel-fwd/bsr {r['kernel_fwd_vs_bsr']:.2f}x"
        line += (f"  of peak {fp['fp32']:.2f}  autocast {r['autocast_speedup']['fwdbwd']:.2f}x"
                 f" (of peak {fp['bf16_autocast']:.2f})")
        print(line)
    if small:
        print("\nFew rows (per-call overhead): microseconds per call, PixelflyLinear vs nn.Linear")
        for r in small:
            print(f"{r['shape']:>10} T={r['T']:>4} d={r['density']:.4f}  fwd {r['pixelfly_us']['fwd']:.0f} vs "
                  f"{r['dense_us']['fwd']:.0f} us ({r['speedup']['fwd']:.2f}x)  fwd+bwd "
                  f"{r['pixelfly_us']['fwdbwd']:.0f} vs {r['dense_us']['fwdbwd']:.0f} us ({r['speedup']['fwdbwd']:.2f}x)")


def bench_small(out_f, in_f, T, density, reps):
    """Per-call time of PixelflyLinear and nn.Linear at a few rows (overhead-bound): the
    best of ``reps`` means over enough calls to fill ~0.2 s."""
    dense = nn.Linear(in_f, out_f)
    pf = PixelflyLinear.from_dense(dense, block_size=32, density=density)
    x = torch.randn(T, in_f, requires_grad=True)
    check("PixelflyLinear", pf(x.detach()), pf.to_dense().double()(x.detach().double()), 1e-4)
    out = {"shape": f"{out_f}x{in_f}", "T": T, "density": density, "pixelfly_us": {}, "dense_us": {}}
    for name, mod in (("pixelfly_us", pf), ("dense_us", dense)):
        fwd, fwdbwd = phases(mod, list(mod.parameters()), x)
        for ph, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            n = max(1, int(0.2 / max(timeit(fn, 3), 1e-6)))
            out[name][ph] = 1e6 * timeit(lambda: [fn() for _ in range(n)], reps, 0, min) / n
    out["speedup"] = {ph: out["dense_us"][ph] / out["pixelfly_us"][ph] for ph in ("fwd", "fwdbwd")}
    return out


def plot(results, path, peak=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    labels = [f"{r['shape']}\nd=1/{round(1 / r['density'])}" for r in results]
    xs = range(len(results))
    for i, op in enumerate(["fwd", "bwd_x", "bwd_w"]):
        axes[0].bar([x + 0.27 * i for x in xs], [r["kernels"][op]["efficiency_vs_dense"] for r in results],
                    width=0.27, label=op)
        axes[1].bar([x + 0.27 * i for x in xs], [r["kernels"][op]["fraction_of_peak"] for r in results],
                    width=0.27, label=f"{op} fp32")
        axes[1].scatter([x + 0.27 * i for x in xs], [r["kernels_bf16"][op]["fraction_of_peak"] for r in results],
                        color="k", marker="_", s=200, label="bf16" if i == 0 else None, zorder=3)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_title("kernel effective GFLOP/s / dense GFLOP/s (block 32)")
    axes[1].axhline(1.0, color="k", lw=0.8)
    if peak:
        axes[1].axhline(peak["tile_best"] / peak["fp32_best"], color="C3", lw=0.8, ls="--",
                        label="tile probe (register tile in L1), start of run")
    axes[1].set_title("kernel fraction of the measured FMA peak (block 32)")
    for i, name in enumerate(["pixelfly", "masked_dense", "pixelfly_bf16_autocast"]):
        vals = [r["speedup_vs_dense"][name]["fwdbwd"] if name != "pixelfly_bf16_autocast"
                else r["autocast_speedup"]["fwdbwd"] for r in results]
        axes[2].bar([x + 0.27 * i for x in xs], vals, width=0.27,
                    label=name if name != "pixelfly_bf16_autocast" else "pixelfly vs nn.Linear, bf16 autocast")
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set_yscale("log")
    axes[2].set_title("fwd+bwd speedup over nn.Linear")
    for ax in axes:
        ax.set_xticks([x + 0.27 for x in xs])
        ax.set_xticklabels(labels, fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes for a smoke run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--plot", help="write a PNG plot here")
    ap.add_argument("--small-only", action="store_true",
                    help="only the few-row rows (T = 1, 8, 64: per-call overhead), ~1 minute")
    ap.add_argument("--blocks", default=None,
                    help="block sizes, comma-separated: the first runs kernels and modules, "
                         "the others the kernels (default 32,16,64; --quick: 32,16)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    blocks = [int(b) for b in (args.blocks or ("32,16" if args.quick else "32,16,64")).split(",")]
    if args.quick:
        shapes, T, densities = [(512, 512), (256, 512)], 512, [1 / 4, 1 / 8]
        small_grid = [(512, 512, 8, 1 / 4)]
    else:
        shapes, T, densities = [(4096, 4096), (1024, 4096)], 4096, [1 / 4, 1 / 8, 1 / 16]
        small_grid = [(1024, 1024, t, 1 / 4) for t in (1, 8, 64)]
    peak = measure_peak(args.threads)
    print(describe_peak(peak))
    results = []
    grid = [] if args.small_only else [(s, d) for s in shapes for d in densities]
    with tqdm(total=len(grid) * 7 + len(small_grid), desc="bench_linear") as bar:
        for (out_f, in_f), d in grid:
            bench_shape(out_f, in_f, T, d, blocks[0], args.reps, results, bar, peak, blocks[1:])
        small = []
        for out_f, in_f, t, d in small_grid:
            small.append(bench_small(out_f, in_f, t, d, args.reps))
            bar.update()
    print_table(results, peak, small)
    meta = {"threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "isa": int(ops.cpu_isa()), "T": T, "reps": args.reps, "peak": peak,
            "dense_bf16_rows_timed": f"1/{SUBSAMPLE}, scaled" if slow_bf16() else "all"}
    for path in filter(None, [args.json]):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump({"meta": meta, "results": results, "small_t": small}, f, indent=1)
        print(f"results written to {path}")
    if args.plot and results:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        plot(results, args.plot, peak)
    return results


if __name__ == "__main__":
    main()
