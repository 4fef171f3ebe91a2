"""CPU benchmark of the block-sparse kernels and PixelflyLinear against dense PyTorch.

Measures the machine's peak first (``benchmarks.peak``: fp32 FMA per ISA, bf16 dot products
where the CPU has AVX512_BF16), checks correctness (every method against the float64
masked-dense reference on a slice of the rows; bf16 kernels at most twice dense bf16's own
error), then times the kernels in fp32 and bf16 and the modules' forward, backward and
forward+backward in the same run, and prints ratios against dense PyTorch and fractions of
the peak; effective GFLOP/s count nonzero-block FLOPs only.

    python -m benchmarks.bench_linear                      # the issue's full grid
    python -m benchmarks.bench_linear --quick              # small shapes, seconds
    python -m benchmarks.bench_linear --json out.json --plot out.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from benchmarks.peak import describe as describe_peak, measure as measure_peak
from pixelfly import PixelflyLinear, _C, choose_config, ops, reference
from pixelfly.layouts import BlockIndex, flat_butterfly_layout


def timeit(fn, reps: int, warmup: int = 1, stat=statistics.median) -> float:
    """``stat`` (default the median) of ``reps`` wall times of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return stat(times)


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


def bench_kernels(dtype, x, gy, blocks, it, lay, W, block, reps, peak_gflops):
    """fwd / bwd_x / bwd_w of the kernels and of dense PyTorch in ``dtype``, after a check
    against the float64 reference (bf16: at most twice dense bf16's own error)."""
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
    # dense bf16 on a CPU without bf16 arithmetic runs PyTorch's slow fallback (about 10x
    # fp32's time at these shapes): one untimed-warm-up-free call is enough to time it
    slow = dtype == torch.bfloat16 and not _C.has_avx512_bf16()
    dr, dw = (1, 0) if slow else (reps, 1)
    t_dense = {"fwd": timeit(lambda: F.linear(xd, Wd), dr, dw),
               "bwd_x": timeit(lambda: gd @ Wd, dr, dw),
               "bwd_w": timeit(lambda: gd.t() @ xd, dr, dw)}
    t_kern = {"fwd": timeit(lambda: ops.bsmm_fwd(xd, bd, *it), reps),
              "bwd_x": timeit(lambda: ops.bsmm_bwd_x(gd, bd, *it), reps),
              "bwd_w": timeit(lambda: ops.bsmm_bwd_w(gd, xd, *it, b1=b1, b2=b2), reps)}
    return {op: {"time_s": t_kern[op], "dense_time_s": t_dense[op],
                 "gflops_effective": flops_sparse / t_kern[op] / 1e9,
                 "gflops_dense": flops_dense / t_dense[op] / 1e9,
                 "efficiency_vs_dense": (flops_sparse / t_kern[op]) / (flops_dense / t_dense[op]),
                 "fraction_of_peak": flops_sparse / t_kern[op] / 1e9 / peak_gflops,
                 "dense_fraction_of_peak": flops_dense / t_dense[op] / 1e9 / peak_gflops,
                 "speedup_vs_dense": t_dense[op] / t_kern[op]}
            for op in t_kern}


def bench_shape(out_f, in_f, T, density, block, reps, results, bar, peak):
    dense = nn.Linear(in_f, out_f)
    x = torch.randn(T, in_f, requires_grad=True)
    xs = x.detach()[:64].double()
    row = {"shape": f"{out_f}x{in_f}", "T": T, "density": density, "block": block}

    # kernel layout: pure flat butterfly at this density (no low rank)
    n, m, _ = choose_config(out_f, in_f, density, block, low_rank_fraction=0.0)
    layout = flat_butterfly_layout(out_f // block, in_f // block, m, n)
    idx = BlockIndex.from_layout(layout)
    it = ops.index_tensors(idx)
    blocks = torch.randn(idx.nnz, block, block) / (idx.nnz * block * block / out_f) ** 0.5
    gy = torch.randn(T, out_f)
    lay = torch.as_tensor(layout)
    xd = x.detach()
    W = dense.weight.detach()
    row["kernel_layout"] = {"butterfly_size": n, "n_factors": m, "nnz": idx.nnz,
                            "density": idx.nnz / layout.size}
    # bf16 kernels are measured against the bf16 peak where the CPU has one, else against
    # the fp32 FMA peak (they widen to fp32 and run the fp32 FMA tiles)
    row["kernels"] = bench_kernels(torch.float32, xd, gy, blocks, it, lay, W, block, reps, peak["fp32_best"])
    row["kernels_bf16"] = bench_kernels(torch.bfloat16, xd, gy, blocks, it, lay, W, block, reps,
                                        peak["bf16_gflops"] or peak["fp32_best"])
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
    timings = {}
    for name, (fn, params) in modules.items():
        fwd, fwdbwd = phases(fn, params, x)
        tf, tfb = timeit(fwd, reps), timeit(fwdbwd, reps)
        timings[name] = {"fwd": tf, "fwdbwd": tfb, "bwd": max(tfb - tf, 0.0)}
        bar.update()
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
    if "error" not in timings["torch_bsr"]:
        row["kernel_fwd_vs_bsr"] = timings["torch_bsr"]["fwd"] / row["kernels"]["fwd"]["time_s"]
    results.append(row)


def print_table(results, peak):
    print(f"\n{describe_peak(peak)}")
    print("Kernels (pure flat butterfly at the density; ratios measured in this run; "
          "'of peak': effective GFLOP/s over the peak above, bf16 over the bf16 peak if any)")
    print(f"{'shape':>10} {'dens':>6} {'dtype':>5} {'op':>6} {'eff GF/s':>9} {'of peak':>7} {'dense GF/s':>10} "
          f"{'dense/peak':>10} {'eff/dense':>9} {'speedup':>8}")
    for r in results:
        for dt, key in (("fp32", "kernels"), ("bf16", "kernels_bf16")):
            for op, k in r[key].items():
                print(f"{r['shape']:>10} {r['density']:>6.4f} {dt:>5} {op:>6} {k['gflops_effective']:>9.1f} "
                      f"{k['fraction_of_peak']:>7.2f} {k['gflops_dense']:>10.1f} {k['dense_fraction_of_peak']:>10.2f} "
                      f"{k['efficiency_vs_dense']:>9.2f} {k['speedup_vs_dense']:>7.2f}x")
    print("\nModules: speedup over nn.Linear (fwd / bwd / fwd+bwd); BSR forward only")
    for r in results:
        s = r["speedup_vs_dense"]
        cfg = r["pixelfly_config"]
        line = (f"{r['shape']:>10} d={r['density']:.4f} pixelfly(n={cfg['butterfly_size']},m={cfg['n_factors']},"
                f"r={cfg['rank']}) {s['pixelfly']['fwd']:.2f}x/{s['pixelfly'].get('bwd', 0):.2f}x/"
                f"{s['pixelfly']['fwdbwd']:.2f}x  masked-dense {s['masked_dense']['fwdbwd']:.2f}x")
        if "kernel_fwd_vs_bsr" in r:
            line += f"  bsr-fwd {s['torch_bsr']['fwd']:.2f}x  kernel-fwd/bsr {r['kernel_fwd_vs_bsr']:.2f}x"
        print(line)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['shape']}\nd=1/{round(1 / r['density'])}" for r in results]
    xs = range(len(results))
    for i, op in enumerate(["fwd", "bwd_x", "bwd_w"]):
        axes[0].bar([x + 0.27 * i for x in xs], [r["kernels"][op]["efficiency_vs_dense"] for r in results],
                    width=0.27, label=op)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_title("kernel effective GFLOP/s / dense GFLOP/s")
    for i, name in enumerate(["pixelfly", "masked_dense"]):
        axes[1].bar([x + 0.4 * i for x in xs], [r["speedup_vs_dense"][name]["fwdbwd"] for r in results],
                    width=0.4, label=name)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_title("fwd+bwd speedup over nn.Linear")
    for ax in axes:
        ax.set_xticks([x + 0.27 for x in xs])
        ax.set_xticklabels(labels, fontsize=7)
        ax.legend()
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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        shapes, T, densities = [(512, 512), (256, 512)], 512, [1 / 4, 1 / 8]
    else:
        shapes, T, densities = [(4096, 4096), (1024, 4096)], 4096, [1 / 4, 1 / 8, 1 / 16]
    peak = measure_peak(args.threads)
    print(describe_peak(peak))
    results = []
    grid = [(s, d) for s in shapes for d in densities]
    with tqdm(total=len(grid) * 5, desc="bench_linear") as bar:
        for (out_f, in_f), d in grid:
            bench_shape(out_f, in_f, T, d, 32, args.reps, results, bar, peak)
    print_table(results, peak)
    meta = {"threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "isa": int(ops.cpu_isa()), "T": T, "reps": args.reps, "peak": peak}
    for path in filter(None, [args.json]):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print(f"results written to {path}")
    if args.plot:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
