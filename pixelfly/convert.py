"""Sparsify whole models under a budget (SPEC section 3).

    plan = pixelfly.plan(model, example_input, budget=0.25)   # trace, cost, allocate
    print(plan)                                                # a table, layer by layer
    plan.save("plan.json"); plan = pixelfly.Plan.load("plan.json")
    pixelfly.sparsify(model, plan, init="from_dense")          # in place, returns model
    pixelfly.densify(model)                                    # back to nn.Linear layers

Handled layers: ``nn.Linear`` and Hugging Face GPT-2's ``Conv1D`` (weight stored
transposed, ``[in, out]``). A layer stays dense, with the reason in the plan, when it is
excluded, is the model's first or last layer (the paper's rule; ``dense_first_last``), its
weight is tied to another module or read by code outside the layer (e.g. T5 reads
``wo.weight.dtype``: such code needs an ``nn.Linear``), it is never called by the example
input, its shape does not divide into blocks or its block grid is too small, or the
budget cannot pay for even its sparsest configuration.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from . import defaults
from .args import block_pair, check_budget, check_low_rank_fraction
from .budget import CostModel, allocate_budget, layer_cost
from .custom_layout import layout_from_spec
from .linear import PixelflyLinear
from .planfile import Plan, PlanError, PlannedLayer

__all__ = ["Plan", "PlannedLayer", "PlanError", "plan", "sparsify", "densify", "linear_layers"]


def _is_conv1d(m: nn.Module) -> bool:
    """Hugging Face ``transformers.pytorch_utils.Conv1D``: ``y = x @ weight + bias``."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None \
        and m.weight.dim() == 2


def _shape(m: nn.Module):
    """(out_features, in_features) of a supported layer."""
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    return m.weight.shape[1], m.weight.shape[0]  # Conv1D


def _kind(m: nn.Module) -> str:
    return "linear" if isinstance(m, nn.Linear) else "conv1d"


def linear_layers(model: nn.Module):
    """Ordered ``name -> module`` of the layers pixelfly can sparsify."""
    return OrderedDict((n, m) for n, m in model.named_modules()
                       if (isinstance(m, nn.Linear) and not isinstance(m, PixelflyLinear)) or _is_conv1d(m))


def _is_hf(model: nn.Module) -> bool:
    """A Hugging Face ``PreTrainedModel`` (duck-typed: no transformers import)."""
    return hasattr(model, "config") and callable(getattr(model, "get_output_embeddings", None)) \
        and callable(getattr(model, "save_pretrained", None))


def _call(model, example_input):
    if isinstance(example_input, Mapping):  # dict, a tokenizer's BatchEncoding, ...
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _weight_probe_class(cls, state):
    """A subclass of ``cls`` that records reads of ``.weight`` made outside its own forward."""
    def __getattr__(self, name):
        if name == "weight" and not state["inside"].get(id(self)):
            caller = sys._getframe(1).f_code
            state["readers"].setdefault(id(self), getattr(caller, "co_qualname", caller.co_name))
        return cls.__getattr__(self, name)
    return type(cls.__name__, (cls,), {"__getattr__": __getattr__})


def _trace(model, example_input, layers):
    """One forward pass of ``example_input``: rows of input per layer, call order, and the
    code outside each layer that reads its ``weight``."""
    tokens = {name: 0 for name in layers}
    order = []
    state = {"inside": {}, "readers": {}}
    hooks, classes = [], {}
    for name, mod in layers.items():
        in_f = _shape(mod)[1]

        def pre(m, args, name=name, in_f=in_f):
            state["inside"][id(m)] = True
            if tokens[name] == 0:
                order.append(name)
            tokens[name] += args[0].numel() // in_f

        def post(m, args, out):
            state["inside"][id(m)] = False
        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        classes[name] = type(mod)
        mod.__class__ = _weight_probe_class(type(mod), state)
    try:
        with torch.no_grad():
            _call(model, example_input)
    finally:
        for h in hooks:
            h.remove()
        for name, mod in layers.items():
            mod.__class__ = classes[name]
    readers = {name: state["readers"][id(mod)] for name, mod in layers.items() if id(mod) in state["readers"]}
    return tokens, order, readers


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


def _first_last(model, layers, order) -> dict:
    """name -> reason, for the layers the paper keeps dense (first and last layers).

    ``model.keep_dense`` (names) decides when the model has it. A Hugging Face model keeps
    its output embeddings (``lm_head``), a linear input embedding and every head outside
    its base model (classifiers) dense. Any other model keeps the first and the last layer
    to run on the example input dense.
    """
    keep = getattr(model, "keep_dense", None)
    if keep is not None:
        return {n: "model.keep_dense (first/last layer)" for n in keep if n in layers}
    if _is_hf(model):
        by_id = {id(m): n for n, m in layers.items()}
        out = {}
        out_emb = model.get_output_embeddings()
        if id(out_emb) in by_id:
            out[by_id[id(out_emb)]] = "output layer (last layer)"
        get_in = getattr(model, "get_input_embeddings", None)
        in_emb = get_in() if callable(get_in) else None
        if id(in_emb) in by_id:
            out[by_id[id(in_emb)]] = "input layer (first layer)"
        base = getattr(model, "base_model", model)
        if base is not model:
            inside = {id(m) for m in base.modules()}
            for n, m in layers.items():
                if id(m) not in inside:
                    out.setdefault(n, "head outside the base model (last layer)")
        return out
    if not order:
        return {}
    return {order[0]: "first layer", order[-1]: "last layer"}


def plan(model: nn.Module, example_input, budget: float = defaults.BUDGET,
         low_rank_fraction: float = defaults.LOW_RANK_FRACTION, block_size=defaults.BLOCK_SIZE, cost_model: CostModel | None = None, redistribute: bool = True,
         exclude=(), dense_first_last: bool = True) -> Plan:
    """Trace which linear layers run on ``example_input`` (and on how many rows), cost them
    with the SPEC budget model and allocate ``budget`` (a fraction of the dense cost).

    Args:
        model: any ``nn.Module``; it is run once under ``torch.no_grad()``.
        example_input: a tensor, a tuple of positional inputs, or a mapping of keyword
            inputs (a dict, a tokenizer's ``BatchEncoding``).
        budget: ``rho`` in ``(0, 1]``.
        low_rank_fraction: ``phi`` in ``[1/4, 1/3]``.
        block_size: ``b`` or ``(b1, b2)``.
        cost_model: :class:`~pixelfly.budget.CostModel` (default: documented there).
        redistribute: hand what rounding leaves over to other layers.
        exclude: names (or name suffixes) of layers to keep dense; each must match a layer.
        dense_first_last: keep the first and last layers dense, as the paper does: the
            names in ``model.keep_dense``; for a Hugging Face model its output embeddings,
            a linear input embedding and heads outside its base model; else the first and
            last layer called. ``False`` lets the budget decide for them too.

    Layers left dense keep their reason in the plan and their dense cost (when called)
    in ``kept_dense_cost``.
    """
    budget, low_rank_fraction = check_budget(budget), check_low_rank_fraction(low_rank_fraction)
    b = block_pair(block_size)
    if isinstance(exclude, str):
        exclude = (exclude,)
    layers = linear_layers(model)
    for e in exclude:
        if not any(n == e or n.endswith("." + e) for n in layers):
            raise ValueError(f"exclude: {e!r} matches no linear layer of the model "
                             f"(names look like {next(iter(layers), '<none>')!r})")
    tokens, order, readers = _trace(model, example_input, layers)
    tied = _tied(model, layers)
    ends = _first_last(model, layers, order) if dense_first_last else {}
    cm = cost_model if cost_model is not None else CostModel(block=b)
    out, shapes = [], []
    for name, mod in layers.items():
        o, i = _shape(mod)
        entry = PlannedLayer(name=name, kind=_kind(mod), out_features=o, in_features=i,
                             tokens=tokens[name], status="dense")
        if tokens[name]:
            entry.dense_cost = entry.cost = layer_cost(o, i, tokens[name], cost_model=cm)
        if any(name == e or name.endswith("." + e) for e in exclude):
            entry.reason = "excluded"
        elif tokens[name] == 0:
            entry.reason = "not called by the example input"
        elif name in tied:
            entry.reason = f"weight tied to {tied[name]}"
        elif name in readers:
            entry.reason = (f"its weight is read outside the layer (by {readers[name]}): that code needs "
                            f"an nn.Linear")
        elif name in ends:
            entry.reason = ends[name]
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
            entry.cost = lp.dense_cost
    return Plan(layers=out, budget=float(budget), low_rank_fraction=float(low_rank_fraction), block_size=b,
                cost_model=json.loads(json.dumps(dataclasses.asdict(cm))))


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


def _check_fits(p: Plan, layers) -> None:
    """The plan describes this model: every layer exists with the planned kind and shape."""
    p.validate()
    for entry in p.layers:
        if entry.name not in layers:
            raise PlanError(f"plan layer {entry.name!r} is not a linear layer of this model")
        mod = layers[entry.name]
        if _kind(mod) != entry.kind:
            raise PlanError(f"plan layer {entry.name!r}: field 'kind' is {entry.kind!r} but the model's "
                            f"layer is {_kind(mod)!r}")
        if _shape(mod) != (entry.out_features, entry.in_features):
            raise PlanError(f"plan layer {entry.name!r}: fields 'out_features' x 'in_features' are "
                            f"{entry.out_features}x{entry.in_features} but the model's layer is "
                            f"{_shape(mod)[0]}x{_shape(mod)[1]}")


def sparsify(model: nn.Module, plan_or_budget, example_input=None, init: str = "random",
             attention: str | None = None, **plan_kwargs) -> nn.Module:
    """Replace the planned layers of ``model`` by :class:`PixelflyLinear`, in place.

    Args:
        plan_or_budget: a :class:`Plan`, or a budget ``rho`` (then ``example_input`` is
            required and :func:`plan` is called with ``plan_kwargs``).
        init: ``"random"`` (fresh init at ``nn.Linear``'s scale) or ``"from_dense"`` (keep
            the masked weights, fit ``U V^T`` to the rest by truncated SVD).
        attention: a Hugging Face model's ``attn_implementation`` to switch to as well, e.g.
            ``"pixelfly"`` (see :mod:`pixelfly.hf_attention`); checked before anything changes.

    Everything else stays as it was: device and dtype, train/eval mode, and frozen weights
    stay frozen (a replaced layer's parameters get its ``weight``'s and ``bias``'s
    ``requires_grad``). A Hugging Face model records the plan in its config, so that
    ``model.save_pretrained(dir)`` stores it and :func:`pixelfly.from_pretrained` reloads it.
    """
    if init not in ("random", "from_dense"):
        raise ValueError(f"init must be 'random' or 'from_dense', got {init!r}")
    if attention is not None:
        from .hf_attention import check_attn_implementation
        check_attn_implementation(model, attention)
    if isinstance(plan_or_budget, Plan):
        p = plan_or_budget
    else:
        if example_input is None:
            raise ValueError("example_input is required when sparsify is given a budget")
        p = plan(model, example_input, budget=float(plan_or_budget), **plan_kwargs)
    layers = linear_layers(model)
    _check_fits(p, layers)
    if _is_hf(model):
        from . import hf
        hf.check_can_record(model)
    for entry in p.layers:
        if not entry.sparse:
            continue
        mod = layers[entry.name]
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
        for pname, param in new.named_parameters():
            src = mod.bias if pname == "bias" else mod.weight
            param.requires_grad_(src.requires_grad)
        new.train(mod.training)
        _set(model, entry.name, new)
    if _is_hf(model):
        hf.record_plan(model, p)
    if attention is not None:
        model.set_attn_implementation(attention)
    return model


def densify(model: nn.Module) -> nn.Module:
    """Replace every :class:`PixelflyLinear` by an equivalent ``nn.Linear``, in place
    (same device, dtype, mode and ``requires_grad``)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, PixelflyLinear):
            lin = mod.to_dense()
            lin.weight.requires_grad_(mod.blocks.requires_grad)
            if lin.bias is not None:
                lin.bias.requires_grad_(mod.bias.requires_grad)
            lin.train(mod.training)
            _set(model, name, lin)
    if _is_hf(model):
        from . import hf
        hf.forget_plan(model)
    return model
