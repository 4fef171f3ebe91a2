"""The fused forward/backward of a Pixelfly linear layer (used by :class:`PixelflyLinear`).

    y = x (gamma B)^T + (1 - gamma) (x V) U^T + bias        (gamma None: 1, no mixing)

``gamma`` (a one-element tensor) scales whichever is smaller: the kernel's output ``[T, out]``
(a few rows: decoding, small batches) or the blocks (a scaled copy); in backward likewise
``dx`` or the blocks, and ``dB = gamma * dBs`` in place, ``dgamma = <dBs, B> - <gy U, x V>``.
``1 - gamma`` likewise scales ``h = x V`` (``[T, r]``) or ``U`` (``[out, r]``). Autograd
would scale a copy of the blocks and of ``U`` on every call, add a node per scaling, and
do it again in backward, which costs more than the few-row product itself.

Written as one ``torch.autograd.Function`` over the block-sparse ops so that every large
``[T, out]`` / ``[T, in]`` tensor is allocated once per pass, as in ``nn.Linear``'s fused
``addmm``: the low-rank and bias terms are added in place to the kernel's output, and in
backward the low-rank share of ``dx`` is added in place to ``bsmm_bwd_x``'s output (autograd
would otherwise allocate it and then a second tensor for the sum). On the CPU each fresh
allocation of tens of MiB costs page faults comparable to the matmul itself. Where
:mod:`pixelfly.epilogue` finds it faster, the kernel forms those terms in its output tile
instead (``bsmm_fwd_lowrank`` / ``bsmm_bwd_x_lowrank``: ``y`` / ``dx`` written once).

The backward is built from differentiable ops, so second derivatives work as well. The
function follows ``torch.func``'s protocol (``setup_context`` and a ``vmap`` rule), so
``torch.func.grad``, ``vmap`` and their compositions (per-sample gradients) work: under
``vmap`` a batch of activations becomes more rows of one call; a batched weight runs one
call per batch entry.
"""
from __future__ import annotations

import torch

from . import epilogue, ops
from .lowrank_mm import addmm_, mm
from .ops_func import kernel_rows


class PixelflyLinearFn(torch.autograd.Function):
    """Output ``y``, or ``(y, h)`` with a low-rank part: ``h = x V`` is kept for backward
    (an output, as ``torch.func`` wants intermediates; not differentiable)."""

    @staticmethod
    def forward(x, blocks, gamma, V, U, bias, *idx):
        g, c = _mixing(gamma, False)
        rows = gamma is not None and _scale_rows(x.shape[0], blocks, idx)
        if gamma is not None and not rows:
            blocks = blocks * g
        if V is not None and not rows and epilogue.fused(x.device):  # y written once, by the kernel
            h = mm(x, V)
            y = ops.internal("bsmm_fwd_lowrank", x, blocks, *idx, h if gamma is None else h * c, U, bias)
            return y, h
        y = ops.internal("bsmm_fwd", x, blocks, *idx)
        fold = rows and V is not None and isinstance(g, float)  # y = g y + c h U^T: one addmm_
        if rows and not fold:
            y.mul_(g)
        h = None
        if V is not None:
            h = mm(x, V)
            if gamma is None:
                addmm_(y, h, U.t())
            elif fold:
                addmm_(y, h, U.t(), beta=g, alpha=c)
            elif x.shape[0] <= U.shape[0]:  # 1 - gamma on the smaller of h [T, r], U [out, r]
                addmm_(y, h * c, U.t())
            else:
                addmm_(y, h, (U * c).t())
        if bias is not None:
            y.add_(bias)
        return y if h is None else (y, h)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, blocks, gamma, V, U, bias, *idx = inputs
        h = output[1] if V is not None else None
        ctx.save_for_backward(x, blocks, gamma, V, U, h, *idx)
        ctx.has_bias = bias is not None
        if h is not None:
            ctx.mark_non_differentiable(h)

    @staticmethod
    def backward(ctx, gy, *_gh):
        x, blocks, gamma, V, U, h, *idx = ctx.saved_tensors
        need_x, need_b, need_g, need_v, need_u, need_bias = ctx.needs_input_grad[:6]
        need_g = need_g and gamma is not None
        gy = kernel_rows(gy)
        graph = torch.is_grad_enabled()  # double backward: differentiable, out of place
        g, c = _mixing(gamma, graph)
        dx = db = dg = dV = dU = dbias = None
        gh = ghs = None
        if V is not None and (need_x or need_v or need_u or need_g):
            gh = mm(gy, U)  # gy U [T, r]; the low-rank term's gradients carry 1 - gamma
            ghs = gh if gamma is None else gh * c
        rows = gamma is not None and _scale_rows(gy.shape[0], blocks, idx)
        fused = need_x and V is not None and not rows and not graph and epilogue.fused(gy.device)
        if fused:  # dx written once, by the kernel
            dx = ops.internal("bsmm_bwd_x_lowrank", gy, blocks if gamma is None else blocks * g,
                              *idx, ghs, V, None)
        elif need_x:
            if gamma is None:
                dx = ops.internal("bsmm_bwd_x", gy, blocks, *idx)
            elif rows:
                dx = ops.internal("bsmm_bwd_x", gy, blocks, *idx)
                dx = dx * g if graph else dx.mul_(g)
            else:
                dx = ops.internal("bsmm_bwd_x", gy, blocks * g, *idx)
        if need_b or need_g:
            db = ops.internal("bsmm_bwd_w", gy, x, *idx, blocks.shape[1], blocks.shape[2])
            if need_g:  # d/dgamma <gy, x (gamma B)^T> = <dBs, B>, in gamma's dtype (fp32
                # under autocast: the sum of nnz products would lose bits in bf16)
                dg = _dot(db, blocks, gamma, graph)
            if gamma is not None:
                db = db * g if graph else db.mul_(g)
            if not need_b:
                db = None
        if gh is not None:
            if graph and (need_u or need_g):  # double backward: h must carry its graph to x, V
                h = mm(x, V)
            if need_x and not fused:  # with grad enabled (double backward, torch.func) out of place
                dx = addmm_(dx, ghs, V.t()) if not graph else dx + mm(ghs, V.t())
            if need_v:
                dV = mm(x.t(), ghs)
            if need_u:
                dU = mm(gy.t(), h if gamma is None else h * c)
            if need_g:  # d/dgamma (1 - gamma) <gy, h U^T> = -<gy U, h>
                dg = dg - _dot(gh, h, gamma, graph)
        if need_bias and ctx.has_bias:
            dbias = gy.sum(0)
        return (dx, db, dg, dV, dU, dbias) + (None,) * len(idx)

    @staticmethod
    def vmap(info, in_dims, x, blocks, gamma, V, U, bias, *idx):
        if any(d is not None for d in in_dims[6:]):
            raise ValueError("pixelfly_linear: vmap over the layout index is not supported")
        if all(d is None for d in in_dims[1:6]):  # activations only: the batch becomes rows
            xb = x.movedim(in_dims[0], 0)
            B, T = xb.shape[0], xb.shape[1]
            out = PixelflyLinearFn.apply(kernel_rows(xb.reshape(B * T, xb.shape[2])),
                                         blocks, gamma, V, U, bias, *idx)
            if V is None:
                return out.view(B, T, out.shape[1]), 0
            return tuple(o.view(B, T, o.shape[1]) for o in out), (0, 0)
        outs = []  # a batched weight: one call per batch entry
        for i in range(info.batch_size):
            a = [t if d is None else t.select(d, i) for t, d in zip((x, blocks, gamma, V, U, bias), in_dims)]
            outs.append(PixelflyLinearFn.apply(kernel_rows(a[0]), *a[1:], *idx))
        if V is None:
            return torch.stack(outs), 0
        return tuple(torch.stack(o) for o in zip(*outs)), (0, 0)


class _EagerFn(torch.autograd.Function):
    """:class:`PixelflyLinearFn` in autograd's classic form (``forward(ctx, ...)``), used
    outside ``torch.func``: ``Function.apply`` binds the arguments of a ``setup_context``
    style function with ``inspect.signature`` on every call, tens of microseconds."""

    @staticmethod
    def forward(ctx, *args):
        out = PixelflyLinearFn.forward(*args)
        PixelflyLinearFn.setup_context(ctx, args, out)
        return out

    backward = PixelflyLinearFn.backward


def _scalar(gamma):
    """gamma as a 0-d tensor: it then scales a tensor of another float dtype (fp32 gamma,
    bf16 blocks under autocast) without promoting the result."""
    return gamma.reshape(())


def _mixing(gamma, graph):
    """``(gamma, 1 - gamma)``: Python floats for a CPU gamma outside a graph, ``torch.func``,
    ``torch.compile`` and ``torch.jit.trace`` (``item()`` is free there; a scalar op on a 0-d
    tensor costs ~5-12 us, as much as a few-row product), else 0-d tensors (no sync on a
    GPU, differentiable in double backward, not frozen into a trace). ``(None, None)``
    without gamma."""
    if gamma is None:
        return None, None
    if (gamma.device.type == "cpu" and not graph and not torch._C._are_functorch_transforms_active()
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()):
        g = gamma.item()
        return g, 1.0 - g
    g = _scalar(gamma)
    return g, 1 - g


def _dot(a, b, gamma, graph):
    """<a, b> summed in gamma's dtype, shaped as gamma."""
    a, b = a.reshape(-1).to(gamma.dtype), b.reshape(-1).to(gamma.dtype)
    return ((a * b).sum() if graph else torch.dot(a, b)).reshape(gamma.shape)


def _scale_rows(T, blocks, idx):
    """Whether gamma scales the rows (the output or dx: T x features) rather than the blocks:
    the smaller of the two. Features: the wider side of the weight (block-rows x b1 out,
    block-columns x b2 in; idx[0] is row_ptr, idx[2] col_ptr)."""
    width = max((idx[0].shape[0] - 1) * blocks.shape[1], (idx[2].shape[0] - 1) * blocks.shape[2])
    return T * width <= blocks.numel()


def pixelfly_linear(x, blocks, idx, V=None, U=None, bias=None, gamma=None):
    """``x (gamma B)^T + (1 - gamma) (x V) U^T + bias`` for ``x [T, in]`` (all operands in one
    dtype; ``x`` in any strides: views the kernels cannot read are copied).

    ``blocks [nnz, b1, b2]`` with the five index tensors ``idx`` (:func:`ops.index_tensors`);
    ``V [in, r]`` and ``U [out, r]`` together or neither; ``bias [out]`` or ``None``;
    ``gamma``: a one-element tensor (differentiable) mixing the two terms, or ``None`` (the
    sum ``x B^T + (x V) U^T``).
    """
    if (V is None) != (U is None):
        raise ValueError("pixelfly_linear: give both V and U (the low-rank factors) or neither")
    if gamma is not None and gamma.numel() != 1:
        raise ValueError(f"pixelfly_linear: gamma must have one element, got shape {tuple(gamma.shape)}")
    args = (kernel_rows(x), blocks, gamma, V, U, bias, *idx)
    if torch._C._are_functorch_transforms_active():
        out = PixelflyLinearFn.apply(*args)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:6]):
        out = _EagerFn.apply(*args)
    else:  # nothing to differentiate: no autograd node (Function.apply costs ~50 us a call)
        out = PixelflyLinearFn.forward(*args)
    return out if V is None else out[0]
