"""From the authors' per-layer configs to a pixelfly plan.

The release configures each sparse layer with Hydra fields (``configs/model/*/fbbfly.yaml``,
``fbbflylr.yaml``)::

    fbbfly:    BlockSparseLinear(sparsity_config=FlatBlockButterflySparsityConfig(
                   butterfly_size, n_factors, block=32, global_size=0, shuffle=False))
    fbbflylr:  SparseLRLinear(rank=32, gating=True,
                   sparse_cfg=BlockSparseLinear(sparsity_config=...as above...))

:func:`fly_config` reads either form (the nested Hydra dict, or the flat fields) and
:func:`apply_fly_configs` writes them into a :class:`~pixelfly.Plan`, layer by layer, so
``sparsify(model, plan)`` builds the release's model on pixelfly's kernels: the layout of
:func:`~pixelfly.fly_config_layout`, the rank (an int, or a float read as a fraction of
``min(in, out)`` as the release does) and, for ``fbbflylr`` with ``gating`` (the release's
default), the per-token gate (``gate="token"``; without gating the release averages the two
parts, which is the scalar gate at its initial value 1/2).
"""
from __future__ import annotations

import copy
import fnmatch
import numbers

from .budget import CostModel, layer_cost
from .fly_layouts import fly_config_layout

__all__ = ["fly_config", "apply_fly_configs"]

_LAYOUT_FIELDS = ("butterfly_size", "n_factors", "block", "global_size", "shuffle")


def fly_config(cfg: dict) -> dict:
    """The release's layer config as ``{"layout": <fly_config layout spec>, "block": b,
    "rank": r, "gate": "scalar" | "token"}`` (``rank`` int or float, as the release takes it).

    ``cfg`` is the Hydra dict of an ``fbbfly`` or ``fbbflylr`` layer (``_target_`` and
    ``backend`` are ignored), or the flat fields ``butterfly_size, n_factors, block,
    global_size, shuffle, rank, gating``.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict of the release's config fields, got {type(cfg).__name__}")
    rank, gating = cfg.get("rank", 0), cfg.get("gating", True)
    sparse = cfg.get("sparse_cfg", cfg)
    fields = sparse.get("sparsity_config", sparse)
    missing = [k for k in ("butterfly_size", "n_factors") if k not in fields]
    if missing:
        raise ValueError(f"cfg has no {' or '.join(missing)} (looked in cfg, cfg['sparse_cfg'] and "
                         f"their 'sparsity_config')")
    if isinstance(rank, bool) or not isinstance(rank, numbers.Real) or rank < 0:
        raise ValueError(f"cfg rank must be an int or a float ratio >= 0, got {rank!r}")
    spec = {"name": "fly_config"}
    spec.update({k: fields[k] for k in _LAYOUT_FIELDS if k in fields and k != "block"})
    gate = "token" if rank and gating else "scalar"
    return {"layout": spec, "block": fields.get("block", 32), "rank": rank, "gate": gate}


def _rank(rank, out_f: int, in_f: int) -> int:
    return int(rank * min(out_f, in_f)) if isinstance(rank, float) else int(rank)


def apply_fly_configs(plan, configs: dict):
    """A copy of ``plan`` whose layers matching a pattern of ``configs`` use that config.

    ``configs`` maps layer-name patterns (``fnmatch``, e.g. ``"*.mlp.c_fc"``; the first
    matching pattern wins) to release configs (see :func:`fly_config`). A matched layer
    becomes sparse with the release's layout, rank and gate; its ``nnz``, ``density``
    (kept blocks / all blocks) and ``cost`` follow from them (its ``budget`` is left as
    planned). The config's ``block`` must equal the plan's block size. Other layers are
    unchanged. A pattern also matches layers the plan kept dense for a reason (a weight
    tied to another module, a layer the example input never calls): name the layers the
    release sparsifies, e.g. ``"*.mlp.fc1"``, not ``"*"``.
    """
    out = copy.deepcopy(plan)
    parsed = [(pat, fly_config(cfg)) for pat, cfg in configs.items()]
    cm = CostModel(**{**plan.cost_model, "block": tuple(plan.block_size)})
    for entry in out.layers:
        hit = next((c for pat, c in parsed if fnmatch.fnmatchcase(entry.name, pat)), None)
        if hit is None:
            continue
        b = hit["block"]
        if (b, b) != tuple(plan.block_size):
            raise ValueError(f"layer {entry.name!r}: the config's block {b} differs from the plan's "
                             f"block_size {tuple(plan.block_size)}")
        spec = hit["layout"]
        try:
            lay = fly_config_layout(entry.out_features, entry.in_features, block=b,
                                    **{k: v for k, v in spec.items() if k != "name"})
        except (TypeError, ValueError) as e:
            raise type(e)(f"layer {entry.name!r} ({entry.out_features}x{entry.in_features}): {e}") from None
        rank = _rank(hit["rank"], entry.out_features, entry.in_features)
        nnz = int(lay.sum())
        entry.status, entry.reason = "sparse", ""
        entry.layout, entry.gate = dict(spec), hit["gate"] if rank else "scalar"
        entry.butterfly_size, entry.n_factors = spec["butterfly_size"], spec["n_factors"]
        entry.rank, entry.nnz, entry.density = rank, nnz, nnz / lay.size
        if entry.tokens > 0:
            entry.dense_cost = layer_cost(entry.out_features, entry.in_features, entry.tokens, cost_model=cm)
            entry.cost = layer_cost(entry.out_features, entry.in_features, entry.tokens, nnz=nnz,
                                    rank=rank, cost_model=cm)
    return out
