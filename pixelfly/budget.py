"""Budget allocation over a model's linear layers (SPEC section 3): :func:`allocate_budget`
and its result, :class:`BudgetPlan`.

Each layer is costed by the cost model of :mod:`pixelfly.costs` (``CostModel``,
``layer_cost``, re-exported here); the C core (``csrc/core/budget.c``) allocates. Under the
default cost model the activation blocks are 21-30 % of a GPT-2-small layer's dense cost
(``T = 1024``); since the sparse and low-rank parts do not pay them, a budget of 0.25 still
sparsifies every GPT-2-small layer. A layer stays dense (status ``"over_budget"``, with the
numbers in ``reason``) only when even its sparsest butterfly costs more than its budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from pixelfly import _C

from . import defaults
from .args import block_pair, check_budget, check_int, check_low_rank_fraction
from .costs import CostModel, flat_butterfly_nnz, layer_cost, pick_butterfly
from .plan_table import format_plan, totals

__all__ = ["CostModel", "layer_cost", "LayerPlan", "BudgetPlan", "allocate_budget", "flat_butterfly_nnz"]


@dataclass
class LayerPlan:
    """The plan of one layer.

    Attributes
    ----------
    name : str
    out_features, in_features, tokens : int
    status : str
        ``"sparse"`` (sparsified), ``"not_divisible"``, ``"too_small"`` (block grid below
        4 x 4, where every butterfly is dense), ``"over_budget"`` or ``"budget_one"`` (the
        last four stay dense).
    reason : str
        Human-readable reason why the layer stays dense ("" when sparsified).
    R, C : int
        Block grid (0 when not divisible).
    butterfly_size, n_factors : int
        Flat butterfly ``n`` and ``m`` (0 when dense).
    nnz : int
        Kept blocks (``R * C`` when dense).
    rank : int
        Low-rank ``r``.
    density : float
        ``nnz / (R * C)`` (1 when dense).
    dense_cost : float
        Cost of the dense layer.
    budget : float
        ``rho * dense_cost`` plus what the layer took from the shared pool.
    cost : float
        Planned cost, ``sparse_cost + lowrank_cost`` (the dense cost when dense).
    sparse_cost, lowrank_cost : float
        The two parts of ``cost``.
    """

    name: str
    out_features: int
    in_features: int
    tokens: int
    status: str
    reason: str
    R: int
    C: int
    butterfly_size: int
    n_factors: int
    nnz: int
    rank: int
    density: float
    dense_cost: float
    budget: float
    cost: float
    sparse_cost: float = 0.0
    lowrank_cost: float = 0.0

    @property
    def sparsified(self) -> bool:
        return self.status == "sparse"


@dataclass
class BudgetPlan:
    """Result of :func:`allocate_budget`: the layer plans and the totals.

    Behaves as a sequence of :class:`LayerPlan` (index by position or by name).

    Attributes
    ----------
    layers : list of LayerPlan
    rho, phi : float
        The budget and low-rank fraction asked for.
    cost_model : CostModel
    redistribute : bool
    """

    layers: list[LayerPlan]
    rho: float
    phi: float
    cost_model: CostModel
    redistribute: bool = True

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerPlan]:
        return iter(self.layers)

    def __getitem__(self, key):
        if isinstance(key, str):
            for p in self.layers:
                if p.name == key:
                    return p
            raise KeyError(key)
        return self.layers[key]

    @property
    def dense_total(self) -> float:
        """Dense cost of every layer."""
        return math.fsum(p.dense_cost for p in self.layers)

    @property
    def sparse_total(self) -> float:
        """Planned cost of the sparsified layers."""
        return totals(self.layers)[0]

    @property
    def sparse_dense_total(self) -> float:
        """Dense cost of the sparsified layers (the base the budget ``rho`` applies to)."""
        return totals(self.layers)[1]

    @property
    def dense_kept_cost(self) -> float:
        """Cost of the layers left dense (reported apart from the budget)."""
        return totals(self.layers)[2]

    @property
    def ratio(self) -> float:
        """Achieved ``sparse_total / sparse_dense_total`` (``<= rho``); nan if none sparsified."""
        d = self.sparse_dense_total
        return self.sparse_total / d if d > 0 else float("nan")

    @property
    def total_ratio(self) -> float:
        """Whole-model ratio ``(sparse_total + dense_kept_cost) / dense_total``."""
        d = self.dense_total
        return (self.sparse_total + self.dense_kept_cost) / d if d > 0 else float("nan")

    def __str__(self) -> str:
        cm = self.cost_model
        return format_plan(f"pixelfly budget plan: rho={self.rho:g}, phi={self.phi:g}, block={cm.block[0]}x"
                           f"{cm.block[1]}, cost_mem={cm.cost_mem:g}, cost_flop={cm.cost_flop:g}, "
                           f"redistribute={self.redistribute}", self.layers, cm.block)


def _parse_layers(layers) -> list[tuple[str, int, int, int]]:
    if isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
        raise TypeError("layers must be a sequence of (out, in, tokens), (name, out, in, tokens) or dicts")
    out = []
    for k, item in enumerate(layers):
        if isinstance(item, dict):
            unknown = set(item) - {"name", "out_features", "in_features", "tokens"}
            if unknown:
                raise ValueError(f"layers[{k}] has unknown keys {sorted(unknown)}; expected name, "
                                 f"out_features, in_features, tokens")
            missing = {"out_features", "in_features", "tokens"} - set(item)
            if missing:
                raise ValueError(f"layers[{k}] is missing {sorted(missing)}")
            name = item.get("name", f"layer{k}")
            vals = (item["out_features"], item["in_features"], item["tokens"])
        elif isinstance(item, (tuple, list)):
            if len(item) == 3:
                name, vals = f"layer{k}", tuple(item)
            elif len(item) == 4:
                name, vals = item[0], tuple(item[1:])
            else:
                raise ValueError(f"layers[{k}] must be (out_features, in_features, tokens) or "
                                 f"(name, out_features, in_features, tokens), got {len(item)} entries")
        else:
            raise TypeError(f"layers[{k}] must be a tuple or a dict, not {type(item).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"layers[{k}] name must be a str, not {type(name).__name__}")
        o, i, t = (check_int(f"layers[{k}].{f}", v, hi=None) for v, f in zip(vals, ("out_features", "in_features", "tokens")))
        for v, f in ((o, "out_features"), (i, "in_features"), (t, "tokens")):
            if v < 1:
                raise ValueError(f"layers[{k}].{f} must be >= 1, got {v}")
        out.append((name, o, i, t))
    return out


def _reason(d: dict, o: int, i: int, t: int, cm: CostModel, rho: float) -> str:
    b1, b2 = cm.block
    st = d["status"]
    if st == "sparse":
        return ""
    if st == "not_divisible":
        bad = [f"{f}={v} % {b} != 0" for f, v, b in (("out_features", o, b1), ("in_features", i, b2)) if v % b]
        return f"not divisible by the {b1}x{b2} block ({', '.join(bad)})"
    if st == "too_small":
        R, C = d["R"], d["C"]
        if min(R, C) < defaults.MIN_BUTTERFLY:
            return f"block grid {R}x{C} is below 4x4: every butterfly on it is dense"
        return f"every butterfly on the block grid {R}x{C} keeps all {R * C} blocks: it would be dense"
    if st == "budget_one":
        return "budget 1: the dense layer is already the cheapest"
    if st == "over_budget":
        R, C = d["R"], d["C"]
        n, m, nnz = pick_butterfly(R, C, None)
        dense = d["dense_cost"]
        c_min = _C.cost_sparse(o, i, t, nnz, **cm._kw())
        return (f"even the sparsest butterfly (n={n}, m={m}, {nnz} of {R * C} blocks, rank 0) costs "
                f"{c_min / dense:.1%} of dense > budget {d['budget'] / dense:.1%}")
    return f"status {st}"


def allocate_budget(layers, budget: float = defaults.BUDGET, low_rank_fraction: float = defaults.LOW_RANK_FRACTION,
                    block_size=defaults.BLOCK_SIZE,
                    cost_model: CostModel | None = None, redistribute: bool = True,
                    max_rank: int | None = None) -> BudgetPlan:
    """Split a global compute budget over a model's linear layers (SPEC section 3).

    Parameters
    ----------
    layers : sequence
        Each entry ``(out_features, in_features, tokens)``, ``(name, out_features,
        in_features, tokens)`` or a dict with those keys (``name`` optional).
        ``tokens`` is the number of input rows the layer sees per step.
    budget : float, default 0.25
        ``rho``, the fraction of the dense cost to spend, ``0 < rho <= 1``.
    low_rank_fraction : float, default 0.25
        ``phi``, the share of each layer's budget for the low-rank part, in ``[1/4, 1/3]``.
    block_size : int or (int, int), default 32
        Block size ``(b1, b2)`` of the sparse layout.
    cost_model : CostModel, optional
        Prices; default ``CostModel(block=block_size)`` (A100 balance, bf16). Its ``block``
        must equal ``block_size``.
    redistribute : bool, default True
        Hand what each layer leaves unused (rounding) to the others (see Notes).
    max_rank : int, optional
        Cap on every layer's rank (``>= 1``); default ``min(out, in)``.

    Returns
    -------
    BudgetPlan
        One :class:`LayerPlan` per layer plus the totals.

    Notes
    -----
    Each layer gets ``budget_l = rho * dense_cost_l``. The rank is the largest whose cost
    fits ``phi * budget_l``; the flat block butterfly (butterfly size ``n`` a power of two,
    ``4 <= n <= min(R, C)``, ``1 <= m <= log2 n``) with the most blocks whose cost fits the
    rest, ``(1 - phi) * budget_l``, is chosen (ties: more factors, then larger ``n``); so
    without redistribution rank and density never decrease as ``budget`` grows. If not
    even the sparsest butterfly fits that share, it is taken with the largest rank that
    still fits beside it; if not even rank 0 fits, the layer stays dense
    (``"over_budget"``). With ``redistribute``, what the layers leave unused forms a pool
    that first rescues over-budget layers (smallest shortfall first), then buys density
    (smallest step relative to the layer's dense cost first), then rank. Layers of identical
    ``(out_features, in_features, tokens)`` are upgraded together: a step is taken for every
    one of them or for none, so identical layers always get identical plans. Layers not
    divisible by the block stay dense too, and so do layers whose block grid is below
    4 x 4 (``"too_small"``): ``n = 2`` has density ``(m + 1) / n = 1``, the dense layout,
    which with a rank on top would cost more than the dense layer. The summed cost
    of the sparsified layers never exceeds ``rho`` times their summed dense cost; layers
    left dense are reported apart (``dense_kept_cost``).

    Raises
    ------
    TypeError, ValueError, OverflowError
        With the name of the offending argument.
    """
    rho, phi = check_budget(budget), check_low_rank_fraction(low_rank_fraction)
    b1, b2 = block_pair(block_size)
    if cost_model is None:
        cm = CostModel(block=(b1, b2))
    elif not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model must be a CostModel, not {type(cost_model).__name__}")
    elif cost_model.block != (b1, b2):
        raise ValueError(f"cost_model.block {cost_model.block} does not match block_size {(b1, b2)}")
    else:
        cm = cost_model
    if not isinstance(redistribute, bool):
        raise TypeError(f"redistribute must be a bool, not {type(redistribute).__name__}")
    if max_rank is None:
        mr = 0
    else:
        mr = check_int("max_rank", max_rank, hi=None)
        if mr < 1:
            raise ValueError(f"max_rank must be None (no cap) or >= 1, got {max_rank!r}")
    parsed = _parse_layers(layers)
    raw = _C.allocate_budget([(o, i, t) for _, o, i, t in parsed], rho, phi=phi, redistribute=redistribute,
                             max_rank=mr, **cm._kw())
    plans = []
    for (name, o, i, t), d in zip(parsed, raw):
        plans.append(LayerPlan(
            name=name, out_features=o, in_features=i, tokens=t, status=d["status"],
            reason=_reason(d, o, i, t, cm, rho), R=d["R"], C=d["C"], butterfly_size=d["butterfly_size"],
            n_factors=d["n_factors"], nnz=d["nnz"], rank=d["rank"], density=d["density"],
            dense_cost=d["dense_cost"], budget=d["budget"], cost=d["sparse_cost"] + d["lowrank_cost"],
            sparse_cost=d["sparse_cost"], lowrank_cost=d["lowrank_cost"]))
    return BudgetPlan(layers=plans, rho=rho, phi=phi, cost_model=cm, redistribute=redistribute)
