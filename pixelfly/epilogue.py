"""Whether PixelflyLinear forms its low-rank term and bias in the block-sparse kernel's
output tile (``bsmm_fwd_lowrank`` / ``bsmm_bwd_x_lowrank``) or adds them to the kernel's
output afterwards with PyTorch's ``addmm_`` (and ``add_``).

The fused form writes ``y`` (``dx``) once instead of reading and writing it again per added
term, but runs the ``[T, r] x [r, out]`` product on the block-sparse tile kernel instead of
PyTorch's GEMM. Which is faster depends on the machine: on the 2-core AMD EPYC (AVX2) of
this project's benchmarks the tile ran that product at ~40% of the GEMM's rate (4096 x 4096,
``T = 4096``, rank 64: +45-60 ms in the fused forward against 18-23 ms for ``addmm_``), where
the issue's AVX-512 box ran the tile kernels at twice PyTorch's GEMM rate. So the choice is
measured once per process on the CPU: a 512-row product at 1024 features, density 1/8,
rank 64, each way (best of 3); ``set_fused(True / False)`` fixes it, ``None`` measures again.
Both ways agree to rounding (tested against the float64 reference).
"""
from __future__ import annotations

import torch

from .timing import best_time

__all__ = ["fused", "set_fused", "fused_pays"]

_FUSED: bool | None = None


def fused_pays() -> bool:
    """Measure once: whether the fused forward (kernel with the low-rank term and bias in
    its output tile) beats the kernel followed by ``addmm_`` and ``add_`` on this CPU."""
    from . import ops
    from .layouts import BlockIndex, random_layout
    g = torch.Generator().manual_seed(0)
    T, f, b, r = 512, 1024, 32, 64
    idx = ops.index_tensors(BlockIndex.from_layout(random_layout(f // b, f // b, 1 / 8)))
    blocks = torch.randn(idx[1].shape[0], b, b, generator=g)
    x, h = torch.randn(T, f, generator=g), torch.randn(T, r, generator=g)
    U, bias = torch.randn(f, r, generator=g), torch.randn(f, generator=g)

    def plain():
        ops.internal("bsmm_fwd", x, blocks, *idx).addmm_(h, U.t()).add_(bias)

    def fused_fwd():
        ops.internal("bsmm_fwd_lowrank", x, blocks, *idx, h, U, bias)

    with torch.no_grad(), torch.autocast("cpu", enabled=False):  # first use may be under autocast
        return best_time(fused_fwd) < best_time(plain)


def fused(device) -> bool:
    """Whether the layer fuses on ``device``: on the CPU's native kernels as measured (or
    set); never on other devices (their ``*_lowrank`` ops are the unfused sum) nor under
    ``torch.func`` (whose rules cover the plain ops); not measured while ``torch.compile`` or
    ``torch.jit.trace`` traces (unfused there until measured in eager mode)."""
    global _FUSED
    if device.type != "cpu" or torch._C._are_functorch_transforms_active():
        return False
    from .backends import implementation
    if implementation("cpu", "bsmm_fwd_lowrank") != "native":
        return False
    if _FUSED is None:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():  # no timing inside a trace
            return False
        _FUSED = fused_pays()
    return _FUSED


def set_fused(enabled: bool | None) -> bool | None:
    """Fix the choice (``True``: fused, ``False``: ``addmm_`` after the kernel) or, with
    ``None``, measure it again at the next call. Returns the previous setting."""
    global _FUSED
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_fused: enabled must be a bool or None, got {type(enabled).__name__}")
    prev, _FUSED = _FUSED, enabled
    return prev
