"""The authors' input-dependent mixing gate (``SparseLRLinear`` of their release), an option of
:class:`~pixelfly.PixelflyLinear` (``gate="token"``) beside SPEC 2's learnable scalar.

Per row ``x`` of the input (one token) the gate is ``g(x) = sigmoid(x w + c)``, a single
value from an ``nn.Linear(in_features, 1)`` named ``gate`` (``w = gate.weight``,
``c = gate.bias``, the release's names and meaning), and

    y = lerp(x B^T, (x V) U^T, g(x)) + bias = (1 - g(x)) (x B^T) + g(x) (x V) U^T + bias,

i.e. SPEC 2's ``gamma`` becomes ``1 - g(x)``, one value per token. The sparse product runs on
the block-sparse kernels; the mix is plain PyTorch (an extra ``[T, out]`` tensor or two, not
fused like the scalar gate).
"""
from __future__ import annotations

import torch
from torch import nn

from .linear_fn import pixelfly_linear
from .lowrank_mm import mm

__all__ = ["GATES", "check_gate", "new_token_gate", "token_gated_linear"]

GATES = ("scalar", "token")


def check_gate(gate, rank: int) -> str:
    """Validate ``PixelflyLinear``'s ``gate`` argument against its rank."""
    if not isinstance(gate, str) or gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if gate == "token" and rank == 0:
        raise ValueError("gate='token' mixes the sparse and low-rank parts: it needs rank > 0")
    return gate


def new_token_gate(in_features: int, device=None, dtype=None) -> nn.Linear:
    """``nn.Linear(in_features, 1)`` initialised to zero: ``g(x) = 1/2`` for every token at
    first (the scalar gate's starting value, so the layer's initial output scale is the
    same); the gradient reaches ``w`` through ``x`` from the first step."""
    gate = nn.Linear(in_features, 1, device=device, dtype=dtype)
    reset_token_gate(gate)
    return gate


@torch.no_grad()
def reset_token_gate(gate: nn.Linear) -> None:
    nn.init.zeros_(gate.weight)
    nn.init.zeros_(gate.bias)


def token_gated_linear(x, blocks, idx, V, U, gate_weight, gate_bias, bias=None):
    """``lerp(x B^T, (x V) U^T, sigmoid(x w^T + c)) + bias`` for ``x [T, in]``.

    ``blocks [nnz, b1, b2]`` with the five index tensors ``idx``; ``V [in, r]``,
    ``U [out, r]``; ``gate_weight [1, in]``, ``gate_bias [1]``; ``bias [out]`` or ``None``.
    All operands in one dtype. Returns ``[T, out]``.
    """
    sparse = pixelfly_linear(x, blocks, idx)
    low = mm(mm(x, V), U.t())
    g = torch.sigmoid(mm(x, gate_weight.t()) + gate_bias)  # [T, 1], broadcast over out
    y = torch.lerp(sparse, low, g)
    return y if bias is None else y + bias
