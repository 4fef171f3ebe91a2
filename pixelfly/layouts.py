"""Block layouts: flat block butterfly (SPEC section 1), the baselines of section 5,
element masks, and the block-CSR / block-CSC index the kernels consume.

A *layout* is a boolean ``(R, C)`` NumPy array over the block grid of a weight of shape
``out x in = (R*b1) x (C*b2)``: ``True`` keeps the whole ``b1 x b2`` block. Everything
is computed by the torch-free C core (``pixelfly._C``); this module validates the Python
arguments (``TypeError`` for a non-integer, ``bool`` included; ``ValueError`` for a bad
value, the message naming the argument) and documents the formulas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pixelfly import _C

from .args import check_int as _int
from .args import is_real

__all__ = [
    "default_butterfly_size", "flat_butterfly_layout", "butterfly_factor_layout",
    "butterfly_product_layout", "local_layout", "bigbird_layout", "sparse_transformer_layout",
    "random_layout", "layout_to_mask", "mask_to_layout", "layout_to_csr", "csr_transpose",
    "BlockIndex",
]


MAX_GRID = int(_C.MAX_GRID)     # 2**20: the longest side of a block grid
MAX_CELLS = int(_C.MAX_CELLS)   # 2**30: the most cells of a layout or mask
assert MAX_GRID == 2 ** 20 and MAX_CELLS == 2 ** 30  # the bounds pixelfly.args names


def _grid(rows, cols, lo=1):
    rows, cols = _int("rows", rows, lo, MAX_GRID), _int("cols", cols, lo, MAX_GRID)
    if rows * cols > MAX_CELLS:
        raise ValueError(f"rows * cols = {rows} * {cols} blocks is more than a layout can hold "
                         f"({MAX_CELLS} = 2**30 blocks)")
    return rows, cols


def _butterfly_size(butterfly_size):
    if butterfly_size is None:
        return 0
    n = _int("butterfly_size", butterfly_size, hi=MAX_GRID)
    if n < 2 or n & (n - 1):
        raise ValueError(f"butterfly_size must be a power of two >= 2 (or None), got {n}")
    return n


def _block(block):
    """``block`` as ``(b1, b2)``: an int or a pair of ints, each >= 1."""
    if isinstance(block, (tuple, list)):
        if len(block) != 2:
            raise ValueError(f"block must be an int or a pair (b1, b2), got {block!r}")
        return _int("block b1", block[0], 1, MAX_CELLS), _int("block b2", block[1], 1, MAX_CELLS)
    b = _int("block", block, 1, MAX_CELLS)
    return b, b


def _bool2(name, a):
    """``a`` as a 2-D bool array (no dtype conversion: a non-bool array is a TypeError)."""
    if a is None:
        raise TypeError(f"{name} must be a 2-D boolean array, got None")
    arr = _asarray(name, a, "a 2-D boolean array")
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    return arr


def _asarray(name, a, what):
    """``np.asarray(a)``; a ragged nested list is a ValueError naming ``name``."""
    try:
        return np.asarray(a)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got a ragged sequence (rows of different "
                         "lengths)") from None


def default_butterfly_size(rows, cols):
    """Default butterfly size ``n`` of an ``rows x cols`` block grid.

    Returns the largest power of two ``n <= min(rows, cols)``, or 0 when
    ``min(rows, cols) < 2`` (no butterfly fits).
    """
    rows, cols = _int("rows", rows, 0), _int("cols", cols, 0)
    return int(_C.default_butterfly_size(rows, cols))


def flat_butterfly_layout(rows, cols, n_factors, butterfly_size=None):
    """Flat block butterfly layout ``I + B_2 + B_4 + ... + B_{2^m}`` on a block grid.

    With ``R = rows``, ``C = cols``, ``m = n_factors`` and butterfly size ``n``
    (``None``: the largest power of two ``<= min(R, C)``), block ``(i, j)`` is kept iff
    ``(p XOR q) in {0} U {2^s : 0 <= s < m}`` where ``p = floor(i * n / R)`` and
    ``q = floor(j * n / C)``. When ``R`` and ``C`` are multiples of ``n`` each butterfly
    cell is an ``(R/n) x (C/n)`` rectangle and the density is ``(m + 1) / n``; on an
    ``n x n`` grid every block-row and block-column holds exactly ``m + 1`` blocks.

    Parameters
    ----------
    rows, cols : int
        Block grid ``R x C`` (``2 <= n <= min(R, C)`` must hold).
    n_factors : int
        ``m``, with ``1 <= m <= log2(n)``.
    butterfly_size : int or None
        ``n``, a power of two with ``2 <= n <= min(R, C)``.

    Returns
    -------
    numpy.ndarray of bool, shape ``(R, C)``
    """
    rows, cols = _grid(rows, cols)
    m = _int("n_factors", n_factors)
    return _C.flat_butterfly_layout(rows, cols, m, _butterfly_size(butterfly_size))


def butterfly_factor_layout(n, k):
    """Support of the block butterfly factor ``B_k`` on an ``n x n`` grid.

    ``B_k`` is ``n/k`` copies of a ``k x k`` butterfly factor on the diagonal; block
    ``(i, j)`` is kept iff ``(i XOR j) in {0, k/2}``. ``n`` and ``k`` are powers of two
    with ``2 <= k <= n``.

    Returns
    -------
    numpy.ndarray of bool, shape ``(n, n)``
    """
    n = _int("n", n, 2, MAX_GRID)
    if n * n > MAX_CELLS:
        raise ValueError(f"n = {n} gives an n x n layout of more than 2**30 blocks")
    return _C.factor_layout(n, _int("k", k))


def butterfly_product_layout(rows, cols, n_factors, butterfly_size=None):
    """Support of the product ``B_{2^m} ... B_4 B_2`` of the first ``m`` factors.

    Same cell map as :func:`flat_butterfly_layout` (``p = floor(i*n/R)``,
    ``q = floor(j*n/C)``); block ``(i, j)`` is kept iff ``(p XOR q) < 2^m``, i.e. the
    cells form ``2^m x 2^m`` dense diagonal blocks. ``m = log2(n)`` gives a dense
    layout (the classic butterfly matrix ``B_n ... B_2``), the baseline the paper
    compares with.

    Returns
    -------
    numpy.ndarray of bool, shape ``(rows, cols)``
    """
    rows, cols = _grid(rows, cols)
    m = _int("n_factors", n_factors)
    return _C.butterfly_product_layout(rows, cols, m, _butterfly_size(butterfly_size))


def local_layout(rows, cols, window):
    """Local (banded) layout around the diagonal of the weight.

    Block ``(i, j)`` spans rows ``[i*C, (i+1)*C)`` and columns ``[j*R, (j+1)*R)`` of the
    unit square scaled by ``R*C``; it is kept iff
    ``j*R - (i+1)*C < window * min(R, C)`` and ``i*C - (j+1)*R < window * min(R, C)``.
    On a square grid this is ``|i - j| <= window``; ``window = 0`` keeps the blocks the
    diagonal passes through. ``0 <= window <= max(R, C)``.

    Returns
    -------
    numpy.ndarray of bool, shape ``(rows, cols)``
    """
    rows, cols = _grid(rows, cols)
    return _C.local_layout(rows, cols, _int("window", window))


def bigbird_layout(rows, cols, window=1, n_global=1, n_random=1, seed=0):
    """BigBird layout: window + global + random blocks.

    The :func:`local_layout` band of ``window``, plus the first ``n_global`` block-rows
    and block-columns (``0 <= n_global <= min(R, C)``), plus in each block-row
    ``min(n_random, free)`` distinct columns drawn uniformly among the ``free`` columns
    not yet kept in that row (``0 <= n_random <= C``). Deterministic given ``seed``
    (an int in ``[0, 2^64)``), identical on every platform.

    Returns
    -------
    numpy.ndarray of bool, shape ``(rows, cols)``
    """
    rows, cols = _grid(rows, cols)
    return _C.bigbird_layout(rows, cols, _int("window", window), _int("n_global", n_global),
                             _int("n_random", n_random), _seed(seed))


def sparse_transformer_layout(rows, cols, stride):
    """Sparse Transformer "fixed" layout: local chunks plus strided summary columns.

    Block ``(i, j)`` is kept iff ``floor(i / stride) == floor(j / stride)`` (same chunk
    of ``stride`` blocks) or ``j % stride == stride - 1`` (summary column).
    ``1 <= stride <= max(R, C)``. Not causal: intersect with a causal mask where needed.

    Returns
    -------
    numpy.ndarray of bool, shape ``(rows, cols)``
    """
    rows, cols = _grid(rows, cols)
    return _C.sparse_transformer_layout(rows, cols, _int("stride", stride))


def _seed(seed):
    s = _int("seed", seed, hi=2 ** 64 - 1)
    if not 0 <= s < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {s}")
    return s


def random_layout(rows, cols, density, seed=0):
    """Uniformly random layout with exactly ``floor(density * R * C + 0.5)`` blocks.

    Every subset of that size is equally likely; deterministic given ``seed``
    (an int in ``[0, 2^64)``). ``0 <= density <= 1``.

    Returns
    -------
    numpy.ndarray of bool, shape ``(rows, cols)``
    """
    rows, cols = _grid(rows, cols)
    if not is_real(density):
        raise TypeError(f"density must be a real number, got {type(density).__name__}")
    density = float(density)
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return _C.random_layout(rows, cols, density, _seed(seed))


def layout_to_mask(layout, block):
    """Expand a block layout to its element mask.

    ``mask[a, b] = layout[a // b1, b // b2]``.

    Parameters
    ----------
    layout : bool array-like, shape ``(R, C)``
    block : int or (int, int)
        Block size ``b1 x b2`` (an int means square blocks).

    Returns
    -------
    numpy.ndarray of bool, shape ``(R * b1, C * b2)``
    """
    b1, b2 = _block(block)
    lay = _bool2("layout", layout)
    M, N = lay.shape[0] * b1, lay.shape[1] * b2
    if M * N > MAX_CELLS:
        raise ValueError(f"the mask of a {lay.shape[0]} x {lay.shape[1]} layout with block "
                         f"{b1} x {b2} would have {M} x {N} cells, more than 2**30: use a "
                         "smaller block or layout")
    return _C.layout_to_mask(lay, b1, b2)


def mask_to_layout(mask, block):
    """Collapse a block-aligned element mask back to its layout.

    ``layout[i, j] = mask[i*b1, j*b2]``; ``ValueError`` when ``b1``/``b2`` do not divide
    the mask's shape or a ``b1 x b2`` block is only partially set.

    Parameters
    ----------
    mask : bool array-like, shape ``(M, N)``
    block : int or (int, int)

    Returns
    -------
    numpy.ndarray of bool, shape ``(M // b1, N // b2)``
    """
    b1, b2 = _block(block)
    return _C.mask_to_layout(_bool2("mask", mask), b1, b2)


def layout_to_csr(layout):
    """Block-CSR index of a layout: kept blocks row by row, columns ascending.

    Row ``i`` holds blocks ``row_ptr[i] <= k < row_ptr[i+1]`` at columns ``col_idx[k]``.

    Returns
    -------
    row_ptr : numpy.ndarray of int64, shape ``(R + 1,)``
    col_idx : numpy.ndarray of int64, shape ``(nnz,)``
    """
    return _C.layout_to_csr(_bool2("layout", layout))


def csr_transpose(rows, cols, row_ptr, col_idx):
    """Block-CSC (transpose) index of a block-CSR index.

    Column ``j`` holds CSC entries ``col_ptr[j] <= k < col_ptr[j+1]``, at block-row
    ``row_idx[k]`` (ascending), stored at CSR position ``csc_blk[k]``, so
    ``col_idx[csc_blk[k]] == j``. The CSR is validated (``row_ptr[0] == 0``,
    non-decreasing, ``col_idx`` in ``[0, cols)`` and strictly ascending per row).

    Returns
    -------
    col_ptr : numpy.ndarray of int64, shape ``(C + 1,)``
    row_idx, csc_blk : numpy.ndarray of int64, shape ``(nnz,)``
    """
    rows, cols = _grid(rows, cols, lo=0)
    return _C.csr_transpose(rows, cols, _index_array("row_ptr", row_ptr),
                            _index_array("col_idx", col_idx))


def _index_array(name, a):
    if a is None:
        raise TypeError(f"{name} must be a 1-D integer array, got None")
    arr = _asarray(name, a, "a 1-D integer array")
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class BlockIndex:
    """Everything the block-sparse kernels need to know about a layout.

    Attributes
    ----------
    rows, cols, nnz : int
        Block grid ``R x C`` and the number of kept blocks.
    row_ptr : int64 ``(R + 1,)``, col_idx : int64 ``(nnz,)``
        Block-CSR (storage order of the compact ``[nnz, b1, b2]`` blocks).
    col_ptr : int64 ``(C + 1,)``, row_idx : int64 ``(nnz,)``, csc_blk : int64 ``(nnz,)``
        Block-CSC view: ``csc_blk[k]`` is the CSR position of the k-th CSC block.
    layout : bool ``(R, C)``
    All arrays are read-only.
    """

    rows: int
    cols: int
    nnz: int
    row_ptr: np.ndarray
    col_idx: np.ndarray
    col_ptr: np.ndarray
    row_idx: np.ndarray
    csc_blk: np.ndarray
    layout: np.ndarray

    def __post_init__(self):
        # Once, when the index is built: the CUDA kernels and the composite ops trust it.
        from pixelfly.index_check import check_block_index
        check_block_index(self.rows, self.cols, self.row_ptr, self.col_idx, self.col_ptr,
                          self.row_idx, self.csc_blk)

    @classmethod
    def from_layout(cls, layout) -> "BlockIndex":
        """Build the CSR and CSC indices of a boolean ``(R, C)`` layout."""
        lay = np.ascontiguousarray(_bool2("layout", layout))
        R, C = lay.shape
        row_ptr, col_idx = _C.layout_to_csr(lay)
        col_ptr, row_idx, csc_blk = _C.csr_transpose(R, C, row_ptr, col_idx)
        lay = lay.copy()
        arrays = (row_ptr, col_idx, col_ptr, row_idx, csc_blk, lay)
        for a in arrays:
            a.setflags(write=False)
        return cls(int(R), int(C), int(row_ptr[-1]), *arrays)
