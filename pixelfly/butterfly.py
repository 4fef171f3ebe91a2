"""``ButterflyLinear``: the paper's "Butterfly" baseline, a product of block butterfly factors

    W = B_n B_{n/2} ... B_2            (SPEC section 1, on an n x n block grid)

applied as ``y = x B_2^T B_4^T ... B_n^T + bias`` with the same block-sparse kernels as
:class:`~pixelfly.PixelflyLinear` (each factor keeps 2 blocks per block-row). Its support is
dense, but it costs ``log2 n`` sparse matmuls instead of one: the reason the paper flattens
the product into a sum (Pixelfly).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import ops
from .layouts import BlockIndex, butterfly_factor_layout

__all__ = ["ButterflyLinear"]


class ButterflyLinear(nn.Module):
    """Square butterfly-product layer: ``features = n * block_size`` with ``n`` a power of two.

    Parameters: ``factors[i]`` of shape ``[2n, b, b]`` (the blocks of ``B_{2^(i+1)}``) and
    ``bias [features]``. ``dense_factors()`` returns each factor as a dense matrix.
    """

    def __init__(self, features: int, bias: bool = True, *, block_size: int = 32, device=None,
                 dtype=None):
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, int) or features <= 0:
            raise ValueError(f"features must be a positive int, got {features!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        n, rem = divmod(features, block_size)
        if rem or n < 2 or n & (n - 1):
            raise ValueError(f"features / block_size must be a power of two >= 2, got "
                             f"{features} / {block_size}")
        self.features, self.block_size, self.n = features, block_size, n
        self.sizes = [1 << s for s in range(1, int(math.log2(n)) + 1)]  # k = 2, 4, ..., n
        factory = {"device": device, "dtype": dtype}
        self.factors = nn.ParameterList()
        self._indices = []
        for i, k in enumerate(self.sizes):
            idx = BlockIndex.from_layout(np.asarray(butterfly_factor_layout(n, k), dtype=bool))
            for name, t in zip(ops.INDEX_FIELDS, ops.index_tensors(idx, device)):
                self.register_buffer(f"f{i}_{name}", t, persistent=False)
            self._indices.append(idx)
            self.factors.append(nn.Parameter(torch.empty(idx.nnz, block_size, block_size, **factory)))
        self.bias = nn.Parameter(torch.empty(features, **factory)) if bias else None
        self.reset_parameters()

    def _idx(self, i):
        return tuple(getattr(self, f"f{i}_{name}") for name in ops.INDEX_FIELDS)

    @torch.no_grad()
    def reset_parameters(self):
        """Each factor keeps the variance (2b inputs per output); the last one scales to
        ``nn.Linear``'s output variance ``Var(x) / 3``."""
        b = self.block_size
        for i, f in enumerate(self.factors):
            std = 1.0 / math.sqrt(2 * b)
            if i == len(self.factors) - 1:
                std /= math.sqrt(3.0)
            nn.init.normal_(f, 0.0, std)
        if self.bias is not None:
            lim = 1.0 / math.sqrt(self.features)
            nn.init.uniform_(self.bias, -lim, lim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.features:
            raise ValueError(f"expected input with last dimension {self.features}, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        h = x.reshape(-1, self.features)
        for i, f in enumerate(self.factors):  # y = x B_2^T B_4^T ... B_n^T
            h = ops.bsmm(h if h.stride(-1) == 1 else h.contiguous(), f, self._idx(i))
        if self.bias is not None:
            h = h + self.bias
        return h.reshape(*lead, self.features)

    @torch.no_grad()
    def dense_factors(self):
        """``[B_2, B_4, ..., B_n]`` as dense ``features x features`` matrices."""
        from .reference import blocks_to_dense
        return [blocks_to_dense(f.detach(), torch.tensor(idx.layout)) for f, idx in
                zip(self.factors, self._indices)]

    def extra_repr(self) -> str:
        return (f"features={self.features}, block={self.block_size}, butterfly_size={self.n}, "
                f"factors={len(self.sizes)}, bias={self.bias is not None}")
