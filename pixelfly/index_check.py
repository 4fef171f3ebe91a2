"""Validation of a block-CSR / block-CSC index (torch-free, NumPy only).

The CUDA kernels and the composite (pure-PyTorch) ops trust the index contents: an index
with a wrong ``row_ptr``, an out-of-range ``col_idx`` or a ``csc_blk`` that is not the
CSC permutation would read and write out of bounds. :func:`check_block_index` checks
everything once, when an index is built (:class:`pixelfly.layouts.BlockIndex`, the
composite path's per-index plan), and raises ``ValueError`` naming the bad array.
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_block_index", "check_csr"]


def _int_array(name, a):
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def check_csr(rows: int, cols: int, row_ptr, col_idx):
    """Check a block-CSR of an ``rows x cols`` grid; returns the block-row of every block.

    ``row_ptr``: ``rows + 1`` entries, ``row_ptr[0] == 0``, non-decreasing, last entry
    ``== nnz``; ``col_idx``: in ``[0, cols)``, strictly ascending within each block-row."""
    row_ptr, col_idx = _int_array("row_ptr", row_ptr), _int_array("col_idx", col_idx)
    nnz = col_idx.size
    if row_ptr.size != rows + 1:
        raise ValueError(f"row_ptr must have rows + 1 = {rows + 1} entries, got {row_ptr.size}")
    if row_ptr[0] != 0:
        raise ValueError(f"row_ptr[0] must be 0, got {row_ptr[0]}")
    counts = np.diff(row_ptr)
    if (counts < 0).any():
        raise ValueError(f"row_ptr must be non-decreasing (block-row {int(np.argmax(counts < 0))})")
    if row_ptr[-1] != nnz:
        raise ValueError(f"row_ptr[-1] = {row_ptr[-1]} must equal nnz = col_idx.size = {nnz}")
    if nnz and (col_idx.min() < 0 or col_idx.max() >= cols):
        raise ValueError(f"col_idx entries must be in [0, cols = {cols}), got "
                         f"[{col_idx.min()}, {col_idx.max()}]")
    block_row = np.repeat(np.arange(rows, dtype=np.int64), counts)
    same_row = block_row[1:] == block_row[:-1]
    if (same_row & (col_idx[1:] <= col_idx[:-1])).any():
        raise ValueError("col_idx must be strictly ascending within each block-row")
    return block_row


def check_block_index(rows: int, cols: int, row_ptr, col_idx, col_ptr, row_idx, csc_blk=None):
    """Check a full block index (CSR plus its CSC transpose); ``ValueError`` names the array.

    The CSC part must be exactly the transpose of the CSR: ``col_ptr`` counts the blocks of
    each block-column, ``row_idx`` lists their block-rows in ascending order and
    ``csc_blk[k]`` is the CSR position of the k-th CSC block (a permutation of ``nnz``;
    ``None`` skips it: the attention index has no ``csc_blk``)."""
    block_row = check_csr(rows, cols, row_ptr, col_idx)
    col_idx = np.asarray(col_idx, dtype=np.int64)
    nnz = col_idx.size
    col_ptr = _int_array("col_ptr", col_ptr)
    row_idx = _int_array("row_idx", row_idx)
    csc = () if csc_blk is None else (("csc_blk", _int_array("csc_blk", csc_blk)),)
    if col_ptr.size != cols + 1:
        raise ValueError(f"col_ptr must have cols + 1 = {cols + 1} entries, got {col_ptr.size}")
    for name, a in (("row_idx", row_idx),) + csc:
        if a.size != nnz:
            raise ValueError(f"{name} must have nnz = {nnz} entries, got {a.size}")
    want_ptr = np.zeros(cols + 1, np.int64)
    np.cumsum(np.bincount(col_idx, minlength=cols), out=want_ptr[1:])
    if not np.array_equal(col_ptr, want_ptr):
        raise ValueError("col_ptr does not match col_idx (it must count the blocks of each "
                         "block-column, starting at 0)")
    order = np.lexsort((block_row, col_idx))           # CSC order: by column, then row
    if csc and not np.array_equal(csc[0][1], order):
        raise ValueError("csc_blk must be the CSC permutation of the CSR blocks "
                         "(col_idx[csc_blk[k]] ascending by column, then by row)")
    if not np.array_equal(row_idx, block_row[order]):
        raise ValueError("row_idx does not match row_ptr/col_idx (block-row of each CSC block)")
