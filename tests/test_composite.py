"""The composite (pure-PyTorch) block-sparse matmul ops, forced on the CPU through the switch
(``pixelfly.ops.use_composite("cpu")``), so ``torch.ops.pixelfly.*`` run them: against the
float64 oracle over the native tests' shapes and dtypes, against the native CPU kernels,
gradients, opcheck, torch.compile, chunking, index validation and the plan cache."""
import random

import pytest
import torch

import test_ops as native_tests
from pixelfly import composite, ops
from pixelfly.layouts import BlockIndex, flat_butterfly_layout, random_layout
from test_ops import BLOCKS, ROWS, make_case
from testing import dtypes


@pytest.fixture
def forced():
    """torch.ops.pixelfly.* on CPU run the composite ops for the test's duration."""
    prev = ops.use_composite("cpu", True)
    assert ops.implementation("cpu") == "composite"
    yield
    ops.use_composite("cpu", prev)


def native(op, *args):
    """The native CPU kernel, whatever the switch says (the composite overlay removed)."""
    prev = ops.use_composite("cpu", False)
    try:
        return getattr(torch.ops.pixelfly, op)(*args)
    finally:
        ops.use_composite("cpu", prev)


# The native tests' bodies, run with the composite ops behind torch.ops.pixelfly.*.
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("b1,b2", BLOCKS)
@pytest.mark.parametrize("T", ROWS)
def test_three_ops_match_reference(forced, dtype, b1, b2, T):
    native_tests.test_three_ops_match_reference("cpu", dtype, b1, b2, T)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_flat_butterfly_rectangular_and_empty_layouts(forced, m):
    native_tests.test_flat_butterfly_rectangular_and_empty_layouts(m)


def test_gradcheck_and_gradgradcheck(forced):
    native_tests.test_gradcheck_and_gradgradcheck()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(forced, dtype):
    native_tests.test_opcheck(dtype)


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("b1,b2", BLOCKS)
def test_agrees_with_native_kernels(forced, dtype, b1, b2):
    rng = random.Random(b1 * 100 + b2)
    R, C, T = rng.randint(1, 6), rng.randint(1, 6), rng.randint(1, 70)
    _, it, blocks, x, dy = make_case(R, C, b1, b2, T, dtype, seed=rng.randint(0, 99))
    ours = (ops.bsmm_fwd(x, blocks, *it), ops.bsmm_bwd_x(dy, blocks, *it),
            ops.bsmm_bwd_w(dy, x, *it, b1=b1, b2=b2))
    theirs = (native("bsmm_fwd", x, blocks, *it), native("bsmm_bwd_x", dy, blocks, *it),
              native("bsmm_bwd_w", dy, x, *it, b1, b2))
    # Both round each output once from an fp32 (fp64) accumulation, in different orders.
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1.6e-2}[dtype]
    for a, b in zip(ours, theirs):
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def test_butterfly_cells_are_grouped():
    # Every block-row of a flat butterfly cell reads the same input blocks: one group each.
    layout = flat_butterfly_layout(16, 16, 2, butterfly_size=4)       # cells of 4 x 4 blocks
    it = ops.index_tensors(BlockIndex.from_layout(layout))
    has_empty, buckets = composite._plan("csr", it, 16, 16)
    assert not has_empty and len(buckets) == 1
    rows, gidx, wpos = buckets[0]
    assert rows.shape == (4, 4) and gidx.shape == (4, 12) and wpos.shape == (4, 4, 12)


def test_strided_rows_and_chunking_agree(forced, monkeypatch):
    native_tests.test_strided_rows_are_honoured()
    layout, it, blocks, x, dy = make_case(6, 7, 16, 16, 45, torch.float32, seed=3)
    full = (ops.bsmm_fwd(x, blocks, *it), ops.bsmm_bwd_x(dy, blocks, *it),
            ops.bsmm_bwd_w(dy, x, *it, b1=16, b2=16))
    monkeypatch.setattr(composite, "CHUNK_BYTES", 1)       # one group per batched matmul
    small = (ops.bsmm_fwd(x, blocks, *it), ops.bsmm_bwd_x(dy, blocks, *it),
             ops.bsmm_bwd_w(dy, x, *it, b1=16, b2=16))
    for a, b in zip(full, small):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_torch_compile_forward_backward(forced):
    layout, it, blocks, x, dy = make_case(5, 6, 16, 16, 33, torch.float32, seed=4)

    def step(a, w):
        return (ops.bsmm_fwd(a, w, *it) * dy).sum()

    xa, wa = x.clone().requires_grad_(), blocks.clone().requires_grad_()
    step(xa, wa).backward()
    xb, wb = x.clone().requires_grad_(), blocks.clone().requires_grad_()
    torch.compile(step, backend="aot_eager", fullgraph=True)(xb, wb).backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    torch.testing.assert_close(wb.grad, wa.grad)


def _bad(it, which, fix):
    t = [a.clone() for a in it]
    fix(t[which])
    return t


def test_bad_index_is_a_python_error(forced):
    layout = random_layout(4, 5, 0.5, seed=7)
    _, it, blocks, x, dy = make_case(4, 5, 8, 8, 3, torch.float32, layout=layout)
    cases = [
        (_bad(it, 1, lambda t: t.__setitem__(0, 5)), "col_idx entries must be in"),
        (_bad(it, 0, lambda t: t.__setitem__(1, t[2] + 1)), "row_ptr must be non-decreasing"),
        (_bad(it, 4, lambda t: t.copy_(t.flip(0))), "csc_blk"),
        (_bad(it, 2, lambda t: t.__setitem__(1, t[1] + 1)), "col_ptr"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ops.bsmm_fwd(x, blocks, *bad)
    with pytest.raises(TypeError, match="floating-point"):
        ops.bsmm_fwd(x.int(), blocks.int(), *it)
    with pytest.raises(TypeError, match="share a dtype"):
        ops.bsmm_fwd(x, blocks.double(), *it)
    with pytest.raises(ValueError, match="columns"):
        ops.bsmm_fwd(x[:, :-1], blocks, *it)
    with pytest.raises(ValueError, match="blocks has"):
        ops.bsmm_fwd(x, blocks[1:], *it)
    with pytest.raises(TypeError, match="int64"):
        ops.bsmm_fwd(x, blocks, it[0].int(), *it[1:])
    with pytest.raises(ValueError, match="same number of rows"):
        ops.bsmm_bwd_w(dy[:-1], x, *it, b1=8, b2=8)


def test_plan_is_built_once_and_rebuilt_after_mutation(forced, monkeypatch):
    layout, it, blocks, x, dy = make_case(4, 4, 8, 8, 6, torch.float64, seed=8)
    builds = []
    orig = composite.group_buckets
    monkeypatch.setattr(composite, "group_buckets", lambda *a: builds.append(1) or orig(*a))
    y = ops.bsmm_fwd(x, blocks, *it)
    ops.bsmm_fwd(x, blocks, *it)
    assert len(builds) == 1
    it[1][0] = 99                                 # in-place change: version bump, re-validated
    with pytest.raises(ValueError, match="col_idx"):
        ops.bsmm_fwd(x, blocks, *it)
    assert len(builds) == 1
    fresh = ops.index_tensors(BlockIndex.from_layout(layout))
    torch.testing.assert_close(ops.bsmm_fwd(x, blocks, *fresh), y)
    assert len(builds) == 2


def test_block_index_is_validated_when_built():
    good = BlockIndex.from_layout(random_layout(4, 5, 0.5, seed=9))
    fields = dict(rows=good.rows, cols=good.cols, nnz=good.nnz, row_ptr=good.row_ptr,
                  col_idx=good.col_idx, col_ptr=good.col_ptr, row_idx=good.row_idx,
                  csc_blk=good.csc_blk, layout=good.layout)
    BlockIndex(**fields)
    bad_col = good.col_idx.copy()
    bad_col[0] = good.cols
    with pytest.raises(ValueError, match="col_idx"):
        BlockIndex(**dict(fields, col_idx=bad_col))
    with pytest.raises(ValueError, match="csc_blk"):
        BlockIndex(**dict(fields, csc_blk=good.csc_blk[::-1].copy()))
    with pytest.raises(ValueError, match="row_ptr"):
        BlockIndex(**dict(fields, row_ptr=good.row_ptr[::-1].copy()))
