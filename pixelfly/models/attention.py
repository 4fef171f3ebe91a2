"""Plain multi-head self-attention, and the hook that lets ViT / GPT-2 take another one.

``MultiHeadSelfAttention`` is the dense baseline of SPEC section 5: the ``qkv`` and output
(``proj``) projections are ``nn.Linear`` (so ``pixelfly.sparsify`` can replace them) and
the ``softmax(q k^T / sqrt(d)) v`` core is ``torch.nn.functional.scaled_dot_product_attention``.

Attention contract shared by every attention module a model accepts::

    module = factory(dim, n_heads, seq_len, causal)       # an nn.Module
    y = module(x)                                          # x: [B, L, dim] -> y: [B, L, dim]

with ``L <= seq_len``. ``resolve_attention`` turns the models' ``attention`` argument
(``"dense"`` or such a factory) into a module.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiHeadSelfAttention", "AttentionFactory", "AttentionSpec", "resolve_attention"]

#: ``factory(dim, n_heads, seq_len, causal) -> nn.Module`` mapping ``[B, L, dim] -> [B, L, dim]``.
AttentionFactory = Callable[[int, int, int, bool], nn.Module]
#: What the models accept as ``attention``: ``"dense"`` or an ``AttentionFactory``.
AttentionSpec = Union[str, AttentionFactory]


class MultiHeadSelfAttention(nn.Module):
    """Dense multi-head self-attention.

    Args:
        dim: model width ``D`` (must be divisible by ``n_heads``).
        n_heads: number of heads ``H``; head width is ``D / H``.
        seq_len: longest sequence the module will see (kept for the shared contract; dense
            attention works for any ``L``).
        causal: if True, position ``i`` attends only to positions ``<= i``.
        bias: whether ``qkv`` and ``proj`` have biases.
        dropout: dropout on the attention probabilities (training only).

    Shapes: ``x: [B, L, D] -> [B, L, D]``. Internally ``qkv(x): [B, L, 3D]`` is split into
    ``q, k, v: [B, H, L, D/H]``.
    """

    def __init__(self, dim: int, n_heads: int, seq_len: int | None = None, causal: bool = False,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.seq_len, self.causal, self.dropout = seq_len, bool(causal), float(dropout)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)   # [D] -> [3D]: q, k, v
        self.proj = nn.Linear(dim, dim, bias=bias)      # output projection (residual branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)            # each [B, H, L, D/H]
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal)
        y = y.transpose(1, 2).reshape(B, L, D)                     # [B, L, D]
        return self.proj(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_heads={self.n_heads}, seq_len={self.seq_len}, causal={self.causal}"


def resolve_attention(attention: AttentionSpec, dim: int, n_heads: int, seq_len: int, causal: bool,
                      dropout: float = 0.0) -> nn.Module:
    """Build the attention module for one block.

    ``attention`` is ``"dense"`` (``MultiHeadSelfAttention``, with ``dropout``), a block
    layout name (``"pixelfly"``, ``"bigbird"``, ``"sparse_transformer"``, ``"local"``:
    :class:`pixelfly.PixelflyAttention` with that layout, blocks of 32, or 16 for short
    sequences; use ``PixelflyAttention.factory(...)`` for other settings), ``"reformer"``
    (:class:`pixelfly.reformer.ReformerAttention`, LSH attention, chunks of the same size,
    2 hashing rounds), or a factory
    called as ``attention(dim, n_heads, seq_len, causal)``, which must return an
    ``nn.Module`` with the contract ``[B, L, dim] -> [B, L, dim]``.
    """
    if isinstance(attention, str):
        if attention == "dense":
            return MultiHeadSelfAttention(dim, n_heads, seq_len, causal, dropout=dropout)
        block = 32 if seq_len % 32 == 0 and seq_len >= 64 else 16
        if attention == "reformer":
            from ..reformer import ReformerAttention
            return ReformerAttention(dim, n_heads, seq_len, causal, chunk_size=block, dropout=dropout)
        from ..attention import LAYOUTS, PixelflyAttention  # block-sparse attention (C kernels)
        if attention not in LAYOUTS:
            raise ValueError(f"unknown attention {attention!r}: use 'dense', one of the block "
                             f"layouts {LAYOUTS} (PixelflyAttention), 'reformer', or a factory "
                             "attention(dim, n_heads, seq_len, causal) -> nn.Module")
        return PixelflyAttention(dim, n_heads, seq_len, causal=causal, layout=attention,
                                 block_size=block, dropout=dropout)
    if not callable(attention):
        raise TypeError(f"attention must be 'dense' or a callable factory, got {type(attention).__name__}")
    module = attention(dim, n_heads, seq_len, causal)
    if not isinstance(module, nn.Module):
        raise TypeError(f"attention factory returned {type(module).__name__}, expected an nn.Module")
    return module
