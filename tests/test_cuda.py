"""GPU tests of the CUDA block-sparse ops, on both paths: the native kernels (csrc/cuda/bsmm.cu
via csrc/torch/ops_cuda.cu, selected with ``use_native_cuda()``) and the composite
(pure-PyTorch) ops that CUDA tensors get by default. Every test runs once per path (ids
``[native]`` / ``[composite]``); the native path is skipped when its kernels were not built.

Every op (fwd, bwd_x, bwd_w) and every dtype (fp32 exact, fp32 TF32, fp16, bf16) is checked
against a float64 masked-dense reference built on the host from the blocks and the layout.
The element-wise bound is ``|out - ref| <= tol * (|A| @ |B|) + floor`` with ``(|A| @ |B|)`` the
same product on absolute values, so it holds whatever the cancellation; ``tol`` covers fp32
accumulation plus the rounding of the output (and of the inputs, for TF32).
"""
import contextlib
import warnings
import zlib

import numpy as np
import pytest
import torch

import pixelfly  # noqa: F401  (loads the ops; pixelfly._ops_cuda when built)
from pixelfly import reference as oracle

try:
    import pixelfly.ops  # noqa: F401  (registers _ops / _ops_cuda if __init__ did not)
except ImportError:  # pragma: no cover
    pass

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True, params=["native", "composite"])
def path(request):
    """Run the test on the native CUDA kernels or on the composite ops."""
    native = request.param == "native"
    if native and not pixelfly.ops.HAS_CUDA_KERNELS:
        pytest.skip("the native CUDA kernels were not built (pixelfly._ops_cuda is missing)")
    prev = pixelfly.ops.use_native_cuda(native)
    assert pixelfly.ops.implementation("cuda") == request.param
    yield request.param
    pixelfly.ops.use_native_cuda(prev)

OPS = torch.ops.pixelfly
TOL = {"fp32": 1e-5, "tf32": 3e-3, "fp16": 2e-3, "bf16": 1.2e-2}
DTYPE = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
         "bf16": torch.bfloat16}


@contextlib.contextmanager
def fp32_mode(mode):
    """``tf32``: allow TF32 (the kernels then use TF32 mma); otherwise force exact fp32."""
    old_flag = torch.backends.cuda.matmul.allow_tf32
    old_prec = torch.get_float32_matmul_precision()
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_prec)
        torch.backends.cuda.matmul.allow_tf32 = old_flag


def csr_index(layout):
    """row_ptr, col_idx, col_ptr, row_idx, csc_blk (int64 numpy) of a boolean R x C layout."""
    R, C = layout.shape
    rows, cols = np.nonzero(layout)  # row-major: CSR order
    row_ptr = np.zeros(R + 1, np.int64)
    np.add.at(row_ptr, rows + 1, 1)
    row_ptr = np.cumsum(row_ptr)
    order = np.lexsort((rows, cols))  # CSC order: by column, then row
    col_ptr = np.zeros(C + 1, np.int64)
    np.add.at(col_ptr, cols + 1, 1)
    col_ptr = np.cumsum(col_ptr)
    return (row_ptr, cols.astype(np.int64), col_ptr, rows[order].astype(np.int64),
            order.astype(np.int64))


def random_layout(R, C, density, rng, empty_row=False, empty_col=False):
    layout = rng.random((R, C)) < density
    if empty_row and R > 1:
        layout[rng.integers(R)] = False
    if empty_col and C > 1:
        layout[:, rng.integers(C)] = False
    return layout


def dense_weight(blocks64, layout):
    return oracle.blocks_to_dense(blocks64, torch.from_numpy(np.asarray(layout)))


def make_case(R, C, b1, b2, T, dt, seed, density=0.45, empty_row=True, empty_col=True,
              layout=None):
    rng = np.random.default_rng(seed)
    if layout is None:
        layout = random_layout(R, C, density, rng, empty_row, empty_col)
    idx = csr_index(layout)
    nnz = int(layout.sum())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C * b2, generator=g).to(dt)
    dy = torch.randn(T, R * b1, generator=g).to(dt)
    blocks = (torch.randn(nnz, b1, b2, generator=g) / max(1, b2) ** 0.5).to(dt)
    dev = [torch.as_tensor(a, device="cuda") for a in idx]
    return layout, dev, x, dy, blocks


def reference(op, layout, x, dy, blocks):
    """(float64 result, float64 bound scale |A| @ |B|) of one op on the host."""
    b1, b2 = blocks.shape[1], blocks.shape[2]
    W = dense_weight(blocks.double(), layout)
    Wa = dense_weight(blocks.double().abs(), layout)
    x64, dy64 = x.double(), dy.double()
    if op == "fwd":
        return x64 @ W.T, x64.abs() @ Wa.T
    if op == "bwd_x":
        return dy64 @ W, dy64.abs() @ Wa
    full, fulla = dy64.T @ x64, dy64.abs().T @ x64.abs()
    rows, cols = np.nonzero(layout)
    pick = lambda M: torch.stack([M[r * b1:(r + 1) * b1, c * b2:(c + 1) * b2]  # noqa: E731
                                  for r, c in zip(rows, cols)]) if len(rows) else \
        torch.zeros(0, b1, b2, dtype=torch.float64)
    return pick(full), pick(fulla)


def run_op(op, x, dy, blocks, idx):
    b1, b2 = blocks.shape[1], blocks.shape[2]
    if op == "fwd":
        return OPS.bsmm_fwd(x, blocks, *idx)
    if op == "bwd_x":
        return OPS.bsmm_bwd_x(dy, blocks, *idx)
    return OPS.bsmm_bwd_w(dy, x, *idx, b1, b2)


def check(op, mode, R, C, b1, b2, T, seed, **kw):
    dt = DTYPE[mode]
    layout, idx, x, dy, blocks = make_case(R, C, b1, b2, T, dt, seed, **kw)
    ref, scale = reference(op, layout, x, dy, blocks)
    with fp32_mode(mode):
        out = run_op(op, x.cuda(), dy.cuda(), blocks.cuda(), idx)
        torch.cuda.synchronize()
    assert out.dtype == dt and out.device.type == "cuda"
    assert out.shape == ref.shape, (out.shape, ref.shape)
    out64 = out.cpu().double()
    assert torch.isfinite(out64).all(), f"{op}/{mode}: non-finite output"
    err = (out64 - ref).abs()
    bound = TOL[mode] * scale + 1e-6
    bad = err > bound
    assert not bad.any(), (f"{op}/{mode} R={R} C={C} b={b1}x{b2} T={T}: {int(bad.sum())} "
                           f"elements out of bound, max err {err.max().item():.3e}, "
                           f"max ratio {(err / bound).max().item():.2f}")


MODES = ["fp32", "tf32", "fp16", "bf16"]
OPNAMES = ["fwd", "bwd_x", "bwd_w"]
# (R, C, b1, b2, T): tensor-core path for square 16/32/64 with aligned strides, generic
# path for rectangular / odd blocks; T not a multiple of any tile, T = 0, T = 1.
SHAPES = [
    (6, 5, 16, 16, 131),
    (5, 7, 32, 32, 257),
    (3, 4, 64, 64, 130),
    (4, 4, 32, 32, 0),
    (4, 3, 32, 32, 1),
    (3, 5, 16, 32, 77),   # rectangular: generic path
    (5, 3, 64, 16, 45),   # rectangular: generic path
    (4, 6, 8, 8, 33),     # small blocks: generic path
    (3, 2, 24, 40, 19),   # odd sizes: generic path
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPNAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "R{}C{}b{}x{}T{}".format(*s))
def test_ops_match_dense_reference(op, mode, shape):
    R, C, b1, b2, T = shape
    check(op, mode, R, C, b1, b2, T, seed=zlib.crc32(repr((op, mode, shape)).encode()) & 0xFFFF)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPNAMES)
@pytest.mark.parametrize("b", [16, 32, 64])
def test_long_rows_and_many_tiles(op, mode, b):
    # Many nonzero blocks per block-row (deep pipelines, partial last stage) and many T tiles.
    check(op, mode, 9, 11, b, b, 1000 + b + 3, seed=b, density=0.7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b", [16, 32, 64])
def test_bwd_w_split_over_t(mode, b):
    # Few blocks and a long T: the launcher splits T across CTAs into an fp32 workspace.
    layout = np.array([[1, 0], [0, 1]], dtype=bool)
    check("bwd_w", mode, 2, 2, b, b, 6000 + 7, seed=3 + b, layout=layout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPNAMES)
def test_empty_layout(op, mode):
    layout = np.zeros((3, 4), dtype=bool)
    check(op, mode, 3, 4, 32, 32, 50, seed=1, layout=layout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPNAMES)
def test_flat_butterfly_layout(op, mode):
    # Flat block butterfly (SPEC section 1) on a rectangular 8 x 16 grid, n = 8, m = 2.
    R, C, n, m = 8, 16, 8, 2
    p = np.arange(R)[:, None] * n // R
    q = np.arange(C)[None, :] * n // C
    xor = p ^ q
    layout = (xor == 0) | np.isin(xor, [1 << s for s in range(m)])
    check(op, mode, R, C, 32, 32, 300, seed=7, layout=layout)


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize("aligned", [True, False])
def test_strided_inputs(mode, aligned):
    # x / dy as column slices of wider tensors (row stride > width); an odd offset breaks
    # 16-byte alignment and must fall back to the generic path, still exact.
    R, C, b, T = 4, 5, 32, 70
    dt = DTYPE[mode]
    layout, idx, x, dy, blocks = make_case(R, C, b, b, T, dt, seed=11)
    off = 8 if aligned else 1
    xw = torch.zeros(T, C * b + 24, dtype=dt)
    xw[:, off:off + C * b] = x
    dyw = torch.zeros(T, R * b + 24, dtype=dt)
    dyw[:, off:off + R * b] = dy
    xs = xw.cuda()[:, off:off + C * b]
    dys = dyw.cuda()[:, off:off + R * b]
    with fp32_mode(mode):
        outs = {"fwd": OPS.bsmm_fwd(xs, blocks.cuda(), *idx),
                "bwd_x": OPS.bsmm_bwd_x(dys, blocks.cuda(), *idx),
                "bwd_w": OPS.bsmm_bwd_w(dys, xs, *idx, b, b)}
    for op, out in outs.items():
        ref, scale = reference(op, layout, x, dy, blocks)
        err = (out.cpu().double() - ref).abs()
        assert (err <= TOL[mode] * scale + 1e-6).all(), (op, err.max().item())


def test_outputs_are_overwritten_not_accumulated():
    # Run twice into fresh (caching-allocator-recycled) memory: results must not change.
    layout, idx, x, dy, blocks = make_case(4, 4, 32, 32, 64, torch.bfloat16, seed=5)
    x, dy, blocks = x.cuda(), dy.cuda(), blocks.cuda()
    for op in OPNAMES:
        a = run_op(op, x, dy, blocks, idx).clone()
        b = run_op(op, x, dy, blocks, idx)
        assert torch.equal(a, b), op


def test_bad_inputs_raise(path):
    layout, idx, x, dy, blocks = make_case(3, 3, 32, 32, 10, torch.float32, seed=2)
    x, blocks = x.cuda(), blocks.cuda()
    with pytest.raises((TypeError, RuntimeError), match="int64"):
        OPS.bsmm_fwd(x, blocks, idx[0].int(), *idx[1:])
    with pytest.raises((ValueError, RuntimeError), match="row_ptr"):
        OPS.bsmm_fwd(x, blocks, idx[0].cpu(), *idx[1:])
    with pytest.raises((ValueError, RuntimeError), match="x must have"):
        OPS.bsmm_fwd(x[:, :-32], blocks, *idx)
    if path == "native":   # the composite ops also take float64
        with pytest.raises((TypeError, RuntimeError), match="float16"):
            OPS.bsmm_fwd(x.double(), blocks.double(), *idx)
    with pytest.raises((TypeError, RuntimeError), match="share a dtype"):
        OPS.bsmm_fwd(x, blocks.half(), *idx)


def test_autograd_through_cuda_ops():
    # The Python autograd formulas call the CUDA kernels for the backward pass.
    layout, idx, x, dy, blocks = make_case(4, 5, 16, 16, 40, torch.float32, seed=9)
    with fp32_mode("fp32"):
        xc = x.cuda().requires_grad_()
        bc = blocks.cuda().requires_grad_()
        y = OPS.bsmm_fwd(xc, bc, *idx)
        y.backward(dy.cuda())
    W = dense_weight(blocks.double(), layout)
    ref_dx = dy.double() @ W
    assert torch.allclose(xc.grad.cpu().double(), ref_dx, atol=1e-4, rtol=1e-4)
    ref_dw, _ = reference("bwd_w", layout, x, dy, blocks)
    assert torch.allclose(bc.grad.cpu().double(), ref_dw, atol=1e-4, rtol=1e-4)


def test_generic_kernel_warns(path):
    # An operand that is not 16-byte aligned takes the native generic kernel: it says so.
    layout, idx, x, dy, blocks = make_case(4, 4, 32, 32, 20, torch.bfloat16, seed=12)
    xw = torch.zeros(20, 4 * 32 + 1, dtype=torch.bfloat16, device="cuda")
    xw[:, 1:] = x.cuda()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OPS.bsmm_fwd(xw[:, 1:], blocks.cuda(), *idx)
        OPS.bsmm_fwd(x.cuda(), blocks.cuda(), *idx)
    generic = [w for w in caught if "generic CUDA kernel" in str(w.message)]
    assert len(generic) == (1 if path == "native" else 0), [str(w.message) for w in caught]


def test_bad_index_is_a_python_error(path):
    # Raw index tensors with an out-of-range column: the composite ops validate each index
    # once (ValueError); the native kernels trust it (BlockIndex validates when built), so
    # this case runs on the composite path only.
    if path == "native":
        pytest.skip("the native kernels trust the index; it is validated when built")
    layout, idx, x, dy, blocks = make_case(3, 3, 32, 32, 10, torch.float32, seed=2)
    bad = [t.clone() for t in idx]
    bad[1][0] = 7
    with pytest.raises(ValueError, match="col_idx"):
        OPS.bsmm_fwd(x.cuda(), blocks.cuda(), *bad)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_on_cuda(path, dtype, causal):
    # Attention has no native CUDA kernel: both paths run the composite ops. Against the
    # float64 dense masked reference on the host (out, lse and the three gradients).
    from pixelfly.attention_ops import AttentionIndex, bsattn
    B, H, L, d, b = 2, 3, 256, 64, 32
    rng = np.random.default_rng(int(causal))
    lay = rng.random((L // b, L // b)) < 0.4
    lay |= np.eye(L // b, dtype=bool)
    idx = AttentionIndex(lay)
    g = torch.Generator().manual_seed(5)
    q, k, v, go = (torch.randn(B, H, L, d, generator=g) for _ in range(4))
    q64, k64, v64 = (t.to(dtype).double().requires_grad_() for t in (q, k, v))
    o64, _ = oracle.masked_attention(q64, k64, v64, lay, b, causal)
    ref = (o64,) + torch.autograd.grad(o64, (q64, k64, v64), go.to(dtype).double())
    qc, kc, vc = (t.to("cuda", dtype).requires_grad_() for t in (q, k, v))
    out, lse = bsattn(qc, kc, vc, idx, b, causal=causal)   # index on the CPU, as the module's
    got = (out,) + torch.autograd.grad(out, (qc, kc, vc), go.to("cuda", dtype))
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    for name, a, r in zip(("out", "dq", "dk", "dv"), got, ref):
        err = (a.double().cpu() - r).abs().max().item()
        assert err <= tol * max(1.0, r.abs().max().item()), (name, err)
    assert torch.isfinite(lse).all()


def test_attention_module_on_cuda(path):
    # PixelflyAttention (CPU index, composite attention on the GPU) matches itself on the CPU.
    from pixelfly.attention import PixelflyAttention
    torch.manual_seed(0)
    m = PixelflyAttention(128, 4, causal=True)
    x = torch.randn(2, 256, 128)
    with fp32_mode("fp32"):
        ref = m(x)
        ref.sum().backward()
        gref = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        mc = m.cuda()
        out = mc(x.cuda())
        out.sum().backward()
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    for p, g in zip(mc.parameters(), gref):
        torch.testing.assert_close(p.grad.cpu(), g, rtol=1e-3, atol=1e-3)
