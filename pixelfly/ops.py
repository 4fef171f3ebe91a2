"""Block-sparse matmul ops: ``torch.ops.pixelfly.*`` with fake (meta) kernels and autograd.

The C/CUDA kernels are registered by the extensions ``pixelfly._ops`` (CPU) and
``pixelfly._ops_cuda`` (CUDA, when built), the pure-PyTorch composite ops for every other
device (and, by default, CUDA) by :mod:`pixelfly.backends`; this file attaches what Python
does best: shape inference for ``torch.compile`` (``register_fake``) and gradients
(``register_autograd``), so every op is differentiable twice and ``opcheck``-clean.

A weight ``B`` of shape ``out x in = (R*b1) x (C*b2)`` is stored as ``blocks [nnz, b1, b2]``
in block-CSR order together with a :class:`BlockIndex` (see :mod:`pixelfly.layouts`).
"""
from __future__ import annotations

import torch

from . import _ops
from .backends import HAS_CUDA_KERNELS, implementation, use_composite, use_native_cuda
from .composite import add_lowrank
from .op_checks import INDEX_FIELDS, bsmm_args, bsmm_lowrank_args, int_arg

__all__ = ["bsmm", "bsmm_fwd", "bsmm_bwd_x", "bsmm_bwd_w", "bsmm_fwd_lowrank", "bsmm_bwd_x_lowrank",
           "index_tensors", "HAS_CUDA_KERNELS",
           "empty_cache", "set_cache_limit", "cache_held", "cpu_isa", "set_cpu_isa",
           "use_composite", "use_native_cuda", "implementation"]

_ops_ns = torch.ops.pixelfly
_func_active = torch._C._are_functorch_transforms_active  # torch.func: see ops_func


def index_tensors(index, device=None):
    """The five int64 index tensors of a :class:`~pixelfly.layouts.BlockIndex`, on ``device``."""
    return tuple(torch.tensor(getattr(index, f), dtype=torch.int64, device=device)
                 for f in INDEX_FIELDS)


# ---------------------------------------------------------------- process-wide settings
# The CPU ops take their large outputs (>= 4 MiB: y, dx, and the bf16 workspace) from a
# small cache of freed buffers instead of fresh memory: under glibc every allocation of
# 32 MiB or more is a fresh mmap whose pages fault in (and are zeroed) on first touch,
# about 8 ms per 32 MiB on a 2-core VM. Default limit 512 MiB of *free* buffers; set
# PIXELFLY_CPU_CACHE_MB (read once) or call set_cache_limit; 0 turns the cache off.
def empty_cache() -> int:
    """Free the CPU output cache's free buffers; returns the number of bytes released."""
    return _ops.cache_clear()


def set_cache_limit(nbytes: int) -> int:
    """Set the CPU output cache's limit in bytes (0: off); returns the previous limit."""
    if not 0 <= int_arg("set_cache_limit", "nbytes", nbytes) < 2 ** 63:
        raise ValueError(f"set_cache_limit: nbytes must be in [0, 2**63), got {nbytes}")
    return _ops.cache_set_limit(nbytes)


def cache_held() -> int:
    """Bytes of free buffers the CPU output cache holds now."""
    return _ops.cache_held()


def cpu_isa() -> int:
    """The best instruction set of this CPU for the block-sparse kernels: 1 portable,
    2 AVX2+FMA, 3 AVX-512 (F/BW/VL), 4 AVX-512 with AVX512_BF16 (bf16 matmuls on ``vdpbf16ps``)."""
    return _ops.cpu_isa()


def set_cpu_isa(isa: int) -> int:
    """Force the CPU block-sparse kernels' instruction set (0 auto: the best available,
    1 portable, 2 AVX2+FMA, 3 AVX-512, 4 AVX-512 + AVX512_BF16; tests and benchmarks). Results
    are bitwise equal across them (4 differs only where a bf16 product or partial sum is
    subnormal: ``vdpbf16ps`` flushes those to zero). Returns the previous setting."""
    return _ops.set_cpu_isa(int_arg("set_cpu_isa", "isa", isa))


# ---------------------------------------------------------------- the ops
def _run(name, *args):
    """``torch.ops.pixelfly.<name>(*args)`` (checked arguments), through the
    ``autograd.Function`` of :mod:`pixelfly.ops_func` under ``torch.func`` transforms."""
    if _func_active():
        return ops_func.FUNCTIONS[name].apply(*args)
    return getattr(_ops_ns, name)(*args)


def bsmm_fwd(x, blocks, *idx):
    """``y[T, out] = x[T, in] B^T`` computed only on the stored blocks."""
    bsmm_args("bsmm_fwd", x, blocks, idx)
    return _run("bsmm_fwd", x, blocks, *idx)


def bsmm_bwd_x(dy, blocks, *idx):
    """``dx[T, in] = dy[T, out] B``."""
    bsmm_args("bsmm_bwd_x", dy, blocks, idx)
    return _run("bsmm_bwd_x", dy, blocks, *idx)


def bsmm_bwd_w(dy, x, *idx, b1: int, b2: int):
    """``dB[nnz, b1, b2] = (dy^T x)`` on the layout's blocks only."""
    bsmm_args("bsmm_bwd_w", dy, x, idx, b1, b2)
    return _run("bsmm_bwd_w", dy, x, *idx, b1, b2)


def bsmm_fwd_lowrank(x, blocks, *idx, lr_a, lr_b, bias=None):
    """``y[T, out] = x B^T + lr_a lr_b^T + bias`` (``lr_a [T, r]``, ``lr_b [out, r]``, ``bias
    [out]`` or ``None``): on the CPU the low-rank term and the bias are formed in the
    kernel's output tile, so ``y`` is written once (PixelflyLinear's forward)."""
    bsmm_lowrank_args("bsmm_fwd_lowrank", x, blocks, idx, lr_a, lr_b, bias)
    if _func_active():  # torch.func: from the ops it supports
        return add_lowrank(bsmm_fwd(x, blocks, *idx), lr_a, lr_b, bias, inplace=False)
    return _ops_ns.bsmm_fwd_lowrank(x, blocks, *idx, lr_a, lr_b, bias)


def bsmm_bwd_x_lowrank(dy, blocks, *idx, lr_a, lr_b, bias=None):
    """``dx[T, in] = dy B + lr_a lr_b^T + bias`` (``lr_a [T, r]``, ``lr_b [in, r]``, ``bias
    [in]`` or ``None``), formed as :func:`bsmm_fwd_lowrank`'s."""
    bsmm_lowrank_args("bsmm_bwd_x_lowrank", dy, blocks, idx, lr_a, lr_b, bias)
    if _func_active():
        return add_lowrank(bsmm_bwd_x(dy, blocks, *idx), lr_a, lr_b, bias, inplace=False)
    return _ops_ns.bsmm_bwd_x_lowrank(dy, blocks, *idx, lr_a, lr_b, bias)


def internal(name, *args):
    """``torch.ops.pixelfly.<name>(*args)`` (schema order) for a caller whose operands are
    its own, already checked (:class:`~pixelfly.PixelflyLinear`'s function): with grad mode
    off (an eager forward, a first-order backward) it goes straight to the device's kernel,
    below autograd and without the Python argument checks (together about 30 us a call,
    as much as the kernel itself at a few rows). With grad mode on, under ``torch.func`` or
    while ``torch.compile`` traces, it is the checked, differentiable op."""
    if torch.is_grad_enabled() or _func_active() or torch.compiler.is_compiling():
        act, other, *rest = args
        check = bsmm_lowrank_args if name.endswith("_lowrank") else bsmm_args
        check(name, act, other, rest[:len(INDEX_FIELDS)], *rest[len(INDEX_FIELDS):])
        return _run(name, *args)
    with torch._C._AutoDispatchBelowAutograd():
        return getattr(_ops_ns, name).default(*args)


def bsmm(x, blocks, idx):
    """Differentiable ``x B^T`` for ``x`` of shape ``[T, in]`` (the op used by PixelflyLinear)."""
    return bsmm_fwd(x, blocks, *idx)


# ---------------------------------------------------------------- fake kernels
def _rows(row_ptr):
    return row_ptr.shape[0] - 1


@torch.library.register_fake("pixelfly::bsmm_fwd")
def _fwd_fake(x, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk):
    return x.new_empty(x.shape[0], _rows(row_ptr) * blocks.shape[1])


@torch.library.register_fake("pixelfly::bsmm_bwd_x")
def _bwd_x_fake(dy, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk):
    return dy.new_empty(dy.shape[0], _rows(col_ptr) * blocks.shape[2])


@torch.library.register_fake("pixelfly::bsmm_fwd_lowrank")
def _fwd_lowrank_fake(x, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk, lr_a, lr_b, bias=None):
    return _fwd_fake(x, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk)


@torch.library.register_fake("pixelfly::bsmm_bwd_x_lowrank")
def _bwd_x_lowrank_fake(dy, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk, lr_a, lr_b, bias=None):
    return _bwd_x_fake(dy, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk)


@torch.library.register_fake("pixelfly::bsmm_bwd_w")
def _bwd_w_fake(dy, x, row_ptr, col_idx, col_ptr, row_idx, csc_blk, b1, b2):
    return x.new_empty(col_idx.shape[0], b1, b2)


# -------------------------------------------------------------------- autograd
# y = x B^T            -> dx = dy B (bwd_x), dB = dy^T x on blocks (bwd_w)
# dx = dy B            -> d(dy) = g B^T (fwd), dB = dy^T g ... on blocks: bwd_w(dy, g)
# dB = dy^T x (blocks) -> d(dy) = x G^T (fwd with G as blocks), dx = dy G (bwd_x)
def _save_all(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7])
    ctx.sizes = inputs[7:]


def _c(t):
    return t.contiguous()


def _fwd_grads(need, gy, x, blocks, idx):
    """(dx, dB) of ``y = x B^T`` (gy contiguous)"""
    dx = _run("bsmm_bwd_x", gy, blocks, *idx) if need[0] else None
    db = _run("bsmm_bwd_w", gy, x, *idx, blocks.shape[1], blocks.shape[2]) if need[1] else None
    return dx, db


def _bwd_x_grads(need, g, dy, blocks, idx):
    """(d dy, dB) of ``dx = dy B`` (g contiguous)"""
    d_dy = _run("bsmm_fwd", g, blocks, *idx) if need[0] else None
    db = _run("bsmm_bwd_w", dy, g, *idx, blocks.shape[1], blocks.shape[2]) if need[1] else None
    return d_dy, db


def _fwd_backward(ctx, gy):
    x, blocks, *idx = ctx.saved_tensors
    return _fwd_grads(ctx.needs_input_grad, _c(gy), x, blocks, idx) + (None,) * 5


def _bwd_x_backward(ctx, g):
    dy, blocks, *idx = ctx.saved_tensors
    return _bwd_x_grads(ctx.needs_input_grad, _c(g), dy, blocks, idx) + (None,) * 5


def _bwd_w_backward(ctx, g):
    dy, x, *idx = ctx.saved_tensors
    g = _c(g)
    d_dy = _run("bsmm_fwd", x, g, *idx) if ctx.needs_input_grad[0] else None
    dx = _run("bsmm_bwd_x", dy, g, *idx) if ctx.needs_input_grad[1] else None
    return (d_dy, dx) + (None,) * 7


def _save_lowrank(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.has_bias = inputs[9] is not None


def _lowrank_grads(ctx, g, lr_a, lr_b):
    """Gradients of ``+ lr_a lr_b^T + bias``."""
    need = ctx.needs_input_grad
    return (g.mm(lr_b) if need[7] else None, g.t().mm(lr_a) if need[8] else None,
            g.sum(0) if ctx.has_bias and need[9] else None)


def _fwd_lowrank_backward(ctx, gy):
    x, blocks, *idx, lr_a, lr_b = ctx.saved_tensors
    gy = _c(gy)
    return (_fwd_grads(ctx.needs_input_grad, gy, x, blocks, idx) + (None,) * 5
            + _lowrank_grads(ctx, gy, lr_a, lr_b))


def _bwd_x_lowrank_backward(ctx, g):
    dy, blocks, *idx, lr_a, lr_b = ctx.saved_tensors
    g = _c(g)
    return (_bwd_x_grads(ctx.needs_input_grad, g, dy, blocks, idx) + (None,) * 5
            + _lowrank_grads(ctx, g, lr_a, lr_b))


torch.library.register_autograd("pixelfly::bsmm_fwd", _fwd_backward, setup_context=_save_all)
torch.library.register_autograd("pixelfly::bsmm_fwd_lowrank", _fwd_lowrank_backward, setup_context=_save_lowrank)
torch.library.register_autograd("pixelfly::bsmm_bwd_x_lowrank", _bwd_x_lowrank_backward,
                                setup_context=_save_lowrank)
torch.library.register_autograd("pixelfly::bsmm_bwd_x", _bwd_x_backward, setup_context=_save_all)
torch.library.register_autograd("pixelfly::bsmm_bwd_w", _bwd_w_backward, setup_context=_save_all)

from . import ops_func  # noqa: E402  (torch.func support of the ops above)
