"""pixelfly.lowrank_mm: the low-rank GEMMs in bf16 on CPUs whose bf16 matmul is slow run in
fp32 and round once; both routes are checked against float64 (bf16 tolerance rule: at most
twice the error of PyTorch's own bf16 matmul), whichever this CPU takes."""
import pytest
import torch

from pixelfly import PixelflyLinear, lowrank_mm


@pytest.fixture(params=[True, False], ids=["via-fp32", "native-bf16"])
def route(request, monkeypatch):
    monkeypatch.setattr(lowrank_mm, "_SLOW", request.param)
    return request.param


def _err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("m,k,n", [(300, 257, 64), (7, 64, 3), (1, 5, 1)])
def test_mm_and_addmm_match_float64(route, m, k, n):
    g = torch.Generator().manual_seed(m + k + n)
    a, b, c = (torch.randn(*s, generator=g) for s in ((m, k), (k, n), (m, n)))
    ab, bb, cb = a.bfloat16(), b.bfloat16(), c.bfloat16()
    want = ab.double() @ bb.double()
    base = _err(ab @ bb, want)          # PyTorch's own bf16 matmul
    assert _err(lowrank_mm.mm(ab, bb), want) <= 2 * base + 1e-6
    want_c = cb.double() + want
    base_c = _err(cb.clone().addmm_(ab, bb), want_c)
    assert _err(lowrank_mm.addmm_(cb.clone(), ab, bb), want_c) <= 2 * base_c + 1e-6
    # c = beta c + alpha a b (the layer's gamma / 1 - gamma mix at a few rows)
    want_s = 0.3 * cb.double() + 0.7 * want
    base_s = _err(cb.clone().addmm_(ab, bb, beta=0.3, alpha=0.7), want_s)
    assert _err(lowrank_mm.addmm_(cb.clone(), ab, bb, beta=0.3, alpha=0.7), want_s) <= 2 * base_s + 1e-6
    # fp32 is never rerouted
    assert torch.equal(lowrank_mm.mm(a, b), a @ b)


def test_mm_routes_only_bf16_cpu(monkeypatch):
    monkeypatch.setattr(lowrank_mm, "_SLOW", True)
    calls = []
    real = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda self: calls.append(self.dtype) or real(self))
    a = torch.randn(4, 3)
    lowrank_mm.mm(a, torch.randn(3, 2))
    assert calls == []
    lowrank_mm.mm(a.bfloat16(), torch.randn(3, 2).bfloat16())
    assert calls == [torch.bfloat16, torch.bfloat16]


def test_fp32_route_holds_under_autocast(monkeypatch):
    # autocast would cast the fp32 copies back to bf16 (the slow matmul again)
    monkeypatch.setattr(lowrank_mm, "_SLOW", True)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 257, generator=g).bfloat16(), torch.randn(257, 33, generator=g).bfloat16()
    want = (a.float() @ b.float()).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lowrank_mm.mm(a, b)
    assert torch.equal(got, want)


def test_probe_is_a_cached_bool(monkeypatch):
    monkeypatch.setattr(lowrank_mm, "_SLOW", None)
    first = lowrank_mm.bf16_matmul_is_slow()
    assert isinstance(first, bool) and lowrank_mm.bf16_matmul_is_slow() is first


def test_probe_ignores_autocast(monkeypatch):
    # the first call usually comes from a layer's forward under autocast, which would turn
    # the fp32 half of the probe into bf16 and hide a slow bf16 matmul
    for ac in (False, True):
        monkeypatch.setattr(lowrank_mm, "_SLOW", None)
        calls = []
        real = torch.Tensor.__matmul__
        monkeypatch.setattr(torch.Tensor, "__matmul__",
                            lambda s, o: calls.append((s.dtype, real(s, o).dtype)) or real(s, o))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            lowrank_mm.bf16_matmul_is_slow()
        monkeypatch.undo()
        assert (torch.float32, torch.float32) in calls and (torch.bfloat16, torch.bfloat16) in calls


def test_layer_under_autocast_matches_float64(route):
    torch.manual_seed(0)
    lin = PixelflyLinear(128, 256, block_size=32, n_factors=1, rank=8)
    x = torch.randn(40, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    gy = torch.randn_like(y)
    y.backward(gy)
    W = lin.weight_dense().double()
    xb = x.detach().bfloat16().double()
    want = xb @ W.t() + lin.bias.double()
    dense = torch.nn.Linear(128, 256).to(torch.float64)
    with torch.no_grad():
        dense.weight.copy_(W)
        dense.bias.copy_(lin.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yd = dense.float()(x.detach())
    base = _err(yd, want)              # nn.Linear's own bf16 autocast error
    assert _err(y, want) <= 2 * base + 1e-6
    want_dx = gy.double() @ W
    assert x.grad is not None and _err(x.grad, want_dx) <= 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lin.parameters())
