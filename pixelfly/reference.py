"""Pure-PyTorch reference for Pixelfly, written plainly: the oracle every test and benchmark
compares against. Nothing here calls the C core. Patterns come from Python loops over the
formulas of SPEC section 1; matmuls are masked dense matmuls.

Shapes: a weight ``W`` is ``out x in``; blocks are ``b1 x b2``; the block grid is
``R x C = (out / b1) x (in / b2)``; ``blocks`` are ``[nnz, b1, b2]`` in row-major block order
(block-row by block-row, columns ascending), exactly the storage of the kernels.
"""
from __future__ import annotations

import torch

__all__ = [
    "flat_butterfly_layout", "butterfly_factor_layout", "butterfly_product_layout",
    "layout_to_mask", "blocks_to_dense", "dense_to_blocks", "bsmm_fwd", "bsmm_bwd_x",
    "bsmm_bwd_w", "pixelfly_weight", "pixelfly_linear", "token_gated_linear", "attention_mask",
    "masked_attention", "dense_attention", "pixelfly_attention", "lsh_attention",
]


def _bool_layout(layout):
    """A layout as a bool tensor (a copy of a NumPy array, read-only ones included)."""
    if isinstance(layout, torch.Tensor):
        return layout.to(torch.bool)
    return torch.tensor(layout, dtype=torch.bool)


def _cell(i: int, grid: int, n: int) -> int:
    return (i * n) // grid


def _default_size(rows: int, cols: int) -> int:
    n = 1
    while n * 2 <= min(rows, cols):
        n *= 2
    return n


def flat_butterfly_layout(rows: int, cols: int, n_factors: int, butterfly_size: int | None = None):
    """Flat block butterfly support (SPEC 1): keep block (i, j) iff
    ``(p XOR q) in {0} U {2^s : s < n_factors}`` with ``p = i*n // rows``, ``q = j*n // cols``."""
    n = butterfly_size or _default_size(rows, cols)
    offsets = {0} | {1 << s for s in range(n_factors)}
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = (_cell(i, rows, n) ^ _cell(j, cols, n)) in offsets
    return out


def butterfly_factor_layout(n: int, k: int):
    """Support of the block butterfly factor ``B_k`` on an ``n x n`` grid: ``(i^j) in {0, k/2}``."""
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            out[i, j] = (i ^ j) in (0, k // 2)
    return out


def butterfly_product_layout(rows: int, cols: int, n_factors: int, butterfly_size: int | None = None):
    """Support of ``B_{2^m} ... B_2`` stretched over the grid: ``(p XOR q) < 2^m``."""
    n = butterfly_size or _default_size(rows, cols)
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = (_cell(i, rows, n) ^ _cell(j, cols, n)) < (1 << n_factors)
    return out


def layout_to_mask(layout, b1: int, b2: int):
    """Element mask ``(R*b1) x (C*b2)``: every kept block becomes a ``b1 x b2`` block of True."""
    layout = _bool_layout(layout)
    return layout.repeat_interleave(b1, 0).repeat_interleave(b2, 1)


def _positions(layout):
    layout = _bool_layout(layout)
    return [(i, j) for i in range(layout.shape[0]) for j in range(layout.shape[1]) if layout[i, j]]


def blocks_to_dense(blocks, layout):
    """Dense ``out x in`` matrix holding ``blocks[k]`` at the k-th kept block (row-major order)."""
    nnz, b1, b2 = blocks.shape
    layout = _bool_layout(layout)
    R, C = layout.shape
    pos = _positions(layout)
    if len(pos) != nnz:
        raise ValueError(f"layout has {len(pos)} blocks but blocks has {nnz}")
    W = blocks.new_zeros(R * b1, C * b2)
    for k, (i, j) in enumerate(pos):
        W[i * b1:(i + 1) * b1, j * b2:(j + 1) * b2] = blocks[k]
    return W


def dense_to_blocks(W, layout, b1: int, b2: int):
    """Gather the kept ``b1 x b2`` blocks of a dense ``W`` into ``[nnz, b1, b2]``."""
    pos = _positions(layout)
    if not pos:
        return W.new_zeros(0, b1, b2)
    return torch.stack([W[i * b1:(i + 1) * b1, j * b2:(j + 1) * b2] for i, j in pos])


def bsmm_fwd(x, blocks, layout):
    """``y = x B^T`` as a masked dense matmul. x: ``[T, in]`` -> ``[T, out]``."""
    return x @ blocks_to_dense(blocks, layout).T


def bsmm_bwd_x(dy, blocks, layout):
    """``dx = dy B``. dy: ``[T, out]`` -> ``[T, in]``."""
    return dy @ blocks_to_dense(blocks, layout)


def bsmm_bwd_w(dy, x, layout, b1: int, b2: int):
    """``dB = dy^T x`` restricted to the layout's blocks -> ``[nnz, b1, b2]``."""
    full = dy.T @ x
    return dense_to_blocks(full * layout_to_mask(layout, b1, b2).to(full.dtype), layout, b1, b2)


def pixelfly_weight(blocks, layout, U=None, V=None, gamma=1.0):
    """Dense ``W = gamma * B + (1 - gamma) * U V^T`` (U: ``out x r``, V: ``in x r``)."""
    W = gamma * blocks_to_dense(blocks, layout)
    if U is not None and not isinstance(U, int) and U.shape[1] > 0:
        W = W + (1 - gamma) * (U @ V.T)
    return W


def pixelfly_linear(x, blocks, layout, U=None, V=None, gamma=1.0, bias=None):
    """``y = x W^T + bias`` with the dense Pixelfly weight, any leading batch dimensions."""
    y = x @ pixelfly_weight(blocks, layout, U, V, gamma).T
    return y if bias is None else y + bias


def token_gated_linear(x, blocks, layout, U, V, gate_weight, gate_bias, bias=None):
    """The authors' gated mix (``gate="token"``), per row of ``x``:
    ``g = sigmoid(x w^T + c)`` (one value per token), ``y = (1 - g) x B^T + g x V U^T + bias``.
    ``gate_weight`` is ``[1, in]``, ``gate_bias`` ``[1]``."""
    g = torch.sigmoid(x @ gate_weight.T + gate_bias)
    sparse = x @ blocks_to_dense(blocks, layout).T
    low = x @ (U @ V.T).T
    y = (1 - g) * sparse + g * low
    return y if bias is None else y + bias


# ------------------------------------------------------------------ attention
def attention_mask(layout, block: int, causal: bool = False):
    """Element mask ``[L, L]`` of a square block layout (``L = R * block``): query ``i`` may
    attend to key ``j`` iff block ``(i // block, j // block)`` is kept (and ``j <= i`` when
    ``causal``)."""
    mask = layout_to_mask(layout, block, block)
    if causal:
        mask = mask & torch.ones_like(mask).tril()
    return mask


def _select_sum(weights, allowed, v):
    """``sum_j weights[.., i, j] v[.., j, :]`` over the allowed ``j`` only: a key outside
    ``allowed`` adds exactly nothing (selected away, never multiplied by zero), so a NaN or
    inf there cannot leak; an allowed key adds ``weight * v`` even when the weight is 0.
    Query rows go in chunks of at most ~2**24 products (memory stays O(L d) per row)."""
    per_row = max(1, weights[..., :1, :].numel() * v.shape[-1])
    step = max(1, (1 << 24) // per_row)
    out = []
    for i in range(0, weights.shape[-2], step):
        terms = weights[..., i:i + step, :].unsqueeze(-1) * v.unsqueeze(-3)      # [..., rows, L, d]
        keep = allowed[..., i:i + step, :].unsqueeze(-1)
        out.append(torch.where(keep, terms, torch.zeros_like(terms)).sum(-2))
    return torch.cat(out, -2) if out else weights.new_zeros(*weights.shape[:-1], v.shape[-1])


def _allowed(layout, block: int, causal: bool, L: int, mask):
    """The layout's element mask cut to ``L`` (a sequence that ends inside a block), and with
    an extra element ``mask`` (broadcastable to ``[..., L, L]``, e.g. padding) when given."""
    allowed = attention_mask(layout, block, causal)[:L, :L]
    if allowed.shape != (L, L):
        raise ValueError(f"layout covers {allowed.shape[0]} positions, fewer than L = {L}")
    return allowed if mask is None else allowed & torch.as_tensor(mask, dtype=torch.bool)


def masked_attention(q, k, v, layout, block: int, causal: bool = False, scale=None, mask=None):
    """Block-sparse softmax attention with the layout as a mask: ``(out, lse)``.

    ``s = scale * q k^T`` (default ``scale = d**-0.5``) on the keys the layout (and
    ``causal``, and the optional element ``mask``, broadcastable to ``[..., L, L]``) allows,
    ``out = softmax(s) v``, ``lse = logsumexp(s)``, per row. ``L`` need not fill the last
    block. A row with
    no allowed key gives ``out = 0`` and ``lse = -inf``. NaN and inf behave as in the dense
    formula restricted to the allowed keys: a NaN score makes its row NaN, a ``+inf`` score
    makes ``out`` NaN and ``lse`` ``+inf``, a NaN or inf value reaches every row that
    attends to it; disallowed keys contribute nothing at all. ``q, k, v: [..., L, d]``; ``q``
    may also hold only the first ``Lq <= L`` query positions (the output's first rows).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    allowed = _allowed(layout, block, causal, k.shape[-2], mask)[..., :q.shape[-2], :]
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s.float() if s.dtype in (torch.bfloat16, torch.float16) else s, -1)
    p = torch.softmax(s, -1)
    has_key = allowed.any(-1, keepdim=True)
    p = torch.where(has_key, p, torch.zeros_like(p))                   # empty rows: 0, not NaN
    return _select_sum(p, allowed, v), lse


def dense_attention(q, k, v, causal: bool = False, scale=None):
    """Dense softmax attention (every key, or ``j <= i`` when ``causal``): ``softmax(s) v``,
    i.e. :func:`masked_attention` with every block kept. ``q, k, v: [..., L, d]``."""
    L = k.shape[-2]
    return masked_attention(q, k, v, torch.ones(1, 1, dtype=torch.bool), L, causal, scale)[0]


def pixelfly_attention(q, k, v, layout, block: int, features, causal: bool = False, scale=None,
                       mask=None):
    """Sparse + low-rank attention (SPEC section 4) written out with ``L x L`` matrices:
    weights ``exp(s_ij)`` on the layout's support, the positive random-feature kernel
    ``phi(q_i) . phi(k_j)`` (``phi(x) = exp(x w^T - |x|^2 / 2) / sqrt(r)`` on
    ``x * sqrt(scale)``, ``w = features [r, d]``) on every other allowed pair (all pairs, or
    ``j <= i`` when ``causal``; and only where the optional element ``mask`` is True);
    ``out_i = sum_j A_ij v_j / sum_j A_ij`` over allowed ``j`` only (NaN and inf as in
    :func:`masked_attention`; a row with no allowed key gives 0; ``q`` may hold only the
    first query positions, as there)."""
    Lq, L, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    sup = _allowed(layout, block, causal, L, mask)[..., :Lq, :]
    allowed = torch.ones(L, L, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    if mask is not None:
        allowed = allowed & torch.as_tensor(mask, dtype=torch.bool)
    allowed = allowed[..., :Lq, :]

    def phi(x):
        x = x * scale ** 0.5
        return torch.exp(x @ features.T - 0.5 * (x * x).sum(-1, keepdim=True)) / features.shape[0] ** 0.5

    kap = phi(q) @ phi(k).transpose(-1, -2)
    A = torch.where(sup, torch.exp(s), torch.where(allowed, kap, torch.zeros_like(kap)))
    den = torch.where(allowed, A, torch.zeros_like(A)).sum(-1, keepdim=True)
    has_key = allowed.any(-1, keepdim=True)
    out = _select_sum(A, allowed, v) / torch.where(has_key, den, torch.ones_like(den))
    return torch.where(has_key, out, torch.zeros_like(out))


def lsh_attention(qk, v, buckets, chunk_size: int, causal: bool = False, key_mask=None, scale=None):
    """Reformer's LSH attention by brute force over ``L x L`` matrices, for given
    ``buckets [B, H, n_hashes, L]`` (``pixelfly.reformer`` computes it by sorting and
    chunking). Round ``r``: rank the positions by (bucket, position); query ``i`` sees key
    ``j`` iff ``j``'s chunk (rank // chunk_size) is ``i``'s or the one before it (cyclic, when
    there is more than one chunk). Over the keys it sees, scores ``scale * qk_i . qk_j /
    |qk_j|``, -1e9 for keys excluded by ``causal`` (``j > i``) or ``key_mask`` (False), -1e5
    for ``j = i``; ``out_r = softmax(scores) v``, ``lse_r = logsumexp(scores)``. The output
    is ``sum_r softmax_r(lse_r) out_r``. ``qk, v: [B, H, L, d]``."""
    B, H, L, d = qk.shape
    scale = d ** -0.5 if scale is None else scale
    k = qk / qk.norm(dim=-1, keepdim=True)
    s = (qk @ k.transpose(-1, -2)) * scale                               # [B, H, L, L]
    pos = torch.arange(L)
    excluded = torch.zeros(B, 1, L, L, dtype=torch.bool)
    if causal:
        excluded = excluded | (pos[None, :] > pos[:, None])
    if key_mask is not None:
        excluded = excluded | ~torch.as_tensor(key_mask, dtype=torch.bool)[:, None, None, :]
    s = torch.where(excluded, torch.full_like(s, -1e9), s)
    s = torch.where(torch.eye(L, dtype=torch.bool), torch.full_like(s, -1e5), s)
    n_chunks = L // chunk_size
    outs, lses = [], []
    for r in range(buckets.shape[2]):
        rank = (buckets[:, :, r] * L + pos).argsort(-1).argsort(-1)          # [B, H, L]
        chunk = rank // chunk_size
        ci, cj = chunk[..., :, None], chunk[..., None, :]
        sees = ci == cj
        if n_chunks > 1:
            sees = sees | (cj == (ci - 1) % n_chunks)
        sr = torch.where(sees, s, torch.full_like(s, float("-inf")))
        lse = torch.logsumexp(sr, -1)
        outs.append(torch.softmax(sr, -1) @ v)
        lses.append(lse)
    w = torch.softmax(torch.stack(lses), 0)[..., None]
    return (w * torch.stack(outs)).sum(0)
