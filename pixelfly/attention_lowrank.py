"""Sparse + low-rank attention (SPEC section 4) as one autograd function, in memory linear in
``L``: the block-sparse C kernel for the kept blocks, random-feature sums for the rest, one
shared normaliser.

For one head, ``phi_q``/``phi_k`` the positive random features of the queries and keys
(``[L, r]``, each with a log-scale offset) and ``v`` the values, the low-rank numerator and
denominator of query ``i`` in query block ``n`` are::

    num_i = phi_q_i . (A_n - S_n),   A_n = sum_{j allowed} phi_k_j v_j^T   (r x d)
    den_i = phi_q_i . (a_n - s_n),   S_n = sum_{m in row n} KV_m,  KV_m = sum_{j in m} phi_k_j v_j^T

with ``A_n`` the sum over all keys (an exclusive block prefix sum when causal) and ``S_n``
the same sum over the row's kept blocks. Only per-block summaries (``L/b x r x d``) are
formed, never anything of size ``nnz x b x r`` or ``L x L``. When causal, a row whose
diagonal block is not kept pairs query ``i`` with keys ``j <= i`` of that block through the
low rank (a ``b x b`` product per such block).

The output is ``y = sum_j P_ij v_j`` with ``P_ij = exp(s_ij) / Z_i`` on the kept blocks and
``k_ij / Z_i`` elsewhere, ``Z_i`` the one normaliser; the forward saves only ``q, k, v, y``
and ``log Z``. The backward is the sparse kernel's own backward called with ``(y, log Z)``
(its ``D_i = dy_i . y_i`` is then the whole row's), plus the low-rank terms, which reuse the
summaries with ``dy`` in place of ``v`` (query side) and transposed (key side).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import attention_ops

__all__ = ["SparseLowRankAttention", "features", "key_mask_columns"]


def key_mask_columns(q, k, v, key_mask, scale: float):
    """``q, k, v`` with one extra head-dim column that makes the block kernel exclude keys
    element by element (``key_mask [B, L]``, True: kept; the kernel has no element mask):
    ``1`` in the queries, ``0`` (kept) or ``-2**100 / scale`` (excluded) in the keys, ``0``
    in the values. An excluded key's score is then about ``-2**100``, whose ``exp`` is
    exactly 0 against any kept key; excluded keys and values are zeroed first, so what they
    held (NaN, inf) never matters. Drop the output's last column."""
    km = key_mask[:, None, :, None]
    neg = torch.full_like(k[..., :1], -(2.0 ** 100) / scale)
    zero = torch.zeros_like(k[..., :1])
    q1 = torch.cat([q, torch.ones_like(q[..., :1])], -1)
    k1 = torch.cat([torch.where(km, k, 0), torch.where(km, zero, neg)], -1)
    v1 = torch.cat([torch.where(km, v, 0), zero], -1)
    return q1, k1, v1


def features(x, w, per_row: bool):
    """Positive random features of ``x`` (already scaled by sqrt(scale)): returns
    ``(phi, offset)`` with the true features ``exp(offset) * phi``; ``offset`` is a per-row
    max (queries) or a per-head max (keys), a constant of the backward (it cancels)."""
    a = x @ w.t() - 0.5 * (x * x).sum(-1, keepdim=True)           # [..., L, r]
    off = a.amax(-1, keepdim=True) if per_row else a.amax(dim=(-2, -1), keepdim=True)
    z = a - off
    if z.dtype != torch.float64:
        # keep features >= e^-40 (relative to the max): below that float32 products would be
        # denormals, which are ~100x slower on x86; the change is < 1e-13 of any row's sum
        z = z.clamp_min(-40.0)
    return torch.exp(z) * (1.0 / math.sqrt(w.shape[0])), off


def _features_backward(dphi, phi, x, w):
    """Gradient of :func:`features` with respect to ``x`` (offset constant)."""
    da = dphi * phi
    return da @ w - da.sum(-1, keepdim=True) * x


class _Support:
    """The layout as the sums need it: ``off [R, R]`` (float; its diagonal removed when
    causal: the diagonal block is handled element-wise) and ``miss [R]`` (rows whose
    diagonal block the sparse part skips, causal only)."""

    def __init__(self, layout, causal: bool, dtype, device):
        lay = np.asarray(layout, bool)
        off = lay.copy()
        if causal:
            np.fill_diagonal(off, False)
        self.causal = causal
        self.off = torch.from_numpy(off).to(device=device, dtype=dtype)
        miss = ~np.diagonal(lay) if causal else np.zeros(lay.shape[0], bool)
        self.miss = torch.from_numpy(miss.copy()).to(device=device, dtype=dtype) if miss.any() else None

    def rest_rows(self, blk):
        """Per query block ``n``: the sum of ``blk [B, H, R, X]`` over the key blocks it pairs
        with through the low rank (all allowed key blocks minus the kept ones)."""
        if self.causal:
            return torch.cumsum(blk, 2) - blk - self.off @ blk       # blocks m < n
        return blk.sum(2, keepdim=True) - self.off @ blk

    def rest_cols(self, blk):
        """Per key block ``m``: the sum of ``blk`` over the query blocks that pair with it
        through the low rank (the transpose of :meth:`rest_rows`)."""
        off_t = self.off.t()
        if self.causal:
            return blk.flip(2).cumsum(2).flip(2) - blk - off_t @ blk  # blocks n > m
        return blk.sum(2, keepdim=True) - off_t @ blk


def _blocks(x, R, block):
    return x.view(*x.shape[:2], R, block, x.shape[-1])


def _outer_sums(a, b):
    """``[B, H, R, b, p] x [B, H, R, b, s] -> [B, H, R, p*s]``: per-block sums of a_j b_j^T."""
    B, H, R = a.shape[:3]
    return torch.einsum("bhnjp,bhnjs->bhnps", a, b).reshape(B, H, R, -1)


def _lowrank_forward(qb, kb, vb, sup: _Support):
    """Low-rank numerator ``[B,H,R,b,d]`` and denominator ``[B,H,R,b]``."""
    B, H, R, b, r = qb.shape
    d = vb.shape[-1]
    kv_rest = sup.rest_rows(_outer_sums(kb, vb)).view(B, H, R, r, d)
    ks_rest = sup.rest_rows(kb.sum(3))
    num = qb @ kv_rest
    den = torch.einsum("bhnir,bhnr->bhni", qb, ks_rest)
    if sup.miss is not None:
        a_in = (qb @ kb.transpose(-1, -2)).tril()                    # [B,H,R,b,b], j <= i
        miss = sup.miss.view(R, 1, 1)
        num = num + miss * (a_in @ vb)
        den = den + miss.view(R, 1) * a_in.sum(-1)
    return num, den.clamp_min(0)


def _lowrank_backward(qb, kb, vb, gb, db, sup: _Support):
    """Gradients of the low-rank terms: ``g = c * dy``, ``delta = c * (dy . y)`` per row with
    ``c = exp(offsets - log Z)``, so that ``dL / d(phi_q_i . phi_k_j) = g_i . v_j - delta_i``.
    Returns ``(d phi_q, d phi_k, d v)`` in blocks."""
    B, H, R, b, r = qb.shape
    d = vb.shape[-1]
    # query side: the same "rest" summaries as the forward, contracted with g instead of phi_q
    kv_rest = sup.rest_rows(_outer_sums(kb, vb)).view(B, H, R, r, d)
    ks_rest = sup.rest_rows(kb.sum(3))
    dq = gb @ kv_rest.transpose(-1, -2) - db[..., None] * ks_rest[:, :, :, None]
    # key side: per key block, the sums over the query blocks that pair with it
    g_rest = sup.rest_cols(_outer_sums(qb, gb)).view(B, H, R, r, d)
    h_rest = sup.rest_cols(torch.einsum("bhnir,bhni->bhnr", qb, db))
    dk = vb @ g_rest.transpose(-1, -2) - h_rest[:, :, :, None]
    dv = kb @ g_rest
    if sup.miss is not None:
        miss = sup.miss.view(R, 1, 1)
        e = (gb @ vb.transpose(-1, -2) - db[..., None]).tril() * miss  # [B,H,R,b,b], j <= i
        a_in = (qb @ kb.transpose(-1, -2)).tril() * miss
        dq = dq + e @ kb
        dk = dk + e.transpose(-1, -2) @ qb
        dv = dv + a_in.transpose(-1, -2) @ gb
    return dq, dk, dv


def _finite_or_zero(x, finite: bool):
    """``x`` with NaN/inf replaced by 0 (``finite``: the caller knows there are none)."""
    return x if finite else torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class SparseLowRankAttention(torch.autograd.Function):
    """``apply(q, k, v, w, index, layout, block, scale, causal, finite, key_mask=None) -> (y,
    out_sparse)``: the attention core on ``[B, H, L, d]`` inputs with random-feature
    projection ``w [r, d]``; ``out_sparse`` (the sparse part alone) is not differentiable.
    Low-rank sums run on finite-or-zero inputs (``finite``: the caller checked q, k, v have no
    NaN/inf); the caller applies what non-finite inputs do to the output. ``key_mask [B, L]``
    (optional; the caller zeroes the excluded keys and values) excludes keys from every row,
    element by element (:func:`key_mask_columns`); a row left without keys gives 0."""

    @staticmethod
    def forward(ctx, q, k, v, w, index, layout, block, scale, causal, finite, key_mask=None):
        B, H, L, d = q.shape
        R = L // block
        cdt = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
        if key_mask is None:
            out_s, lse = attention_ops.bsattn_fwd(q, k, v, *index.tensors(), block, scale, causal)
        else:
            out_s, lse = attention_ops.bsattn_fwd(*key_mask_columns(q, k, v, key_mask, scale),
                                                  *index.tensors(), block, scale, causal)
            out_s = out_s[..., :-1]
        sup = _Support(layout, causal, cdt, q.device)
        rs = math.sqrt(scale)
        w = w.to(dtype=cdt, device=q.device)
        phq, offq = features(_finite_or_zero(q.to(cdt), finite) * rs, w, per_row=True)
        phk, offk = features(_finite_or_zero(k.to(cdt), finite) * rs, w, per_row=False)
        if key_mask is not None:
            phk = phk * key_mask[:, None, :, None]
        vv = _finite_or_zero(v.to(cdt), finite)
        num, den = _lowrank_forward(_blocks(phq, R, block), _blocks(phk, R, block), _blocks(vv, R, block), sup)
        lse_c = lse.to(cdt).unsqueeze(-1)                              # [B,H,L,1]
        off = offq + offk
        M = torch.maximum(lse_c, off)
        ws = torch.exp(lse_c - M)              # a row without sparse keys: lse = -inf, ws = 0
        wl = torch.exp(off - M)
        z = ws + wl * den.reshape(B, H, L, 1)                          # > 0: every row has a key
        if key_mask is not None:                                       # ... unless excluded
            z = torch.where(z > 0, z, 1.0)
        sparse = torch.where(lse_c == float("-inf"), torch.zeros_like(out_s, dtype=cdt), ws * out_s.to(cdt))
        y = ((sparse + wl * num.reshape(B, H, L, d)) / z).to(q.dtype)
        log_z = (M + torch.log(z)).squeeze(-1).to(lse.dtype)
        ctx.save_for_backward(q, k, v, w, y, log_z, offq, offk)
        ctx.cfg = (index, layout, block, scale, causal, finite)
        ctx.key_mask = key_mask
        ctx.mark_non_differentiable(out_s)
        return y, out_s

    @staticmethod
    def backward(ctx, dy, _dout_s):
        q, k, v, w, y, log_z, offq, offk = ctx.saved_tensors
        index, layout, block, scale, causal, finite = ctx.cfg
        B, H, L, d = q.shape
        R = L // block
        cdt = w.dtype
        dy = dy.contiguous()
        key_mask = ctx.key_mask
        if key_mask is None:
            dq, dk, dv = attention_ops.bsattn_bwd(dy, None, q, k, v, y, log_z, *index.tensors(),
                                                  block, scale, causal)
        else:
            pad = lambda t: torch.nn.functional.pad(t, (0, 1))     # noqa: E731
            grads = attention_ops.bsattn_bwd(pad(dy), None, *key_mask_columns(q, k, v, key_mask, scale),
                                             pad(y), log_z, *index.tensors(), block, scale, causal)
            dq, dk, dv = (t[..., :-1] for t in grads)
        sup = _Support(layout, causal, cdt, q.device)
        rs = math.sqrt(scale)
        xq = _finite_or_zero(q.to(cdt), finite) * rs
        xk = _finite_or_zero(k.to(cdt), finite) * rs
        phq, _ = features(xq, w, per_row=True)
        phk, _ = features(xk, w, per_row=False)
        if key_mask is not None:
            phk = phk * key_mask[:, None, :, None]
        c = torch.exp(offq + offk - log_z.to(cdt).unsqueeze(-1))        # [B,H,L,1]
        dyc = dy.to(cdt)
        g = c * dyc
        delta = c.squeeze(-1) * (dyc * y.to(cdt)).sum(-1)
        dphq, dphk, dv_lr = _lowrank_backward(
            _blocks(phq, R, block), _blocks(phk, R, block), _blocks(_finite_or_zero(v.to(cdt), finite), R, block),
            _blocks(g, R, block), delta.view(B, H, R, block), sup)
        dq_lr = _features_backward(dphq.reshape(B, H, L, -1), phq, xq, w) * rs
        dk_lr = _features_backward(dphk.reshape(B, H, L, -1), phk, xk, w) * rs
        dq = (dq.to(cdt) + dq_lr).to(q.dtype)
        dk = (dk.to(cdt) + dk_lr).to(k.dtype)
        dv = (dv.to(cdt) + dv_lr.reshape(B, H, L, d)).to(v.dtype)
        return dq, dk, dv, None, None, None, None, None, None, None, None
