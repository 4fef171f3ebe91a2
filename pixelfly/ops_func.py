"""``torch.func`` support for the block-sparse ops (vmap rules, and autograd that grad and
vmap can transform), and the row layout their kernels read.

The kernels take ``[T, features]`` activations whose rows are at least ``features`` apart
with unit stride inside a row; :func:`kernel_rows` copies any other view (expanded,
transposed, a row of a transposed matrix) exactly where ``nn.Linear``'s matmul would.

Under ``vmap`` an activation batched alone is folded into the rows (one kernel call for the
whole batch, as per-sample gradients need); a batched weight (``blocks``), or ``bsmm_bwd_w``
with a batched operand, runs one call per batch entry. The index is never batched.

The ops' autograd (``torch.library.register_autograd`` in :mod:`pixelfly.ops`) cannot run
under ``torch.func`` transforms; there the wrappers of :mod:`pixelfly.ops` call the same
formulas through the ``autograd.Function`` classes of :data:`FUNCTIONS` instead, so
gradients of any order work with ``torch.func.grad``, ``vmap``, ``jacrev``...
"""
from __future__ import annotations

import torch

from . import _ops  # noqa: F401  (defines the op schemas)
from . import ops

__all__ = ["kernel_rows", "FUNCTIONS"]


def kernel_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` (2-D) itself if the kernels can read it in place, else a contiguous copy."""
    if t.stride(-1) != 1 or (t.stride(0) < t.shape[1] and t.shape[0] > 0):
        return t.clone(memory_format=torch.contiguous_format)
    return t


def _check_index(in_dims, op):
    if any(d is not None for d in in_dims[2:7]):
        raise ValueError(f"pixelfly.{op}: vmap over the layout index is not supported "
                         "(vmap over the activations or the blocks instead)")


def _fold(op, in_dims, act, blocks, *idx):
    """``op(act, blocks)`` for a batched activation: the batch becomes more rows."""
    a = act.movedim(in_dims[0], 0)
    B, T = a.shape[0], a.shape[1]
    out = op(kernel_rows(a.reshape(B * T, a.shape[2])), blocks, *idx)
    return out.view(B, T, out.shape[1])


def _each(batch_size, op, in_dims, args, n_act):
    """``op`` once per batch entry, stacked along dim 0 (``args[:n_act]`` are activations)."""
    outs = []
    for i in range(batch_size):
        call = [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]
        call[:n_act] = [kernel_rows(a) for a in call[:n_act]]
        outs.append(op(*call))
    return torch.stack(outs)


def _act_weight_rule(op, name):
    """vmap rule of ``op(act [T, n], blocks [nnz, b1, b2], *idx)`` (bsmm_fwd, bsmm_bwd_x)."""
    def rule(info, in_dims, act, blocks, *idx):
        _check_index(in_dims, name)
        if in_dims[1] is None:
            return _fold(op, in_dims, act, blocks, *idx), 0
        return _each(info.batch_size, op, in_dims, (act, blocks, *idx), 1), 0
    return rule


def _bwd_w_rule(info, in_dims, dy, x, *rest):
    _check_index(in_dims, "bsmm_bwd_w")
    return _each(info.batch_size, torch.ops.pixelfly.bsmm_bwd_w, in_dims, (dy, x, *rest), 2), 0


torch.library.register_vmap("pixelfly::bsmm_fwd",
                            _act_weight_rule(torch.ops.pixelfly.bsmm_fwd, "bsmm_fwd"))
torch.library.register_vmap("pixelfly::bsmm_bwd_x",
                            _act_weight_rule(torch.ops.pixelfly.bsmm_bwd_x, "bsmm_bwd_x"))
torch.library.register_vmap("pixelfly::bsmm_bwd_w", _bwd_w_rule)


def _function(name, backward):
    """``torch.ops.pixelfly.<name>`` as an autograd.Function with ``ops``' formulas."""
    op = getattr(torch.ops.pixelfly, name)
    return type(f"{name}_fn", (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *args: op(*args)),
        "setup_context": staticmethod(ops._save_all),
        "backward": staticmethod(backward),
    })


FUNCTIONS = {name: _function(name, bwd) for name, bwd in (
    ("bsmm_fwd", ops._fwd_backward), ("bsmm_bwd_x", ops._bwd_x_backward),
    ("bsmm_bwd_w", ops._bwd_w_backward))}
