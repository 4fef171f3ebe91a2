"""The fused forward/backward of a Pixelfly linear layer (used by :class:`PixelflyLinear`).

    y = x Bs^T + (x V) Ut + bias            Bs = gamma*B (blocks), Ut = ((1-gamma) U)^T

Written as one ``torch.autograd.Function`` over the block-sparse ops so that every large
``[T, out]`` / ``[T, in]`` tensor is allocated once per pass, as in ``nn.Linear``'s fused
``addmm``: the low-rank and bias terms are added in place to the kernel's output, and in
backward the low-rank share of ``dx`` is added in place to ``bsmm_bwd_x``'s output (autograd
would otherwise allocate it and then a second tensor for the sum). On the CPU each fresh
allocation of tens of MiB costs page faults comparable to the matmul itself.

The backward is built from differentiable ops, so second derivatives work as well.
"""
from __future__ import annotations

import torch

from . import ops


class PixelflyLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, blocks, V, Ut, bias, *idx):
        y = ops.bsmm_fwd(x, blocks, *idx)
        h = None
        if V is not None:
            h = x @ V
            y.addmm_(h, Ut)
        if bias is not None:
            y.add_(bias)
        ctx.save_for_backward(x, blocks, V, Ut, h, *idx)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        x, blocks, V, Ut, h, *idx = ctx.saved_tensors
        need_x, need_b, need_v, need_u, need_bias = ctx.needs_input_grad[:5]
        gy = gy.contiguous()
        dx = db = dV = dUt = dbias = None
        if need_x:
            dx = ops.bsmm_bwd_x(gy, blocks, *idx)
        if need_b:
            db = ops.bsmm_bwd_w(gy, x, *idx, b1=blocks.shape[1], b2=blocks.shape[2])
        if V is not None and (need_x or need_v or need_u):
            gh = gy @ Ut.t()
            if need_x:
                dx = dx.addmm_(gh, V.t()) if not torch.is_grad_enabled() else dx + gh @ V.t()
            if need_v:
                dV = x.t() @ gh
            if need_u:
                if torch.is_grad_enabled():  # double backward: h must carry its graph to x, V
                    h = x @ V
                dUt = h.t() @ gy
        if need_bias and ctx.has_bias:
            dbias = gy.sum(0)
        return (dx, db, dV, dUt, dbias) + (None,) * len(idx)


def pixelfly_linear(x, blocks, idx, V=None, Ut=None, bias=None):
    """``x Bs^T + (x V) Ut + bias`` for ``x [T, in]`` (all operands in one dtype).

    ``blocks [nnz, b1, b2]`` with the five index tensors ``idx`` (:func:`ops.index_tensors`);
    ``V [in, r]`` and ``Ut [r, out]`` together or neither; ``bias [out]`` or ``None``.
    """
    if (V is None) != (Ut is None):
        raise ValueError("pixelfly_linear: give both V and Ut (the low-rank factors) or neither")
    return PixelflyLinearFn.apply(x, blocks, V, Ut, bias, *idx)
