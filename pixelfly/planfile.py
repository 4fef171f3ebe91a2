"""The :class:`Plan` of a whole model: one :class:`PlannedLayer` per linear layer, JSON files.

A plan is plain data (no torch): :func:`pixelfly.plan` makes one, :func:`pixelfly.sparsify`
applies one. Every way a plan comes in (constructor, ``from_dict``, ``load``) is validated:
field types, ranges, known statuses and a layout that a ``PixelflyLinear`` can build, with
errors that name the layer and the field (:class:`PlanError`, a ``ValueError``).
"""
from __future__ import annotations

import dataclasses
import json
import math

from .args import is_int as _is_int
from .args import is_real as _is_real
from .plan_table import format_plan, totals

__all__ = ["Plan", "PlannedLayer", "PlanError", "STATUSES", "KINDS", "GATES"]

#: A layer is sparsified or stays dense (the reason says why).
STATUSES = ("sparse", "dense")
#: ``nn.Linear`` or Hugging Face's ``Conv1D`` (weight stored ``[in, out]``).
KINDS = ("linear", "conv1d")
#: The mixing of the sparse and low-rank parts: SPEC 2's scalar gamma or the authors' per-token gate.
GATES = ("scalar", "token")


class PlanError(ValueError):
    """A plan (or plan file) that is malformed or does not fit the model it is applied to."""


@dataclasses.dataclass
class PlannedLayer:
    """One layer of a :class:`Plan`. ``status`` is ``"sparse"`` or ``"dense"`` (``reason`` says why)."""
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


_FIELDS = [f.name for f in dataclasses.fields(PlannedLayer)]
_REQUIRED = [f.name for f in dataclasses.fields(PlannedLayer) if f.default is dataclasses.MISSING]


def _check_layer(lay: PlannedLayer, where: str, block) -> None:
    def bad(field, want):
        raise PlanError(f"{where} field {field!r} must be {want}, got {getattr(lay, field)!r}")

    if not isinstance(lay.name, str) or not lay.name:
        bad("name", "a non-empty str")
    where = f"plan layer {lay.name!r}:"
    for f in ("kind", "status", "reason", "gate"):
        if not isinstance(getattr(lay, f), str):
            bad(f, "a str")
    if lay.kind not in KINDS:
        bad("kind", f"one of {KINDS}")
    if lay.gate not in GATES:
        bad("gate", f"one of {GATES}")
    if lay.layout is not None and not (isinstance(lay.layout, dict) and isinstance(lay.layout.get("name"), str)):
        bad("layout", "null or a layout spec, a dict with a 'name' (see pixelfly.custom_layout)")
    if lay.status not in STATUSES:
        bad("status", f"one of {STATUSES} (the reason for a dense layer goes in 'reason')")
    for f in ("out_features", "in_features"):
        if not _is_int(getattr(lay, f)) or getattr(lay, f) < 1:
            bad(f, "an int >= 1")
    for f in ("tokens", "butterfly_size", "n_factors", "rank", "nnz"):
        if not _is_int(getattr(lay, f)) or getattr(lay, f) < 0:
            bad(f, "an int >= 0")
    for f in ("density", "dense_cost", "budget", "cost"):
        v = getattr(lay, f)
        if not _is_real(v) or not math.isfinite(v) or v < 0:
            bad(f, "a finite number >= 0")
    if not lay.sparse:
        return
    b1, b2 = block
    if lay.out_features % b1 or lay.in_features % b2:
        raise PlanError(f"{where} a {lay.out_features}x{lay.in_features} weight does not divide into the "
                        f"plan's {b1}x{b2} blocks")
    if lay.rank > min(lay.out_features, lay.in_features):
        bad("rank", f"an int in [0, {min(lay.out_features, lay.in_features)}]")
    if lay.layout is not None:  # the named layout replaces (n, m): it must build for this layer
        from .custom_layout import layout_from_spec
        try:
            layout_from_spec(lay.layout, lay.out_features, lay.in_features, block)
        except (TypeError, ValueError) as e:
            raise PlanError(f"{where} field 'layout' {lay.layout!r} does not build: {e}") from None
        return
    R, C = lay.out_features // b1, lay.in_features // b2
    n = lay.butterfly_size
    if n < 2 or n & (n - 1) or n > min(R, C):
        bad("butterfly_size", f"a power of two in [2, {min(R, C)}] (the {R}x{C} block grid)")
    if not 1 <= lay.n_factors <= int(math.log2(n)):
        bad("n_factors", f"an int in [1, log2(butterfly_size) = {int(math.log2(n))}]")


@dataclasses.dataclass
class Plan:
    """A per-layer allocation; edit ``layers`` freely (e.g. set ``status="dense"``).

    ``Plan.load(path) == plan`` after ``plan.save(path)``. Every plan is validated when it is
    made, loaded, saved and applied (:meth:`validate`).
    """
    layers: list
    budget: float
    low_rank_fraction: float
    block_size: tuple
    cost_model: dict

    def __post_init__(self):
        if isinstance(self.block_size, list):
            self.block_size = tuple(self.block_size)
        if isinstance(self.cost_model, dict) and isinstance(self.cost_model.get("block"), list):
            self.cost_model = dict(self.cost_model, block=tuple(self.cost_model["block"]))
        self.validate()

    def validate(self) -> "Plan":
        """Check every field; raise :class:`PlanError` naming the layer and field. Returns self."""
        if not _is_real(self.budget) or not 0 < self.budget <= 1:
            raise PlanError(f"plan field 'budget' must be a number in (0, 1], got {self.budget!r}")
        if not _is_real(self.low_rank_fraction) or not 0 <= self.low_rank_fraction <= 1:
            raise PlanError(f"plan field 'low_rank_fraction' must be a number in [0, 1], "
                            f"got {self.low_rank_fraction!r}")
        bs = self.block_size
        if not (isinstance(bs, tuple) and len(bs) == 2 and all(_is_int(b) and b >= 1 for b in bs)):
            raise PlanError(f"plan field 'block_size' must be a pair of ints >= 1, got {bs!r}")
        if not isinstance(self.cost_model, dict):
            raise PlanError(f"plan field 'cost_model' must be a dict, got {self.cost_model!r}")
        if not isinstance(self.layers, list):
            raise PlanError(f"plan field 'layers' must be a list, got {type(self.layers).__name__}")
        seen = set()
        for k, lay in enumerate(self.layers):
            if not isinstance(lay, PlannedLayer):
                raise PlanError(f"plan layers[{k}] must be a PlannedLayer, got {type(lay).__name__}")
            _check_layer(lay, f"plan layers[{k}]:", bs)
            if lay.name in seen:
                raise PlanError(f"plan layer {lay.name!r} is listed twice")
            seen.add(lay.name)
        return self

    def __getitem__(self, name: str) -> PlannedLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def dense_total(self) -> float:
        """Dense cost of the sparsified layers."""
        return totals(self.layers)[1]

    @property
    def sparse_total(self) -> float:
        """Planned cost of the sparsified layers."""
        return totals(self.layers)[0]

    @property
    def kept_dense_cost(self) -> float:
        """Cost of the layers left dense (that run on the example input), reported apart."""
        return totals(self.layers)[2]

    def __str__(self) -> str:
        cm = self.cost_model
        prices = "".join(f", {k}={cm[k]:g}" for k in ("cost_mem", "cost_flop") if isinstance(cm.get(k), (int, float)))
        return format_plan(f"pixelfly plan: rho={self.budget:g}, phi={self.low_rank_fraction:g}, "
                           f"block={self.block_size[0]}x{self.block_size[1]}{prices}", self.layers, self.block_size)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (``Plan.from_dict(p.to_dict()) == p``)."""
        return json.loads(json.dumps({
            "budget": self.budget, "low_rank_fraction": self.low_rank_fraction,
            "block_size": list(self.block_size), "cost_model": self.cost_model,
            "layers": [dataclasses.asdict(lay) for lay in self.layers]}))

    @classmethod
    def from_dict(cls, d) -> "Plan":
        """Build and validate a plan from :meth:`to_dict`'s data; :class:`PlanError` if malformed."""
        if not isinstance(d, dict):
            raise PlanError(f"a plan must be a JSON object, got {type(d).__name__}")
        top = ("budget", "low_rank_fraction", "block_size", "cost_model", "layers")
        for f in top:
            if f not in d:
                raise PlanError(f"plan field {f!r} is missing")
        unknown = sorted(set(d) - set(top))
        if unknown:
            raise PlanError(f"plan has unknown fields {unknown}")
        if not isinstance(d["layers"], list):
            raise PlanError(f"plan field 'layers' must be a list, got {type(d['layers']).__name__}")
        layers = []
        for k, lay in enumerate(d["layers"]):
            if not isinstance(lay, dict):
                raise PlanError(f"plan layers[{k}] must be an object, got {type(lay).__name__}")
            where = f"plan layer {lay.get('name', k)!r}:"
            missing = [f for f in _REQUIRED + ["rank", "n_factors", "butterfly_size"] if f not in lay]
            # files written before the layout/gate fields read as the flat butterfly, scalar gate
            if missing:
                raise PlanError(f"{where} field {missing[0]!r} is missing")
            unknown = sorted(set(lay) - set(_FIELDS))
            if unknown:
                raise PlanError(f"{where} unknown fields {unknown}")
            layers.append(PlannedLayer(**lay))
        return cls(layers=layers, budget=d["budget"], low_rank_fraction=d["low_rank_fraction"],
                   block_size=d["block_size"], cost_model=d["cost_model"])

    def save(self, path) -> None:
        self.validate()
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path) -> "Plan":
        """Read a plan file; :class:`PlanError` if it is not JSON (e.g. truncated) or not a valid plan."""
        with open(path, "rb") as f:
            raw = f.read()
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PlanError(f"plan file {str(path)!r} is not valid JSON (truncated or not a plan file?): "
                            f"{e}") from None
        return cls.from_dict(d)
