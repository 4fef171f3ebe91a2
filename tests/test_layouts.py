"""Layouts, masks and block indices against SPEC section 1/5, with plain-Python oracles."""
import itertools
import math
import random

import numpy as np
import pytest

from pixelfly import layouts as L


# ----------------------------------------------------------------- oracles (pure Python)

def flat_oracle(R, C, m, n):
    keep = {0} | {1 << s for s in range(m)}
    return np.array([[((i * n // R) ^ (j * n // C)) in keep for j in range(C)] for i in range(R)])


def product_oracle(R, C, m, n):
    return np.array([[((i * n // R) ^ (j * n // C)) < (1 << m) for j in range(C)] for i in range(R)])


def factor_oracle(n, k):
    return np.array([[(i ^ j) in (0, k // 2) for j in range(n)] for i in range(n)])


def default_n(R, C):
    lo, n = min(R, C), 1
    while 2 * n <= lo:
        n *= 2
    return n if lo >= 2 else 0


def grids():
    sizes = [2, 3, 4, 5, 7, 8, 12, 16, 20, 32, 33]
    return [(R, C) for R in sizes for C in sizes]


# ----------------------------------------------------------------- flat butterfly

@pytest.mark.parametrize("R,C", grids())
def test_flat_butterfly_support(R, C):
    n = 2
    while n <= min(R, C):
        for m in range(1, int(math.log2(n)) + 1):
            lay = L.flat_butterfly_layout(R, C, m, n)
            assert lay.dtype == np.bool_ and lay.shape == (R, C)
            np.testing.assert_array_equal(lay, flat_oracle(R, C, m, n), err_msg=f"{R}x{C} m={m} n={n}")
        n *= 2
    dn = default_n(R, C)
    assert L.default_butterfly_size(R, C) == dn
    np.testing.assert_array_equal(L.flat_butterfly_layout(R, C, 1), flat_oracle(R, C, 1, dn))


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_flat_butterfly_m_plus_one_per_row_and_column(n):
    for m in range(1, int(math.log2(n)) + 1):
        lay = L.flat_butterfly_layout(n, n, m, n)
        assert (lay.sum(axis=1) == m + 1).all() and (lay.sum(axis=0) == m + 1).all()
        assert (lay == lay.T).all()  # XOR is symmetric


@pytest.mark.parametrize("n,a,b", [(2, 1, 1), (4, 2, 3), (8, 3, 1), (8, 2, 4), (16, 1, 2), (4, 5, 7)])
def test_density_and_stretch_on_multiples(n, a, b):
    R, C = n * a, n * b
    for m in range(1, int(math.log2(n)) + 1):
        lay = L.flat_butterfly_layout(R, C, m, n)
        assert lay.sum() * n == (m + 1) * R * C  # density (m + 1) / n exactly
        cells = L.flat_butterfly_layout(n, n, m, n)
        # every cell is an (R/n) x (C/n) rectangle of identical blocks
        np.testing.assert_array_equal(lay, np.kron(cells, np.ones((a, b), dtype=bool)))


def test_default_butterfly_size():
    for R, C in itertools.product([0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 1000], repeat=2):
        assert L.default_butterfly_size(R, C) == default_n(R, C)
    assert L.default_butterfly_size(24, 96) == 16


def test_factor_layouts_and_flat_is_their_sum():
    for n in [2, 4, 8, 16, 32]:
        for k in [2 ** s for s in range(1, int(math.log2(n)) + 1)]:
            f = L.butterfly_factor_layout(n, k)
            np.testing.assert_array_equal(f, factor_oracle(n, k))
            # n/k diagonal copies of a k x k factor
            blk = factor_oracle(k, k)
            np.testing.assert_array_equal(f, np.kron(np.eye(n // k, dtype=bool), blk))
        for m in range(1, int(math.log2(n)) + 1):
            s = np.eye(n, dtype=bool)
            for t in range(1, m + 1):
                s |= L.butterfly_factor_layout(n, 2 ** t)
            np.testing.assert_array_equal(L.flat_butterfly_layout(n, n, m, n), s)


@pytest.mark.parametrize("R,C", [(8, 8), (16, 16), (6, 10), (16, 32), (33, 20)])
def test_product_support(R, C):
    n = default_n(R, C)
    for m in range(1, int(math.log2(n)) + 1):
        lay = L.butterfly_product_layout(R, C, m, n)
        np.testing.assert_array_equal(lay, product_oracle(R, C, m, n))
    assert L.butterfly_product_layout(R, C, int(math.log2(n)), n).all()  # full product is dense
    if R == C == n:  # product support == boolean product of the factors' supports
        for m in range(1, int(math.log2(n)) + 1):
            acc = np.eye(n, dtype=int)
            for t in range(1, m + 1):
                acc = (L.butterfly_factor_layout(n, 2 ** t).astype(int) @ acc) > 0
            np.testing.assert_array_equal(L.butterfly_product_layout(n, n, m, n), acc)


# ----------------------------------------------------------------- baselines

def test_local_layout():
    for w in range(5):
        lay = L.local_layout(13, 13, w)
        exp = np.array([[abs(i - j) <= w for j in range(13)] for i in range(13)])
        np.testing.assert_array_equal(lay, exp)
    for R, C, w in [(4, 8, 0), (8, 4, 1), (5, 13, 2), (13, 5, 0), (3, 7, 1)]:
        g = min(R, C)
        exp = np.array([[j * R - (i + 1) * C < w * g and i * C - (j + 1) * R < w * g
                         for j in range(C)] for i in range(R)])
        lay = L.local_layout(R, C, w)
        np.testing.assert_array_equal(lay, exp)
        assert lay.any(axis=0).all() and lay.any(axis=1).all()
    np.testing.assert_array_equal(L.local_layout(4, 8, 0), np.kron(np.eye(4, dtype=bool), np.ones((1, 2), bool)))


@pytest.mark.parametrize("R,C,w,g,r", [(16, 16, 1, 1, 2), (12, 20, 0, 2, 3), (20, 9, 2, 0, 1), (8, 8, 0, 0, 8)])
def test_bigbird_layout(R, C, w, g, r):
    a = L.bigbird_layout(R, C, w, g, r, seed=5)
    np.testing.assert_array_equal(a, L.bigbird_layout(R, C, w, g, r, seed=5))
    band = L.local_layout(R, C, w)
    fixed = band.copy()
    fixed[:g, :] = True
    fixed[:, :g] = True
    assert (a >= fixed).all()
    extra = (a & ~fixed).sum(axis=1)
    np.testing.assert_array_equal(extra, np.minimum(r, C - fixed.sum(axis=1)))
    if r and (C - fixed.sum(axis=1) > r).any():
        assert any(not np.array_equal(a, L.bigbird_layout(R, C, w, g, r, seed=s)) for s in range(6, 12))


def test_sparse_transformer_layout():
    for R, C, s in [(12, 12, 3), (16, 16, 4), (10, 17, 5), (9, 9, 1), (7, 4, 7)]:
        exp = np.array([[i // s == j // s or j % s == s - 1 for j in range(C)] for i in range(R)])
        np.testing.assert_array_equal(L.sparse_transformer_layout(R, C, s), exp)


def test_random_layout_count_and_seed():
    rng = random.Random(0)
    for _ in range(40):
        R, C = rng.randint(1, 40), rng.randint(1, 40)
        d = rng.random()
        lay = L.random_layout(R, C, d, seed=rng.randrange(2 ** 64))
        assert lay.sum() == math.floor(d * R * C + 0.5)
    a = L.random_layout(32, 32, 0.3, seed=1)
    np.testing.assert_array_equal(a, L.random_layout(32, 32, 0.3, seed=1))
    assert not np.array_equal(a, L.random_layout(32, 32, 0.3, seed=2))
    assert L.random_layout(5, 5, 1.0).all() and not L.random_layout(5, 5, 0.0).any()
    assert L.random_layout(2, 2, 0.125).sum() == 1  # 0.5 rounds half up
    # roughly uniform: each cell's frequency over many seeds near the density
    freq = np.mean([L.random_layout(4, 4, 0.25, seed=s) for s in range(2000)], axis=0)
    assert np.abs(freq - 0.25).max() < 0.05


# ----------------------------------------------------------------- masks and indices

def test_mask_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(30):
        R, C, b1, b2 = (int(x) for x in rng.integers([0, 0, 1, 1], [9, 9, 6, 6]))
        lay = rng.random((R, C)) < 0.4
        mask = L.layout_to_mask(lay, (b1, b2))
        assert mask.shape == (R * b1, C * b2) and mask.dtype == np.bool_
        exp = np.array([[lay[a // b1, b // b2] for b in range(C * b2)] for a in range(R * b1)],
                       dtype=bool).reshape(R * b1, C * b2)
        np.testing.assert_array_equal(mask, exp)
        np.testing.assert_array_equal(L.mask_to_layout(mask, (b1, b2)), lay)
    lay = L.flat_butterfly_layout(8, 8, 2)
    np.testing.assert_array_equal(L.mask_to_layout(L.layout_to_mask(lay, 4), 4), lay)
    np.testing.assert_array_equal(L.layout_to_mask(lay[:, ::2], 3).shape, (24, 12))  # non-contiguous


def test_mask_partial_block_rejected():
    mask = L.layout_to_mask(np.eye(3, dtype=bool), 2)
    mask[0, 1] = False
    with pytest.raises(ValueError, match="block"):
        L.mask_to_layout(mask, 2)


def csr_oracle(lay):
    row_ptr, col_idx = [0], []
    for i in range(lay.shape[0]):
        for j in range(lay.shape[1]):
            if lay[i, j]:
                col_idx.append(j)
        row_ptr.append(len(col_idx))
    return row_ptr, col_idx


def test_csr_and_transpose_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(40):
        R, C = (int(x) for x in rng.integers(0, 12, 2))
        lay = rng.random((R, C)) < rng.random()
        rp, ci = L.layout_to_csr(lay)
        assert rp.dtype == np.int64 and ci.dtype == np.int64
        erp, eci = csr_oracle(lay)
        assert rp.tolist() == erp and ci.tolist() == eci
        cp, ri, cb = L.csr_transpose(R, C, rp, ci)
        ecp, eri = csr_oracle(lay.T)
        assert cp.tolist() == ecp and ri.tolist() == eri
        # csc_blk points back into CSR storage: same (row, col) block
        rows_of = np.repeat(np.arange(R), np.diff(rp))
        for k in range(len(cb)):
            j = np.searchsorted(cp, k, side="right") - 1
            assert ci[cb[k]] == j and rows_of[cb[k]] == ri[k]
        back = np.zeros((R, C), bool)
        for j in range(C):
            back[ri[cp[j]:cp[j + 1]], j] = True
        np.testing.assert_array_equal(back, lay)
        idx = L.BlockIndex.from_layout(lay)
        assert (idx.rows, idx.cols, idx.nnz) == (R, C, int(lay.sum()))
        for name, arr in [("row_ptr", rp), ("col_idx", ci), ("col_ptr", cp), ("row_idx", ri), ("csc_blk", cb)]:
            got = getattr(idx, name)
            assert got.dtype == np.int64 and not got.flags.writeable
            np.testing.assert_array_equal(got, arr)
        np.testing.assert_array_equal(idx.layout, lay)


def test_block_index_is_frozen():
    idx = L.BlockIndex.from_layout(L.flat_butterfly_layout(4, 4, 1))
    with pytest.raises(Exception):
        idx.nnz = 3
    with pytest.raises(ValueError):
        idx.col_idx[0] = 1


@pytest.mark.parametrize("row_ptr,col_idx,word", [
    ([1, 2, 3], [0, 1, 2], "row_ptr"),
    ([0, 2, 1], [0], "row_ptr"),
    ([0, 2, 3], [1, 1, 0], "col_idx"),
    ([0, 2, 3], [0, 4, 0], "col_idx"),
    ([0, 2, 3], [-1, 2, 0], "col_idx"),
    ([0, 5, 5], [0, 1, 2, 3, 0], "row_ptr"),
    ([0, 1], [0], "row_ptr"),           # wrong length
    ([0, 1, 2], [0], "col_idx"),        # wrong nnz
])
def test_invalid_csr(row_ptr, col_idx, word):
    with pytest.raises(ValueError, match=word):
        L.csr_transpose(2, 4, np.array(row_ptr), np.array(col_idx))


# ----------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("call,exc,word", [
    (lambda: L.flat_butterfly_layout(8, 8, 4), ValueError, "n_factors"),
    (lambda: L.flat_butterfly_layout(8, 8, 0), ValueError, "n_factors"),
    (lambda: L.flat_butterfly_layout(8, 8, 1, 6), ValueError, "butterfly_size"),
    (lambda: L.flat_butterfly_layout(8, 8, 1, 16), ValueError, "butterfly_size"),
    (lambda: L.flat_butterfly_layout(8, 8, 1, 0), ValueError, "butterfly_size"),
    (lambda: L.flat_butterfly_layout(8, 8, 1, 1), ValueError, "butterfly_size"),
    (lambda: L.flat_butterfly_layout(1, 8, 1), ValueError, "rows"),
    (lambda: L.flat_butterfly_layout(-8, 8, 1), ValueError, "rows"),
    (lambda: L.flat_butterfly_layout(8, -8, 1), ValueError, "cols"),
    (lambda: L.flat_butterfly_layout(2 ** 21, 8, 1), ValueError, "rows"),
    (lambda: L.flat_butterfly_layout(2 ** 20, 2 ** 20, 1), ValueError, "rows \\* cols"),
    (lambda: L.flat_butterfly_layout(2 ** 62, 8, 1), ValueError, "rows"),
    (lambda: L.flat_butterfly_layout(8.0, 8, 1), TypeError, "rows"),
    (lambda: L.flat_butterfly_layout(8, True, 1), TypeError, "cols"),
    (lambda: L.flat_butterfly_layout(8, 8, 1.5), TypeError, "n_factors"),
    (lambda: L.flat_butterfly_layout(8, 8, 1, "8"), TypeError, "butterfly_size"),
    (lambda: L.butterfly_product_layout(8, 8, 4), ValueError, "n_factors"),
    (lambda: L.butterfly_factor_layout(8, 3), ValueError, "k"),
    (lambda: L.butterfly_factor_layout(8, 16), ValueError, "k"),
    (lambda: L.butterfly_factor_layout(6, 2), ValueError, "n"),
    (lambda: L.butterfly_factor_layout(2 ** 40, 2), ValueError, "n"),
    (lambda: L.local_layout(4, 4, -1), ValueError, "window"),
    (lambda: L.bigbird_layout(4, 4, n_global=5), ValueError, "n_global"),
    (lambda: L.bigbird_layout(4, 4, n_random=-1), ValueError, "n_random"),
    (lambda: L.bigbird_layout(4, 4, seed=-1), ValueError, "seed"),
    (lambda: L.bigbird_layout(4, 4, seed=1.0), TypeError, "seed"),
    (lambda: L.sparse_transformer_layout(4, 4, 0), ValueError, "stride"),
    (lambda: L.random_layout(4, 4, 1.5), ValueError, "density"),
    (lambda: L.random_layout(4, 4, float("nan")), ValueError, "density"),
    (lambda: L.random_layout(4, 4, "0.5"), TypeError, "density"),
    (lambda: L.random_layout(4, 4, 0.5, seed=2 ** 64), ValueError, "seed"),
    (lambda: L.layout_to_mask(np.ones((2, 2)), 2), TypeError, "layout"),
    (lambda: L.layout_to_mask(np.ones((2, 2), int), 2), TypeError, "layout"),
    (lambda: L.layout_to_mask(np.ones(4, bool), 2), ValueError, "layout"),
    (lambda: L.layout_to_mask(None, 2), TypeError, "layout"),
    (lambda: L.layout_to_mask(np.ones((2, 2), bool), 0), ValueError, "block"),
    (lambda: L.layout_to_mask(np.ones((2, 2), bool), (2, 2, 2)), ValueError, "block"),
    (lambda: L.layout_to_mask(np.ones((2, 2), bool), 2.0), TypeError, "block"),
    (lambda: L.layout_to_mask(np.ones((1024, 1024), bool), 64), ValueError, "mask of a 1024 x 1024 layout"),
    (lambda: L.mask_to_layout(np.ones((6, 6), bool), 4), ValueError, "b1"),
    (lambda: L.mask_to_layout(np.ones((8, 6), bool), (2, 4)), ValueError, "b2"),
    (lambda: L.mask_to_layout(np.ones((6, 6), np.float32), 2), TypeError, "mask"),
    (lambda: L.mask_to_layout(np.ones((2, 2, 2), bool), 2), ValueError, "mask"),
    (lambda: L.layout_to_csr(np.ones((2, 2), np.uint8)), TypeError, "layout"),
    (lambda: L.csr_transpose(2, 4, np.array([0.0, 1.0, 2.0]), np.array([0, 1])), TypeError, "row_ptr"),
    (lambda: L.csr_transpose(2, 4, np.array([0, 1, 2]), np.array([[0, 1]])), ValueError, "col_idx"),
    (lambda: L.csr_transpose(-1, 4, np.array([0]), np.array([0])), ValueError, "rows"),
    (lambda: L.BlockIndex.from_layout(np.zeros((2, 2), np.int8)), TypeError, "layout"),
    (lambda: L.default_butterfly_size(4.0, 4), TypeError, "rows"),
])
def test_bad_arguments(call, exc, word):
    with pytest.raises(exc, match=word):
        call()
