"""Block-sparse attention ops: ``torch.ops.pixelfly.bsattn_fwd`` / ``bsattn_bwd`` with fake
(meta) kernels and autograd.

The CPU kernels (csrc/cpu/attn.c, bound in csrc/torch/attn.cpp) compute, for ``q, k, v`` of
shape ``[B, H, L, d]`` (or ``[N, L, d]``) and a block layout over the ``(L/b) x (L/b)`` score
matrix given as block-CSR plus its transpose::

    out = softmax(scale * q k^T restricted to the layout [and j <= i if causal]) v
    lse = logsumexp of the same scores, per row     (float32; float64 for float64 inputs)

flash-attention style: memory grows with ``L``, never with ``L^2``. Rows with no kept entry
give ``out = 0`` and ``lse = -inf``. Both outputs are differentiable (the gradient of ``lse``
enters the backward as ``D_i -= dlse_i``), so callers can combine ``(out, lse)`` with other
terms, as :class:`pixelfly.attention.PixelflyAttention` does with its low-rank part.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _ops  # registers the schemas and the CPU kernels; holds their settings
from . import backends  # noqa: F401  (the composite ops for every other device)
from .layouts import BlockIndex
from .op_checks import attention_args, attention_bwd_args, int_arg

__all__ = ["bsattn", "bsattn_fwd", "bsattn_bwd", "AttentionIndex", "set_cpu_isa", "set_bwd_mode"]

_ns = torch.ops.pixelfly


class AttentionIndex:
    """Block-CSR (``row_ptr``, ``col_idx``) and block-CSC (``col_ptr``, ``row_idx``) of a
    square boolean block layout, as int64 tensors (what the ops take), built by the one
    index builder, :meth:`pixelfly.layouts.BlockIndex.from_layout`."""

    def __init__(self, layout):
        lay = np.asarray(layout.cpu() if isinstance(layout, torch.Tensor) else layout).astype(bool)
        if lay.ndim != 2 or lay.shape[0] != lay.shape[1]:
            raise ValueError(f"an attention layout must be a square 2-D block grid, got shape {lay.shape}")
        index = BlockIndex.from_layout(lay)
        self.layout, self.nnz = index.layout, index.nnz
        self.row_ptr, self.col_idx, self.col_ptr, self.row_idx = (
            torch.tensor(a, dtype=torch.int64) for a in (index.row_ptr, index.col_idx, index.col_ptr, index.row_idx))

    def tensors(self):
        return self.row_ptr, self.col_idx, self.col_ptr, self.row_idx

    @property
    def density(self) -> float:
        return self.nnz / float(self.layout.size)


def bsattn_fwd(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block: int, scale: float, causal: bool,
               features=None, key_mask=None):
    """``(out, lse)``; see the module docstring."""
    attention_args(q, k, v, (row_ptr, col_idx, col_ptr, row_idx), block, scale, features, key_mask)
    return _ns.bsattn_fwd(q, k, v, row_ptr, col_idx, col_ptr, row_idx, int(block), float(scale),
                          bool(causal), features, key_mask)


def bsattn_bwd(dout, dlse, q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx, block: int,
               scale: float, causal: bool, features=None, key_mask=None):
    """``(dq, dk, dv)`` from the forward's ``out`` and ``lse``; ``dlse`` may be ``None``."""
    attention_args(q, k, v, (row_ptr, col_idx, col_ptr, row_idx), block, scale, features, key_mask)
    attention_bwd_args(dout, dlse, q, out, lse)
    return _ns.bsattn_bwd(dout, dlse, q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx,
                          int(block), float(scale), bool(causal), features, key_mask)


def bsattn(q, k, v, index: AttentionIndex, block: int, scale: float | None = None,
           causal: bool = False):
    """Differentiable block-sparse attention: returns ``(out, lse)``. ``scale`` defaults to
    ``1/sqrt(d)``."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return bsattn_fwd(q, k, v, *index.tensors(), block, scale, causal)


def set_cpu_isa(isa: int) -> int:
    """Force the CPU attention kernels' ISA (0 auto, 1 portable, 2 AVX2+FMA, 3 AVX-512, 4 the same
    as 3 on a CPU with AVX512_BF16); returns the previous setting. A process-wide switch for tests
    and benchmarks."""
    return _ops.set_attention_isa(int_arg("set_cpu_isa", "isa", isa))


def set_bwd_mode(mode: int) -> int:
    """Backward schedule of the CPU attention kernels: 0 auto, 1 one task per (batch, head)
    (5 GEMMs per block), 2 query-row / key-column tasks (7 GEMMs per block, more
    parallelism). Returns the previous setting."""
    return _ops.set_attention_bwd_mode(int_arg("set_bwd_mode", "mode", mode))


# ---------------------------------------------------------------- fake kernels
def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.register_fake("pixelfly::bsattn_fwd")
def _fwd_fake(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale, causal, features=None,
              key_mask=None):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(q.shape[:-1], dtype=_lse_dtype(q), device=q.device))


@torch.library.register_fake("pixelfly::bsattn_bwd")
def _bwd_fake(dout, dlse, q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx, block, scale,
              causal, features=None, key_mask=None):
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


# -------------------------------------------------------------------- autograd
def _setup(ctx, inputs, output):
    q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale, causal, *extra = inputs
    features, key_mask = (list(extra) + [None, None])[:2]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, row_ptr, col_idx, col_ptr, row_idx)
    ctx.cfg = (block, scale, causal)
    ctx.extra = (features, key_mask)   # constants of the backward (no gradient)
    ctx.n_inputs = len(inputs)


def _backward(ctx, gout, glse):
    q, k, v, out, lse, *idx = ctx.saved_tensors
    if gout is None:
        gout = torch.zeros_like(out)
    dq, dk, dv = _ns.bsattn_bwd(gout.contiguous(), None if glse is None else glse.contiguous(),
                                q, k, v, out, lse, *idx, *ctx.cfg, *ctx.extra)
    need = ctx.needs_input_grad
    return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None) + \
        (None,) * (ctx.n_inputs - 3)


torch.library.register_autograd("pixelfly::bsattn_fwd", _backward, setup_context=_setup)
