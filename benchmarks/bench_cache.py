"""Memory and speed of the CPU output cache (csrc/torch/cpu_cache.cpp).

Memory: PixelflyLinear(1024, 4096) forward + backward for ``--steps`` steps with a fixed
number of rows (T = 1024) and with T drawn uniformly from 900..1150, each in a fresh
process: peak RSS, RSS at the end, and RSS after ``ops.empty_cache()`` (nn.Linear as the
baseline). Speed: PixelflyLinear(1024, 4096, density=0.25) forward / backward and the
4096x4096 density-1/4 kernels at T = 4096, the minimum of ``--reps`` runs (the machine is
shared and noisy).

    python -m benchmarks.bench_cache [--steps 300] [--reps 7]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MEM_CODE = r"""
import json, random, resource, sys, torch
from torch import nn
from pixelfly import PixelflyLinear, ops
torch.manual_seed(0)
mode, steps, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
layer = PixelflyLinear(1024, 4096) if kind == "pixelfly" else nn.Linear(1024, 4096)
rng = random.Random(0)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
for _ in range(steps):
    T = 1024 if mode == "fixed" else rng.randint(900, 1150)
    x = torch.randn(T, 1024, requires_grad=True)
    layer(x).sum().backward()
    layer.zero_grad(set_to_none=True)
end = rss()
released = ops.empty_cache()
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "end": end,
                  "after_empty_cache": rss(), "released": released}))
"""

MiB = float(1 << 20)


def memory(steps: int, kinds=("linear", "pixelfly")) -> dict:
    out = {}
    for kind in kinds:
        for mode in ("fixed", "varying"):
            p = subprocess.run([sys.executable, "-c", MEM_CODE, mode, str(steps), kind],
                               capture_output=True, text=True, check=True)
            out[f"{kind}/{mode}"] = r = json.loads(p.stdout)
            print(f"{kind:8s} {mode:7s} T: peak RSS {r['peak'] / MiB:7.0f} MiB, end "
                  f"{r['end'] / MiB:6.0f} MiB, after empty_cache {r['after_empty_cache'] / MiB:6.0f} "
                  f"MiB (released {r['released'] / MiB:.0f} MiB)", flush=True)
    ratio = out["pixelfly/varying"]["peak"] / out["pixelfly/fixed"]["peak"]
    print(f"pixelfly peak RSS, varying / fixed T: {ratio:.2f}x")
    out["ratio"] = ratio
    return out


def best(fn, reps: int) -> float:
    """The minimum of ``reps`` wall times (after one warm-up call)."""
    from benchmarks.timing import timeit
    return timeit(fn, reps, stat=min)


def speed(reps: int) -> dict:
    import torch
    from pixelfly import PixelflyLinear, ops
    from pixelfly.layouts import BlockIndex, flat_butterfly_layout
    torch.manual_seed(0)
    res = {}
    layer = PixelflyLinear(1024, 4096, density=0.25)
    x = torch.randn(4096, 1024, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    res["layer 1024x4096 fwd"] = best(lambda: layer(x), reps)
    res["layer 1024x4096 fwd+bwd"] = best(lambda: layer(x).backward(g), reps)
    lay = flat_butterfly_layout(128, 128, 2, 32)          # density 1/4 on 4096x4096
    it = ops.index_tensors(BlockIndex.from_layout(lay))
    w = torch.randn(len(it[1]), 32, 32)
    x4 = torch.randn(4096, 4096)
    res["bsmm 4096x4096 fwd"] = best(lambda: ops.bsmm_fwd(x4, w, *it), reps)
    res["bsmm 4096x4096 bwd_x"] = best(lambda: ops.bsmm_bwd_x(x4, w, *it), reps)
    res["bsmm 4096x4096 bwd_w"] = best(lambda: ops.bsmm_bwd_w(x4, x4, *it, b1=32, b2=32), reps)
    for k, v in res.items():
        print(f"{k:26s} {v * 1e3:8.1f} ms (min of {reps})", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--kinds", default="linear,pixelfly", help="layers of the memory runs")
    args = ap.parse_args()
    res = {}
    if not args.skip_memory:
        res["memory"] = memory(args.steps, args.kinds.split(","))
    if not args.skip_speed:
        res["speed"] = speed(args.reps)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
