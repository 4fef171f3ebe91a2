"""Composite implementation of the block-sparse matmul ops in plain PyTorch (any device).

The same three ops as the C/CUDA kernels (``y = x B^T``, ``dx = dy B``, ``dB = dy^T x`` on
the layout's blocks), written with ``index_select`` and batched matmuls so that they run at
matmul speed on whatever device PyTorch supports. :mod:`pixelfly.backends` registers them
under ``torch.ops.pixelfly.*`` for every device without native kernels (and, by switch, for
CPU and CUDA too).

How: output block-rows (block-columns for ``bwd_x``) with the same number ``K`` of blocks
*and the same input block set* form one group of ``G`` rows (a flat butterfly's cell: every
block-row of a cell reads the same input blocks). For a group the ``K`` input blocks are
gathered once into a ``[T, K*bi]`` panel that multiplies a ``[K*bi, G*bo]`` weight panel;
groups of equal ``(K, G)`` run as one ``bmm``, chunked so that the gathered panels stay
under :data:`CHUNK_BYTES`. Ragged layouts just give more buckets (no padding, so nothing
outside the layout is ever read). Every output element is one full reduction of one
matmul (rounded once, like a dense matmul).

The per-index plan (buckets as device tensors) is built once per set of index tensors and
cached (keyed on the tensors' identity and version counters); building it validates the
index (:func:`pixelfly.index_check.check_block_index`), so a malformed index is a
``ValueError`` rather than an out-of-bounds gather.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from .index_check import check_block_index
from .op_checks import bsmm_args, bsmm_lowrank_args

__all__ = ["bsmm_fwd", "bsmm_bwd_x", "bsmm_bwd_w", "bsmm_fwd_lowrank", "bsmm_bwd_x_lowrank",
           "add_lowrank", "CHUNK_BYTES", "cached_plan"]

CHUNK_BYTES = 32 << 20   # bound on the gathered operand + result of one batched matmul
_PLANS: dict = {}
_MAX_PLANS = 256


# ------------------------------------------------------------------ plan cache
def cached_plan(tag, tensors, build):
    """``build()`` once per (tag, identity and version of ``tensors``); weakly keyed."""
    key = (tag,) + tuple(id(t) for t in tensors)
    try:
        versions = tuple(t._version for t in tensors)
    except RuntimeError:      # inference tensors have no version counter: no caching
        return build()
    hit = _PLANS.get(key)
    if hit is not None and hit[1] == versions and all(r() is t for r, t in zip(hit[0], tensors)):
        return hit[2]
    value = build()
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.pop(next(iter(_PLANS)))
    refs = tuple(weakref.ref(t, lambda _r, k=key: _PLANS.pop(k, None)) for t in tensors)
    _PLANS[key] = (refs, versions, value)
    return value


def _host(t):
    return t.detach().to("cpu").numpy()


def group_buckets(ptr, idx, sel):
    """Buckets of a compressed index (``ptr``, ``idx``; ``sel`` maps positions to blocks).

    Returns ``(has_empty, [(rows [NG, G], gidx [NG, K], wpos [NG, G, K]), ...])``: the
    output rows of each group, the input blocks the group reads, and the stored block at
    (row, k)."""
    counts = np.diff(ptr)
    buckets = []
    for K in np.unique(counts[counts > 0]):
        rows = np.nonzero(counts == K)[0]
        pos = ptr[rows][:, None] + np.arange(K)                     # [n, K]
        sets, inv = np.unique(idx[pos], axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        order = np.argsort(inv, kind="stable")
        sizes = np.bincount(inv)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for G in np.unique(sizes):
            gs = np.nonzero(sizes == G)[0]
            members = order[starts[gs][:, None] + np.arange(G)]     # [ng, G] into rows
            buckets.append((rows[members], sets[gs], sel[pos[members]]))
    return bool((counts == 0).any()), buckets


def _plan(kind, idx_tensors, R, C):
    """CSR ("csr": groups of block-rows) or CSC ("csc": groups of block-columns) plan."""
    def build():
        rp, ci, cp, ri, cb = (_host(t) for t in idx_tensors)
        check_block_index(R, C, rp, ci, cp, ri, cb)
        has_empty, buckets = (group_buckets(rp, ci, np.arange(ci.size)) if kind == "csr"
                              else group_buckets(cp, ri, cb))
        dev = idx_tensors[0].device
        return has_empty, [tuple(torch.as_tensor(a, dtype=torch.int64, device=dev) for a in b)
                           for b in buckets]
    return cached_plan(kind, idx_tensors, build)


# ------------------------------------------------------------------ the math
def _compute_dtype(t):
    """float32 for 16-bit inputs on the CPU (whose 16-bit matmuls are slow or emulated: the
    native CPU kernels also compute in float32); the input dtype everywhere else."""
    if t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return t.dtype


def _steps(n, per_item):
    step = max(1, CHUNK_BYTES // max(1, per_item))
    return ((s, min(n, s + step)) for s in range(0, n, step))


def _gather_mm(act, w_io, plan, n_out):
    """``out[:, o] = sum_k act[:, in_k] @ w_io[blk_k]`` over the plan; ``w_io``: [nnz, bi, bo]."""
    T = act.shape[0]
    _, bi, bo = w_io.shape
    has_empty, buckets = plan
    out = (torch.zeros if has_empty else torch.empty)(T, n_out * bo, dtype=act.dtype,
                                                      device=act.device)
    if T == 0:
        return out
    cdt = _compute_dtype(act)
    a3, o3 = act.to(cdt).reshape(T, -1, bi), out.view(T, n_out, bo)
    w_io = w_io.to(cdt)
    es = a3.element_size()
    for rows, gidx, wpos in buckets:
        NG, G = rows.shape
        K = gidx.shape[1]
        for s, e in _steps(NG, T * (K * bi + G * bo) * es):
            n = e - s
            panel = a3.index_select(1, gidx[s:e].reshape(-1)).view(T, n, K * bi).transpose(0, 1)
            wm = w_io[wpos[s:e]].permute(0, 2, 3, 1, 4).reshape(n, K * bi, G * bo)
            res = torch.bmm(panel, wm).view(n, T, G, bo).transpose(0, 1).reshape(T, n * G, bo)
            o3.index_copy_(1, rows[s:e].reshape(-1), res.to(out.dtype))
    return out


def bsmm_fwd(x, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk):
    """``y[T, R*b1] = x[T, C*b2] B^T``."""
    idx = (row_ptr, col_idx, col_ptr, row_idx, csc_blk)
    bsmm_args("bsmm_fwd", x, blocks, idx)
    R, C = row_ptr.numel() - 1, col_ptr.numel() - 1
    return _gather_mm(x, blocks.transpose(1, 2), _plan("csr", idx, R, C), R)


def bsmm_bwd_x(dy, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk):
    """``dx[T, C*b2] = dy[T, R*b1] B``."""
    idx = (row_ptr, col_idx, col_ptr, row_idx, csc_blk)
    bsmm_args("bsmm_bwd_x", dy, blocks, idx)
    R, C = row_ptr.numel() - 1, col_ptr.numel() - 1
    return _gather_mm(dy, blocks, _plan("csc", idx, R, C), C)


def bsmm_fwd_lowrank(x, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk, lr_a, lr_b, bias=None):
    """``x B^T + lr_a lr_b^T + bias``."""
    idx = (row_ptr, col_idx, col_ptr, row_idx, csc_blk)
    bsmm_lowrank_args("bsmm_fwd_lowrank", x, blocks, idx, lr_a, lr_b, bias)
    return add_lowrank(bsmm_fwd(x, blocks, *idx), lr_a, lr_b, bias)


def bsmm_bwd_x_lowrank(dy, blocks, row_ptr, col_idx, col_ptr, row_idx, csc_blk, lr_a, lr_b, bias=None):
    """``dy B + lr_a lr_b^T + bias``."""
    idx = (row_ptr, col_idx, col_ptr, row_idx, csc_blk)
    bsmm_lowrank_args("bsmm_bwd_x_lowrank", dy, blocks, idx, lr_a, lr_b, bias)
    return add_lowrank(bsmm_bwd_x(dy, blocks, *idx), lr_a, lr_b, bias)


def add_lowrank(out, lr_a, lr_b, bias, inplace=True):
    """``out + lr_a lr_b^T + bias`` (``bias`` may be None): into ``out``, or out of place
    (``inplace=False``: under ``torch.func``)."""
    if inplace:
        out = out.addmm_(lr_a, lr_b.t())
        return out if bias is None else out.add_(bias)
    out = torch.addmm(out, lr_a, lr_b.t())
    return out if bias is None else out + bias


def bsmm_bwd_w(dy, x, row_ptr, col_idx, col_ptr, row_idx, csc_blk, b1, b2):
    """``dB[nnz, b1, b2] = dy^T x`` on the layout's blocks only."""
    idx = (row_ptr, col_idx, col_ptr, row_idx, csc_blk)
    bsmm_args("bsmm_bwd_w", dy, x, idx, b1, b2)
    R, C, nnz = row_ptr.numel() - 1, col_ptr.numel() - 1, col_idx.numel()
    _, buckets = _plan("csr", idx, R, C)
    T = x.shape[0]
    dw = torch.empty(nnz, b1, b2, dtype=x.dtype, device=x.device)
    cdt = _compute_dtype(x)
    x3, dy3 = x.to(cdt).reshape(T, C, b2), dy.to(cdt).reshape(T, R, b1)
    for rows, gidx, wpos in buckets:
        NG, G = rows.shape
        K = gidx.shape[1]
        for s, e in _steps(NG, max(T, 1) * (K * b2 + G * b1) * x3.element_size()):
            n = e - s
            xp = x3.index_select(1, gidx[s:e].reshape(-1)).view(T, n, K * b2).transpose(0, 1)
            dyp = dy3.index_select(1, rows[s:e].reshape(-1)).view(T, n, G * b1).permute(1, 2, 0)
            res = torch.bmm(dyp, xp).view(n, G, b1, K, b2).permute(0, 1, 3, 2, 4)
            dw.index_copy_(0, wpos[s:e].reshape(-1), res.reshape(n * G * K, b1, b2).to(dw.dtype))
    return dw
