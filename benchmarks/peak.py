"""The machine's arithmetic peak, measured in the benchmark's own run.

One C loop per thread, all at once (``pixelfly._C.peak_fma`` / ``peak_dpbf16``, the GIL
released): 12 independent chains of vector FMAs in each ISA this CPU runs (fp32), and of
AVX512_BF16 dot products (``vdpbf16ps``, fp32 accumulation) where the CPU has them. The
rate is the best of a few timed rounds of about ``seconds`` each; a kernel's fraction of
peak is its effective GFLOP/s over the fp32 peak of the ISA it ran (bf16 kernels: over the
bf16 peak when there is one).

Beside it, the tile probe (``pixelfly._C.peak_tile``): the fp32 tile kernel's own register
tile (broadcasts of A, vector loads of B, FMAs) on operands that stay in L1. Its rate is
what the core's load path leaves of the FMA peak to any GEMM kernel, with no cache miss,
packing or bookkeeping: the gap between a kernel and the tile probe is the kernel's own,
the gap between the tile probe and the FMA peak the machine's. (On the shared 2-vCPU AVX2
VM this project is developed on, the tile probe moves between ~0.8 and ~0.95 of the FMA
peak from one second to the next while the FMA loop does not move: loads compete with
whatever shares the physical core.)

    python -m benchmarks.peak
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

ISA_NAMES = {1: "portable", 2: "avx2", 3: "avx512"}


def _rate(fn, threads: int, seconds: float, rounds: int = 3) -> float:
    """GFLOP/s of ``fn(iters) -> (flops, sink)`` run by ``threads`` threads at once."""
    iters = 1 << 12
    while True:                                   # calibrate: one call of ~seconds
        t0 = time.perf_counter()
        fn(iters)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            break
        iters *= 4
    iters = max(1, int(iters * seconds / dt))
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            flops = sum(f.result()[0] for f in [pool.submit(fn, iters) for _ in range(threads)])
            best = max(best, flops / (time.perf_counter() - t0))
    return best / 1e9


def _best_isa() -> int:
    """The best fp32 ISA of this CPU (4, AVX512_BF16, has AVX-512's fp32 FMA and tile)."""
    from pixelfly import ops
    return min(int(ops.cpu_isa()), 3)


def tile_rate(threads: int, seconds: float = 0.1) -> float:
    """GFLOP/s of the tile probe in the best ISA now (a short run, to sit right beside the
    measurement it is compared with)."""
    from pixelfly import _C
    isa = _best_isa()
    return _rate(lambda n: _C.peak_tile(isa, n), threads, seconds, rounds=3)


def measure(threads: int | None = None, seconds: float = 0.25) -> dict:
    """``{"threads", "fp32_gflops": {isa name: GFLOP/s}, "fp32_best", "bf16_gflops",
    "tile_gflops": {isa name: GFLOP/s}, "tile_best"}``: every ISA this CPU runs
    (``bf16_gflops`` is None without AVX512_BF16)."""
    import torch

    from pixelfly import _C
    threads = threads or torch.get_num_threads()
    best_isa = _best_isa()
    fp32 = {ISA_NAMES[i]: _rate(lambda n, i=i: _C.peak_fma(i, n), threads, seconds)
            for i in sorted(ISA_NAMES) if i <= best_isa}
    tile = {ISA_NAMES[i]: _rate(lambda n, i=i: _C.peak_tile(i, n), threads, seconds)
            for i in sorted(ISA_NAMES) if i <= best_isa}
    bf16 = _rate(_C.peak_dpbf16, threads, seconds) if _C.has_avx512_bf16() else None
    return {"threads": threads, "fp32_gflops": fp32, "fp32_best": fp32[ISA_NAMES[best_isa]],
            "best_isa": ISA_NAMES[best_isa], "bf16_gflops": bf16,
            "tile_gflops": tile, "tile_best": tile[ISA_NAMES[best_isa]]}


def describe(peak: dict) -> str:
    fp32 = ", ".join(f"{k} {v:.0f}" for k, v in peak["fp32_gflops"].items())
    bf16 = "none (no AVX512_BF16)" if peak["bf16_gflops"] is None else f"{peak['bf16_gflops']:.0f}"
    tile = ", ".join(f"{k} {v:.0f}" for k, v in peak["tile_gflops"].items())
    return (f"peak GFLOP/s on {peak['threads']} threads, measured in this run: fp32 FMA {fp32}; "
            f"bf16 dot {bf16}; fp32 tile in L1 {tile}")


if __name__ == "__main__":
    p = measure()
    print(describe(p))
    print(json.dumps(p))
