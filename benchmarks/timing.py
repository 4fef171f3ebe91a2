"""Wall-clock timing shared by the benchmarks (no pixelfly import: ab_builds' children load
it before the checkout under test)."""
import statistics
import time


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
