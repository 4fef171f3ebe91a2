"""The flat block butterfly as the authors' release builds it (``fly`` code,
``FlatBlockButterflySparsityConfig(butterfly_size, n_factors, block, global_size, shuffle)``).

SPEC section 1 maps each *block* to a butterfly cell. The release lays the pattern over
*elements* and keeps every block holding a kept element. Both agree when a cell spans whole
blocks; when a cell is smaller than a block, or straddles block edges (n = 16 on 768
features: cells of 48 elements, blocks of 32), the release's layout is denser than
``(m + 1) / n``. :func:`fly_config_layout` gives exactly the release's layouts, from the
torch-free C core, so a model configured for the release gets the same blocks here.
"""
from __future__ import annotations

import numpy as np

from pixelfly import _C
from .layouts import _block, _int

__all__ = ["fly_config_layout"]


def _int64(name, value, lo=None):
    v = _int(name, value, lo)
    if not -2 ** 63 <= v < 2 ** 63:
        raise ValueError(f"{name} is out of range, got {v}")
    return v


def fly_config_layout(out_features, in_features, butterfly_size, n_factors, block=32,
                      global_size=0, shuffle=False):
    """Block layout of the release's ``FlatBlockButterflySparsityConfig``.

    With ``n = butterfly_size``, ``m = n_factors`` and an ``out x in`` weight
    (``out = out_features``, ``in = in_features``) cut into ``b1 x b2`` blocks:

    1. element row ``a`` lies in cell ``p = a // (out/n)``, element column ``b`` in cell
       ``q = b // (in/n)`` (each cell of the ``n x n`` butterfly is stretched over
       ``out/n x in/n`` elements);
    2. element ``(a, b)`` is kept iff ``(p XOR c) in {0} U {2^s : 0 <= s < m}``, where
       ``c = q`` or, with ``shuffle`` (the ShuffleNet channel shuffle of the cell columns
       into ``G = n / 2^m`` groups), ``c = (q % G) * 2^m + q // G``;
    3. the first ``global_size`` element rows and columns are kept too;
    4. block ``(i, j)`` is kept iff any of its elements is kept.

    When ``b1`` divides ``out/n`` and ``b2`` divides ``in/n``, without ``global_size`` or
    ``shuffle``, this is ``flat_butterfly_layout(out/b1, in/b2, m, n)``.

    Parameters
    ----------
    out_features, in_features : int
        The weight's shape ``out x in`` (``nn.Linear`` convention), multiples of the block
        size and of ``butterfly_size``.
    butterfly_size : int
        ``n``, a power of two, ``2 <= n <= 2^20``.
    n_factors : int
        ``m``, with ``1 <= m <= log2(n)``.
    block : int or (int, int)
        Block size ``b1 x b2`` (the release uses square blocks, default 32).
    global_size : int
        Number of leading element rows and columns kept whole (``>= 0``).
    shuffle : bool
        Apply the release's channel shuffle to the cell columns.

    Returns
    -------
    numpy.ndarray of bool, shape ``(out_features // b1, in_features // b2)``
    """
    out_f, in_f = _int64("out_features", out_features, 1), _int64("in_features", in_features, 1)
    n, m = _int64("butterfly_size", butterfly_size), _int64("n_factors", n_factors)
    b1, b2 = _block(block)
    g = _int64("global_size", global_size, 0)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__} {shuffle!r}")
    return _C.fly_config_layout(out_f, in_f, n, m, b1, b2, g, bool(shuffle))
