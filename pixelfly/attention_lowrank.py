"""The low-rank part of Pixelfly attention (SPEC section 4): random-feature sums over the
keys *outside* the sparse support, in memory linear in ``L``.

For one head, ``phi_q``/``phi_k`` the positive random features of the queries and keys
(``[L, r]``) and ``v`` the values, the low-rank numerator and denominator of query ``i``
in query block ``n`` are::

    num_i = phi_q_i . (A_n - S_n),   A_n = sum_{j allowed} phi_k_j v_j^T   (r x d)
    den_i = phi_q_i . (a_n - s_n),   S_n = sum_{m in row n} KV_m,  KV_m = sum_{j in m} phi_k_j v_j^T

with ``A_n`` the sum over all keys (an exclusive block prefix sum when causal) and ``S_n``
the same sum over the row's kept blocks. Only the per-block summaries ``KV_m`` (``L/b x r x d``)
are formed: nothing of size ``nnz x b x r`` or ``L x L``. When causal, the diagonal block
pairs query ``i`` with keys ``j <= i`` inside the block: a ``b x b`` product per block, used
only for rows whose diagonal block is not kept (the sparse part covers it otherwise).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["lowrank_complement"]


def _row_support(layout: np.ndarray, causal: bool, dtype, device):
    """``(off, diag)``: the layout as a float ``[R, R]`` matrix without its diagonal when
    causal (with it otherwise), and whether each row keeps its diagonal block (``[R]``)."""
    lay = np.asarray(layout, bool)
    diag = np.diagonal(lay).copy()
    off = lay.copy()
    if causal:
        np.fill_diagonal(off, False)
    return (torch.from_numpy(off).to(device=device, dtype=dtype),
            torch.from_numpy(diag).to(device=device))


def lowrank_complement(phq, phk, v, layout, block: int, causal: bool):
    """Low-rank numerator ``[B, H, L, d]`` and denominator ``[B, H, L]`` over the keys outside
    ``layout`` (``[R, R]`` bool; lower triangular when ``causal``), from features ``phq,
    phk: [B, H, L, r]`` and values ``v: [B, H, L, d]`` (one dtype). Denominators are clamped
    at 0 (the difference of two sums of positive terms can round below it)."""
    B, H, L, r = phq.shape
    d = v.shape[-1]
    R = L // block
    qb = phq.view(B, H, R, block, r)
    kb = phk.view(B, H, R, block, r)
    vb = v.view(B, H, R, block, d)
    kv_blk = torch.einsum("bhnjr,bhnjd->bhnrd", kb, vb).reshape(B, H, R, r * d)
    ks_blk = kb.sum(3)                                              # [B,H,R,r]
    off, diag = _row_support(layout, causal, phq.dtype, phq.device)
    # all allowed keys minus the row's kept blocks, as one [R, r*d] summary per query block
    if causal:
        kv_rest = torch.cumsum(kv_blk, 2) - kv_blk - off @ kv_blk    # exclusive prefix
        ks_rest = torch.cumsum(ks_blk, 2) - ks_blk - off @ ks_blk
    else:
        kv_rest = kv_blk.sum(2, keepdim=True) - off @ kv_blk
        ks_rest = ks_blk.sum(2, keepdim=True) - off @ ks_blk
    num = torch.einsum("bhnir,bhnrd->bhnid", qb, kv_rest.view(B, H, R, r, d))
    den = torch.einsum("bhnir,bhnr->bhni", qb, ks_rest)
    if causal and not bool(diag.all()):
        # rows whose diagonal block the sparse part skips: keys j <= i of that block
        tri = torch.ones(block, block, dtype=torch.bool, device=phq.device).tril()
        a_in = torch.einsum("bhnir,bhnjr->bhnij", qb, kb) * tri      # [B,H,R,b,b]
        miss = (~diag).to(phq.dtype).view(R, 1, 1)
        num = num + miss * (a_in @ vb)
        den = den + miss.view(R, 1) * a_in.sum(-1)
    return num.reshape(B, H, L, d), den.clamp_min(0).reshape(B, H, L)
