"""The one printer of plans: :class:`pixelfly.budget.BudgetPlan` (``allocate_budget``) and
:class:`pixelfly.planfile.Plan` (``pixelfly.plan``) both print through :func:`format_plan`."""
from __future__ import annotations

import math

__all__ = ["format_plan", "totals"]

_HEAD = ("layer", "out x in", "T", "status", "grid", "n", "m", "density", "rank", "cost/dense",
         "budget/dense")
_LEFT = {0, 1, 3}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.4f}" if b else "-"


def _row(p, block) -> tuple:
    b1, b2 = block
    divisible = p.out_features % b1 == 0 and p.in_features % b2 == 0
    grid = f"{p.out_features // b1}x{p.in_features // b2}" if divisible else "-"
    if p.status != "sparse":
        cells = ("-", "-", "dense", "-")
    elif getattr(p, "layout", None) is not None:  # a named layout instead of (n, m)
        cells = (p.layout["name"], "-", f"{p.density:.4f}", str(p.rank))
    else:
        cells = (str(p.butterfly_size), str(p.n_factors), f"{p.density:.4f}", str(p.rank))
    return (p.name, f"{p.out_features}x{p.in_features}", str(p.tokens), p.status, grid, *cells,
            _ratio(p.cost, p.dense_cost), _ratio(p.budget, p.dense_cost))


def totals(layers) -> tuple[float, float, float]:
    """``(cost of the sparsified layers, their dense cost, dense cost of the layers left
    dense)`` of a plan's layers (``status == "sparse"`` is sparsified)."""
    cost = math.fsum(p.cost for p in layers if p.status == "sparse")
    base = math.fsum(p.dense_cost for p in layers if p.status == "sparse")
    return cost, base, math.fsum(p.dense_cost for p in layers if p.status != "sparse")


def format_plan(title: str, layers, block) -> str:
    """A plan as a table: ``title``, one row per layer (fields ``name, out_features,
    in_features, tokens, status, reason, butterfly_size, n_factors, density, rank, cost,
    dense_cost, budget``, optionally ``layout``), then the totals and why layers stay dense."""
    rows = [_row(p, block) for p in layers]
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(_HEAD)]

    def fmt(r):
        return "  ".join(c.ljust(w) if k in _LEFT else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))

    sparse = [p for p in layers if p.status == "sparse"]
    dense = [p for p in layers if p.status != "sparse"]
    cost, base, kept = totals(layers)
    total = base + kept
    lines = [title, fmt(_HEAD), "  ".join("-" * w for w in widths), *map(fmt, rows), "",
             f"sparsified layers: {len(sparse)}/{len(rows)}; cost {cost:.4g} of dense {base:.4g} "
             f"(ratio {_ratio(cost, base)})",
             f"layers left dense: {len(dense)}; cost {kept:.4g} (reported apart)",
             f"whole model: {cost + kept:.4g} of dense {total:.4g} (ratio {_ratio(cost + kept, total)})"]
    reasons: dict[str, list[str]] = {}
    for p in dense:
        reasons.setdefault(p.reason or p.status, []).append(p.name)
    for why, names in reasons.items():
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
        lines.append(f"  dense [{shown}]: {why}")
    return "\n".join(lines)
