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

from . import defaults, ops
from .layer_state import refuse_load, shape_errors
from .layouts import BlockIndex, butterfly_factor_layout
from .ops_func import kernel_rows

__all__ = ["ButterflyLinear"]


class ButterflyLinear(nn.Module):
    """Square butterfly-product layer: ``features = n * block_size`` with ``n`` a power of two.

    Parameters: ``factors[i]`` of shape ``[2n, b, b]`` (the blocks of ``B_{2^(i+1)}``) and
    ``bias [features]``. ``dense_factors()`` returns each factor as a dense matrix.
    """

    def __init__(self, features: int, bias: bool = True, *, block_size: int = defaults.BLOCK_SIZE,
                 device=None, dtype=None):
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
        self._indices = [BlockIndex.from_layout(np.asarray(butterfly_factor_layout(n, k), dtype=bool))
                         for k in self.sizes]
        self._set_indices(torch.get_default_device() if device is None else torch.device(device))
        for idx in self._indices:
            self.factors.append(nn.Parameter(torch.empty(idx.nnz, block_size, block_size, **factory)))
        self.bias = nn.Parameter(torch.empty(features, **factory)) if bias else None
        self.reset_parameters()

    # The index tensors derive from self._indices on the parameters' device (plain
    # attributes, not buffers; see PixelflyLinear._set_index).
    def _set_indices(self, device):
        self._index_t = [ops.index_tensors(idx, device) for idx in self._indices]

    def _idx(self, i):
        if self._index_t[i][0].is_meta and not self.factors[i].is_meta:  # placed without _apply
            self._set_indices(self.factors[i].device)
        return self._index_t[i]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._set_indices(self.factors[0].device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args):
        """All or nothing: every shape (the factors' too) is checked before anything is
        copied."""
        error_msgs = args[-1]
        errors = shape_errors(self, state_dict, prefix)
        if errors:
            return refuse_load(state_dict, prefix, errors, error_msgs, "ButterflyLinear")
        super()._load_from_state_dict(state_dict, prefix, *args)

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
        if x.ndim == 0 or x.shape[-1] != self.features:
            raise ValueError(f"ButterflyLinear: input x must have shape [*, {self.features}] "
                             f"(last dimension {self.features}), got shape {tuple(x.shape)}")
        if self.factors[0].is_meta and not x.is_meta:
            raise RuntimeError(
                "ButterflyLinear: the layer's parameters are on the meta device (no data); "
                "materialise it first: to_empty(device=...) then reset_parameters() or "
                "load_state_dict(...)")
        dt = x.dtype
        wide = dt == torch.float16 and x.device.type == "cpu"  # no fp16 CPU kernels: fp32
        h = kernel_rows(x.reshape(-1, self.features))
        for i, f in enumerate(self.factors):  # y = x B_2^T B_4^T ... B_n^T
            h = ops.bsmm(h.float() if wide else h, f.float() if wide else f, self._idx(i))
        if self.bias is not None:
            h = h + (self.bias.float() if wide else self.bias)
        h = h.to(dt) if wide else h
        return h if x.ndim == 2 else torch.ops.aten._unsafe_view.default(h, (*x.shape[:-1], self.features))

    @torch.no_grad()
    def dense_factors(self):
        """``[B_2, B_4, ..., B_n]`` as dense ``features x features`` matrices."""
        from .reference import blocks_to_dense
        return [blocks_to_dense(f.detach(), torch.tensor(idx.layout)) for f, idx in
                zip(self.factors, self._indices)]

    def extra_repr(self) -> str:
        return (f"features={self.features}, block={self.block_size}, butterfly_size={self.n}, "
                f"factors={len(self.sizes)}, bias={self.bias is not None}")
