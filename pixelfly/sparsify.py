"""Sparsify whole models under a budget (SPEC section 3).

    plan = pixelfly.plan(model, example_input, budget=0.25)   # trace, cost, allocate
    print(plan)                                                # a table, layer by layer
    plan.save("plan.json"); plan = pixelfly.Plan.load("plan.json")
    pixelfly.sparsify(model, plan, init="from_dense")          # in place, returns model
    pixelfly.densify(model)                                    # back to nn.Linear layers

Handled layers: ``nn.Linear`` and Hugging Face GPT-2's ``Conv1D`` (weight stored
transposed, ``[in, out]``). A layer stays dense, with the reason in the plan, when its
shape does not divide into blocks, its block grid is too small, it is never called by the
example input, its weight is tied to another module (e.g. GPT-2's ``lm_head``), or the
budget cannot pay for even its sparsest configuration.
"""
from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict

import torch
from torch import nn

from .budget import CostModel, allocate_budget
from .custom_layout import layout_from_spec
from .linear import PixelflyLinear

__all__ = ["Plan", "PlannedLayer", "plan", "sparsify", "densify", "linear_layers"]


def _is_conv1d(m: nn.Module) -> bool:
    """Hugging Face ``transformers.pytorch_utils.Conv1D``: ``y = x @ weight + bias``."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None \
        and m.weight.dim() == 2


def _shape(m: nn.Module):
    """(out_features, in_features) of a supported layer."""
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    return m.weight.shape[1], m.weight.shape[0]  # Conv1D


def linear_layers(model: nn.Module):
    """Ordered ``name -> module`` of the layers pixelfly can sparsify."""
    return OrderedDict((n, m) for n, m in model.named_modules()
                       if (isinstance(m, nn.Linear) and not isinstance(m, PixelflyLinear)) or _is_conv1d(m))


@dataclasses.dataclass
class PlannedLayer:
    """One layer of a :class:`Plan`. ``status`` is ``"sparse"`` or why it stays dense."""
    name: str
    kind: str                  # "linear" or "conv1d"
    out_features: int
    in_features: int
    tokens: int                # rows of input per step, from tracing
    status: str
    reason: str = ""
    butterfly_size: int = 0
    n_factors: int = 0
    rank: int = 0
    nnz: int = 0
    density: float = 1.0
    dense_cost: float = 0.0
    budget: float = 0.0
    cost: float = 0.0
    # A named layout instead of the flat butterfly (n, m), e.g. the authors' rule:
    # {"name": "fly_config", "butterfly_size": 16, "n_factors": 2}; see pixelfly.custom_layout.
    layout: dict | None = None
    gate: str = "scalar"       # "scalar" (SPEC 2's gamma) or "token" (the authors' gate)

    @property
    def sparse(self) -> bool:
        return self.status == "sparse"


@dataclasses.dataclass
class Plan:
    """A per-layer allocation; edit ``layers`` freely (e.g. set ``status="dense"``)."""
    layers: list
    budget: float
    low_rank_fraction: float
    block_size: tuple
    cost_model: dict

    def __getitem__(self, name: str) -> PlannedLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def dense_total(self) -> float:
        """Dense cost of the sparsified layers."""
        return sum(lay.dense_cost for lay in self.layers if lay.sparse)

    @property
    def sparse_total(self) -> float:
        return sum(lay.cost for lay in self.layers if lay.sparse)

    @property
    def kept_dense_cost(self) -> float:
        """Cost of the layers left dense, reported apart."""
        return sum(lay.dense_cost for lay in self.layers if not lay.sparse)

    def __str__(self) -> str:
        b1, b2 = self.block_size
        head = (f"{'layer':<28} {'shape':>11} {'tokens':>7} {'n':>4} {'m':>2} {'rank':>5} "
                f"{'density':>8} {'share':>7}  status")
        lines = [f"Pixelfly plan: budget {self.budget}, low-rank fraction {self.low_rank_fraction}, "
                 f"blocks {b1}x{b2}", head, "-" * len(head)]
        for lay in self.layers:
            share = lay.cost / lay.dense_cost if lay.sparse and lay.dense_cost else 1.0
            status = "sparse" if lay.sparse else f"dense ({lay.reason})"
            lines.append(f"{lay.name[-28:]:<28} {lay.out_features:>5}x{lay.in_features:<5} {lay.tokens:>7} "
                         f"{lay.butterfly_size or '-':>4} {lay.n_factors or '-':>2} {lay.rank:>5} "
                         f"{lay.density:>8.4f} {share:>7.3f}  {status}")
        ratio = self.sparse_total / self.dense_total if self.dense_total else 0.0
        lines.append("-" * len(head))
        lines.append(f"sparsified layers: cost {self.sparse_total:.4g} / dense {self.dense_total:.4g} "
                     f"= {ratio:.4f} (budget {self.budget}); layers left dense cost {self.kept_dense_cost:.4g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (``Plan.from_dict(p.to_dict())`` round-trips)."""
        return json.loads(json.dumps(self._raw()))

    def _raw(self) -> dict:
        return {"budget": self.budget, "low_rank_fraction": self.low_rank_fraction,
                "block_size": list(self.block_size), "cost_model": self.cost_model,
                "layers": [dataclasses.asdict(lay) for lay in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(layers=[PlannedLayer(**lay) for lay in d["layers"]], budget=d["budget"],
                   low_rank_fraction=d["low_rank_fraction"], block_size=tuple(d["block_size"]),
                   cost_model=d["cost_model"])

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path) -> "Plan":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _trace_tokens(model, example_input, layers):
    """Rows of input each layer sees in one forward pass of ``example_input``."""
    tokens = {name: 0 for name in layers}
    hooks = []
    for name, mod in layers.items():
        in_f = _shape(mod)[1]

        def hook(m, args, name=name, in_f=in_f):
            tokens[name] += args[0].numel() // in_f
        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example_input, dict):
                model(**example_input)
            elif isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return tokens


def _tied(model, layers):
    """name -> the other parameter name a layer's weight is shared with."""
    owners = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    out = {}
    for name, mod in layers.items():
        names = owners.get(id(mod.weight), [])
        others = [n for n in names if n != f"{name}.weight"]
        if others:
            out[name] = others[0]
    return out


def plan(model: nn.Module, example_input, budget: float = 0.25, low_rank_fraction: float = 0.25,
         block_size=32, cost_model: CostModel | None = None, redistribute: bool = True,
         exclude=()) -> Plan:
    """Trace which linear layers run on ``example_input`` (and on how many rows), cost them
    with the SPEC budget model and allocate ``budget`` (a fraction of the dense cost).

    Args:
        model: any ``nn.Module``; it is run once under ``torch.no_grad()``.
        example_input: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        budget: ``rho`` in ``(0, 1]``.
        low_rank_fraction: ``phi`` in ``[1/4, 1/3]``.
        block_size: ``b`` or ``(b1, b2)``.
        cost_model: :class:`~pixelfly.budget.CostModel` (default: documented there).
        redistribute: hand what rounding leaves over to other layers.
        exclude: names (or name suffixes) of layers to keep dense; the names a model
            lists in its ``keep_dense`` attribute (e.g. stem and head) are kept dense too.
    """
    layers = linear_layers(model)
    tokens = _trace_tokens(model, example_input, layers)
    tied = _tied(model, layers)
    keep = set(getattr(model, "keep_dense", ()) or ())
    b = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    out, shapes = [], []
    for name, mod in layers.items():
        o, i = _shape(mod)
        kind = "linear" if isinstance(mod, nn.Linear) else "conv1d"
        entry = PlannedLayer(name=name, kind=kind, out_features=o, in_features=i, tokens=tokens[name],
                             status="dense")
        if any(name == e or name.endswith("." + e) for e in exclude):
            entry.reason = "excluded"
        elif name in keep:
            entry.reason = "model.keep_dense (first/last layer)"
        elif tokens[name] == 0:
            entry.reason = "not called by the example input"
        elif name in tied:
            entry.reason = f"weight tied to {tied[name]}"
        else:
            shapes.append((name, o, i, tokens[name]))
        out.append(entry)
    bp = allocate_budget(shapes, budget=budget, low_rank_fraction=low_rank_fraction, block_size=b,
                         cost_model=cost_model, redistribute=redistribute) if shapes else None
    by_name = {lp.name: lp for lp in (bp.layers if bp else [])}
    for entry in out:
        lp = by_name.get(entry.name)
        if lp is None:
            continue
        entry.dense_cost, entry.budget, entry.cost = lp.dense_cost, lp.budget, lp.cost
        if lp.status == "sparse":
            entry.status = "sparse"
            entry.butterfly_size, entry.n_factors, entry.rank = lp.butterfly_size, lp.n_factors, lp.rank
            entry.nnz, entry.density = lp.nnz, lp.density
        else:
            entry.reason = lp.reason
    cm = bp.cost_model if bp is not None else (cost_model or CostModel.default(b))
    return Plan(layers=out, budget=budget, low_rank_fraction=low_rank_fraction, block_size=b,
                cost_model=dataclasses.asdict(cm) if dataclasses.is_dataclass(cm) else dict(cm))


def _as_linear(mod: nn.Module) -> nn.Linear:
    if isinstance(mod, nn.Linear):
        return mod
    o, i = _shape(mod)  # Conv1D: y = x @ W + b with W [in, out]
    lin = nn.Linear(i, o, bias=mod.bias is not None, device=mod.weight.device, dtype=mod.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(mod.weight.t())
        if mod.bias is not None:
            lin.bias.copy_(mod.bias)
    return lin


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def sparsify(model: nn.Module, plan_or_budget, example_input=None, init: str = "random",
             **plan_kwargs) -> nn.Module:
    """Replace the planned layers of ``model`` by :class:`PixelflyLinear`, in place.

    Args:
        plan_or_budget: a :class:`Plan`, or a budget ``rho`` (then ``example_input`` is
            required and :func:`plan` is called with ``plan_kwargs``).
        init: ``"random"`` (fresh init at ``nn.Linear``'s scale) or ``"from_dense"`` (keep
            the masked weights, fit ``U V^T`` to the rest by truncated SVD).
    Devices and dtypes of the replaced layers are kept; everything else is untouched.
    """
    if init not in ("random", "from_dense"):
        raise ValueError(f"init must be 'random' or 'from_dense', got {init!r}")
    if isinstance(plan_or_budget, Plan):
        p = plan_or_budget
    else:
        if example_input is None:
            raise ValueError("example_input is required when sparsify is given a budget")
        p = plan(model, example_input, budget=float(plan_or_budget), **plan_kwargs)
    layers = linear_layers(model)
    for entry in p.layers:
        if not entry.sparse:
            continue
        if entry.name not in layers:
            raise ValueError(f"plan layer {entry.name!r} is not a linear layer of this model")
        mod = layers[entry.name]
        if _shape(mod) != (entry.out_features, entry.in_features):
            raise ValueError(f"plan layer {entry.name!r} is {entry.out_features}x{entry.in_features} "
                             f"but the model's is {_shape(mod)[0]}x{_shape(mod)[1]}")
        kw = dict(block_size=p.block_size, n_factors=entry.n_factors,
                  butterfly_size=entry.butterfly_size, rank=entry.rank, gate=entry.gate)
        if entry.layout is not None:
            kw.update(n_factors=None, butterfly_size=None, layout=layout_from_spec(
                entry.layout, entry.out_features, entry.in_features, p.block_size))
        if init == "from_dense":
            new = PixelflyLinear.from_dense(_as_linear(mod), **kw)
        else:
            new = PixelflyLinear(entry.in_features, entry.out_features, bias=mod.bias is not None,
                                 device=mod.weight.device, dtype=mod.weight.dtype, **kw)
        new.train(mod.training)
        _set(model, entry.name, new)
    return model


def densify(model: nn.Module) -> nn.Module:
    """Replace every :class:`PixelflyLinear` by an equivalent ``nn.Linear``, in place."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, PixelflyLinear):
            _set(model, name, mod.to_dense())
    return model
