"""The cost model of SPEC section 3, and the planner's rule for choosing a butterfly.

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

Default cost model (:mod:`pixelfly.defaults`): ``cost_flop = 1`` (the unit is one flop) and
``cost_mem`` = machine balance x bytes per block, with a balance of 200 FLOP/byte (A100:
312 TFLOP/s bf16 over 1.555 TB/s HBM) and 2 bytes per element (bf16): touching one 32 x 32
block costs ``200 * 2 * 1024 = 409600`` flop-equivalents.

**The butterfly rule** (one rule, used by the C planner ``allocate_budget`` on costs and by
:func:`choose_config` on parameter counts): the candidates on an ``R x C`` block grid are the
flat block butterflies with ``n`` a power of two, ``4 <= n <= min(R, C)`` (``n = 2`` keeps
every block: the dense layout) and ``1 <= m <= log2 n``, counted in closed form
(:func:`flat_butterfly_nnz`, no layout is built); the pick is the one with the most blocks
that fit (ties: more factors, then larger ``n``), or when none fits the sparsest (same ties).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pixelfly import _C

from . import defaults
from .args import block_pair, check_int, check_real, is_real

__all__ = ["CostModel", "layer_cost", "flat_butterfly_nnz", "butterfly_candidates", "pick_butterfly",
           "choose_config"]


@dataclass(frozen=True)
class CostModel:
    """Prices of the cost model ``cost = cost_mem * N_blockmem + cost_flop * N_flop``.

    Parameters
    ----------
    cost_mem : float, optional
        Cost of touching one ``b1 x b2`` block (weights, low-rank factors, or activations in
        the dense cost), in the same unit as ``cost_flop``. Finite and ``>= 0``. Default:
        ``defaults.MACHINE_BALANCE *
        defaults.ELEM_BYTES * b1 * b2 * cost_flop``, i.e. 409600 for 32 x 32 bf16 blocks.
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
    block: tuple[int, int] = (defaults.BLOCK_SIZE, defaults.BLOCK_SIZE)

    def __post_init__(self):
        b1, b2 = block_pair(self.block, "block")
        object.__setattr__(self, "block", (b1, b2))
        cf = check_real("cost_flop", self.cost_flop)
        if not (math.isfinite(cf) and cf > 0):
            raise ValueError(f"cost_flop must be finite and > 0, got {self.cost_flop!r}")
        object.__setattr__(self, "cost_flop", cf)
        if self.cost_mem is None:
            cm = defaults.MACHINE_BALANCE * defaults.ELEM_BYTES * b1 * b2 * cf
        else:
            cm = check_real("cost_mem", self.cost_mem)
        if not (math.isfinite(cm) and cm >= 0):
            raise ValueError(f"cost_mem must be finite and >= 0, got {self.cost_mem!r}")
        object.__setattr__(self, "cost_mem", cm)

    @classmethod
    def for_machine(cls, flops_per_s: float, bytes_per_s: float, block=defaults.BLOCK_SIZE,
                    elem_bytes: float = defaults.ELEM_BYTES) -> "CostModel":
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
        f = check_real("flops_per_s", flops_per_s)
        b = check_real("bytes_per_s", bytes_per_s)
        e = check_real("elem_bytes", elem_bytes)
        for v, n in ((f, "flops_per_s"), (b, "bytes_per_s"), (e, "elem_bytes")):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{n} must be finite and > 0, got {v!r}")
        b1, b2 = block_pair(block, "block")
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
    o, i, t, r = (check_int(n, v, hi=None) for n, v in (("out_features", out_features), ("in_features", in_features),
                                           ("tokens", tokens), ("rank", rank)))
    kw = cm._kw()
    if nnz is None:
        if r != 0:
            raise ValueError("rank needs nnz: pass nnz=0 for a pure low-rank layer")
        return _C.cost_dense(o, i, t, **kw)
    z = check_int("nnz", nnz, hi=None)
    return _C.cost_sparse(o, i, t, z, **kw) + _C.cost_lowrank(o, i, t, r, **kw)


def flat_butterfly_nnz(R: int, C: int, n_factors: int, butterfly_size: int = 0) -> int:
    """Number of kept blocks of the flat block butterfly layout on an ``R x C`` block grid.

    Closed form (no layout is built): rows per cell times columns per cell of the stretched
    grid ``p = floor(i n / R)``, ``q = floor(j n / C)``, summed over the support cells
    ``p ^ q in {0} U {2^s, s < m}``. ``butterfly_size=0`` picks the largest power of two
    ``<= min(R, C)``.
    """
    return _C.flat_butterfly_nnz(R, C, n_factors, butterfly_size)


def butterfly_candidates(R: int, C: int, min_n: int = defaults.MIN_BUTTERFLY):
    """Every flat block butterfly ``(n, m, nnz)`` on an ``R x C`` grid with
    ``min_n <= n <= min(R, C)`` and ``nnz < R C`` (``min_n = 2`` also lists the dense
    ``n = 2`` layouts: ``nnz == R C`` is then kept)."""
    n = min_n
    while n <= min(R, C):
        for m in range(1, n.bit_length()):
            nnz = _C.flat_butterfly_nnz(R, C, m, n)
            if nnz < R * C or min_n < defaults.MIN_BUTTERFLY:
                yield n, m, nnz
        n *= 2


def pick_butterfly(R: int, C: int, max_nnz: float | None, min_n: int = defaults.MIN_BUTTERFLY):
    """The rule: ``(n, m, nnz)`` with the most blocks ``<= max_nnz`` (ties: more factors,
    then larger ``n``); ``max_nnz=None`` gives the sparsest. ``None`` when nothing fits or the
    grid is below ``min_n x min_n``."""
    cands = list(butterfly_candidates(R, C, min_n))
    if max_nnz is None:
        return min(cands, key=lambda c: (c[2], -c[1], -c[0]), default=None)
    return max((c for c in cands if c[2] <= max_nnz), key=lambda c: (c[2], c[1], c[0]), default=None)


def choose_config(out_features: int, in_features: int, density: float = defaults.DENSITY,
                  block_size=defaults.BLOCK_SIZE, low_rank_fraction: float = defaults.LOW_RANK_FRACTION):
    """Split a parameter density into a flat-butterfly layout and a rank (the rule above, on
    parameter counts instead of costs).

    A fraction ``low_rank_fraction`` (in ``[0, 1)``) of the ``density * out * in`` parameters
    goes to the low-rank factors (``rank = floor(share / (out + in))``), the rest to the
    butterfly part: :func:`pick_butterfly` with ``nnz * b1 * b2 <= rest``. When not even the
    sparsest butterfly fits, the sparsest is used and the rank shrinks to what is left
    (possibly 0); only then can the density exceed the request. A block grid below 4 x 4
    has no sparse butterfly: the rule then runs over the only one there is, ``n = 2, m = 1``
    (every block; the planner keeps such layers dense instead).

    Returns ``(butterfly_size, n_factors, rank)``.
    """
    o = check_int("out_features", out_features, 1)
    i = check_int("in_features", in_features, 1)
    if not is_real(density) or not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if not is_real(low_rank_fraction) or not 0.0 <= float(low_rank_fraction) < 1.0:
        raise ValueError(f"low_rank_fraction must be in [0, 1), got {low_rank_fraction!r}")
    b1, b2 = block_pair(block_size)
    R, C = o // b1, i // b2
    if min(R, C) < 2:
        raise ValueError(f"a {o}x{i} weight with blocks {b1}x{b2} has a {R}x{C} block grid; a "
                         f"butterfly needs at least 2x2 blocks")
    params = float(density) * o * i
    rank = max(0, min(int(float(low_rank_fraction) * params // (o + i)), min(o, i)))
    min_n = defaults.MIN_BUTTERFLY if min(R, C) >= defaults.MIN_BUTTERFLY else 2
    pick = pick_butterfly(R, C, (params - rank * (o + i)) / (b1 * b2), min_n)
    if pick is None:  # the sparsest butterfly; the low-rank part gets what is left
        pick = pick_butterfly(R, C, None, min_n)
        rank = max(0, min(rank, int((params - pick[2] * b1 * b2) // (o + i))))
    return pick[0], pick[1], rank
