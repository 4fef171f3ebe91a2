"""Budget model and allocation (SPEC section 3).

The cost of a layer is counted in *flop-equivalents*::

    cost = cost_mem * N_blockmem + cost_flop * N_flop

where a *block* is ``b1 x b2`` elements and touching one block (reading or writing it)
costs ``cost_mem`` whatever its size. Partial blocks count as whole ones.
For an ``out x in`` layer applied to ``T`` rows of input (``tokens``):

* dense: ``N_flop = 2 T out in``; ``N_blockmem = ceil(out/b1) ceil(in/b2)`` weight blocks
  ``+ ceil(T in / (b1 b2))`` activation blocks read ``+ ceil(T out / (b1 b2))`` written;
* sparse part with ``nnz`` blocks: ``N_blockmem = nnz`` (its stored blocks only),
  ``N_flop = 2 T nnz b1 b2``;
* low-rank part of rank ``r``: ``N_blockmem = ceil(out r / (b1 b2)) + ceil(in r / (b1 b2))``
  (the factors ``U``, ``out x r``, and ``V``, ``in x r``, only), ``N_flop = 2 T r (in + out)``;
  0 when ``r == 0``.

Activation traffic, which sparsity cannot remove, is counted in the dense cost only (input
read, output written), following SPEC 3's wording: "A sparse layer with nnz blocks and rank
r counts only its stored blocks and its low-rank factors." The sparse and low-rank parts
count neither those blocks nor the low-rank ``T x r`` intermediate. So for a divisible
shape ``nnz = R C`` costs the dense cost less ``cost_mem`` times the activation blocks.

A sparsified layer costs ``sparse(nnz) + lowrank(r)``. The formulas live in the C core
(``csrc/core/budget.c``); this module is the documented Python face of it.

Default cost model: ``cost_flop = 1`` (the unit is one flop) and ``cost_mem`` = machine
balance x bytes per block, with a balance of 200 FLOP/byte (A100: 312 TFLOP/s bf16 over
1.555 TB/s HBM) and 2 bytes per element (bf16): touching one 32 x 32 block costs
``200 * 2 * 1024 = 409600`` flop-equivalents. Under it the activation blocks are 21-30 %
of a GPT-2-small layer's dense cost (``T = 1024``); since the sparse and low-rank parts do
not pay them, a budget of 0.25 still sparsifies every GPT-2-small layer. A layer stays
dense (status ``"over_budget"``, with the numbers in ``reason``) only when even its
sparsest butterfly costs more than its budget.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterator

from pixelfly import _C

__all__ = [
    "DEFAULT_MACHINE_BALANCE", "DEFAULT_ELEM_BYTES", "CostModel", "layer_cost", "LayerPlan",
    "BudgetPlan", "allocate_budget", "flat_butterfly_nnz",
]

#: FLOP per byte of an A100: 312e12 FLOP/s (bf16 tensor cores) / 1.555e12 B/s (HBM2), ~200.
DEFAULT_MACHINE_BALANCE = 200.0
#: Bytes per element (bf16).
DEFAULT_ELEM_BYTES = 2

_STATUSES = ("sparse", "not_divisible", "too_small", "over_budget", "budget_one")
#: Smallest butterfly size the planner uses: n = 2 has density (m + 1) / n = 1 (dense).
_MIN_BUTTERFLY = 4


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _block_pair(block, name: str = "block_size") -> tuple[int, int]:
    if _is_int(block):
        pair = (int(block), int(block))
    elif isinstance(block, (tuple, list)) and len(block) == 2 and all(_is_int(b) for b in block):
        pair = (int(block[0]), int(block[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (b1, b2), got {block!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {block!r}")
    return pair


def _check_real(x, name: str) -> float:
    if not _is_real(x):
        raise TypeError(f"{name} must be a real number, not {type(x).__name__}")
    return float(x)


def _check_int(x, name: str) -> int:
    if not _is_int(x):
        raise TypeError(f"{name} must be an int, not {type(x).__name__}")
    return int(x)


@dataclass(frozen=True)
class CostModel:
    """Prices of the cost model ``cost = cost_mem * N_blockmem + cost_flop * N_flop``.

    Parameters
    ----------
    cost_mem : float, optional
        Cost of touching one ``b1 x b2`` block (weights, low-rank factors, or activations in
        the dense cost), in the same unit as ``cost_flop``. Finite and ``>= 0``. Default:
        ``DEFAULT_MACHINE_BALANCE *
        DEFAULT_ELEM_BYTES * b1 * b2 * cost_flop``, i.e. 409600 for 32 x 32 bf16 blocks.
    cost_flop : float, default 1.0
        Cost of one floating-point operation (finite, ``> 0``). With 1 the costs read as
        flop-equivalents.
    block : int or (int, int), default 32
        Block size ``(b1, b2)``; an int means a square block.

    Examples
    --------
    >>> CostModel().cost_mem
    409600.0
    >>> round(CostModel.for_machine(312e12, 1.555e12, block=32).cost_mem)
    410917
    """

    cost_mem: float | None = None
    cost_flop: float = 1.0
    block: tuple[int, int] = (32, 32)

    def __post_init__(self):
        b1, b2 = _block_pair(self.block, "block")
        object.__setattr__(self, "block", (b1, b2))
        cf = _check_real(self.cost_flop, "cost_flop")
        if not (math.isfinite(cf) and cf > 0):
            raise ValueError(f"cost_flop must be finite and > 0, got {self.cost_flop!r}")
        object.__setattr__(self, "cost_flop", cf)
        if self.cost_mem is None:
            cm = DEFAULT_MACHINE_BALANCE * DEFAULT_ELEM_BYTES * b1 * b2 * cf
        else:
            cm = _check_real(self.cost_mem, "cost_mem")
        if not (math.isfinite(cm) and cm >= 0):
            raise ValueError(f"cost_mem must be finite and >= 0, got {self.cost_mem!r}")
        object.__setattr__(self, "cost_mem", cm)

    @classmethod
    def for_machine(cls, flops_per_s: float, bytes_per_s: float, block=32,
                    elem_bytes: float = DEFAULT_ELEM_BYTES) -> "CostModel":
        """Cost model of a machine from its peak compute and memory bandwidth.

        Parameters
        ----------
        flops_per_s : float
            Peak floating-point throughput (FLOP/s) for the training dtype.
        bytes_per_s : float
            Peak memory bandwidth (bytes/s).
        block : int or (int, int), default 32
            Block size.
        elem_bytes : float, default 2
            Bytes per element (2 for bf16/fp16, 4 for fp32).

        Returns
        -------
        CostModel
            ``cost_flop = 1`` and ``cost_mem = flops_per_s / bytes_per_s * elem_bytes * b1 * b2``.
        """
        f = _check_real(flops_per_s, "flops_per_s")
        b = _check_real(bytes_per_s, "bytes_per_s")
        e = _check_real(elem_bytes, "elem_bytes")
        for v, n in ((f, "flops_per_s"), (b, "bytes_per_s"), (e, "elem_bytes")):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{n} must be finite and > 0, got {v!r}")
        b1, b2 = _block_pair(block, "block")
        return cls(cost_mem=f / b * e * b1 * b2, cost_flop=1.0, block=(b1, b2))

    def _kw(self) -> dict:
        return dict(cost_mem=self.cost_mem, cost_flop=self.cost_flop, b1=self.block[0], b2=self.block[1])


def layer_cost(out_features: int, in_features: int, tokens: int, *, nnz: int | None = None,
               rank: int = 0, cost_model: CostModel | None = None) -> float:
    """Cost of one linear layer under the cost model (see the module docstring).

    Parameters
    ----------
    out_features, in_features : int
        Weight shape ``out x in`` (each in ``[1, 2**40]``).
    tokens : int
        Rows ``T`` of input the layer sees per step (``[1, 2**50]``).
    nnz : int or None, default None
        ``None``: the dense layer. Otherwise the number of kept ``b1 x b2`` blocks of the
        sparse part, ``0 <= nnz <= ceil(out/b1) * ceil(in/b2)`` (0: a pure low-rank layer).
    rank : int, default 0
        Rank of the low-rank part, ``0 <= rank <= min(out, in)``; needs ``nnz``.
    cost_model : CostModel, optional
        Default ``CostModel()`` (A100-like, 32 x 32 blocks).

    Returns
    -------
    float
        ``dense`` or ``sparse(nnz) + lowrank(rank)`` in units of ``cost_flop``.

    Raises
    ------
    TypeError, ValueError, OverflowError
        With the name of the offending argument.
    """
    cm = CostModel() if cost_model is None else cost_model
    if not isinstance(cm, CostModel):
        raise TypeError(f"cost_model must be a CostModel, not {type(cost_model).__name__}")
    o = _check_int(out_features, "out_features")
    i = _check_int(in_features, "in_features")
    t = _check_int(tokens, "tokens")
    r = _check_int(rank, "rank")
    kw = cm._kw()
    if nnz is None:
        if r != 0:
            raise ValueError("rank needs nnz: pass nnz=0 for a pure low-rank layer")
        return _C.cost_dense(o, i, t, **kw)
    z = _check_int(nnz, "nnz")
    return _C.cost_sparse(o, i, t, z, **kw) + _C.cost_lowrank(o, i, t, r, **kw)


def flat_butterfly_nnz(R: int, C: int, n_factors: int, butterfly_size: int = 0) -> int:
    """Number of kept blocks of the flat block butterfly layout on an ``R x C`` block grid.

    Closed form (no layout is built): rows per cell times columns per cell of the stretched
    grid ``p = floor(i n / R)``, ``q = floor(j n / C)``, summed over the support cells
    ``p ^ q in {0} U {2^s, s < m}``. ``butterfly_size=0`` picks the largest power of two
    ``<= min(R, C)``.
    """
    return _C.flat_butterfly_nnz(R, C, n_factors, butterfly_size)


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
        return math.fsum(p.cost for p in self.layers if p.sparsified)

    @property
    def sparse_dense_total(self) -> float:
        """Dense cost of the sparsified layers (the base the budget ``rho`` applies to)."""
        return math.fsum(p.dense_cost for p in self.layers if p.sparsified)

    @property
    def dense_kept_cost(self) -> float:
        """Cost of the layers left dense (reported apart from the budget)."""
        return math.fsum(p.dense_cost for p in self.layers if not p.sparsified)

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
        head = ("layer", "out x in", "T", "status", "grid", "n", "m", "density", "rank",
                "cost/dense", "budget/dense")
        rows = []
        for p in self.layers:
            grid = f"{p.R}x{p.C}" if p.R else "-"
            if p.sparsified:
                cells = (str(p.butterfly_size), str(p.n_factors), f"{p.density:.4f}", str(p.rank))
            else:
                cells = ("-", "-", "dense", "-")
            rows.append((p.name, f"{p.out_features}x{p.in_features}", str(p.tokens), p.status, grid,
                         *cells, f"{p.cost / p.dense_cost:.4f}", f"{p.budget / p.dense_cost:.4f}"))
        widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(head)]
        left = {0, 1, 3}
        fmt = lambda r: "  ".join(c.ljust(w) if k in left else c.rjust(w)  # noqa: E731
                                  for k, (c, w) in enumerate(zip(r, widths)))
        cm = self.cost_model
        lines = [f"pixelfly budget plan: rho={self.rho:g}, phi={self.phi:g}, block={cm.block[0]}x{cm.block[1]}, "
                 f"cost_mem={cm.cost_mem:g}, cost_flop={cm.cost_flop:g}, redistribute={self.redistribute}",
                 fmt(head), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows]
        n_sp = sum(p.sparsified for p in self.layers)
        lines.append("")
        lines.append(f"sparsified layers: {n_sp}/{len(self.layers)}; cost {self.sparse_total:.4g} of dense "
                     f"{self.sparse_dense_total:.4g} (ratio {self.ratio:.4f} <= rho {self.rho:g})")
        lines.append(f"layers left dense: {len(self.layers) - n_sp}; cost {self.dense_kept_cost:.4g} "
                     f"(reported apart)")
        lines.append(f"whole model: {self.sparse_total + self.dense_kept_cost:.4g} of dense "
                     f"{self.dense_total:.4g} (ratio {self.total_ratio:.4f})")
        reasons: dict[str, list[str]] = {}
        for p in self.layers:
            if not p.sparsified:
                reasons.setdefault(p.reason, []).append(p.name)
        for why, names in reasons.items():
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
            lines.append(f"  dense [{shown}]: {why}")
        return "\n".join(lines)


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
        o, i, t = (_check_int(v, f"layers[{k}].{f}") for v, f in zip(vals, ("out_features", "in_features", "tokens")))
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
        if min(R, C) < _MIN_BUTTERFLY:
            return f"block grid {R}x{C} is below 4x4: every butterfly on it is dense"
        return f"every butterfly on the block grid {R}x{C} keeps all {R * C} blocks: it would be dense"
    if st == "budget_one":
        return "budget 1: the dense layer is already the cheapest"
    if st == "over_budget":
        R, C = d["R"], d["C"]
        n, best = _MIN_BUTTERFLY, None
        while n <= min(R, C):
            z = _C.flat_butterfly_nnz(R, C, 1, n)
            if best is None or z < best[0]:
                best = (z, n)
            n *= 2
        kw = cm._kw()
        dense = d["dense_cost"]
        c_min = _C.cost_sparse(o, i, t, best[0], **kw)
        return (f"even the sparsest butterfly (n={best[1]}, m=1, {best[0]} of {R * C} blocks, rank 0) costs "
                f"{c_min / dense:.1%} of dense > budget {d['budget'] / dense:.1%}")
    return f"status {st}"


def allocate_budget(layers, budget: float = 0.25, low_rank_fraction: float = 0.25, block_size=32,
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
    rho = _check_real(budget, "budget")
    if not (0.0 < rho <= 1.0):
        raise ValueError(f"budget must be in (0, 1], got {budget!r}")
    phi = _check_real(low_rank_fraction, "low_rank_fraction")
    if not (0.25 - 1e-9 <= phi <= 1 / 3 + 1e-9):
        raise ValueError(f"low_rank_fraction must be in [1/4, 1/3], got {low_rank_fraction!r}")
    b1, b2 = _block_pair(block_size)
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
        mr = _check_int(max_rank, "max_rank")
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
