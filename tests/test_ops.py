"""The block-sparse ops against the pure-PyTorch reference (float64 oracle)."""
import random

import numpy as np
import pytest
import torch

import pixelfly
from pixelfly import ops, reference
from pixelfly.layouts import BlockIndex, flat_butterfly_layout, random_layout
from testing import assert_close_to_oracle, assert_same_across_threads_and_isas, devices, dtypes

BLOCKS = [(16, 16), (32, 32), (64, 64), (16, 32), (32, 16), (8, 24), (3, 5)]
ROWS = [0, 1, 7, 33, 100]


def make_case(R, C, b1, b2, T, dtype, density=0.4, seed=0, device="cpu", layout=None):
    if layout is None:
        layout = random_layout(R, C, density, seed=seed)
    idx = BlockIndex.from_layout(layout)
    it = ops.index_tensors(idx, device)
    blocks = torch.randn(idx.nnz, b1, b2, dtype=torch.float64, device=device)
    x = torch.randn(T, C * b2, dtype=torch.float64, device=device)
    dy = torch.randn(T, R * b1, dtype=torch.float64, device=device)
    return layout, it, blocks.to(dtype), x.to(dtype), dy.to(dtype)


def oracle_and_baseline(fn, *tensors, dtype):
    """fn on float64 copies (oracle) and on same-dtype copies computed by dense PyTorch."""
    return fn(*(t.double() for t in tensors)), fn(*(t.to(dtype) for t in tensors))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("b1,b2", BLOCKS)
@pytest.mark.parametrize("T", ROWS)
def test_three_ops_match_reference(device, dtype, b1, b2, T):
    rng = random.Random(b1 * 1000 + b2 * 10 + T)
    R, C = rng.randint(1, 5), rng.randint(1, 5)
    layout, it, blocks, x, dy = make_case(R, C, b1, b2, T, dtype, seed=rng.randint(0, 99),
                                          device=device)
    lay = torch.as_tensor(layout)
    y = ops.bsmm_fwd(x, blocks, *it)
    y64, ybase = oracle_and_baseline(lambda a, w: reference.bsmm_fwd(a, w, lay), x, blocks, dtype=dtype)
    assert_close_to_oracle(y, y64, ybase, "fwd")
    dx = ops.bsmm_bwd_x(dy, blocks, *it)
    dx64, dxbase = oracle_and_baseline(lambda g, w: reference.bsmm_bwd_x(g, w, lay), dy, blocks, dtype=dtype)
    assert_close_to_oracle(dx, dx64, dxbase, "bwd_x")
    dw = ops.bsmm_bwd_w(dy, x, *it, b1=b1, b2=b2)
    dw64, dwbase = oracle_and_baseline(lambda g, a: reference.bsmm_bwd_w(g, a, lay, b1, b2), dy, x, dtype=dtype)
    assert_close_to_oracle(dw, dw64, dwbase, "bwd_w")


@pytest.mark.parametrize("m", [1, 2, 3])
def test_flat_butterfly_rectangular_and_empty_layouts(m):
    for R, C in [(8, 8), (4, 16), (16, 4), (6, 10)]:
        layout = flat_butterfly_layout(R, C, min(m, int(np.log2(min(R, C)) // 1) or 1))
        _, it, blocks, x, dy = make_case(R, C, 16, 16, 19, torch.float32, layout=layout)
        y = ops.bsmm_fwd(x, blocks, *it)
        ref = reference.bsmm_fwd(x.double(), blocks.double(), torch.as_tensor(layout))
        torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    empty = np.zeros((3, 4), dtype=bool)
    _, it, blocks, x, dy = make_case(3, 4, 16, 16, 5, torch.float32, layout=empty)
    assert torch.equal(ops.bsmm_fwd(x, blocks, *it), torch.zeros(5, 48))
    assert torch.equal(ops.bsmm_bwd_x(dy, blocks, *it), torch.zeros(5, 64))
    assert ops.bsmm_bwd_w(dy, x, *it, b1=16, b2=16).shape == (0, 16, 16)


def test_strided_rows_are_honoured():
    layout, it, blocks, x, _ = make_case(3, 4, 16, 16, 9, torch.float32, seed=3)
    wide = torch.randn(9, 100)
    wide[:, 10:74] = x
    y = ops.bsmm_fwd(wide[:, 10:74], blocks, *it)
    torch.testing.assert_close(y, ops.bsmm_fwd(x, blocks, *it))


def test_gradcheck_and_gradgradcheck():
    layout, it, blocks, x, dy = make_case(3, 4, 4, 2, 5, torch.float64, seed=1)
    blocks.requires_grad_(), x.requires_grad_(), dy.requires_grad_()
    b1, b2 = blocks.shape[1:]
    torch.autograd.gradcheck(lambda a, w: ops.bsmm_fwd(a, w, *it), (x, blocks))
    torch.autograd.gradgradcheck(lambda a, w: ops.bsmm_fwd(a, w, *it), (x, blocks))
    torch.autograd.gradcheck(lambda g, w: ops.bsmm_bwd_x(g, w, *it), (dy, blocks))
    torch.autograd.gradcheck(lambda g, a: ops.bsmm_bwd_w(g, a, *it, b1=b1, b2=b2), (dy, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    layout, it, blocks, x, dy = make_case(4, 3, 8, 16, 6, dtype, seed=2)
    b1, b2 = blocks.shape[1:]
    for op, args in [
        (torch.ops.pixelfly.bsmm_fwd.default, (x.requires_grad_(), blocks.requires_grad_(), *it)),
        (torch.ops.pixelfly.bsmm_bwd_x.default, (dy.requires_grad_(), blocks, *it)),
        (torch.ops.pixelfly.bsmm_bwd_w.default, (dy, x, *it, b1, b2)),
    ]:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threads_and_isas_agree(dtype):
    """Bitwise: every ISA (with bf16, 4 computes on bf16 pairs with vdpbf16ps) and thread count."""
    layout, it, blocks, x, dy = make_case(6, 5, 32, 32, 77, dtype, seed=5)
    assert_same_across_threads_and_isas(lambda: (
        ops.bsmm_fwd(x, blocks, *it), ops.bsmm_bwd_x(dy, blocks, *it), ops.bsmm_bwd_w(dy, x, *it, b1=32, b2=32)))


def test_bad_inputs_raise_clear_errors():
    layout, it, blocks, x, dy = make_case(3, 4, 16, 16, 5, torch.float32, seed=4)
    with pytest.raises(TypeError, match="float32|dtype"):
        ops.bsmm_fwd(x.int(), blocks.int(), *it)
    with pytest.raises(TypeError, match="share a dtype"):
        ops.bsmm_fwd(x, blocks.double(), *it)
    with pytest.raises(ValueError, match="columns"):
        ops.bsmm_fwd(x[:, :-1], blocks, *it)
    xt = torch.randn(x.shape[1], x.shape[0]).t()  # strided input: computed, like a contiguous one
    torch.testing.assert_close(ops.bsmm_fwd(xt, blocks, *it), ops.bsmm_fwd(xt.contiguous(), blocks, *it),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="2-D"):
        ops.bsmm_fwd(x[None], blocks, *it)
    with pytest.raises(ValueError, match="blocks"):
        ops.bsmm_fwd(x, blocks[1:], *it)
    with pytest.raises(TypeError, match="int64"):
        ops.bsmm_fwd(x, blocks, it[0].int(), *it[1:])
    bad = it[1].clone()
    if bad.numel():
        bad[0] = 99
        with pytest.raises(ValueError):
            ops.bsmm_fwd(x, blocks, it[0], bad, *it[2:])
    with pytest.raises(ValueError, match="rows"):
        ops.bsmm_bwd_w(dy[:-1], x, *it, b1=16, b2=16)


def test_single_row_with_column_stride_is_read_correctly():
    """A one-row x whose columns are not adjacent (x[:, ::2]) was read as if they were."""
    layout, it, blocks, x, dy = make_case(3, 4, 8, 8, 1, torch.float64, seed=6)
    lay = torch.as_tensor(layout)
    wide = torch.randn(1, 2 * x.shape[1], dtype=torch.float64)
    xs, dys = wide[:, ::2], torch.randn(1, 2 * dy.shape[1], dtype=torch.float64)[:, ::2]
    torch.testing.assert_close(ops.bsmm_fwd(xs, blocks, *it), reference.bsmm_fwd(xs, blocks, lay))
    torch.testing.assert_close(ops.bsmm_bwd_x(dys, blocks, *it), reference.bsmm_bwd_x(dys, blocks, lay))
    torch.testing.assert_close(ops.bsmm_bwd_w(dys, xs, *it, b1=8, b2=8),
                               reference.bsmm_bwd_w(dys, xs, lay, 8, 8))


def test_raw_ops_keep_their_invariant_checks():
    """torch.ops.pixelfly.* called directly (no Python checks) still refuses what the
    kernels cannot read safely, with a ValueError/TypeError rather than a crash."""
    layout, it, blocks, x, dy = make_case(3, 4, 16, 16, 5, torch.float32, seed=4)
    raw = torch.ops.pixelfly
    with pytest.raises(ValueError, match="x must have shape"):
        raw.bsmm_fwd(x[:, :-1], blocks, *it)
    with pytest.raises(ValueError, match="blocks must have shape"):
        raw.bsmm_fwd(x, blocks[1:], *it)
    with pytest.raises(TypeError, match="row_ptr must be int64"):
        raw.bsmm_fwd(x, blocks, it[0].int(), *it[1:])
    with pytest.raises(ValueError, match="csc_blk must be a contiguous 1-D tensor"):
        raw.bsmm_bwd_x(dy, blocks, *it[:4], it[4][:-1])
    with pytest.raises(TypeError, match="share a dtype"):
        raw.bsmm_bwd_w(dy, x.double(), *it, 16, 16)
    with pytest.raises(ValueError, match="64 bits"):
        raw.bsmm_bwd_w(dy, x, *it, 2 ** 62, 16)
    with pytest.raises(TypeError, match="float32, bfloat16 or float64 for the CPU kernels"):
        raw.bsmm_fwd(x.half(), blocks.half(), *it)


def test_meta_tensors_use_fake_kernels():
    layout, it, blocks, x, dy = make_case(3, 4, 16, 16, 5, torch.float32)
    y = ops.bsmm_fwd(x.to("meta"), blocks.to("meta"), *(t.to("meta") for t in it))
    assert y.shape == (5, 48) and y.device.type == "meta"


def test_package_exports():
    assert callable(pixelfly.PixelflyLinear) and callable(pixelfly.flat_butterfly_layout)
