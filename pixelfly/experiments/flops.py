"""Forward FLOPs of one call, counted with hooks on the layers that dominate: dense and
Pixelfly linears, Butterfly products and attention (dense, block-sparse + low rank, LSH). A training
step is counted as 3x the forward (forward + two backward products)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["forward_flops"]


def _layer_flops(m, x) -> float:
    from ..attention import PixelflyAttention
    from ..butterfly import ButterflyLinear
    from ..linear import PixelflyLinear
    from ..models.attention import MultiHeadSelfAttention
    from ..reformer import ReformerAttention
    if isinstance(m, PixelflyLinear):
        rows = x.numel() // m.in_features
        b1, b2 = m.block_size
        return 2.0 * rows * (m.index.nnz * b1 * b2 + m.rank * (m.in_features + m.out_features))
    if isinstance(m, ButterflyLinear):
        rows = x.numel() // m.features
        return 2.0 * rows * sum(f.numel() for f in m.factors)
    if isinstance(m, nn.Linear):
        rows = x.numel() // m.in_features
        return 2.0 * rows * m.in_features * m.out_features
    if isinstance(m, MultiHeadSelfAttention):
        B, L, D = x.shape
        return 4.0 * B * L * L * D                      # q k^T and p v
    if isinstance(m, PixelflyAttention):
        B, L, D = x.shape
        nnz = int(m.index_for(L).layout.sum())
        # sparse part; low rank (per head: features of q and k, phi(k)^T v, phi(q) S): 8 L r d
        return 4.0 * B * nnz * m.block_size ** 2 * D + 8.0 * B * L * m.n_random_features * D
    if isinstance(m, ReformerAttention):
        B, L, D = x.shape
        Lp = -(-L // m.chunk_size) * m.chunk_size
        # per hashing round: each query against its chunk and the previous one, plus hashing
        return m.n_hashes * (4.0 * B * Lp * 2 * m.chunk_size * D + 2.0 * B * Lp * D * m.buckets_for(Lp) // 2)
    return 0.0


def forward_flops(model: nn.Module, example) -> float:
    """FLOPs of ``model(example)`` in the counted layers (not their children twice: a
    Butterfly or Pixelfly layer is counted as a whole)."""
    from ..attention import PixelflyAttention
    from ..butterfly import ButterflyLinear
    from ..linear import PixelflyLinear
    from ..models.attention import MultiHeadSelfAttention
    from ..reformer import ReformerAttention
    kinds = (PixelflyLinear, ButterflyLinear, nn.Linear, MultiHeadSelfAttention, PixelflyAttention,
             ReformerAttention)
    total, hooks = [0.0], []
    for m in model.modules():
        if isinstance(m, kinds):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: total.__setitem__(0, total[0] + _layer_flops(mod, args[0]))))
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return total[0]
