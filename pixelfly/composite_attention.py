"""Composite implementation of the block-sparse attention ops in plain PyTorch (any device).

Same contract as the CPU kernels (see :mod:`pixelfly.attention_ops`): ``q, k, v`` of shape
``[B, H, L, d]`` or ``[N, L, d]``, a block-CSR over the ``(L/b) x (L/b)`` score matrix,
``out = softmax(scale * q k^T on the layout [and j <= i if causal]) v`` and ``lse`` (float32;
float64 for float64 inputs); empty rows give ``out = 0`` and ``lse = -inf``.

How: query block-rows with the same number ``K`` of key blocks form a bucket; for a chunk of
its rows the ``K`` key and value blocks of each row are gathered (``index_select``), the
``b x K*b`` scores of each row come from one batched matmul, the softmax statistics are
kept in float32 (float64), and the backward scatters ``dk``/``dv`` with ``index_add_`` into
float32 (float64) accumulators. Scores exist only per chunk (bounded by
:data:`pixelfly.composite.CHUNK_BYTES`), never ``L x L``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import composite
from .index_check import check_block_index
from .op_checks import attention_args, attention_bwd_args

__all__ = ["bsattn_fwd", "bsattn_bwd"]


def _fail(cls, msg):
    raise cls(f"pixelfly.bsattn: {msg}")


def _plan(idx, R, dev):
    """Buckets of query block-rows: ``[(rows [n], kidx [n, K]), ...]`` on ``dev``, validated
    once per index (and device)."""
    def build():
        rp, ci, cp, ri = (composite._host(t) for t in idx)
        try:
            check_block_index(R, R, rp, ci, cp, ri)
        except ValueError as e:
            which = "col_ptr/row_idx" if "col_ptr" in str(e) or "row_idx" in str(e) else "row_ptr/col_idx"
            _fail(ValueError, f"{which} are not a valid block-CSR/CSC of the (L/block)^2 layout: {e}")
        _, buckets = composite.group_buckets(rp, ci, np.arange(ci.size))
        out = []
        for rows, sets, _ in buckets:        # groups of rows sharing key blocks: split back
            G, K = rows.shape[1], sets.shape[1]
            out.append((torch.as_tensor(rows.reshape(-1), device=dev),
                        torch.as_tensor(np.repeat(sets, G, axis=0).reshape(-1, K), device=dev)))
        return out
    return composite.cached_plan(("attn", str(dev)), idx, build)


def _chunks(N, R_b, per_row):
    """(n0, n1, r0, r1) chunks of (problems, rows) under CHUNK_BYTES."""
    budget = composite.CHUNK_BYTES
    n_step = N if N * per_row <= budget else max(1, budget // per_row)
    r_step = max(1, budget // (n_step * per_row))
    for n0 in range(0, N, n_step):
        for r0 in range(0, R_b, r_step):
            yield n0, min(N, n0 + n_step), r0, min(R_b, r0 + r_step)


class _Chunk:
    """Scores of one chunk: ``s`` [n, r, b, K*b] (compute dtype, masked), gathered k / v."""

    def __init__(self, q4, k4, v4, rows, kidx, n0, n1, block, scale, causal, ct):
        n, r, K = n1 - n0, rows.numel(), kidx.shape[1]
        self.qb = q4[n0:n1].index_select(1, rows)
        flat = kidx.reshape(-1)
        self.kg = k4[n0:n1].index_select(1, flat).view(n, r, K * block, -1)
        self.vg = v4[n0:n1].index_select(1, flat).view(n, r, K * block, -1)
        # Scores in float32 (float64) as the native kernels: lse is exact to that precision.
        self.s = torch.matmul(self.qb.to(ct), self.kg.transpose(-1, -2).to(ct)) * scale
        if causal:
            ar = torch.arange(block, device=rows.device)
            qpos = rows[:, None] * block + ar                               # [r, b]
            kpos = (kidx[:, :, None] * block + ar).view(r, K * block)      # [r, K*b]
            self.s.masked_fill_(kpos[:, None, :] > qpos[:, :, None], float("-inf"))

    def probs(self, lse):
        """``exp(s - lse)`` with rows of ``lse = -inf`` (nothing kept) giving 0."""
        safe = torch.where(lse == float("-inf"), torch.zeros_like(lse), lse)
        return torch.exp(self.s - safe[..., None])


def _setup(q, k, v, idx, block, scale):
    R = attention_args(q, k, v, idx, int(block), float(scale))
    L, d = q.shape[-2], q.shape[-1]
    N = math.prod(q.shape[:-2])
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    mt = composite._compute_dtype(q)            # matmul operands: float32 for 16-bit on the CPU
    q4, k4, v4 = (t.reshape(N, R, block, d).to(mt) for t in (q, k, v))
    return R, N, d, ct, q4, k4, v4


def _per_row(K, block, d, es, buffers):
    return K * block * (buffers * block * 4 + 3 * d * es)


def _sparse_only(features, key_mask):
    if features is not None or key_mask is not None:
        _fail(NotImplementedError, "features / key_mask (the fused low-rank part and the key mask) "
                                   "run in the CPU kernel only; on other devices call "
                                   "pixelfly.attention.sparse_lowrank_attention, which computes them "
                                   "with PyTorch ops")


def bsattn_fwd(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale, causal, features=None,
               key_mask=None):
    """``(out, lse)``."""
    _sparse_only(features, key_mask)
    idx = (row_ptr, col_idx, col_ptr, row_idx)
    R, N, d, ct, q4, k4, v4 = _setup(q, k, v, idx, block, scale)
    out = torch.zeros(N, R, block, d, dtype=q.dtype, device=q.device)
    lse = torch.full((N, R, block), float("-inf"), dtype=ct, device=q.device)
    if N:
        for rows, kidx in _plan(idx, R, q.device):
            K = kidx.shape[1]
            for n0, n1, r0, r1 in _chunks(N, rows.numel(), _per_row(K, block, d, q.element_size(), 2)):
                rr = rows[r0:r1]
                c = _Chunk(q4, k4, v4, rr, kidx[r0:r1], n0, n1, block, scale, causal, ct)
                lse_c = torch.logsumexp(c.s, -1)
                ob = torch.matmul(c.probs(lse_c).to(c.vg.dtype), c.vg)
                out[n0:n1].index_copy_(1, rr, ob.to(q.dtype))
                lse[n0:n1].index_copy_(1, rr, lse_c)
    return out.view(q.shape), lse.view(q.shape[:-1])


def bsattn_bwd(dout, dlse, q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx, block, scale,
               causal, features=None, key_mask=None):
    """``(dq, dk, dv)`` from the forward's ``out`` and ``lse``; ``dlse`` may be ``None``."""
    _sparse_only(features, key_mask)
    idx = (row_ptr, col_idx, col_ptr, row_idx)
    R, N, d, ct, q4, k4, v4 = _setup(q, k, v, idx, block, scale)
    attention_bwd_args(dout, dlse, q, out, lse)
    do4 = dout.reshape(N, R, block, d).to(q4.dtype)
    lse3 = lse.reshape(N, R, block)
    D = (do4.to(ct) * out.reshape(N, R, block, d).to(ct)).sum(-1)           # [N, R, b]
    if dlse is not None:
        D = D - dlse.reshape(N, R, block)
    dq = torch.zeros(N, R, block, d, dtype=q.dtype, device=q.device)
    dk = torch.zeros(N, R, block, d, dtype=ct, device=q.device)
    dv = torch.zeros(N, R, block, d, dtype=ct, device=q.device)
    if N:
        for rows, kidx in _plan(idx, R, q.device):
            K = kidx.shape[1]
            for n0, n1, r0, r1 in _chunks(N, rows.numel(), _per_row(K, block, d, q.element_size(), 4)):
                rr, kk = rows[r0:r1], kidx[r0:r1]
                n, r = n1 - n0, rr.numel()
                c = _Chunk(q4, k4, v4, rr, kk, n0, n1, block, scale, causal, ct)
                p = c.probs(lse3[n0:n1].index_select(1, rr))
                dob = do4[n0:n1].index_select(1, rr)
                dp = torch.matmul(dob, c.vg.transpose(-1, -2)).to(ct)
                ds = (p * (dp - D[n0:n1].index_select(1, rr)[..., None]) * scale).to(q4.dtype)
                dq[n0:n1].index_copy_(1, rr, torch.matmul(ds, c.kg).to(q.dtype))
                flat = kk.reshape(-1)
                dkg = torch.matmul(ds.transpose(-1, -2), c.qb).to(ct)
                dk[n0:n1].index_add_(1, flat, dkg.view(n, r * K, block, d))
                dvg = torch.matmul(p.to(q4.dtype).transpose(-1, -2), dob).to(ct)
                dv[n0:n1].index_add_(1, flat, dvg.view(n, r * K, block, d))
    return dq.view(q.shape), dk.to(q.dtype).view(q.shape), dv.to(q.dtype).view(q.shape)
