"""The composite (pure-PyTorch) block-sparse attention ops, forced on the CPU through the
switch: against the float64 reference over the native tests' shapes and dtypes, against the
native CPU kernels, gradcheck, opcheck, the lse gradient, chunking and bad indices."""
import numpy as np
import pytest
import torch

import test_attention as native_tests
from pixelfly import composite, ops
from pixelfly.attention_ops import AttentionIndex, bsattn
from test_attention import SHAPES, _small_problem, random_layout

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


# The native tests' bodies, run with the composite ops behind torch.ops.pixelfly.*.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_op_matches_reference(forced, shape, causal, dtype):
    native_tests._op_matches_reference(shape, causal, dtype)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(forced, causal):
    # A smaller problem than the native test's (gradcheck calls the op once per input element).
    idx, b, q, k, v = _small_problem(causal, H=1, L=16, d=4, b=4)
    assert torch.autograd.gradcheck(lambda q, k, v: bsattn(q, k, v, idx, b, causal=causal),
                                    (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck(forced, dtype, causal):
    native_tests.test_opcheck(dtype, causal)


def test_lse_gradient(forced):
    native_tests.test_dlse_gradient_matches_reference()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_agrees_with_native_kernels(forced, causal, dtype):
    B, H, L, d, b = 2, 2, 128, 32, 32
    lay = random_layout(L // b, 0.5, np.random.default_rng(4), keep_diag=True)
    lay[1] = False
    idx = AttentionIndex(lay)
    q, k, v, g, gl = (torch.randn(B, H, L, d).to(dtype) for _ in range(5))
    gl = gl[..., 0].float() if dtype != torch.float64 else gl[..., 0]
    ours = bsattn(q, k, v, idx, b, causal=causal)
    theirs = native(lambda: bsattn(q, k, v, idx, b, causal=causal))
    fin = torch.isfinite(theirs[1])
    assert torch.equal(torch.isfinite(ours[1]), fin)
    rtol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(ours[0], theirs[0], rtol=rtol, atol=rtol)
    torch.testing.assert_close(ours[1][fin], theirs[1][fin], rtol=1e-5, atol=1e-5)
    args = (g, gl, q, k, v, theirs[0], theirs[1], *idx.tensors(), b, 0.3, causal)
    for a, n in zip(torch.ops.pixelfly.bsattn_bwd(*args),
                    native(lambda: torch.ops.pixelfly.bsattn_bwd(*args))):
        torch.testing.assert_close(a, n, rtol=rtol, atol=rtol * max(1.0, n.abs().max().item()))


def test_3d_inputs(forced):
    idx, b, q, k, v = _small_problem(False, seed=5, L=64, d=16, b=16)
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = bsattn(q, k, v, idx, b)
    B, H, L, d = q.shape
    out3, lse3 = bsattn(*(t.reshape(B * H, L, d) for t in (q, k, v)), idx, b)
    assert torch.equal(out3.view(B, H, L, d), out) and torch.equal(lse3.view(B, H, L), lse)


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
