"""The one timing helper of the run-time choices that are measured once per process
(:mod:`pixelfly.lowrank_mm`, :mod:`pixelfly.epilogue`)."""
from __future__ import annotations

import time

__all__ = ["best_time"]


def best_time(fn, reps: int = 3) -> float:
    """The best of ``reps`` wall times of ``fn()`` in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
