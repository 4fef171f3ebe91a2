"""Layouts given to a layer by the user: ``PixelflyLinear(..., layout=<bool block array>)``
and the per-layer ``layout`` field of a plan, a JSON-ready dict naming a layout function
and its arguments, e.g. ``{"name": "fly_config", "butterfly_size": 16, "n_factors": 2}``
(the authors' rule, :func:`~pixelfly.fly_config_layout`) or
``{"name": "bigbird", "window": 1, "n_global": 1, "n_random": 2, "seed": 0}``.

Names and what they call (the block grid ``rows x cols = out/b1 x in/b2`` and, for
``fly_config``, the weight's shape and block are filled in from the layer):

    fly_config         fly_config_layout(out, in, butterfly_size, n_factors, block=(b1, b2), ...)
    flat_butterfly     flat_butterfly_layout(rows, cols, n_factors, butterfly_size=None)
    butterfly_product  butterfly_product_layout(rows, cols, n_factors, butterfly_size=None)
    bigbird            bigbird_layout(rows, cols, window, n_global, n_random, seed)
    sparse_transformer sparse_transformer_layout(rows, cols, stride)
    local              local_layout(rows, cols, window)
    random             random_layout(rows, cols, density, seed)
    blocks             {"name": "blocks", "layout": [[0, 1, ...], ...]}: the block grid itself
"""
from __future__ import annotations

import numpy as np

from . import layouts as L
from .fly_layouts import fly_config_layout

__all__ = ["LAYOUT_NAMES", "as_block_layout", "layout_from_spec"]

_GRID_FUNCTIONS = {
    "flat_butterfly": L.flat_butterfly_layout, "butterfly_product": L.butterfly_product_layout,
    "bigbird": L.bigbird_layout, "sparse_transformer": L.sparse_transformer_layout,
    "local": L.local_layout, "random": L.random_layout,
}
LAYOUT_NAMES = ("fly_config", "blocks") + tuple(_GRID_FUNCTIONS)


def as_block_layout(layout, rows: int, cols: int, name: str = "layout") -> np.ndarray:
    """``layout`` (NumPy array, torch tensor or nested lists of bools) as a C-contiguous bool
    array of shape ``(rows, cols)``; TypeError for a non-bool dtype, ValueError for a wrong
    shape."""
    if hasattr(layout, "detach"):  # a torch tensor
        layout = layout.detach().cpu().numpy()
    arr = np.asarray(layout)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean block array, got dtype {arr.dtype}")
    if arr.shape != (rows, cols):
        raise ValueError(f"{name} must have the block grid's shape ({rows}, {cols}) "
                         f"(out_features / b1, in_features / b2), got {arr.shape}")
    return np.ascontiguousarray(arr)


def layout_from_spec(spec: dict, out_features: int, in_features: int, block) -> np.ndarray:
    """Build the block layout a plan names for an ``out_features x in_features`` layer with
    blocks ``block`` (``b`` or ``(b1, b2)``); see the module docstring for the names."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise TypeError(f"a layout spec must be a dict with a 'name' key, got {spec!r}")
    b1, b2 = L._block(block)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    rows, cols = out_features // b1, in_features // b2
    try:
        if name == "fly_config":
            return fly_config_layout(out_features, in_features, block=(b1, b2), **kwargs)
        if name == "blocks":
            return as_block_layout(np.asarray(kwargs.get("layout"), dtype=bool), rows, cols,
                                   "layout spec 'blocks'")
        if name in _GRID_FUNCTIONS:
            return _GRID_FUNCTIONS[name](rows, cols, **kwargs)
    except TypeError as e:  # an unknown or missing argument: say which spec it came from
        raise TypeError(f"layout spec {spec!r}: {e}") from None
    raise ValueError(f"layout spec name must be one of {LAYOUT_NAMES}, got {name!r}")
