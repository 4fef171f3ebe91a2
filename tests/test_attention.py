"""Block-sparse attention: the ``pixelfly::bsattn_*`` ops and ``PixelflyAttention`` against a
plain PyTorch float64 reference (dense scores with the layout as mask), gradients
(gradcheck in float64), opcheck, the baselines, the low-rank part, and bad inputs."""

import numpy as np
import pytest
import torch

from testing import assert_close_to_oracle

from pixelfly import attention_ops, ops, reference
from pixelfly.attention import (LAYOUTS, PixelflyAttention, build_attention_layout,
                                gaussian_features, sparse_lowrank_attention)
from pixelfly.attention_ops import AttentionIndex, bsattn
from pixelfly.models.attention import MultiHeadSelfAttention


# ------------------------------------------------------------------ references
ref_attention = reference.masked_attention   # (q, k, v, layout, block, causal, scale) -> (out, lse)


def random_layout(R, density, rng, keep_diag=False):
    lay = rng.random((R, R)) < density
    if keep_diag:
        lay |= np.eye(R, dtype=bool)
    return lay


# ------------------------------------------------------------------ the op
SHAPES = [  # B, H, L, d, block
    (1, 1, 64, 16, 16),
    (2, 3, 128, 32, 32),
    (1, 2, 128, 64, 64),
    (2, 2, 96, 40, 24),
]


BEST_ISA = ops.cpu_isa()
ISA_NAMES = {1: "portable", 2: "avx2", 3: "avx512"}
# float64 has one kernel; float32 and bfloat16 run on every ISA (0: the best of this CPU)
DTYPE_ISAS = [pytest.param(torch.float64, 0, id="float64")] + [
    pytest.param(dt, isa, id=f"{str(dt)[6:]}-{ISA_NAMES[isa]}", marks=pytest.mark.skipif(
        isa > BEST_ISA, reason=f"this CPU has no {ISA_NAMES[isa]} (best: {ISA_NAMES[BEST_ISA]})"))
    for dt in (torch.float32, torch.bfloat16) for isa in (1, 2, 3)]


@pytest.mark.parametrize("dtype,isa", DTYPE_ISAS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_op_matches_reference(shape, causal, dtype, isa):
    prev = attention_ops.set_cpu_isa(isa)
    try:
        _op_matches_reference(shape, causal, dtype)
    finally:
        attention_ops.set_cpu_isa(prev)


def _op_matches_reference(shape, causal, dtype):
    B, H, L, d, b = shape
    rng = np.random.default_rng(L * d + b)
    lay = random_layout(L // b, 0.45, rng, keep_diag=True)
    lay[0] = False                                          # an empty block-row
    idx = AttentionIndex(lay)
    q, k, v, g = (torch.randn(B, H, L, d).to(dtype) for _ in range(4))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    o64, l64 = ref_attention(q64, k64, v64, lay, b, causal)
    go = g.double()
    dq64, dk64, dv64 = torch.autograd.grad(o64, (q64, k64, v64), go)
    base_o, base_l = ref_attention(q, k, v, lay, b, causal)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = bsattn(qq, kk, vv, idx, b, causal=causal)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close_to_oracle(out, o64.detach(), base_o, "out")
    fin = torch.isfinite(l64)
    assert torch.equal(torch.isfinite(lse), fin)
    assert (out[~fin] == 0).all()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5}[dtype]
    assert (lse.double()[fin] - l64.detach()[fin]).abs().max() <= tol * max(1, l64[fin].abs().max())
    dq, dk, dv = torch.autograd.grad(out, (qq, kk, vv), g)
    qb, kb, vb = (t.clone().requires_grad_() for t in (q, k, v))
    base = torch.autograd.grad(ref_attention(qb, kb, vb, lay, b, causal)[0], (qb, kb, vb), g)
    for name, x, x64, xb in zip(("dq", "dk", "dv"), (dq, dk, dv), (dq64, dk64, dv64), base):
        assert_close_to_oracle(x, x64, xb, name)


def _small_problem(causal, seed=0, B=1, H=2, L=32, d=8, b=8):
    rng = np.random.default_rng(seed)
    lay = random_layout(L // b, 0.5, rng, keep_diag=True)
    if causal:
        lay &= np.tril(np.ones_like(lay))
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64, generator=gen, requires_grad=True)
               for _ in range(3))
    return AttentionIndex(lay), b, q, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(causal):
    idx, b, q, k, v = _small_problem(causal)
    # both outputs (out and lse) are differentiable
    assert torch.autograd.gradcheck(lambda q, k, v: bsattn(q, k, v, idx, b, causal=causal),
                                    (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck(dtype, causal):
    idx, b, q, k, v = _small_problem(causal, seed=3)
    args = tuple(t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.pixelfly.bsattn_fwd.default,
                          args + idx.tensors() + (b, 0.3, causal))
    torch.library.opcheck(torch.ops.pixelfly.bsattn_fwd.default,
                          tuple(t.detach() for t in args) + idx.tensors() + (b, 0.3, causal))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck_lowrank_and_key_mask(dtype, causal):
    """The CPU kernel's low-rank part and key mask: fake kernel, autograd and schema agree
    (the composite op refuses these arguments; other devices use the PyTorch path)."""
    idx, b, q, k, v = _small_problem(causal, seed=3)
    args = tuple(t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    feats = torch.randn(6, q.shape[-1], dtype=dtype)
    km = torch.rand(q.shape[0], q.shape[2], generator=torch.Generator().manual_seed(0)) < 0.8
    torch.library.opcheck(torch.ops.pixelfly.bsattn_fwd.default,
                          args + idx.tensors() + (b, 0.3, causal, feats, km))


def test_strided_and_3d_inputs_and_isa_and_threads():
    B, H, L, d, b = 2, 3, 128, 16, 16
    lay = random_layout(L // b, 0.4, np.random.default_rng(1), keep_diag=True)
    idx = AttentionIndex(lay)
    qkv = torch.randn(B, L, 3, H, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)          # non-contiguous [B, H, L, d] views
    ref, _ = ref_attention(q.double(), k.double(), v.double(), lay, b, True)
    out, _ = bsattn(q, k, v, idx, b, causal=True)
    assert (out.double() - ref).abs().max() < 1e-5
    out3, lse3 = bsattn(q.reshape(B * H, L, d), k.reshape(B * H, L, d), v.reshape(B * H, L, d),
                        idx, b, causal=True)
    assert out3.shape == (B * H, L, d) and lse3.shape == (B * H, L)
    assert torch.equal(out3.view(B, H, L, d), out)
    # portable and AVX-512 kernels agree; results do not depend on the thread count
    prev = attention_ops.set_cpu_isa(1)
    try:
        portable, _ = bsattn(q, k, v, idx, b, causal=True)
    finally:
        attention_ops.set_cpu_isa(prev)
    assert (portable - out).abs().max() < 1e-5
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = bsattn(q, k, v, idx, b, causal=True)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, out)


def test_dlse_gradient_matches_reference():
    idx, b, q, k, v = _small_problem(False, seed=5, L=64, d=16, b=16)
    out, lse = bsattn(q, k, v, idx, b)
    w1, w2 = torch.randn_like(out), torch.randn_like(lse)
    g = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    o, l = ref_attention(q, k, v, idx.layout, b, False)
    gr = torch.autograd.grad((o * w1).sum() + (l * w2).sum(), (q, k, v))
    for a, r in zip(g, gr):
        assert (a - r).abs().max() < 1e-12


# ------------------------------------------------------------------ the module
def _copy_projections(dst, src):
    with torch.no_grad():
        dst.qkv.weight.copy_(src.qkv.weight)
        dst.qkv.bias.copy_(src.qkv.bias)
        dst.proj.weight.copy_(src.proj.weight)
        dst.proj.bias.copy_(src.proj.bias)


def _module_reference(m, x, layout):
    """The module's computation with dense masked float64 attention."""
    B, L, D = x.shape
    qkv = m.qkv(x).view(B, L, 3, m.n_heads, m.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    y, _ = ref_attention(q, k, v, layout, m.block_size, m.causal)
    return m.proj(y.transpose(1, 2).reshape(B, L, D))


@pytest.mark.parametrize("layout", list(LAYOUTS) + ["array"])
@pytest.mark.parametrize("causal", [False, True])
def test_module_layouts_match_reference(layout, causal):
    L, b = 128, 16
    spec = (np.random.default_rng(7).random((L // b, L // b)) < 0.3) | np.eye(L // b, dtype=bool) \
        if layout == "array" else layout
    m = PixelflyAttention(32, 4, L, block_size=b, layout=spec, causal=causal).double()
    lay = m.layout(L)
    if causal:
        assert not np.triu(lay, 1).any()
    if layout == "pixelfly":  # flat butterfly, 2 factors, butterfly size 8 over the 8x8 grid
        i, j = np.indices(lay.shape)
        expect = np.isin(i ^ j, [0, 1, 2]) & ((j <= i) if causal else True)
        assert np.array_equal(lay, expect)
    if layout == "dense":
        assert lay.sum() == (lay.shape[0] * (lay.shape[0] + 1) // 2 if causal else lay.size)
    x = torch.randn(2, L, 32, dtype=torch.float64, requires_grad=True)
    y = m(x)
    xr = x.detach().clone().requires_grad_()
    yr = _module_reference(m, xr, lay)
    assert (y - yr).abs().max() < 1e-12
    g = torch.randn_like(y)
    gx, = torch.autograd.grad(y, x, g)
    gxr, = torch.autograd.grad(yr, xr, g)
    assert (gx - gxr).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_dense_layout_equals_sdpa_module(causal):
    torch.manual_seed(0)
    m = PixelflyAttention(64, 4, 128, block_size=32, layout="dense", causal=causal)
    ref = MultiHeadSelfAttention(64, 4, 128, causal=causal)
    _copy_projections(m, ref)
    x = torch.randn(3, 128, 64)
    assert (m(x) - ref(x)).abs().max() < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_module_float32_close_to_float64(causal):
    m = PixelflyAttention(64, 2, 256, block_size=32, n_factors=2, causal=causal,
                          n_random_features=32)
    x = torch.randn(2, 256, 64, requires_grad=True)
    y = m(x)
    m64 = PixelflyAttention(64, 2, 256, block_size=32, n_factors=2, causal=causal,
                            n_random_features=32).double()
    m64.load_state_dict(m.state_dict())
    x64 = x.detach().double().requires_grad_()
    y64 = m64(x64)
    assert (y.double() - y64).abs().max() < 1e-4 * max(1.0, y64.abs().max().item())
    g = torch.randn_like(y)
    gx, = torch.autograd.grad(y, x, g)
    gx64, = torch.autograd.grad(y64, x64, g.double())
    assert (gx.double() - gx64).abs().max() < 1e-4 * max(1.0, gx64.abs().max().item())


@pytest.mark.parametrize("causal", [False, True])
def test_module_gradcheck_with_low_rank(causal):
    m = PixelflyAttention(4, 1, 32, block_size=8, n_factors=1, causal=causal,
                          n_random_features=4).double()
    x = torch.randn(1, 32, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


# ------------------------------------------------------------------ low rank
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", ["pixelfly", "bigbird"])
def test_combined_matches_formula(causal, layout):
    B, H, L, d, b = 2, 2, 128, 16, 16
    lay = build_attention_layout(L // b, layout, causal=causal)
    idx = AttentionIndex(lay)
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64) for _ in range(3))
    w = gaussian_features(24, d, dtype=torch.float64)
    y = sparse_lowrank_attention(q, k, v, idx, b, causal=causal, features=w)
    assert (y - reference.pixelfly_attention(q, k, v, lay, b, w, causal=causal)).abs().max() < 1e-12


def _errors(q, k, v, idx, b, causal, r, seeds):
    exact = reference.dense_attention(q, k, v, causal)
    errs_comb, errs_sparse = [], []
    for s in seeds:
        w = gaussian_features(r, q.shape[-1], dtype=torch.float64,
                              generator=torch.Generator().manual_seed(s))
        y, ys = sparse_lowrank_attention(q, k, v, idx, b, causal=causal, features=w,
                                         return_parts=True)
        errs_comb.append(((y - exact).norm() / exact.norm()).item())
        errs_sparse.append(((ys - exact).norm() / exact.norm()).item())
    return float(np.mean(errs_comb)), float(np.mean(errs_sparse))


@pytest.mark.parametrize("causal", [False, True])
def test_low_rank_error_falls_with_features(causal):
    B, H, L, d, b = 1, 2, 256, 16, 16
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64) * 0.7 for _ in range(3))
    empty = AttentionIndex(np.zeros((L // b, L // b), bool))   # low-rank part alone (Performer)
    errs = [_errors(q, k, v, empty, b, causal, r, range(6))[0] for r in (8, 32, 128, 512)]
    assert all(e2 < e1 for e1, e2 in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.5 * errs[0], errs


@pytest.mark.parametrize("causal", [False, True])
def test_combined_closer_to_dense_than_sparse_alone(causal):
    B, H, L, d, b = 1, 2, 256, 16, 16
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64) * 0.7 for _ in range(3))
    idx = AttentionIndex(build_attention_layout(L // b, "pixelfly", causal=causal))
    comb, sparse = _errors(q, k, v, idx, b, causal, 64, range(6))
    assert comb < sparse, (comb, sparse)


# ------------------------------------------------------------------ bad inputs
def test_bad_op_inputs():
    idx, b, q, k, v = _small_problem(False)
    q, k, v = (t.detach() for t in (q, k, v))
    t = idx.tensors()
    op = attention_ops.bsattn_fwd     # the Python boundary: the checks with the user's names
    with pytest.raises(ValueError, match="multiple of block"):
        op(q, k, v, *t, 7, 0.3, False)
    with pytest.raises(ValueError, match="block must be positive"):
        op(q, k, v, *t, 0, 0.3, False)
    with pytest.raises(TypeError, match="q must be float16, bfloat16, float32 or float64"):
        op(q.int(), k.int(), v.int(), *t, b, 0.3, False)
    with pytest.raises(TypeError, match="q must be float32, bfloat16 or float64 for the CPU kernels"):
        op(q.half(), k.half(), v.half(), *t, b, 0.3, False)
    with pytest.raises(TypeError, match="k .* must have q's dtype"):
        op(q, k.float(), v, *t, b, 0.3, False)
    with pytest.raises(ValueError, match="v must have q's shape"):
        op(q, k, v[:, :1], *t, b, 0.3, False)
    with pytest.raises(ValueError, match="q must be 3-D"):
        op(q[0, 0], k[0, 0], v[0, 0], *t, b, 0.3, False)
    with pytest.raises(ValueError, match="row_ptr must have 5 entries"):
        op(q, k, v, t[0][:-1], *t[1:], b, 0.3, False)
    with pytest.raises(TypeError, match="col_idx must be int64"):
        op(q, k, v, t[0], t[1].int(), *t[2:], b, 0.3, False)
    bad = t[1].clone()
    bad[0] = 99
    with pytest.raises(ValueError, match="row_ptr/col_idx"):
        op(q, k, v, t[0], bad, *t[2:], b, 0.3, False)
    with pytest.raises(ValueError, match="scale must be finite"):
        op(q, k, v, *t, b, float("nan"), False)
    out, lse = op(q, k, v, *t, b, 0.3, False)
    bwd = attention_ops.bsattn_bwd
    bad_ri = t[3].clone()
    bad_ri[0] = (bad_ri[0] + 1) % 4
    with pytest.raises(ValueError, match="col_ptr/row_idx"):
        bwd(out, None, q, k, v, out, lse, t[0], t[1], t[2], bad_ri, b, 0.3, False)
    with pytest.raises(TypeError, match="lse must be"):
        bwd(out, None, q, k, v, out, lse.float(), *t, b, 0.3, False)
    with pytest.raises(ValueError, match="dlse must have shape"):
        bwd(out, lse[:, :1], q, k, v, out, lse, *t, b, 0.3, False)
    with pytest.raises(ValueError, match="square"):
        AttentionIndex(np.ones((2, 3), bool))


def test_bad_module_inputs():
    with pytest.raises(ValueError, match="not divisible"):
        PixelflyAttention(30, 4)
    with pytest.raises(ValueError, match="unknown layout"):
        PixelflyAttention(32, 4, layout="butterflyy")
    with pytest.raises(ValueError, match="n_random_features"):
        PixelflyAttention(32, 4, n_random_features=-1)
    with pytest.raises(ValueError, match="multiple of block_size"):
        PixelflyAttention(32, 4, seq_len=100, block_size=32)
    m = PixelflyAttention(32, 4, block_size=16)
    with pytest.raises(ValueError, match="multiple of block_size"):
        m(torch.randn(1, 40, 32))
    with pytest.raises(ValueError, match=r"x must be \[B, L, 32\]"):
        m(torch.randn(1, 32, 16))
    with pytest.raises(ValueError, match="exceeds seq_len"):
        PixelflyAttention(32, 4, seq_len=32, block_size=16)(torch.randn(1, 64, 32))
    with pytest.raises(ValueError, match="block grid"):
        PixelflyAttention(32, 4, seq_len=64, block_size=16, layout=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="butterfly_size"):
        PixelflyAttention(32, 4, seq_len=64, block_size=16, butterfly_size=8)


def test_factory_plugs_into_models_contract():
    from pixelfly.models.attention import resolve_attention
    m = resolve_attention(PixelflyAttention.factory(block_size=16, n_random_features=8),
                          32, 4, 64, True)
    assert isinstance(m, PixelflyAttention) and m.causal and m.seq_len == 64
    assert m(torch.randn(2, 64, 32)).shape == (2, 64, 32)


@pytest.mark.parametrize("causal", [False, True])
def test_backward_schedules_agree(causal):
    idx, b, q, k, v = _small_problem(causal, seed=11, B=2, H=3, L=64, d=16, b=16)
    g = torch.randn_like(q)
    grads = []
    for mode in (1, 2):
        prev = attention_ops.set_bwd_mode(mode)
        try:
            out, _ = bsattn(q, k, v, idx, b, causal=causal)
            grads.append(torch.autograd.grad(out, (q, k, v), g))
        finally:
            attention_ops.set_bwd_mode(prev)
    o, _ = ref_attention(q, k, v, idx.layout, b, causal)
    ref = torch.autograd.grad(o, (q, k, v), g)
    for mode_grads in grads:
        for a, r in zip(mode_grads, ref):
            assert (a - r).abs().max() < 1e-12
    with pytest.raises(ValueError, match="mode must be"):
        attention_ops.set_bwd_mode(5)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_takes_a_prefix_of_the_queries(causal):
    """The oracle given the first query rows (as the benchmark calls it) gives the first rows
    of the full result (up to matmul rounding)."""
    L, d, b = 64, 8, 16
    lay = build_attention_layout(L // b, "pixelfly", causal=causal)
    q, k, v = (torch.randn(1, 2, L, d, dtype=torch.float64) for _ in range(3))
    w = gaussian_features(6, d, dtype=torch.float64)
    same = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-13)  # noqa: E731
    same(reference.pixelfly_attention(q[:, :, :20], k, v, lay, b, w, causal=causal),
         reference.pixelfly_attention(q, k, v, lay, b, w, causal=causal)[:, :, :20])
    o, lse = reference.masked_attention(q, k, v, lay, b, causal)
    o20, lse20 = reference.masked_attention(q[:, :, :20], k, v, lay, b, causal)
    same(o20, o[:, :, :20])
    same(lse20, lse[:, :, :20])
    same(reference.dense_attention(q[:, :, :5], k, v, causal), reference.dense_attention(q, k, v, causal)[:, :, :5])
