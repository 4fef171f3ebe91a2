"""The low-rank part's thin GEMMs in bfloat16 on CPUs without bf16 arithmetic.

PyTorch's bf16 matmul on a CPU without AVX512_BF16 / AMX falls back to slow code: on a
2-core AMD EPYC (AVX2) ``[4096 x 4096] @ [4096 x 64]`` takes 1.5 s in bf16 against 18 ms in
fp32, so under ``torch.autocast`` the rank-64 part of a PixelflyLinear would cost seconds.
There these products run on fp32 copies of their operands and are rounded to bf16 once:
what the bf16 matmul computes (fp32 accumulation, one rounding at the end) up to the order
of the sums. Whether the bf16 matmul is slow is measured once per process (a 256 x 512 x 64
product in both dtypes; "slow" is over 4x fp32's time: native bf16 runs at 0.5-1x).
"""
from __future__ import annotations

import torch

from .timing import best_time

__all__ = ["bf16_matmul_is_slow", "mm", "addmm_"]

_SLOW: bool | None = None


def bf16_matmul_is_slow() -> bool:
    """Whether this CPU's bf16 matmul is over 4x slower than fp32 (measured once)."""
    global _SLOW
    if _SLOW is None:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(256, 512, generator=g), torch.randn(512, 64, generator=g)
        ab, bb = a.bfloat16(), b.bfloat16()
        with torch.no_grad(), torch.autocast("cpu", enabled=False):  # first use may be under autocast
            _SLOW = best_time(lambda: ab @ bb) > 4 * best_time(lambda: a @ b)
    return _SLOW


def _via_fp32(a):
    return (a.dtype == torch.bfloat16 and a.device.type == "cpu"
            and not torch.compiler.is_compiling() and bf16_matmul_is_slow())


def _mm_fp32(a, b):
    with torch.autocast(a.device.type, enabled=False):  # else autocast casts back to bf16
        return (a.float() @ b.float()).to(a.dtype)


def mm(a, b):
    """``a @ b`` (2-D, one dtype); bf16 on a CPU with a slow bf16 matmul: in fp32, rounded once."""
    return _mm_fp32(a, b) if _via_fp32(a) else a @ b


def addmm_(c, a, b, beta=1.0, alpha=1.0):
    """``c = beta c + alpha (a @ b)`` in place (the product as :func:`mm` computes it)."""
    if not _via_fp32(a):
        return c.addmm_(a, b, beta=beta, alpha=alpha)
    if beta == 1.0 and alpha == 1.0:
        return c.add_(_mm_fp32(a, b))
    with torch.autocast(a.device.type, enabled=False):  # scaled: in fp32, rounded once
        return c.copy_(c.float().addmm_(a.float(), b.float(), beta=beta, alpha=alpha))
