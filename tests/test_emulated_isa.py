"""The AVX512_BF16 (vdpbf16ps) and AVX-512 kernels, run on an emulated Sapphire Rapids CPU.

On a CPU that has them these paths are tested natively (test_ops, the C tests); elsewhere
they would never run. Here the C core runs on Bochs' x86-64 emulator (tests/emulator.py) and
its outputs must be bitwise those of the ops on this machine's own ISA: every ISA
accumulates in the same order (csrc/include/pixelfly.h), so any difference is a bug in a
path this machine cannot execute. vdpbf16ps flushes subnormal inputs, products and sums to
zero, which the last tests pin down.
"""
import random

import numpy as np
import pytest
import torch

from pixelfly import ops, reference
from pixelfly.layouts import BlockIndex, random_layout
from testing import assert_close_to_oracle

import emulator

pytestmark = pytest.mark.skipif(emulator.unavailable() is not None,
                                reason=f"CPU emulator: {emulator.unavailable()}")


DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float64: "float64"}


@pytest.fixture(scope="module")
def emu():
    e = emulator.Emulator()
    yield e
    e.close()


def _np(t):
    """A tensor's storage as numpy (bf16 as its uint16 bits)."""
    t = t.contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _torch(a, dtype):
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if dtype == torch.bfloat16 else torch.from_numpy(a)


def _index(layout):
    idx = BlockIndex.from_layout(layout)
    it = ops.index_tensors(idx)
    return it, [t.numpy() for t in it]


def _near_copy(a, dim, noise):
    """a with its second half along `dim` replaced by the first half plus `noise` * randn:
    sums across the two halves of opposite sign then cancel to a small remainder."""
    h = a.shape[dim] // 2
    first = a.narrow(dim, 0, h)
    a.narrow(dim, h, h).copy_(first + noise * torch.randn_like(first))
    return a


def _cancelling(x, blocks, dy):
    """Operands whose products cancel in every output of fwd, bwd_x and bwd_w: partial sums
    ~2^8 times the result, so an error in the order of the fp32 sums (differences of
    2^-24 of a partial sum) changes the bf16-rounded result, not only the fp32 one."""
    T, (nnz, b1, b2) = x.shape[0], blocks.shape
    w = blocks.double()
    w.narrow(2, b2 // 2, b2 // 2).copy_(-w.narrow(2, 0, b2 // 2))
    w.narrow(1, b1 // 2, b1 // 2).copy_(-w.narrow(1, 0, b1 // 2))
    xs = _near_copy(_near_copy(256 * x.double().reshape(T, -1, b2), 2, 1.0), 0, 1.0)
    d = _near_copy(256 * dy.double().reshape(T, -1, b1), 2, 1.0)
    d.narrow(0, T // 2, T // 2).copy_(-d.narrow(0, 0, T // 2))
    dt = x.dtype
    return xs.reshape(T, -1).to(dt), w.to(dt), d.reshape(T, -1).to(dt)


def _case(R, C, b1, b2, T, dtype, seed, density=0.4, rank=0, bias=False, cancel=False):
    torch.manual_seed(seed)
    layout = random_layout(R, C, density, seed=seed)
    it, it_np = _index(layout)
    nnz = len(it_np[1])

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64).to(dtype)
    x, blocks, dy = randn(T, C * b2), randn(nnz, b1, b2), randn(T, R * b1)
    if cancel:
        x, blocks, dy = _cancelling(x, blocks, dy)
    t = dict(layout=layout, it=it, it_np=it_np, blocks=blocks, x=x, dy=dy)
    t["lr_a"] = randn(T, rank) if rank else None
    t["lr_b_fwd"] = randn(R * b1, rank) if rank else None
    t["lr_b_bwd"] = randn(C * b2, rank) if rank else None
    t["bias_fwd"] = randn(R * b1) if bias else None
    t["bias_bwd"] = randn(C * b2) if bias else None
    return t


def _native(op, c, b1, b2):
    """The op on this machine's own kernels (the production binding)."""
    it, blocks = c["it"], c["blocks"]
    if op == "bwd_w":
        return ops.bsmm_bwd_w(c["dy"], c["x"], *it, b1=b1, b2=b2)
    side = "fwd" if op == "fwd" else "bwd"
    act = c["x"] if op == "fwd" else c["dy"]
    lr_a, lr_b, bias = c["lr_a"], c.get(f"lr_b_{side}"), c[f"bias_{side}"]
    if lr_a is None and bias is None:
        return (ops.bsmm_fwd if op == "fwd" else ops.bsmm_bwd_x)(act, blocks, *it)
    if lr_a is None:
        R, C = c["layout"].shape
        lr_a, lr_b = act.new_zeros(act.shape[0], 0), act.new_zeros(R * b1 if op == "fwd" else C * b2, 0)
    fn = ops.bsmm_fwd_lowrank if op == "fwd" else ops.bsmm_bwd_x_lowrank
    return fn(act, blocks, *it, lr_a=lr_a, lr_b=lr_b, bias=bias)


def _emulated(emu, op, c, b1, b2, dtype, isa, pairs=0, tasks=1):
    R, C = c["layout"].shape
    side = "fwd" if op == "fwd" else "bwd"
    kw = {}
    if op in ("fwd", "bwd_w"):
        kw["x"] = _np(c["x"])
    if op in ("bwd_x", "bwd_w"):
        kw["dy"] = _np(c["dy"])
    if op != "bwd_w":
        kw["w"] = _np(c["blocks"])
        if c["lr_a"] is not None:
            kw["lr_a"], kw["lr_b"] = _np(c["lr_a"]), _np(c[f"lr_b_{side}"])
        if c[f"bias_{side}"] is not None:
            kw["bias"] = _np(c[f"bias_{side}"])
    name = DTYPE_NAME[dtype]
    out, slots = emu.bsmm(op, name, isa, (R, C, b1, b2, *c["it_np"]), c["x"].shape[0],
                          pairs=pairs, tasks=tasks, **kw)
    return _torch(out, dtype), slots


def test_the_emulated_cpu_has_avx512_bf16(emu):
    _, _, slots = emu.probe("dpbf16", 10)
    assert slots[emulator.J["HAS_AVX512"]] == 1 and slots[emulator.J["HAS_BF16"]] == 1
    _, _, auto = emu.probe("fma", 10, isa="avx512bf16")
    assert auto[emulator.J["PICKED"]] == emulator.ISA["avx512bf16"]
    assert auto[emulator.J["PAIRS_NATIVE"]] == 1  # bf16 matmuls go to vdpbf16ps there


@pytest.mark.parametrize("iters", [1, 64, 1000])
def test_dpbf16_probe_counts_twice_the_fma_flops(emu, iters):
    flops, sink, _ = emu.probe("dpbf16", iters)
    fma_flops, fma_sink, _ = emu.probe("fma", iters, isa="avx512")
    assert flops == 2 * fma_flops > 0  # a vdpbf16ps does two products per lane
    assert np.isfinite(sink) and sink > 0 and np.isfinite(fma_sink)


# R, C, b1, b2, T: the few-row path (T <= 16), odd blocks, and sizes with enough outputs
# and long enough sums that a wrong summation order shows after rounding to bf16.
CASES = [
    (3, 4, 32, 32, 1), (4, 3, 32, 32, 5), (2, 5, 32, 32, 16), (5, 3, 3, 5, 12),
    (4, 4, 32, 32, 33), (3, 2, 16, 48, 70), (2, 3, 8, 24, 300), (8, 8, 16, 16, 130),
    (8, 8, 32, 32, 256), (6, 6, 64, 64, 96),
]


@pytest.mark.parametrize("op", ["fwd", "bwd_x", "bwd_w"])
@pytest.mark.parametrize("R,C,b1,b2,T", CASES)
@pytest.mark.parametrize("pairs", [0, 1, -1])
def test_bf16_vdpbf16ps_bitwise_equals_this_cpu(emu, op, R, C, b1, b2, T, pairs):
    c = _case(R, C, b1, b2, T, torch.bfloat16, seed=R * 100 + C * 10 + T, cancel=True)
    got, slots = _emulated(emu, op, c, b1, b2, torch.bfloat16, "avx512bf16", pairs=pairs)
    assert slots[emulator.J["PICKED"]] == emulator.ISA["avx512bf16"]
    want = _native(op, c, b1, b2)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (
        f"{op}: emulated vdpbf16ps differs from this CPU's kernels in "
        f"{(got.view(torch.int16) != want.view(torch.int16)).sum().item()} of {want.numel()} outputs")


@pytest.mark.parametrize("op", ["fwd", "bwd_x", "bwd_w"])
@pytest.mark.parametrize("R,C,b1,b2,T", CASES[::2])
@pytest.mark.parametrize("isa", ["avx512", "avx512bf16"])
def test_fp32_avx512_bitwise_equals_this_cpu(emu, op, R, C, b1, b2, T, isa):
    c = _case(R, C, b1, b2, T, torch.float32, seed=R * 7 + C * 3 + T)
    got, _ = _emulated(emu, op, c, b1, b2, torch.float32, isa)
    assert torch.equal(got, _native(op, c, b1, b2))


@pytest.mark.parametrize("op", ["fwd", "bwd_x"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("T,rank,bias", [(1, 3, True), (9, 17, False), (40, 0, True), (200, 33, True)])
def test_epilogue_bitwise_equals_this_cpu(emu, op, dtype, T, rank, bias):
    c = _case(4, 3, 32, 32, T, dtype, seed=T + rank, rank=rank, bias=bias, cancel=True)
    isa = "avx512bf16" if dtype == torch.bfloat16 else "avx512"
    got, _ = _emulated(emu, op, c, 32, 32, dtype, isa)
    want = _native(op, c, 32, 32)
    assert torch.equal(got.view(torch.int16) if dtype == torch.bfloat16 else got,
                       want.view(torch.int16) if dtype == torch.bfloat16 else want)


@pytest.mark.parametrize("tasks", [1, 2, 3, 8])
def test_task_splits_are_bitwise_equal_there(emu, tasks):
    c = _case(4, 4, 32, 32, 300, torch.bfloat16, seed=11, cancel=True)
    for op in ("fwd", "bwd_x", "bwd_w"):
        got, _ = _emulated(emu, op, c, 32, 32, torch.bfloat16, "avx512bf16", tasks=tasks)
        assert torch.equal(got.view(torch.int16), _native(op, c, 32, 32).view(torch.int16)), op


def test_bf16_against_the_float64_oracle(emu):
    c = _case(6, 6, 32, 32, 64, torch.bfloat16, seed=5, density=0.5)
    lay = torch.as_tensor(c["layout"])
    y, _ = _emulated(emu, "fwd", c, 32, 32, torch.bfloat16, "avx512bf16")
    y64 = reference.bsmm_fwd(c["x"].double(), c["blocks"].double(), lay)
    assert_close_to_oracle(y, y64, reference.bsmm_fwd(c["x"], c["blocks"], lay), "emulated fwd")


def _bf16(values):
    return torch.tensor(values, dtype=torch.float32).to(torch.bfloat16)


def test_vdpbf16ps_flushes_subnormals_as_documented(emu):
    """pixelfly.h: vdpbf16ps gives the bits of the other ISAs except where an operand, a
    product or a partial sum is subnormal: it treats those as zero."""
    layout = np.ones((1, 1), dtype=bool)
    it, it_np = _index(layout)
    x = torch.zeros(40, 32, dtype=torch.bfloat16)  # > 16 rows: the packed path (pair tiles)
    w = torch.zeros(1, 32, 32, dtype=torch.bfloat16)
    x[0, 0], w[0, 0, 0] = _bf16([2.0 ** -65])[0], _bf16([2.0 ** -65])[0]   # product 2^-130: subnormal
    x[1, 0] = _bf16([2.0 ** -130])[0]                                        # a subnormal bf16 input
    w[0, 1, 0] = _bf16([2.0 ** 20])[0]                                       # x[1,0] * 2^20 = 2^-110, normal
    x[2, 2], w[0, 2, 2] = _bf16([1.5])[0], _bf16([2.0])[0]                   # an ordinary product
    c = dict(layout=layout, it=it, it_np=it_np, blocks=w, x=x, dy=None, lr_a=None, bias_fwd=None)
    got, _ = _emulated(emu, "fwd", c, 32, 32, torch.bfloat16, "avx512bf16", pairs=1)
    want = ops.bsmm_fwd(x, w, *it)
    got, want = got.float(), want.float()
    assert want[0, 0] == 2.0 ** -130 and got[0, 0] == 0.0        # the subnormal product
    assert want[1, 1] == 2.0 ** -110 and got[1, 1] == 0.0        # the subnormal input
    assert got[2, 2] == want[2, 2] == 3.0
    keep = torch.ones_like(got, dtype=torch.bool)
    keep[0, 0] = keep[1, 1] = False
    assert torch.equal(got[keep], want[keep])


def test_reads_past_an_operand_fault(emu):
    """Every operand ends at a page followed by an unmapped one, so an overrun stops the
    emulated CPU with a page fault (the memory check these paths get instead of ASan)."""
    c = _case(4, 4, 32, 32, 40, torch.float32, seed=1)
    R, C = c["layout"].shape
    short_x = _np(c["x"])[:-1]  # the job is told 40 rows; the last one is missing
    with pytest.raises(RuntimeError, match=r"\('exception', 14, 0\)"):
        emu.bsmm("fwd", "float32", "avx512", (R, C, 32, 32, *c["it_np"]), 40, x=short_x,
                 w=_np(c["blocks"]))
    got, _ = _emulated(emu, "fwd", c, 32, 32, torch.float32, "avx512")  # and it runs on
    assert torch.equal(got, _native("fwd", c, 32, 32))


# ------------------------------------------------------------------ attention
ATTN_SHAPES = [(1, 1, 64, 16, 16), (2, 3, 128, 32, 32), (1, 2, 128, 64, 64), (2, 2, 96, 40, 24)]


def _emulated_attention(emu, dtype, isa, lay, b, causal, q, k, v, g, per_problem=0, features=None,
                        key_mask=None):
    from pixelfly.attention_ops import AttentionIndex
    index = [t.numpy() for t in AttentionIndex(lay).tensors()]
    name = DTYPE_NAME[dtype]
    scale = q.shape[-1] ** -0.5
    extra = dict(features=None if features is None else features.numpy(),
                 key_mask=None if key_mask is None else key_mask.numpy().astype(np.uint8))
    fwd = emu.attention("fwd", name, isa, index, b, scale, causal, _np(q), _np(k), _np(v), **extra)
    bwd = emu.attention("bwd", name, isa, index, b, scale, causal, _np(q), _np(k), _np(v),
                        out=fwd["OUT"], lse=fwd["LSE"], dout=_np(g), per_problem=per_problem, **extra)
    return (_torch(fwd["OUT"], dtype), torch.from_numpy(fwd["LSE"]),
            *(_torch(bwd[n], dtype) for n in ("DQ", "DK", "DV")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("per_problem", [0, 1])
def test_avx512_attention_against_the_float64_oracle(emu, shape, causal, dtype, per_problem):
    """The AVX-512 attention kernels (softmax rows, GEMM tiles, both backward schedules)
    by the tolerance rule; lse as test_attention's."""
    B, H, L, d, b = shape
    rng = np.random.default_rng(L * d + b)
    lay = rng.random((L // b, L // b)) < 0.45
    lay |= np.eye(L // b, dtype=bool)
    lay[0] = False  # an empty block-row
    torch.manual_seed(L + d)
    q, k, v, g = (torch.randn(B, H, L, d).to(dtype) for _ in range(4))
    out, lse, dq, dk, dv = _emulated_attention(emu, dtype, "avx512", lay, b, causal, q, k, v, g,
                                               per_problem=per_problem)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    o64, l64 = reference.masked_attention(q64, k64, v64, lay, b, causal)
    grads64 = torch.autograd.grad(o64, (q64, k64, v64), g.double())
    qb, kb, vb = (t.clone().requires_grad_() for t in (q, k, v))
    base_o, _ = reference.masked_attention(qb, kb, vb, lay, b, causal)
    base = torch.autograd.grad(base_o, (qb, kb, vb), g)
    assert_close_to_oracle(out, o64.detach(), base_o.detach(), "out")
    fin = torch.isfinite(l64)
    assert torch.equal(torch.isfinite(lse), fin) and (out[~fin] == 0).all()
    assert (lse.double()[fin] - l64.detach()[fin]).abs().max() <= 1e-5 * max(1, l64[fin].abs().max())
    for name, x, x64, xb in zip(("dq", "dk", "dv"), (dq, dk, dv), grads64, base):
        assert_close_to_oracle(x, x64, xb, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_avx512_attention_low_rank_and_key_mask_close_to_this_cpu(emu, dtype, causal):
    """The low-rank (random-feature) part and a key mask: the emulated AVX-512 results
    against this CPU's own op, with its float64 run as the oracle."""
    from pixelfly import attention_ops
    from pixelfly.attention_ops import AttentionIndex
    B, H, L, d, b, rank = 2, 2, 64, 16, 16, 24
    rng = np.random.default_rng(7)
    lay = (rng.random((L // b, L // b)) < 0.5) | np.eye(L // b, dtype=bool)
    torch.manual_seed(3)
    q, k, v, g = (torch.randn(B, H, L, d).to(dtype) for _ in range(4))
    features = torch.randn(rank, d)
    key_mask = torch.rand(B, L) < 0.8
    got = _emulated_attention(emu, dtype, "avx512", lay, b, causal, q, k, v, g, features=features,
                              key_mask=key_mask)
    idx = AttentionIndex(lay).tensors()

    def native(dt):
        qq, kk, vv, gg = (t.to(dt) for t in (q, k, v, g))
        feats = features.double() if dt == torch.float64 else features
        out, lse = attention_ops.bsattn_fwd(qq, kk, vv, *idx, b, d ** -0.5, causal, feats, key_mask)
        return (out, lse, *attention_ops.bsattn_bwd(gg, None, qq, kk, vv, out, lse, *idx, b, d ** -0.5,
                                                     causal, feats, key_mask))
    oracle, base = native(torch.float64), native(dtype)
    for name, x, x64, xb in zip(("out", "lse", "dq", "dk", "dv"), got, oracle, base):
        fin = torch.isfinite(x64)
        assert torch.equal(torch.isfinite(x), fin), name
        assert_close_to_oracle(x.double().where(fin, 0.0).to(x.dtype), x64.where(fin, 0.0),
                               xb.double().where(fin, 0.0).to(xb.dtype), name)
