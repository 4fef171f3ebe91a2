"""PixelflyLinear(gate="token"): the authors' per-token gate, against the float64 reference."""
import io

import pytest
import torch
from torch import nn
from torch.func import functional_call

from pixelfly import PixelflyLinear, reference
from testing import assert_close_to_oracle, devices, dtypes


def ref_gated(params, layout, x):
    return reference.token_gated_linear(x, params["blocks"], layout, params["U"], params["V"],
                                        params["gate.weight"], params["gate.bias"], params.get("bias"))


def randomise(layer):
    """Move every parameter off its init, the gate included (zero at init)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() else 1.0))


CASES = [  # in, out, block, n_factors, rank, bias, lead
    (64, 96, 16, 1, 4, True, (7,)),
    (128, 64, 32, 1, 5, False, (2, 3)),
    (96, 48, (16, 32), 1, 3, True, (0,)),
    (256, 256, 32, 3, 8, True, (4, 5, 2)),
]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_reference(device, dtype, case):
    fin, fout, block, m, r, bias, lead = case
    layer = PixelflyLinear(fin, fout, bias=bias, block_size=block, n_factors=m, rank=r, gate="token",
                           device=device, dtype=dtype)
    randomise(layer)
    x = torch.randn(*lead, fin, device=device, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert y.shape == (*lead, fout) and y.dtype == dtype
    lay = layer.layout.cpu()
    params = {k: v.detach().double().cpu().requires_grad_() for k, v in layer.named_parameters()}
    x64 = x.detach().double().cpu().requires_grad_()
    y64 = ref_gated(params, lay, x64)
    base = ref_gated({k: v.detach() for k, v in layer.named_parameters()}, layer.layout, x.detach())
    assert_close_to_oracle(y.detach().cpu(), y64.detach(), base.cpu(), "forward")
    gy = torch.randn_like(y)
    y.backward(gy)
    y64.backward(gy.double().cpu())
    tol = {torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 0.15}[dtype]
    for name, p in layer.named_parameters():
        ref_g, got = params[name].grad, p.grad.double().cpu()
        assert (got - ref_g).abs().max().item() <= tol * max(1.0, ref_g.abs().max().item()), name
    if x64.numel():
        assert (x.grad.double().cpu() - x64.grad).abs().max().item() <= tol * max(1.0, x64.grad.abs().max().item())


def test_gradcheck_whole_layer():
    layer = PixelflyLinear(16, 12, block_size=4, n_factors=1, rank=2, gate="token", dtype=torch.float64)
    randomise(layer)
    names = [n for n, _ in layer.named_parameters()]
    assert "gate.weight" in names and "gate.bias" in names and "gamma_logit" not in names
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


def test_gate_is_the_release_lerp():
    """y = lerp(sparse, low rank, sigmoid(gate(x))): gate bias -> +inf gives the low-rank
    part alone, -inf the sparse part alone."""
    layer = PixelflyLinear(64, 64, bias=False, block_size=16, n_factors=2, rank=4, gate="token",
                           dtype=torch.float64)
    randomise(layer)
    x = torch.randn(6, 64, dtype=torch.float64)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(-60.0)
        sparse = reference.bsmm_fwd(x, layer.blocks, layer.layout)
        torch.testing.assert_close(layer(x), sparse)
        layer.gate.bias.fill_(60.0)
        torch.testing.assert_close(layer(x), x @ layer.V @ layer.U.T)


def test_init_scale_and_from_dense():
    x = torch.randn(2048, 1024)
    dense = nn.Linear(1024, 1024)(x).std().item()
    layer = PixelflyLinear(1024, 1024, density=0.25, gate="token")
    assert float(layer.gamma.detach()) == 0.5 and torch.equal(layer.gate.weight, torch.zeros(1, 1024))
    assert 0.8 < layer(x).std().item() / dense < 1.25
    lin = nn.Linear(128, 96, dtype=torch.float64)
    full = PixelflyLinear.from_dense(lin, block_size=32, n_factors=1, butterfly_size=2, rank=96, gate="token")
    xs = torch.randn(7, 128, dtype=torch.float64)
    torch.testing.assert_close(full(xs), lin(xs))  # gate 1/2 at init: exact with full rank
    with pytest.raises(ValueError, match="token"):
        full.to_dense()


def test_state_dict_round_trip_and_repr():
    a = PixelflyLinear(128, 64, block_size=16, n_factors=2, rank=4, gate="token")
    randomise(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = PixelflyLinear(128, 64, block_size=16, n_factors=2, rank=4, gate="token")
    b.load_state_dict(torch.load(buf))
    x = torch.randn(9, 128)
    assert torch.equal(a(x), b(x)) and "gate=token" in repr(a)


def test_bad_gate():
    with pytest.raises(ValueError, match="gate"):
        PixelflyLinear(64, 64, block_size=16, n_factors=1, rank=2, gate="tokens")
    with pytest.raises(ValueError, match="rank > 0"):
        PixelflyLinear(64, 64, block_size=16, n_factors=1, rank=0, gate="token")


def test_bf16_autocast_runs_in_the_autocast_dtype():
    layer = PixelflyLinear(64, 96, block_size=16, n_factors=1, rank=4, gate="token")
    randomise(layer)
    x = torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    p = {k: v.detach().double() for k, v in layer.named_parameters()}
    y64 = ref_gated(p, layer.layout, x.double())
    pb = {k: v.detach().bfloat16() for k, v in layer.named_parameters()}
    base = ref_gated(pb, layer.layout, x.bfloat16())
    assert_close_to_oracle(y.detach(), y64, base, "autocast forward")
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())
