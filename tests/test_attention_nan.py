"""NaN and inf in attention: every output's NaN/inf pattern is that of the float64 oracle
(``pixelfly.reference.masked_attention`` / ``pixelfly_attention``), for NaN, +inf and -inf
in q, k or v, every dtype, every ISA of the kernel, causal or not, sparse only and
sparse + low rank. Masked positions contribute nothing (a later token's NaN never reaches
earlier rows), and results agree across ISAs."""
import numpy as np
import pytest
import torch

from pixelfly import attention_ops, ops, reference
from pixelfly.attention import build_attention_layout, gaussian_features, sparse_lowrank_attention
from pixelfly.attention_ops import AttentionIndex, bsattn

HAS_AVX512 = ops.cpu_isa() >= 3
HAS_AVX2 = ops.cpu_isa() >= 2
ISAS = [pytest.param(1, id="portable"),
        pytest.param(2, id="avx2", marks=pytest.mark.skipif(
            not HAS_AVX2, reason="this CPU has no AVX2+FMA")),
        pytest.param(3, id="avx512", marks=pytest.mark.skipif(
            not HAS_AVX512, reason="this CPU has no AVX-512"))]
DTYPES = [torch.float32, torch.bfloat16, torch.float64]
B, H, L, D, BLOCK = 1, 2, 64, 8, 16


def patterns(t):
    t = t.double()
    return torch.isnan(t), torch.isposinf(t), torch.isneginf(t)


def assert_same_pattern(out, ref, what):
    for name, a, b in zip(("NaN", "+inf", "-inf"), patterns(out), patterns(ref)):
        assert torch.equal(a, b), (f"{what}: {name} at {int(a.sum())} positions, reference "
                                   f"{int(b.sum())}; first differences at "
                                   f"{(a != b).nonzero()[:4].tolist()}")


def inputs(where, value, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3))
    t = {"q": q, "k": k, "v": v}[where]
    for _ in range(2):
        h, i, c = (int(torch.randint(n, (1,), generator=g)) for n in (H, L, D))
        t[0, h, i, c] = value
    return tuple(x.to(dtype) for x in (q, k, v))


@pytest.fixture
def isa(request):
    prev = attention_ops.set_cpu_isa(request.param)
    yield request.param
    attention_ops.set_cpu_isa(prev)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("rank", [0, 8])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nonfinite_pattern_matches_reference(where, dtype, causal, rank, isa):
    lay = build_attention_layout(L // BLOCK, "pixelfly", n_factors=1, causal=causal)
    idx = AttentionIndex(lay)
    w = gaussian_features(rank, D, dtype=torch.float64) if rank else None
    for n, value in enumerate((float("nan"), float("inf"), float("-inf"))):
        q, k, v = inputs(where, value, dtype, seed=100 * n + 10 * causal + rank)
        q64, k64, v64 = (x.double() for x in (q, k, v))
        y = sparse_lowrank_attention(q, k, v, idx, BLOCK, causal=causal, features=w)
        if rank:
            ref = reference.pixelfly_attention(q64, k64, v64, lay, BLOCK, w, causal=causal)
        else:
            ref, ref_lse = reference.masked_attention(q64, k64, v64, lay, BLOCK, causal)
            _, lse = bsattn(q, k, v, idx, BLOCK, causal=causal)
            assert_same_pattern(lse, ref_lse, f"lse, {where} = {value}")
        assert_same_pattern(y, ref, f"out, {where} = {value}")
        fin = torch.isfinite(ref)
        assert fin.any()  # the case is not trivially all-NaN
        assert (y.double()[fin] - ref[fin]).abs().max() < {torch.float64: 1e-10, torch.float32: 1e-4,
                                                           torch.bfloat16: 0.1}[dtype]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_causal_mask_selects_never_multiplies(dtype, isa):
    """A NaN / inf value of the last token of a diagonal block reaches that token's row only
    (0 * NaN from a masked position would poison every earlier row of the block)."""
    lay = build_attention_layout(L // BLOCK, "local", causal=True, window=0)
    idx = AttentionIndex(lay)
    for value in (float("nan"), float("inf")):
        q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64).to(dtype) for _ in range(3))
        v[:, :, BLOCK - 1] = value
        k[:, :, 2 * BLOCK - 1] = float("nan")
        out, lse = bsattn(q, k, v, idx, BLOCK, causal=True)
        assert torch.isfinite(out[:, :, : BLOCK - 1]).all()
        assert not torch.isfinite(out[:, :, BLOCK - 1]).any()
        assert torch.isfinite(out[:, :, BLOCK: 2 * BLOCK - 1]).all()
        assert torch.isnan(out[:, :, 2 * BLOCK - 1]).all()


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_nan_key_is_not_a_zero_row(isa):
    """A NaN key used to fail the kernel's ``l > 0`` test and give 0 with lse = -inf."""
    idx = AttentionIndex(np.ones((L // BLOCK, L // BLOCK), bool))
    q, k, v = (torch.randn(1, 1, L, D) for _ in range(3))
    k[0, 0, 5, 0] = float("nan")
    out, lse = bsattn(q, k, v, idx, BLOCK)
    assert torch.isnan(out).all() and torch.isnan(lse).all()
    k[0, 0, 5, 0] = float("inf")
    q.abs_()                          # every score with key 5 is +inf
    out, lse = bsattn(q, k, v, idx, BLOCK)
    assert torch.isnan(out).all() and torch.isposinf(lse).all()


def test_isas_agree_on_nonfinite_inputs():
    simd = [isa for isa, have in ((2, HAS_AVX2), (3, HAS_AVX512)) if have]
    if not simd:
        pytest.skip("this CPU has neither AVX2+FMA nor AVX-512: only the portable kernel exists here")
    lay = build_attention_layout(L // BLOCK, "pixelfly", causal=True)
    q, k, v = inputs("k", float("nan"), torch.float32, 7)
    res = {}
    for isa in [1] + simd:
        prev = attention_ops.set_cpu_isa(isa)
        try:
            res[isa] = bsattn(q, k, v, AttentionIndex(lay), BLOCK, causal=True)
        finally:
            attention_ops.set_cpu_isa(prev)
    for isa in simd:
        for a, b in zip(res[isa], res[1]):
            assert_same_pattern(a, b, f"isa {isa} vs portable")
