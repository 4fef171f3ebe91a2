"""Fuzzing the public Python API with random and extreme arguments (hypothesis): every call
either returns a well-formed result or raises ValueError/TypeError naming one of its
arguments, with no C-internal names in the message; NaN/inf in attention inputs give the
reference's pattern. Bounded: a few seconds per test, the whole file well under a minute."""
import re

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from pixelfly import layouts, ops, reference  # noqa: E402
from pixelfly.experiments import data  # noqa: E402
from pixelfly.attention import build_attention_layout, gaussian_features, sparse_lowrank_attention  # noqa: E402
from pixelfly.attention_ops import AttentionIndex  # noqa: E402

INTERNAL = re.compile(r"\bpf_\w+|\bld[xyo]\b|C\*b2|R\*b1|PF_MAX_\w+|out of memory|"
                      r"too large to convert|index out of range|must have 0 columns")
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

EXTREME_INTS = st.sampled_from([-2 ** 64, -2 ** 63 - 1, -2 ** 63, -1, 0, 1, 2, 3, 4, 8, 2 ** 20,
                                2 ** 20 + 1, 2 ** 31, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 2 ** 70])
ANY_INT = st.one_of(st.integers(-3, 20), EXTREME_INTS)
JUNK = st.sampled_from([None, 1.5, float("nan"), True, "3", [1, 2], np.int64(4), np.uint64(2 ** 63)])
ARG = st.one_of(ANY_INT, ANY_INT, JUNK)
RAGGED = [[True], [True, False]]


def clean_failure(fn, args, names):
    """Run ``fn(*args)``; an exception must be ValueError/TypeError naming an argument."""
    try:
        return fn(*args), None
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert not INTERNAL.search(msg), f"{fn.__name__}{args!r}: internal detail in {msg!r}"
        assert any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names), \
            f"{fn.__name__}{args!r}: none of {names} named in {msg!r}"
        return None, e


GENERATORS = {
    "flat_butterfly_layout": (("rows", "cols", "n_factors", "butterfly_size"), 2),
    "butterfly_product_layout": (("rows", "cols", "n_factors", "butterfly_size"), 2),
    "local_layout": (("rows", "cols", "window"), 2),
    "sparse_transformer_layout": (("rows", "cols", "stride"), 2),
    "bigbird_layout": (("rows", "cols", "window", "n_global", "n_random", "seed"), 2),
    "random_layout": (("rows", "cols", "density", "seed"), 2),
    "butterfly_factor_layout": (("n", "k"), 1),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_layout_generators_fuzz(name):
    params, _ = GENERATORS[name]
    fn = getattr(layouts, name)

    @FAST
    @given(st.lists(ARG, min_size=len(params), max_size=len(params)))
    def check(args):
        if name == "random_layout":
            args[2] = args[2] if not isinstance(args[2], int) or args[2] in (0, 1) else 0.5
        out, err = clean_failure(fn, tuple(args), params)
        if err is None:
            assert out.dtype == np.bool_ and out.ndim == 2
            expect = (args[0], args[0]) if name == "butterfly_factor_layout" else tuple(args[:2])
            assert out.shape == expect

    check()


@FAST
@given(st.one_of(st.just(RAGGED), st.just(None), st.just(np.ones((2, 2, 2), bool)),
                 st.just(np.ones((3, 4), np.int8)), st.just(np.zeros((0, 3), bool)),
                 st.builds(lambda r, c: np.random.default_rng(r * 7 + c).random((r, c)) < 0.5,
                           st.integers(1, 6), st.integers(1, 6))),
       st.one_of(ANY_INT, st.tuples(ANY_INT, ANY_INT), JUNK))
def test_masks_and_indices_fuzz(layout, block):
    mask, err = clean_failure(layouts.layout_to_mask, (layout, block), ("layout", "block", "b1", "b2"))
    if err is None:
        b1, b2 = block if isinstance(block, tuple) else (block, block)
        assert mask.shape == (layout.shape[0] * b1, layout.shape[1] * b2)
        back, err = clean_failure(layouts.mask_to_layout, (mask, block), ("mask", "block"))
        assert err is None and np.array_equal(back, layout)
    csr, err = clean_failure(layouts.layout_to_csr, (layout,), ("layout",))
    if err is None:
        row_ptr, col_idx = csr
        assert row_ptr[-1] == len(col_idx) == int(np.asarray(layout).sum())
        res, err = clean_failure(layouts.csr_transpose, (layout.shape[0], layout.shape[1], row_ptr, col_idx),
                                 ("rows", "cols", "row_ptr", "col_idx"))
        assert err is None and res[0][-1] == len(col_idx)


@FAST
@given(st.integers(0, 3), st.integers(1, 3), ANY_INT, ANY_INT)
def test_ops_block_sizes_fuzz(seed, T, b1, b2):
    """bsmm_bwd_w with arbitrary b1/b2 (once `b1 = 2**62` said "dy must have 0 columns")."""
    lay = layouts.random_layout(3, 2, 0.5, seed=seed)
    idx = ops.index_tensors(layouts.BlockIndex.from_layout(lay))
    dy, x = torch.randn(T, 3 * 4, dtype=torch.float64), torch.randn(T, 2 * 4, dtype=torch.float64)
    out, err = clean_failure(lambda *a: ops.bsmm_bwd_w(*a[:2], *idx, b1=a[2], b2=a[3]),
                             (dy, x, b1, b2), ("b1", "b2"))
    if err is None:
        assert (b1, b2) == (4, 4)
        torch.testing.assert_close(out, reference.bsmm_bwd_w(dy, x, lay, 4, 4))


@FAST
@given(st.sampled_from(["get_batches", "iterate_batches", "ByteLMDataset"]), ARG, ARG)
def test_data_sizes_fuzz(fn, a, b):
    text = data.synthetic_text(300)
    if fn == "get_batches":
        res, err = clean_failure(lambda s, n: next(data.get_batches(text, s, n)), (a, b),
                                 ("seq_len", "batch_size"))
        if err is None:
            assert res[0].shape == (b, a)
    elif fn == "iterate_batches":
        res, err = clean_failure(lambda n: list(data.iterate_batches(torch.arange(7), batch_size=n)),
                                 (a,), ("batch_size",))
        if err is None:
            assert sum(len(t[0]) for t in res) == 7
    else:
        clean_failure(data.ByteLMDataset, (text, a, b), ("seq_len", "stride", "text"))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.sampled_from("qkv"), st.sampled_from([float("nan"), float("inf"), float("-inf")]),
       st.booleans(), st.sampled_from([0, 4]), st.integers(0, 2 ** 16),
       st.sampled_from(["pixelfly", "bigbird", "local", "dense"]))
def test_attention_nonfinite_fuzz(where, value, causal, rank, seed, layout):
    B, H, L, d, b = 1, 1, 32, 4, 8
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(B, H, L, d, generator=g, dtype=torch.float64) for _ in range(3)]
    pos = torch.randint(L, (1,), generator=g).item(), torch.randint(d, (1,), generator=g).item()
    qkv["qkv".index(where)][0, 0, pos[0], pos[1]] = value
    q, k, v = (t.float() for t in qkv)
    lay = build_attention_layout(L // b, layout, causal=causal)
    w = gaussian_features(rank, d, dtype=torch.float64) if rank else None
    y = sparse_lowrank_attention(q, k, v, AttentionIndex(lay), b, causal=causal, features=w).double()
    if rank:
        ref = reference.pixelfly_attention(*qkv, lay, b, w, causal=causal)
    else:
        ref = reference.masked_attention(*qkv, lay, b, causal)[0]
    for f in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(f(y), f(ref)), f.__name__
