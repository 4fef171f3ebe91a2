"""Shared test helpers: devices, dtypes, and the per-dtype tolerance rule.

Tolerance rule (as flash-attention's tests): the kernel's error against a float64 oracle
must be at most twice the error of a same-dtype PyTorch baseline, plus a small floor.
"""
import itertools

import torch

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
dtypes = [torch.float64, torch.float32, torch.bfloat16]
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def assert_close_to_oracle(out, oracle64, baseline, name="output"):
    """``out``: kernel result; ``oracle64``: float64 truth; ``baseline``: same-dtype PyTorch."""
    assert out.shape == oracle64.shape, (name, out.shape, oracle64.shape)
    assert torch.isfinite(out.float()).all(), f"{name} has non-finite values"
    err = (out.double() - oracle64).abs().max().item() if out.numel() else 0.0
    base = (baseline.double() - oracle64).abs().max().item() if out.numel() else 0.0
    scale = oracle64.abs().max().item() if out.numel() else 0.0
    limit = 2.0 * base + FLOOR[out.dtype] * max(1.0, scale)
    assert err <= limit, f"{name}: max error {err:.3e} > {limit:.3e} (baseline {base:.3e}) for {out.dtype}"


def assert_same_across_threads_and_isas(fn):
    """``fn()`` (a tuple of tensors) bitwise equal on 1 and 2 threads and every CPU ISA the
    machine has (pixelfly.ops.set_cpu_isa 1-4); returns the first result."""
    from pixelfly import ops
    prev = torch.get_num_threads()
    results = {}
    try:
        for threads, isa in itertools.product([1, 2], [1, 2, 3, 4]):
            if isa > ops.cpu_isa():
                continue
            torch.set_num_threads(threads)
            old = ops.set_cpu_isa(isa)
            try:
                results[threads, isa] = fn()
            finally:
                ops.set_cpu_isa(old)
    finally:
        torch.set_num_threads(prev)
    first = next(iter(results.values()))
    for key, outs in results.items():
        for a, b in zip(first, outs):
            assert torch.equal(a, b), f"threads/isa {key}"
    return first
