"""Model variants of the tables: dense, Pixelfly through the planner, and the paper's
Butterfly baseline (a product of block butterfly factors, ``pixelfly.ButterflyLinear``)
on the same layers the planner sparsifies."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["RectButterfly", "pixelfly_variant", "butterfly_variant", "n_params"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class RectButterfly(nn.Module):
    """Butterfly products for a rectangular layer, as in Dao et al.'s butterfly layers: with
    ``n = min(in, out)`` and ``k = max / min``, ``out > in`` stacks ``k`` square
    ``ButterflyLinear(n)`` outputs; ``in > out`` sums ``k`` of them over the input's chunks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = 32):
        super().__init__()
        from ..butterfly import ButterflyLinear
        n, big = min(in_features, out_features), max(in_features, out_features)
        if big % n:
            raise ValueError(f"RectButterfly needs max/min integral, got {in_features}x{out_features}")
        self.in_features, self.out_features, self.n = in_features, out_features, n
        self.parts = nn.ModuleList(ButterflyLinear(n, bias=False, block_size=block_size)
                                   for _ in range(big // n))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if in_features > out_features:  # a sum of k parts: keep nn.Linear's output variance
            with torch.no_grad():
                for p in self.parts:
                    p.factors[-1].mul_(1.0 / math.sqrt(len(self.parts)))

    def forward(self, x):
        if self.out_features >= self.in_features:
            y = torch.cat([p(x) for p in self.parts], dim=-1)
        else:
            y = sum(p(c) for p, c in zip(self.parts, x.split(self.n, dim=-1)))
        return y + self.bias if self.bias is not None else y


def _api(name):
    """``pixelfly.plan`` / ``pixelfly.sparsify`` (the public functions; while the module
    ``pixelfly/sparsify.py`` exists, an import of it shadows the function's name)."""
    import pixelfly
    fn = getattr(pixelfly, name)
    return fn if callable(fn) else getattr(fn, name)


def _set(model, name, new):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def pixelfly_variant(model, example, budget: float, block_size: int):
    """``(copy of model sparsified by the planner, plan)``; first/last layers stay dense."""
    p = _api("plan")(model, example, budget=budget, block_size=block_size)
    return _api("sparsify")(copy.deepcopy(model), p, init="random"), p


def butterfly_variant(model, plan, block_size: int):
    """Copy of ``model`` whose layers that ``plan`` sparsifies become ``RectButterfly``."""
    out = copy.deepcopy(model)
    for entry in plan.layers:
        if entry.sparse:
            _set(out, entry.name, RectButterfly(entry.in_features, entry.out_features,
                                                bias=True, block_size=block_size))
    return out


