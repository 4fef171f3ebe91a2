"""Before / after: the block-sparse kernels and PixelflyLinear of two checkouts of pixelfly,
timed in alternating processes on the same machine.

A change to the kernels is judged by a before / after table on one machine, and a shared
VM drifts by 10-30% between minutes: so each side runs in its own process, the sides
alternate (before, after, before, after, ...) and each figure is the median over rounds.
Every child first checks each op against the float64 reference of its own checkout
(``pixelfly.reference``: masked dense products; bf16 at most twice dense bf16's own error;
the layer against its own ``to_dense()`` in float64),
then times fwd / bwd_x / bwd_w in fp32 and bf16 on a pure flat butterfly of the density,
and ``PixelflyLinear`` fwd+bwd (sparse + low rank at the density) in fp32 and under bf16
autocast. The driver measures the FMA peak (``benchmarks.peak``) before and after the
rounds and prints GFLOP/s before -> after, the ratio, and after's fraction of the peak.

    python -m benchmarks.ab_builds --before /path/to/old/checkout --json out.json --plot out.png

Both checkouts must be built in place (``make build``); ``--after`` defaults to this one.
Only APIs both sides have are used (``ops.bsmm_*``, ``PixelflyLinear(density=)``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.timing import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(4096, 4096), (1024, 4096)]
DENSITIES = [1 / 4, 1 / 8, 1 / 16]
KERNELS = ("fwd", "bwd_x", "bwd_w")


def child(shapes, densities, T: int, block: int, reps: int) -> dict:
    """Runs inside a checkout's process (its path first on sys.path): checks, then GFLOP/s
    of every kernel and layer."""
    import torch
    import torch.nn.functional as F

    from pixelfly import PixelflyLinear, choose_config, ops, reference
    from pixelfly.layouts import BlockIndex, flat_butterfly_layout
    torch.manual_seed(0)
    out = {}
    for out_f, in_f in shapes:
        x = torch.randn(T, in_f)
        gy = torch.randn(T, out_f)
        for density in densities:
            key = f"{out_f}x{in_f} 1/{round(1 / density)}"
            n, m, _ = choose_config(out_f, in_f, density, block, low_rank_fraction=0.0)
            layout = flat_butterfly_layout(out_f // block, in_f // block, m, n)
            idx = BlockIndex.from_layout(layout)
            it = ops.index_tensors(idx)
            blocks = torch.randn(idx.nnz, block, block) / (idx.nnz * block * block / out_f) ** 0.5
            lay = torch.as_tensor(layout)
            flops = 2.0 * T * idx.nnz * block * block
            row = {}
            for dt in (torch.float32, torch.bfloat16):
                xd, gd, bd = x.to(dt), gy.to(dt), blocks.to(dt)
                run = {"fwd": lambda: ops.bsmm_fwd(xd, bd, *it),
                       "bwd_x": lambda: ops.bsmm_bwd_x(gd, bd, *it),
                       "bwd_w": lambda: ops.bsmm_bwd_w(gd, xd, *it, b1=block, b2=block)}
                check_kernels(dt, x[:64], gy[:64], blocks, lay, block, it, ops, reference, F)
                name = "fp32" if dt == torch.float32 else "bf16"
                for op, fn in run.items():
                    row[f"{op} {name}"] = flops / timeit(fn, reps) / 1e9
            layer = PixelflyLinear(in_f, out_f, density=density, block_size=block)
            want = layer.to_dense().double()(x[:64].double())
            err = (layer(x[:64]).double() - want).abs().max().item() / max(1.0, want.abs().max().item())
            if err > 1e-4:
                raise SystemExit(f"PixelflyLinear {key}: relative error {err:.2e} against its dense form")
            lflops = 3 * 2.0 * T * (layer.index.nnz * block * block + layer.rank * (in_f + out_f))
            xg = x.clone().requires_grad_()
            g = torch.ones(T, out_f)

            def step(cast):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast):
                    y = layer(xg)
                y.backward(g.to(y.dtype))
                layer.zero_grad(set_to_none=True)
                xg.grad = None
            row["layer fp32"] = lflops / timeit(lambda: step(False), reps) / 1e9
            row["layer bf16 autocast"] = lflops / timeit(lambda: step(True), reps) / 1e9
            out[key] = row
    return out


def check_kernels(dt, x, gy, blocks, lay, block, it, ops, reference, F):
    """The three kernels on 64 rows against the float64 reference (fp32 1e-4; bf16 at most
    twice dense bf16's own error on the same operands)."""
    xs, gs, bs = x.double(), gy.double(), blocks.double()
    Wm = reference.blocks_to_dense(bs, lay)
    mask = reference.layout_to_mask(lay, block, block).double()
    xd, gd, bd = x.to(dt), gy.to(dt), blocks.to(dt)
    Wt = Wm.to(dt)
    cases = {"fwd": (ops.bsmm_fwd(xd, bd, *it), reference.bsmm_fwd(xs, bs, lay),
                     F.linear(xd, Wt), xs @ Wm.t()),
             "bwd_x": (ops.bsmm_bwd_x(gd, bd, *it), reference.bsmm_bwd_x(gs, bs, lay), gd @ Wt, gs @ Wm),
             "bwd_w": (ops.bsmm_bwd_w(gd, xd, *it, b1=block, b2=block),
                       reference.bsmm_bwd_w(gs, xs, lay, block, block),
                       (gd.t() @ xd) * mask.to(dt), (gs.t() @ xs) * mask)}

    def rel(a, want):
        return (a.double() - want).abs().max().item() / max(1.0, want.abs().max().item())
    for op, (got, want, dense, dense_want) in cases.items():
        tol = 1e-4 if dt.itemsize == 4 else 2 * rel(dense, dense_want) + 1e-6
        if rel(got, want) > tol:
            raise SystemExit(f"bsmm_{op} ({dt}): relative error {rel(got, want):.2e} > {tol:.2e}")


def run_child(tree: str, a) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "benchmarks.ab_builds", "--child", os.path.abspath(tree), "--rows", str(a.rows),
           "--block", str(a.block), "--reps", str(a.reps), "--shapes", *a.shapes,
           "--densities", *map(str, a.densities)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the child in {tree} failed:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    if not got["pixelfly"].startswith(os.path.join(os.path.abspath(tree), "")):
        raise SystemExit(f"the child for {tree} imported pixelfly from {got['pixelfly']}: "
                         "build that checkout in place (make build)")
    return got["rows"]


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells = list(table)
    cols = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(cells)
    for k, cell in enumerate(cells):
        ax.bar([i + k * width for i in range(len(cols))], [table[cell][c]["ratio"] for c in cols],
               width, label=cell)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cols))], cols, rotation=25, fontsize=8)
    ax.set_ylabel("GFLOP/s after / before")
    ax.set_title("After / before (alternating processes, median over rounds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", help="the checkout to compare against (built in place)")
    p.add_argument("--after", default=ROOT, help="default: this checkout")
    p.add_argument("--rounds", type=int, default=3, help="processes per side (default 3)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per figure in a process")
    p.add_argument("--rows", type=int, default=4096, help="T (default 4096)")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--shapes", nargs="+", default=[f"{o}x{i}" for o, i in SHAPES])
    p.add_argument("--densities", nargs="+", type=float, default=DENSITIES)
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--child", help=argparse.SUPPRESS)  # the checkout a child process times
    a = p.parse_args(argv)
    for s in a.shapes:
        if len(s.split("x")) != 2 or not all(v.isdigit() for v in s.split("x")):
            p.error(f"--shapes: {s!r} is not OUTxIN")
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes]
    if a.child:
        sys.path.insert(0, a.child)  # the checkout under test, before this one
        import pixelfly
        print(json.dumps({"pixelfly": os.path.abspath(pixelfly.__file__),
                          "rows": child(shapes, a.densities, a.rows, a.block, a.reps)}))
        return
    if not a.before:
        p.error("--before is required")
    from tqdm import tqdm

    from benchmarks.peak import measure as measure_peak
    peaks = [measure_peak()["fp32_best"]]
    runs = {"before": [], "after": []}
    for _ in tqdm(range(a.rounds), desc="rounds (before + after)"):
        for side in ("before", "after"):
            runs[side].append(run_child(getattr(a, side), a))
    peaks.append(measure_peak()["fp32_best"])
    peak = statistics.median(peaks)
    table = {}
    for cell in runs["after"][0]:
        table[cell] = {}
        for col in runs["after"][0][cell]:
            b = statistics.median(r[cell][col] for r in runs["before"])
            f = statistics.median(r[cell][col] for r in runs["after"])
            table[cell][col] = {"before": b, "after": f, "ratio": f / b,
                                "before_of_peak": b / peak, "after_of_peak": f / peak}
    print(f"fp32 FMA peak {peaks[0]:.0f} / {peaks[1]:.0f} GFLOP/s (start / end); T = {a.rows}, "
          f"block {a.block}; GFLOP/s before -> after (ratio) [after's fraction of the fp32 peak]")
    for cell, row in table.items():
        print(f"{cell}:")
        for col, v in row.items():
            print(f"  {col:20s} {v['before']:7.1f} -> {v['after']:7.1f}  ({v['ratio']:.2f}x)"
                  f"  [{v['after_of_peak']:.2f}]")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"args": {k: v for k, v in vars(a).items() if k != "child"},
                       "peak_fp32": peaks, "table": table, "runs": runs}, fh, indent=1)
    if a.plot:
        plot(table, a.plot)


if __name__ == "__main__":
    main()
