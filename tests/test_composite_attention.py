"""The composite (pure-PyTorch) block-sparse attention ops, forced on the CPU through the
switch: against the float64 reference over the native tests' shapes and dtypes, against the
native CPU kernels, gradcheck, opcheck, the lse gradient, chunking and bad indices."""
import numpy as np
import pytest
import torch

from pixelfly import composite, ops
from pixelfly.attention_ops import AttentionIndex, bsattn
from test_attention import SHAPES, _small_problem, random_layout, ref_attention
from testing import assert_close_to_oracle

OPS = torch.ops.pixelfly


@pytest.fixture
def forced():
    prev = ops.use_composite("cpu", True)
    assert ops.implementation("cpu", "bsattn_fwd") == "composite"
    yield
    ops.use_composite("cpu", prev)


def native(fn):
    prev = ops.use_composite("cpu", False)
    try:
        return fn()
    finally:
        ops.use_composite("cpu", prev)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_op_matches_reference_and_native(forced, shape, causal, dtype):
    B, H, L, d, b = shape
    rng = np.random.default_rng(L * d + b)
    lay = random_layout(L // b, 0.45, rng, keep_diag=True)
    lay[0] = False                                          # an empty block-row
    idx = AttentionIndex(lay)
    q, k, v, g = (torch.randn(B, H, L, d).to(dtype) for _ in range(4))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    o64, l64 = ref_attention(q64, k64, v64, lay, b, causal)
    dq64, dk64, dv64 = torch.autograd.grad(o64, (q64, k64, v64), g.double())
    base_o, _ = ref_attention(q, k, v, lay, b, causal)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = bsattn(qq, kk, vv, idx, b, causal=causal)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close_to_oracle(out, o64.detach(), base_o, "out")
    fin = torch.isfinite(l64)
    assert torch.equal(torch.isfinite(lse), fin) and (out[~fin] == 0).all()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5}[dtype]
    assert (lse.double()[fin] - l64.detach()[fin]).abs().max() <= tol * max(1, l64[fin].abs().max())
    grads = torch.autograd.grad(out, (qq, kk, vv), g)
    qb, kb, vb = (t.clone().requires_grad_() for t in (q, k, v))
    base = torch.autograd.grad(ref_attention(qb, kb, vb, lay, b, causal)[0], (qb, kb, vb), g)
    for name, x, x64, xb in zip(("dq", "dk", "dv"), grads, (dq64, dk64, dv64), base):
        assert_close_to_oracle(x, x64, xb, name)
    # The native kernels give the same outputs (to the dtype's rounding).
    n_out, n_lse = native(lambda: bsattn(q, k, v, idx, b, causal=causal))
    rtol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.detach(), n_out, rtol=rtol, atol=rtol)
    torch.testing.assert_close(lse.detach()[fin], n_lse[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(forced, causal):
    idx, b, q, k, v = _small_problem(causal, H=1, L=16, d=4, b=4)
    assert torch.autograd.gradcheck(lambda q, k, v: bsattn(q, k, v, idx, b, causal=causal),
                                    (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_opcheck(forced, causal):
    idx, b, q, k, v = _small_problem(causal, seed=3)
    args = tuple(t.detach().float().requires_grad_() for t in (q, k, v))
    OPS_FWD = OPS.bsattn_fwd.default
    torch.library.opcheck(OPS_FWD, args + idx.tensors() + (b, 0.3, causal))
    torch.library.opcheck(OPS_FWD, tuple(t.detach() for t in args) + idx.tensors() + (b, 0.3, causal))


def test_lse_gradient_and_3d_inputs(forced):
    idx, b, q, k, v = _small_problem(False, seed=5, L=64, d=16, b=16)
    out, lse = bsattn(q, k, v, idx, b)
    w1, w2 = torch.randn_like(out), torch.randn_like(lse)
    g = torch.autograd.grad((out * w1).sum() + (lse * w2).sum(), (q, k, v))
    o, l = ref_attention(q, k, v, idx.layout, b, False)
    gr = torch.autograd.grad((o * w1).sum() + (l * w2).sum(), (q, k, v))
    for a, r in zip(g, gr):
        assert (a - r).abs().max() < 1e-12
    B, H, L, d = q.shape
    out3, lse3 = bsattn(*(t.detach().reshape(B * H, L, d) for t in (q, k, v)), idx, b)
    assert torch.equal(out3.view(B, H, L, d), out.detach()) and lse3.shape == (B * H, L)


def test_chunked_equals_unchunked(forced, monkeypatch):
    idx, b, q, k, v = _small_problem(True, seed=6, B=2, H=3, L=64, d=8, b=8)
    g = torch.randn_like(q)
    out, lse = bsattn(q, k, v, idx, b, causal=True)
    full = (out, lse) + torch.autograd.grad(out, (q, k, v), g)
    monkeypatch.setattr(composite, "CHUNK_BYTES", 1)        # one problem, one row per chunk
    out, lse = bsattn(q, k, v, idx, b, causal=True)
    small = (out, lse) + torch.autograd.grad(out, (q, k, v), g)
    for a, c in zip(full, small):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_bad_inputs(forced):
    idx, b, q, k, v = _small_problem(False)
    q, k, v = (t.detach() for t in (q, k, v))
    t = idx.tensors()
    bad = t[1].clone()
    bad[0] = 99
    with pytest.raises(ValueError, match="row_ptr/col_idx"):
        OPS.bsattn_fwd(q, k, v, t[0], bad, *t[2:], b, 0.3, False)
    bad_ri = t[3].clone()
    bad_ri[0] = (bad_ri[0] + 1) % 4
    out, lse = OPS.bsattn_fwd(q, k, v, *t, b, 0.3, False)
    with pytest.raises(ValueError, match="col_ptr/row_idx"):
        OPS.bsattn_bwd(out, None, q, k, v, out, lse, t[0], t[1], t[2], bad_ri, b, 0.3, False)
    with pytest.raises(ValueError, match="multiple of block"):
        OPS.bsattn_fwd(q, k, v, *t, 7, 0.3, False)
    with pytest.raises(TypeError, match="q must be float16, bfloat16, float32 or float64"):
        OPS.bsattn_fwd(q.int(), k.int(), v.int(), *t, b, 0.3, False)
    with pytest.raises(TypeError, match="k .* must have q's dtype"):
        OPS.bsattn_fwd(q, k.float(), v, *t, b, 0.3, False)
    with pytest.raises(ValueError, match="row_ptr must have 5 entries"):
        OPS.bsattn_fwd(q, k, v, t[0][:-1], *t[1:], b, 0.3, False)
    with pytest.raises(ValueError, match="scale must be finite"):
        OPS.bsattn_fwd(q, k, v, *t, b, float("nan"), False)
    with pytest.raises(TypeError, match="lse must be"):
        OPS.bsattn_bwd(out, None, q, k, v, out, lse.float(), *t, b, 0.3, False)
    with pytest.raises(ValueError, match="dlse must have shape"):
        OPS.bsattn_bwd(out, lse[:, :1], q, k, v, out, lse, *t, b, 0.3, False)
