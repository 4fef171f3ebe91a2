"""bsmm_fwd_lowrank / bsmm_bwd_x_lowrank (the low-rank term and bias formed in the kernel's
output tile) against the float64 reference, across ISAs and threads, with gradients,
opcheck and bad inputs; and PixelflyLinear with the fusion on and off (pixelfly.epilogue)."""
import random

import pytest
import torch

from pixelfly import epilogue, ops, reference
from pixelfly.backends import use_composite
from test_linear import CASES, test_forward_and_gradients_match_reference
from test_ops import make_case
from testing import assert_close_to_oracle, assert_same_across_threads_and_isas, devices, dtypes


def lowrank_case(R, C, b1, b2, T, r, bias, dtype, seed, device="cpu"):
    layout, it, blocks, x, dy = make_case(R, C, b1, b2, T, dtype, seed=seed, device=device)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    lr = {"fwd": (rnd(T, r), rnd(R * b1, r), rnd(R * b1) if bias else None),
          "bwd_x": (rnd(T, r), rnd(C * b2, r), rnd(C * b2) if bias else None)}
    return torch.as_tensor(layout), it, blocks, x, dy, lr


def reference_lowrank(kind, act, blocks, lay, a, b, bias):
    out = (reference.bsmm_fwd if kind == "fwd" else reference.bsmm_bwd_x)(act, blocks, lay) + a @ b.T
    return out if bias is None else out + bias


def run_lowrank(kind, act, blocks, it, a, b, bias):
    fn = ops.bsmm_fwd_lowrank if kind == "fwd" else ops.bsmm_bwd_x_lowrank
    return fn(act, blocks, *it, lr_a=a, lr_b=b, bias=bias)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("b1,b2", [(32, 32), (16, 48), (3, 5)])
@pytest.mark.parametrize("T", [0, 1, 5, 12, 33, 300])  # <= 16 rows: the transposed path
def test_lowrank_ops_match_reference(device, dtype, b1, b2, T):
    rng = random.Random(b1 * 1000 + b2 * 10 + T)
    for r, bias in [(0, True), (1, False), (7, True), (40, True)]:
        lay, it, blocks, x, dy, lr = lowrank_case(rng.randint(1, 5), rng.randint(1, 5), b1, b2, T, r,
                                                  bias, dtype, rng.randint(0, 99), device)
        for kind, act in (("fwd", x), ("bwd_x", dy)):
            a, b, bb = lr[kind]
            got = run_lowrank(kind, act, blocks, it, a, b, bb)
            to64 = lambda t: None if t is None else t.double().cpu()
            want = reference_lowrank(kind, to64(act), to64(blocks), lay, to64(a), to64(b), to64(bb))
            base = reference_lowrank(kind, act, blocks, lay.to(device), a, b, bb)
            assert_close_to_oracle(got.cpu(), want, base.cpu(), f"{kind} rank {r} bias {bias}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threads_isas_and_composite_agree(dtype):
    """Bitwise across ISAs and thread counts; the composite ops (bsmm op, then addmm_ and
    add_) agree to rounding."""
    lay, it, blocks, x, dy, lr = lowrank_case(6, 5, 32, 32, 77, 24, True, dtype, seed=5)
    both = lambda: tuple(run_lowrank(k, act, blocks, it, *lr[k]) for k, act in (("fwd", x), ("bwd_x", dy)))
    first = assert_same_across_threads_and_isas(both)
    use_composite("cpu")
    try:
        comp = both()
    finally:
        use_composite("cpu", False)
    for a, b in zip(first, comp):  # bf16: the composite rounds twice (the op's output, the sum)
        ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -20
        assert (a.double() - b.double()).abs().max() <= 2 * ulp * a.double().abs().max()


def test_gradcheck_opcheck_and_meta():
    lay, it, blocks, x, dy, lr = lowrank_case(3, 4, 4, 2, 5, 3, True, torch.float64, seed=1)
    for kind, act in (("fwd", x), ("bwd_x", dy)):
        a, b, bb = (t.clone().requires_grad_() for t in lr[kind])
        args = (act.clone().requires_grad_(), blocks.clone().requires_grad_(), a, b, bb)
        fn = lambda act, w, a, b, bb: run_lowrank(kind, act, w, it, a, b, bb)
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)
        op = getattr(torch.ops.pixelfly, f"bsmm_{kind}_lowrank").default
        torch.library.opcheck(op, (args[0], args[1], *it, a, b, bb))
        torch.library.opcheck(op, (args[0], args[1], *it, a, b, None))
        meta = op(*(t.to("meta") for t in (act, blocks, *it, a, b, bb)))
        assert meta.device.type == "meta" and meta.shape == run_lowrank(kind, act, blocks, it, a, b, bb).shape


def test_bad_inputs_name_the_argument():
    lay, it, blocks, x, dy, lr = lowrank_case(3, 4, 16, 16, 5, 3, True, torch.float32, seed=4)
    a, b, bias = lr["fwd"]
    with pytest.raises(ValueError, match=r"lr_a must have shape \[T = 5"):
        ops.bsmm_fwd_lowrank(x, blocks, *it, lr_a=a[:-1], lr_b=b, bias=bias)
    with pytest.raises(ValueError, match=r"lr_b must have shape \[48, rank = 3\]"):
        ops.bsmm_fwd_lowrank(x, blocks, *it, lr_a=a, lr_b=b[:, :2], bias=bias)
    with pytest.raises(ValueError, match=r"bias must have shape \[48\]"):
        ops.bsmm_fwd_lowrank(x, blocks, *it, lr_a=a, lr_b=b, bias=bias[:-1])
    with pytest.raises(TypeError, match="lr_b .* must have x's dtype"):
        ops.bsmm_fwd_lowrank(x, blocks, *it, lr_a=a, lr_b=b.double(), bias=bias)
    with pytest.raises(TypeError, match="lr_a must be a torch.Tensor"):
        ops.bsmm_bwd_x_lowrank(dy, blocks, *it, lr_a=None, lr_b=lr["bwd_x"][1])
    raw = torch.ops.pixelfly  # the binding keeps its own checks (no Python checks on this path)
    with pytest.raises(ValueError, match="lr_b must have shape"):
        raw.bsmm_fwd_lowrank(x, blocks, *it, a, b[:-1], bias)
    with pytest.raises(TypeError, match="bias .* must share a dtype"):
        raw.bsmm_fwd_lowrank(x, blocks, *it, a, b, bias.double())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("case", [c for c in CASES if c[4]] + [(64, 48, 16, 1, 3, True, (90,))])
def test_layer_with_and_without_the_fusion(fused, dtype, case):
    """PixelflyLinear's forward and gradients against the float64 reference either way
    (the fused ops in forward and in backward's dx; T = 90 rows: gamma scales the blocks)."""
    prev = epilogue.set_fused(fused)
    try:
        assert epilogue.fused(torch.device("cpu")) is fused
        test_forward_and_gradients_match_reference("cpu", dtype, case)
    finally:
        epilogue.set_fused(prev)


def test_choice_is_measured_once_and_settable(monkeypatch):
    prev = epilogue.set_fused(None)
    try:
        choice = epilogue.fused(torch.device("cpu"))  # measured now
        assert isinstance(choice, bool) and epilogue.set_fused(None) is choice
        assert epilogue.fused(torch.device("meta")) is False
        with pytest.raises(TypeError, match="enabled must be a bool or None"):
            epilogue.set_fused(1)
        epilogue.set_fused(None)
        with monkeypatch.context() as m:  # never timed inside a trace
            m.setattr(torch.jit, "is_tracing", lambda: True)
            assert epilogue.fused(torch.device("cpu")) is False and epilogue.set_fused(None) is None
        use_composite("cpu")
        try:  # the composite lowrank ops are the unfused sum: nothing to gain
            assert epilogue.fused(torch.device("cpu")) is False
        finally:
            use_composite("cpu", False)
    finally:
        epilogue.set_fused(prev)


def test_fused_layer_under_torch_compile():
    """With the fusion on, torch.compile (fullgraph) traces the *_lowrank ops through their
    fake kernels and autograd: output and input gradient equal eager mode's."""
    from pixelfly import PixelflyLinear
    prev = epilogue.set_fused(True)
    try:
        layer = PixelflyLinear(64, 48, block_size=16, n_factors=1, rank=3)
        x = torch.randn(40, 64, requires_grad=True)
        ref = layer(x)
        ref.sum().backward()
        gref, x.grad = x.grad.clone(), None
        y = torch.compile(layer, fullgraph=True)(x)
        y.sum().backward()
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(x.grad, gref)
    finally:
        epilogue.set_fused(prev)
