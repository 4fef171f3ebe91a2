"""Sparse + low-rank attention as one autograd function (pixelfly/attention_lowrank.py):
values and gradients against the float64 oracle ``reference.pixelfly_attention`` over
layouts whose diagonal blocks are kept or not, causal or not; gradcheck; the bf16/fp32
error rule; and what the forward keeps for the backward (linear in L, nothing per block)."""
import numpy as np
import pytest
import torch

from pixelfly import reference
from pixelfly.attention import build_attention_layout, gaussian_features, sparse_lowrank_attention
from pixelfly.attention_ops import AttentionIndex


def _layout(kind, R, causal, seed=0):
    if kind == "random":
        lay = np.random.RandomState(seed).rand(R, R) < 0.4
    elif kind == "empty":
        lay = np.zeros((R, R), bool)
    elif kind == "full":
        lay = np.ones((R, R), bool)
    else:
        return build_attention_layout(R, kind, causal=causal)
    return lay & np.tril(np.ones((R, R), bool)) if causal else lay


LAYOUTS = ["pixelfly", "bigbird", "random", "empty", "full"]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", LAYOUTS)
def test_values_and_gradients_match_oracle(kind, causal):
    g = torch.Generator().manual_seed(hash((kind, causal)) % 2**31)
    B, H, b = 2, 2, 16
    R = int(torch.randint(2, 7, (1,), generator=g))
    d = int(torch.randint(4, 20, (1,), generator=g))
    L = R * b
    lay = _layout(kind, R, causal, seed=R)
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3))
    w = gaussian_features(16, d, dtype=torch.float64, generator=g)
    y = sparse_lowrank_attention(q, k, v, AttentionIndex(lay), b, causal=causal, features=w)
    yr = reference.pixelfly_attention(q, k, v, lay, b, w, causal=causal)
    assert (y - yr).abs().max() < 1e-12
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (q, k, v), dy)
    want = torch.autograd.grad(yr, (q, k, v), dy)
    for name, a, e in zip("qkv", got, want):
        assert (a - e).abs().max() < 1e-11, name


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["pixelfly", "random"])
def test_gradcheck(kind, causal):
    B, H, L, d, b = 1, 1, 48, 6, 16
    lay = _layout(kind, L // b, causal, seed=3)
    idx = AttentionIndex(lay)
    w = gaussian_features(8, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: sparse_lowrank_attention(q, k, v, idx, b, causal=causal, features=w), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_within_twice_pytorch_error(dtype, causal):
    """Error against float64 at most twice that of the oracle's formula run in ``dtype``
    (the same-dtype PyTorch baseline), for the output and the three gradients."""
    torch.manual_seed(5)
    B, H, L, d, b = 1, 2, 128, 32, 16
    lay = _layout("pixelfly", L // b, causal)
    w = gaussian_features(32, d, dtype=torch.float64)
    x64 = [torch.randn(B, H, L, d, dtype=torch.float64) * 0.5 for _ in range(3)]
    dy64 = torch.randn(B, H, L, d, dtype=torch.float64)

    def run(fn, dt):
        xs = [x.to(dt).requires_grad_() for x in x64]
        y = fn(*xs)
        grads = torch.autograd.grad(y, xs, dy64.to(dt))
        return [t.double() for t in (y, *grads)]

    exact = run(lambda q, k, v: reference.pixelfly_attention(q, k, v, lay, b, w, causal=causal), torch.float64)
    ours = run(lambda q, k, v: sparse_lowrank_attention(q, k, v, AttentionIndex(lay), b, causal=causal,
                                                        features=w), dtype)
    base = run(lambda q, k, v: reference.pixelfly_attention(q, k, v, lay, b, w.to(dtype), causal=causal), dtype)
    for name, o, bs, e in zip(["y", "dq", "dk", "dv"], ours, base, exact):
        err, berr = (o - e).abs().max().item(), (bs - e).abs().max().item()
        assert err <= 2 * berr + 1e-6, (name, err, berr)


def _saved_bytes(L, causal):
    torch.manual_seed(0)
    B, H, d, b = 1, 2, 16, 16
    lay = _layout("pixelfly", L // b, causal)
    q, k, v = (torch.randn(B, H, L, d).requires_grad_() for _ in range(3))
    w = gaussian_features(16, d)
    held = {}

    def pack(t):     # memory held, once per storage (a tensor may be saved more than once)
        held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sparse_lowrank_attention(q, k, v, AttentionIndex(lay), b, causal=causal, features=w)
    return sum(held.values()), q.numel() * q.element_size()


@pytest.mark.parametrize("causal", [False, True])
def test_backward_keeps_linear_memory(causal):
    """What the forward keeps for the backward: q, k, v, y and per-row scalars, nothing per
    kept block or per (block, feature) pair; doubling L doubles it."""
    small, qbytes = _saved_bytes(256, causal)
    big, _ = _saved_bytes(512, causal)
    assert small <= 5 * qbytes, (small, qbytes)
    assert big <= 2.1 * small, (big, small)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["pixelfly", "empty"])
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_kernel_matches_pytorch_path(kind, causal, masked):
    """The fused CPU kernel (``bsattn_fwd(..., features, key_mask)``) and the PyTorch
    implementation that other devices run (:class:`SparseLowRankAttention` over the composite
    sparse op) agree on outputs and gradients, in float64, with and without a key mask."""
    from pixelfly.attention_lowrank import SparseLowRankAttention
    g = torch.Generator().manual_seed(11)
    B, H, b, R, d = 2, 2, 16, 4, 8
    L = R * b
    lay = _layout(kind, R, causal, seed=2)
    idx = AttentionIndex(lay)
    w = gaussian_features(12, d, dtype=torch.float64, generator=g)
    km = (torch.rand(B, L, generator=g) < 0.7) if masked else None
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3))
    dy = torch.randn(B, H, L, d, dtype=torch.float64, generator=g)
    y = sparse_lowrank_attention(q, k, v, idx, b, causal=causal, features=w, key_mask=km)
    kk, vv = (k, v) if km is None else (torch.where(km[:, None, :, None], k, 0), torch.where(km[:, None, :, None], v, 0))
    y_pt, _ = SparseLowRankAttention.apply(q, kk, vv, w, idx, idx.layout, b, d ** -0.5, causal, True, km)
    assert (y - y_pt).abs().max() < 1e-12
    for a, e in zip(torch.autograd.grad(y, (q, k, v), dy), torch.autograd.grad(y_pt, (q, k, v), dy)):
        assert (a - e).abs().max() < 1e-11


def test_key_mask_and_features_reach_the_kernel_checked():
    """The op's new arguments are checked at the Python boundary with the user's names."""
    from pixelfly import attention_ops
    q = torch.randn(1, 1, 32, 8)
    idx = AttentionIndex(np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="features"):
        attention_ops.bsattn_fwd(q, q, q, *idx.tensors(), 16, 0.3, False, torch.randn(4, 7))
    with pytest.raises(ValueError, match="key_mask"):
        attention_ops.bsattn_fwd(q, q, q, *idx.tensors(), 16, 0.3, False, None, torch.ones(1, 31, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_mask"):
        attention_ops.bsattn_fwd(q, q, q, *idx.tensors(), 16, 0.3, False, None, torch.ones(1, 32))
    with pytest.raises(ValueError, match="scale"):
        attention_ops.bsattn_fwd(q, q, q, *idx.tensors(), 16, -0.3, False, torch.randn(4, 8))
