"""Pixelfly attention (SPEC section 4): a block-sparse part exact on a flat block butterfly
layout over the ``(L/b) x (L/b)`` query/key block grid, plus an optional low-rank part
(positive random features of the softmax kernel) that covers the rest, with one shared
normaliser.

For one head, with ``s_ij = scale * q_i . k_j``, ``S_i`` the row's support (the layout's
blocks, intersected with ``j <= i`` when causal) and ``phi`` the Performer positive random
features (``E[phi(x) . phi(y)] = exp(x . y)``)::

    out_i = (sum_{j in S_i} exp(s_ij) v_j + sum_{j notin S_i} k_ij v_j)
          / (sum_{j in S_i} exp(s_ij)     + sum_{j notin S_i} k_ij)
    k_ij  = phi(sqrt(scale) q_i) . phi(sqrt(scale) k_j)         (j <= i only when causal)

On the CPU the whole core (sparse part, low-rank part, key mask) is one C kernel
(``pixelfly.attention_ops`` with ``features=``, csrc/cpu/attn_lowrank.c); on other devices
the sparse part runs as the composite op and the low-rank part in PyTorch
(``pixelfly.attention_lowrank``). Both form the low-rank sums over the complement as "all
keys" minus "the row's kept blocks" from per-block ``phi(k)^T [v, 1]`` summaries, so nothing
is ``L x L`` or ``nnz x b x r``: memory grows linearly in ``L``. Every term is carried with
per-row log-scale offsets, so nothing overflows.

Sequence lengths must be multiples of ``block_size`` (a clear ``ValueError`` otherwise).
``sparse_lowrank_attention(..., key_mask=)`` excludes keys element by element (padding): the
Hugging Face integration (``pixelfly.hf_attention``) pads sequences to a block multiple with it.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

from . import attention_ops, defaults
from . import layouts as L_
from ._memory import physical_memory
from .attention_lowrank import SparseLowRankAttention, key_mask_columns
from .attention_ops import AttentionIndex

__all__ = ["PixelflyAttention", "build_attention_layout", "sparse_lowrank_attention",
           "gaussian_features", "LAYOUTS"]

LAYOUTS = ("pixelfly", "bigbird", "sparse_transformer", "local", "dense")

LayoutSpec = Union[str, np.ndarray]


def _log2_floor(n: int) -> int:
    return int(n).bit_length() - 1


def build_attention_layout(grid: int, layout: LayoutSpec = "pixelfly", *, n_factors: int = 2,
                           butterfly_size: int | None = None, causal: bool = False,
                           **layout_kwargs) -> np.ndarray:
    """Boolean ``grid x grid`` block layout for attention over ``grid`` query/key blocks.

    ``layout``: ``"pixelfly"`` (flat block butterfly, ``n_factors`` factors, butterfly size
    ``butterfly_size``, default the largest power of two ``<= grid``; the factor count is
    capped at ``log2(butterfly size)`` for short sequences; a 1-block grid is dense),
    ``"bigbird"`` (``window=1, n_global=1, n_random=1, seed=0`` unless given),
    ``"sparse_transformer"`` (``stride``: default the power of two nearest ``sqrt(grid)``),
    ``"local"`` (``window=1``), ``"dense"``, or a boolean array of shape ``(grid, grid)``.
    With ``causal`` the layout is intersected with the block lower triangle.
    """
    from . import layouts as L

    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    grid = int(grid)
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use one of {LAYOUTS} or a boolean array")
        if layout == "dense" or grid == 1:
            lay = np.ones((grid, grid), bool)
        elif layout == "pixelfly":
            n = butterfly_size if butterfly_size is not None else 1 << _log2_floor(grid)
            if n > grid:
                raise ValueError(f"butterfly_size={n} exceeds the block grid {grid} "
                                 f"(sequence length / block_size)")
            m = min(int(n_factors), _log2_floor(n)) if n >= 2 else n_factors
            lay = L.flat_butterfly_layout(grid, grid, m, n)
        elif layout == "bigbird":
            kw = dict(window=1, n_global=1, n_random=1, seed=0)
            kw.update(layout_kwargs)
            lay = L.bigbird_layout(grid, grid, **kw)
        elif layout == "sparse_transformer":
            stride = layout_kwargs.get("stride", 1 << max(0, round(math.log2(grid) / 2)))
            lay = L.sparse_transformer_layout(grid, grid, stride)
        else:  # local
            lay = L.local_layout(grid, grid, layout_kwargs.get("window", 1))
    else:
        lay = np.asarray(layout.cpu() if isinstance(layout, torch.Tensor) else layout)
        if lay.shape != (grid, grid):
            raise ValueError(f"layout has shape {lay.shape}, but the sequence has a "
                             f"{grid} x {grid} block grid")
        if lay.dtype != bool:
            if not np.isin(lay, (0, 1)).all():
                raise ValueError("a layout array must be boolean (or 0/1)")
        lay = lay.astype(bool)
    lay = np.array(lay, dtype=bool)
    if causal:
        lay &= np.tril(np.ones((grid, grid), bool))
    return lay


def gaussian_features(n_features: int, head_dim: int, *, orthogonal: bool = True,
                      generator: torch.Generator | None = None, dtype=torch.float32):
    """``[n_features, head_dim]`` projection for positive random features: rows N(0, I),
    or blocks of orthogonal rows with chi-distributed norms (lower variance, same mean)."""
    if n_features == 0:
        return torch.zeros(0, head_dim, dtype=dtype)
    if not orthogonal:
        return torch.randn(n_features, head_dim, generator=generator, dtype=dtype)
    blocks, left = [], n_features
    while left > 0:
        g = torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float64)
        qm, _ = torch.linalg.qr(g)
        blocks.append(qm.T[: min(left, head_dim)])
        left -= head_dim
    w = torch.cat(blocks, 0)
    norms = torch.randn(n_features, head_dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (w * norms[:, None]).to(dtype)


def _support_gather(index: AttentionIndex, device):
    """Per block-row padded column lists ``cols [R, deg]`` and validity ``[R, deg]``."""
    lay = index.layout
    R = lay.shape[0]
    deg = max(1, int(lay.sum(1).max()))
    cols = np.zeros((R, deg), np.int64)
    valid = np.zeros((R, deg), bool)
    for i in range(R):
        c = np.nonzero(lay[i])[0]
        cols[i, : c.size] = c
        valid[i, : c.size] = True
    return torch.from_numpy(cols).to(device), torch.from_numpy(valid).to(device)


def _all_finite(*xs) -> bool:
    """True when no entry is NaN or inf: one pass per tensor, no temporary (a sum is finite
    only then; a finite sum that overflows reads as "not finite", which only sends the call
    down the exact non-finite path)."""
    return all(math.isfinite(float(x.detach().sum(dtype=torch.float64 if x.dtype == torch.float64
                                                   else torch.float32))) for x in xs)


def _lowrank_pair_counts(flags, cols, valid, block: int, causal: bool):
    """For every query ``i`` and column ``c`` of ``flags [B, H, L, X]`` (int, one row per key
    ``j``): the sum of ``flags[j, c]`` over the keys that pair with ``i`` through the low-rank
    part, i.e. allowed (all keys, or ``j <= i`` when ``causal``) and outside the sparse support
    (``cols``/``valid``, causal inside the diagonal block). Exact integer counts."""
    B, H, L, X = flags.shape
    R = L // block
    fb = flags.view(B, H, R, block, X)
    per_block = fb.sum(3)                                          # [B,H,R,X]
    rows = torch.arange(R, device=flags.device)[:, None]
    if causal:
        valid = valid & (cols <= rows)
    sup = (per_block[:, :, cols] * valid[:, :, None]).sum(3)[:, :, :, None]   # [B,H,R,1,X]
    if causal:
        allowed = flags.cumsum(2).view(B, H, R, block, X)          # keys j <= i
        diag = (valid & (cols == rows)).any(1).view(R, 1, 1)       # diagonal block kept
        # the diagonal block pairs query i with its keys j <= i only
        sup = sup + diag * (fb.cumsum(3) - per_block[:, :, :, None])
    else:
        allowed = flags.sum(2, keepdim=True)[:, :, :, None]        # [B,H,1,1,X]
    return torch.broadcast_to(allowed - sup, (B, H, R, block, X)).reshape(B, H, L, X)


def _lowrank_nonfinite(y, q, k, v, cols, valid, block: int, causal: bool):
    """Give ``y`` the NaN/inf of the non-finite inputs that reach it through the low-rank
    part (which is computed on finite-or-zero inputs): a non-finite query makes its row NaN,
    a non-finite key every row it pairs with, a NaN / +inf / -inf value the same column of
    those rows (as in :func:`pixelfly.reference.pixelfly_attention`)."""
    d = v.shape[-1]
    bad_k = ~torch.isfinite(k).all(-1, keepdim=True)
    flags = torch.cat([bad_k, torch.isnan(v), torch.isposinf(v), torch.isneginf(v)], -1).long()
    cnt = _lowrank_pair_counts(flags, cols, valid, block, causal) > 0
    nan_rows = ~torch.isfinite(q).all(-1, keepdim=True) | cnt[..., :1]
    c_nan, c_pinf, c_ninf = cnt[..., 1:].split(d, -1)
    inf = torch.tensor(float("inf"), dtype=y.dtype, device=y.device)
    y = torch.where(c_pinf, y + inf, y)
    y = torch.where(c_ninf, y - inf, y)
    return torch.where(nan_rows | c_nan, torch.full_like(y, float("nan")), y)


def _support_has_key(key_mask, layout, block: int, causal: bool):
    """``[B, L]``: whether query ``i`` has at least one kept key (``key_mask``) in its sparse
    support (the layout's blocks of its block-row, ``j <= i`` inside the diagonal block when
    ``causal``). Exact counts."""
    B, L = key_mask.shape
    R = L // block
    km = key_mask.to(torch.float64)
    lay = torch.from_numpy(np.asarray(layout, bool)).to(key_mask.device)
    diag = lay.diagonal()
    off = (lay & ~torch.eye(R, dtype=torch.bool, device=key_mask.device)).to(torch.float64)
    per_block = km.view(B, R, block).sum(-1)                          # [B, R]
    rows = (per_block @ off.T)[:, :, None]                           # [B, R, 1]
    inner = km.view(B, R, block).cumsum(-1) if causal else per_block[:, :, None]
    cnt = rows + diag[None, :, None] * inner
    return (cnt > 0).expand(B, R, block).reshape(B, L)


def _key_masked_bsattn(q, k, v, index: AttentionIndex, block: int, scale: float, causal: bool,
                       key_mask):
    """The block kernel with keys excluded element by element (``key_mask [B, L]``, True:
    kept), through :func:`pixelfly.attention_lowrank.key_mask_columns`. Rows whose support
    has no kept key give ``out = 0``, ``lse = -inf``, as the kernel does for empty rows."""
    q1, k1, v1 = key_mask_columns(q, k, v, key_mask, scale)
    out, lse = attention_ops.bsattn_fwd(q1, k1, v1, *index.tensors(), block, scale, causal)
    out = out[..., :-1]
    has = _support_has_key(key_mask, index.layout, block, causal)[:, None]    # [B, 1, L]
    if not bool(has.all()):
        out = torch.where(has[..., None], out, 0)
        lse = torch.where(has, lse, float("-inf"))
    return out, lse


def sparse_lowrank_attention(q, k, v, index: AttentionIndex, block: int, *, scale=None,
                             causal: bool = False, features: torch.Tensor | None = None,
                             return_parts: bool = False, key_mask: torch.Tensor | None = None):
    """The attention core on ``q, k, v: [B, H, L, d]``; ``features``: ``[r, d]`` projection of
    the low-rank part (``None``: sparse only). Returns ``[B, H, L, d]`` (with
    ``return_parts``: also the sparse-only output). ``index`` must already include the
    causal intersection when ``causal``. ``key_mask``: optional ``[B, L]`` bool, False for
    keys excluded from every row (padding), element by element; a row left with no key at
    all gives 0."""
    B, H, L, d = q.shape
    if L % block:
        raise ValueError(f"sequence length {L} is not a multiple of block_size={block}")
    if scale is None:
        scale = d ** -0.5
    if key_mask is not None:
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, L):
            raise ValueError(f"key_mask must be a bool tensor of shape [B, L] = {[B, L]}, got "
                             f"{key_mask.dtype} {list(key_mask.shape)}")
    on_cpu = q.device.type == "cpu"       # the C kernel: key mask and low rank fused in
    if features is None or features.shape[0] == 0:
        if key_mask is not None and not on_cpu:
            out_s, _ = _key_masked_bsattn(q, k, v, index, block, scale, causal, key_mask)
        else:
            out_s, _ = attention_ops.bsattn_fwd(q, k, v, *index.tensors(), block, scale, causal,
                                                None, key_mask)
        return (out_s, out_s) if return_parts else out_s
    if features.dim() != 2 or features.shape[1] != d:
        raise ValueError(f"features must be [r, head_dim = {d}], got {tuple(features.shape)}")
    # the low-rank sums run on finite inputs (NaN/inf would turn "all keys minus the support"
    # into NaN everywhere); what non-finite inputs do to the output is applied after
    finite = not torch.compiler.is_compiling() and _all_finite(q, k, v)
    if key_mask is not None and not finite:
        km = key_mask[:, None, :, None]
        k, v = torch.where(km, k, 0), torch.where(km, v, 0)   # what excluded keys hold never matters
        finite = not torch.compiler.is_compiling() and _all_finite(q, k, v)
    if on_cpu:
        y, _ = attention_ops.bsattn_fwd(q, k, v, *index.tensors(), block, scale, causal,
                                        features.to(q.dtype if q.dtype == torch.float64 else torch.float32),
                                        key_mask)
        out_s = attention_ops.bsattn_fwd(q, k, v, *index.tensors(), block, scale, causal, None,
                                         key_mask)[0].detach() if return_parts else None
    else:
        if key_mask is not None and finite:
            km = key_mask[:, None, :, None]
            k, v = torch.where(km, k, 0), torch.where(km, v, 0)
        y, out_s = SparseLowRankAttention.apply(q, k, v, features, index, index.layout, block, scale,
                                                causal, finite, key_mask)
    if not finite:
        cols, valid = _support_gather(index, q.device)
        y = _lowrank_nonfinite(y, q, k, v, cols, valid, block, causal)
    return (y, out_s) if return_parts else y


class PixelflyAttention(nn.Module):
    """Multi-head self-attention with a Pixelfly (sparse + low-rank) attention matrix.

    Args:
        dim: model width ``D`` (divisible by ``n_heads``).
        n_heads: heads ``H``; head width ``D / H``.
        seq_len: longest sequence (optional; validated and its layout built eagerly).
        block_size: ``b``, the query/key block; sequence lengths must be multiples of it.
        n_factors, butterfly_size: the flat block butterfly over the ``L/b x L/b`` grid.
        layout: ``"pixelfly"``, the baselines ``"bigbird"``, ``"sparse_transformer"``,
            ``"local"``, ``"dense"`` (all blocks through the same kernel), or a boolean
            ``(L/b, L/b)`` array (then ``L`` is fixed).
        causal: position ``i`` attends to ``j <= i`` only (layout intersected with the
            causal mask; low-rank sums are prefix sums).
        n_random_features: ``r`` positive random features for the low-rank part (0: off).
        proj: ``nn.Linear`` or a factory ``proj(in_features, out_features, bias=...)`` for
            the ``qkv`` and output projections (e.g. a PixelflyLinear factory).
        dropout: dropout on the attention output before the output projection (the fused
            kernel never materialises the probabilities, so they cannot be dropped).
        bias: projection biases. layout_kwargs: extra arguments of the baseline layouts.
        feature_seed: seed of the random feature projection (a buffer; see redraw_features).

    Shapes: ``x: [B, L, D] -> [B, L, D]``.
    """

    def __init__(self, dim: int, n_heads: int, seq_len: int | None = None, *,
                 block_size: int = defaults.BLOCK_SIZE, n_factors: int = 2, butterfly_size: int | None = None,
                 layout: LayoutSpec = "pixelfly", causal: bool = False,
                 n_random_features: int = 0, proj: Callable[..., nn.Module] = nn.Linear,
                 dropout: float = 0.0, bias: bool = True, layout_kwargs: dict | None = None,
                 feature_seed: int = 0):
        super().__init__()
        for name, val in (("dim", dim), ("n_heads", n_heads), ("block_size", block_size),
                          ("n_factors", n_factors)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if dim % n_heads:
            raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}")
        if isinstance(n_random_features, bool) or not isinstance(n_random_features, int) \
                or n_random_features < 0:
            raise ValueError(f"n_random_features must be an int >= 0, got {n_random_features!r}")
        if n_random_features * (dim // n_heads) * 4 > physical_memory():
            raise ValueError(f"n_random_features={n_random_features} random features of width "
                             f"{dim // n_heads} would not fit in this machine's memory")
        if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int)
                                    or seq_len < 1):
            raise ValueError(f"seq_len must be a positive int or None, got {seq_len!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(layout, str) and layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use one of {LAYOUTS} or a boolean array")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.block_size, self.n_factors, self.butterfly_size = block_size, n_factors, butterfly_size
        self.layout_spec = layout if isinstance(layout, str) else np.asarray(layout, bool)
        self.layout_kwargs = dict(layout_kwargs or {})
        self.causal, self.dropout = bool(causal), float(dropout)
        self.seq_len = seq_len
        self.qkv = proj(dim, 3 * dim, bias=bias)
        self.proj = proj(dim, dim, bias=bias)
        self.attn_drop = nn.Dropout(self.dropout)
        g = torch.Generator().manual_seed(int(feature_seed))
        self.register_buffer("features",
                             gaussian_features(n_random_features, self.head_dim, generator=g),
                             persistent=True)
        self._index_cache: dict[int, AttentionIndex] = {}
        if seq_len is not None:
            self.index_for(int(seq_len))

    @classmethod
    def factory(cls, **kwargs):
        """An attention factory ``(dim, n_heads, seq_len, causal) -> PixelflyAttention`` for
        the models' ``attention=`` argument."""
        return lambda dim, n_heads, seq_len, causal: cls(dim, n_heads, seq_len, causal=causal, **kwargs)

    @property
    def n_random_features(self) -> int:
        return int(self.features.shape[0])

    def redraw_features(self, generator: torch.Generator | None = None):
        """Draw a fresh random feature projection (Performer-style periodic redraw)."""
        self.features.copy_(gaussian_features(self.n_random_features, self.head_dim,
                                              generator=generator, dtype=self.features.dtype))

    def index_for(self, L: int) -> AttentionIndex:
        """Block index of the layout for sequence length ``L`` (cached)."""
        if L < 1 or L % self.block_size:
            raise ValueError(f"sequence length L={L} must be a positive multiple of "
                             f"block_size={self.block_size} (pad the sequence, or pick a block "
                             f"size dividing L)")
        grid = L // self.block_size
        if grid > L_.MAX_GRID or grid * grid > L_.MAX_CELLS:
            raise ValueError(f"sequence length L={L} with block_size={self.block_size} gives a "
                             f"{grid} x {grid} block grid, more than the {L_.MAX_CELLS} (2**30) "
                             f"blocks a layout can hold: at most L = "
                             f"{math.isqrt(L_.MAX_CELLS) * self.block_size}")
        idx = self._index_cache.get(L)
        if idx is None:
            lay = build_attention_layout(L // self.block_size, self.layout_spec,
                                         n_factors=self.n_factors,
                                         butterfly_size=self.butterfly_size, causal=self.causal,
                                         **self.layout_kwargs)
            idx = self._index_cache[L] = AttentionIndex(lay)
        return idx

    def layout(self, L: int) -> np.ndarray:
        return self.index_for(L).layout

    def attend(self, q, k, v):
        """The attention core on ``q, k, v: [B, H, L, head_dim]``."""
        idx = self.index_for(q.shape[2])
        return sparse_lowrank_attention(q, k, v, idx, self.block_size, causal=self.causal,
                                        features=self.features if self.n_random_features else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, L, {self.dim}], got {tuple(x.shape)}")
        B, L, D = x.shape
        if self.seq_len is not None and L > self.seq_len:
            raise ValueError(f"sequence length {L} exceeds seq_len={self.seq_len}")
        idx = self.index_for(L)  # validates L before the projections run
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)          # each [B, H, L, hd] (views)
        y = sparse_lowrank_attention(q, k, v, idx, self.block_size, causal=self.causal,
                                     features=self.features if self.n_random_features else None)
        y = self.attn_drop(y.transpose(1, 2).reshape(B, L, D))
        return self.proj(y)

    def extra_repr(self) -> str:
        lay = self.layout_spec if isinstance(self.layout_spec, str) else "array"
        return (f"dim={self.dim}, n_heads={self.n_heads}, block_size={self.block_size}, "
                f"layout={lay}, n_factors={self.n_factors}, causal={self.causal}, "
                f"n_random_features={self.n_random_features}")
