"""PixelflyLinear against the pure-PyTorch reference, conversions, checkpoints, training."""
import io

import pytest
import torch
from torch import nn
from torch.func import functional_call

from pixelfly import PixelflyLinear, choose_config, reference
from testing import assert_close_to_oracle, devices, dtypes


def ref_forward(layer, x):
    """Masked dense reference with the layer's own parameters, in float64."""
    p = {k: v.double() for k, v in layer.named_parameters()}
    gamma = torch.sigmoid(p["gamma_logit"]) if layer.rank else 1.0
    return reference.pixelfly_linear(x.double(), p["blocks"], layer.layout.cpu(), p.get("U"), p.get("V"),
                                     gamma, p.get("bias"))


CASES = [  # in, out, block, n_factors, rank, bias, lead
    (64, 96, 16, 1, 0, True, (7,)),
    (128, 64, 32, 1, 5, False, (2, 3)),
    (96, 48, (16, 32), 1, 3, True, (0,)),
    (256, 256, 32, 3, 8, True, (4, 5, 2)),
    (48, 80, (16, 8), 2, 0, False, (33,)),
]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_reference(device, dtype, case):
    fin, fout, block, m, r, bias, lead = case
    layer = PixelflyLinear(fin, fout, bias=bias, block_size=block, n_factors=m, rank=r,
                           device=device, dtype=dtype)
    x = torch.randn(*lead, fin, device=device, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert y.shape == (*lead, fout) and y.dtype == dtype
    y64 = ref_forward(layer.cpu().double(), x.detach().cpu())
    layer.to(device=device, dtype=dtype)
    base = reference.pixelfly_linear(
        x.detach(), layer.blocks.detach(), layer.layout, r and layer.U.detach(), r and layer.V.detach(),
        layer.gamma.detach() if r else 1.0, None if layer.bias is None else layer.bias.detach())
    assert_close_to_oracle(y.detach().cpu(), y64, base.cpu(), "forward")
    gy = torch.randn_like(y)
    y.backward(gy)
    # gradients against autograd through the float64 reference
    params = {k: v.detach().double().cpu().requires_grad_() for k, v in layer.named_parameters()}
    x64 = x.detach().double().cpu().requires_grad_()
    g64 = params.get("gamma_logit")
    out = reference.pixelfly_linear(x64, params["blocks"], layer.layout.cpu(), params.get("U"), params.get("V"),
                                    torch.sigmoid(g64) if r else 1.0, params.get("bias"))
    out.backward(gy.double().cpu())
    tol = {torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 0.15}[dtype]
    for name, p in layer.named_parameters():
        if p.numel() == 0:  # U, V of a rank-0 layer take no part
            continue
        ref_g, got = params[name].grad, p.grad.double().cpu()
        scale = max(1.0, ref_g.abs().max().item())
        assert (got - ref_g).abs().max().item() <= tol * scale, name
    if x64.numel():
        scale = max(1.0, x64.grad.abs().max().item())
        assert (x.grad.double().cpu() - x64.grad).abs().max().item() <= tol * scale


def test_gradcheck_whole_layer():
    layer = PixelflyLinear(32, 24, block_size=8, n_factors=1, rank=2, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


@pytest.mark.parametrize("rank,bias", [(0, False), (0, True), (3, False), (3, True)])
def test_fused_function_matches_reference_and_frees_nothing_it_needs(rank, bias):
    """pixelfly_linear adds the low-rank and bias terms in place: the result and the
    gradients equal the plain composition, including with the output reused afterwards."""
    from pixelfly.linear_fn import pixelfly_linear
    layer = PixelflyLinear(64, 48, bias=bias, block_size=16, n_factors=1, rank=rank, dtype=torch.float64)
    x = torch.randn(9, 64, dtype=torch.float64, requires_grad=True)
    b = layer.blocks.detach().clone().requires_grad_()
    V = layer.V.detach().clone().requires_grad_() if rank else None
    U = layer.U.detach().clone().requires_grad_() if rank else None
    bb = layer.bias.detach().clone().requires_grad_() if bias else None
    args = [t for t in (x, b, V, U, bb) if t is not None]
    y = pixelfly_linear(x, b, layer._idx(), V, U, bb)
    ref = reference.pixelfly_linear(x, b, layer.layout, U, V, 0.5 if rank else 1.0, bb)
    ref = ref * 2 - (bb if bias else 0) if rank else ref  # gamma=0.5 halves both terms
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y * 1.0, args, gy)
    want = torch.autograd.grad(ref, args, gy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="V and U"):
        pixelfly_linear(x, b, layer._idx(), V=torch.zeros(64, 2, dtype=torch.float64))


@pytest.mark.parametrize("rank", [0, 3])
@pytest.mark.parametrize("T", [2, 60])  # gamma scales the rows (T x 64 <= 12 blocks x 16 x 16) / the blocks
def test_gamma_scales_rows_or_blocks_with_the_same_result(T, rank):
    """pixelfly_linear's gamma: output and gradients (x, B, gamma, and V, U with a low-rank
    part mixed by 1 - gamma) equal the reference with gamma B + (1 - gamma) U V^T on either
    side of the rows-vs-weights choices (T = 2: the rows and h = x V; T = 60 > 48 outputs:
    the blocks and U); gradcheck and gradgradcheck too."""
    from pixelfly.linear_fn import _scale_rows, pixelfly_linear
    layer = PixelflyLinear(64, 48, block_size=16, n_factors=1, rank=rank, bias=False, dtype=torch.float64)
    idx = layer._idx()
    b = layer.blocks.detach().clone().requires_grad_()
    assert _scale_rows(T, b, idx) == (T == 2)
    x = torch.randn(T, 64, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    lr = [t.detach().clone().requires_grad_() for t in (layer.V, layer.U)] if rank else []
    fn = lambda x, b, g, *lr: pixelfly_linear(x, b, idx, *lr, gamma=g)
    y = fn(x, b, g, *lr)
    V, U = lr if rank else (None, None)
    ref = reference.pixelfly_linear(x, b, layer.layout, U, V, g, None)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    args = (x, b, g, *lr)
    for got, want in zip(torch.autograd.grad(y, args, gy), torch.autograd.grad(ref, args, gy)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)
    with pytest.raises(ValueError, match="gamma must have one element"):
        pixelfly_linear(x, b, idx, gamma=torch.ones(2, dtype=torch.float64))


def test_initial_output_scale_matches_nn_linear():
    x = torch.randn(2048, 1024)
    dense = nn.Linear(1024, 1024)(x).std().item()
    for kw in [dict(density=0.25), dict(density=1 / 16), dict(n_factors=2, rank=0)]:
        got = PixelflyLinear(1024, 1024, **kw)(x).std().item()
        assert 0.8 < got / dense < 1.25, (kw, got, dense)


def test_only_nonzero_blocks_are_parameters():
    layer = PixelflyLinear(512, 1024, block_size=32, n_factors=2, rank=4)
    R, C = 1024 // 32, 512 // 32
    assert layer.layout.shape == (R, C)
    nnz = int(layer.layout.sum())
    assert layer.blocks.shape == (nnz, 32, 32) and nnz < R * C
    expected = nnz * 32 * 32 + 4 * (512 + 1024) + 1 + 1024
    assert sum(p.numel() for p in layer.parameters()) == expected
    assert "block=32x32" in repr(layer) and "rank=4" in repr(layer) and "density=" in repr(layer)


def test_density_picks_config_within_budget():
    for density in [1 / 4, 1 / 8, 1 / 16]:
        n, m, r = choose_config(4096, 4096, density, 32)
        layer = PixelflyLinear(1024, 1024, density=density)
        assert layer.density <= density + 1e-9
        assert r > 0 and 1 <= m
    with pytest.raises(ValueError, match="density"):
        PixelflyLinear(64, 64, density=1.5)


def test_to_dense_and_from_dense():
    layer = PixelflyLinear(128, 96, block_size=32, n_factors=1, rank=3, dtype=torch.float64)
    with torch.no_grad():
        layer.gamma_logit.fill_(0.3)
    x = torch.randn(11, 128, dtype=torch.float64)
    torch.testing.assert_close(layer.to_dense()(x), layer(x))
    lin = nn.Linear(128, 96, dtype=torch.float64)
    full = PixelflyLinear.from_dense(lin, block_size=32, n_factors=1, butterfly_size=2, rank=96)
    torch.testing.assert_close(full(x), lin(x))  # dense layout + full rank: exact
    big, xb = nn.Linear(256, 256, dtype=torch.float64), torch.randn(11, 256, dtype=torch.float64)
    part = PixelflyLinear.from_dense(big, block_size=32, n_factors=1, rank=8)
    no_lr = PixelflyLinear.from_dense(big, block_size=32, n_factors=1, rank=0)
    assert part.layout.float().mean() == 0.25
    assert (part(xb) - big(xb)).norm() < (no_lr(xb) - big(xb)).norm()
    with pytest.raises(TypeError, match="nn.Linear"):
        PixelflyLinear.from_dense(nn.Conv1d(3, 3, 1))


def test_state_dict_round_trip_exact():
    a = PixelflyLinear(128, 64, block_size=16, n_factors=2, rank=4)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = PixelflyLinear(128, 64, block_size=16, n_factors=1, rank=4)  # other layout
    b.load_state_dict(torch.load(buf))
    x = torch.randn(9, 128)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.layout, b.layout) and b.blocks.shape == a.blocks.shape


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size 32x32 must divide"):
        PixelflyLinear(100, 64)
    with pytest.raises(TypeError, match="in_features"):
        PixelflyLinear(64.0, 64)
    with pytest.raises(ValueError, match="rank"):
        PixelflyLinear(64, 64, block_size=16, n_factors=1, rank=1000)
    layer = PixelflyLinear(64, 64, block_size=16, n_factors=1)
    with pytest.raises(ValueError, match="last dimension 64"):
        layer(torch.randn(3, 65))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(3, 64, dtype=torch.float64))


def test_two_layer_model_trains():
    torch.manual_seed(0)
    X = torch.randn(512, 64)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32))
    Y = teacher(X).detach()
    model = nn.Sequential(PixelflyLinear(64, 128, block_size=16, density=0.5), nn.Tanh(),
                          PixelflyLinear(128, 32, block_size=16, density=0.5))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = nn.functional.mse_loss(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_threads_give_same_result():
    layer = PixelflyLinear(256, 256, density=0.25)
    x = torch.randn(65, 256)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = layer(x)
        torch.set_num_threads(2)
        y2 = layer(x)
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lead", [(8,), (2, 4)])
def test_torch_compile_forward_backward(lead):
    model = nn.Sequential(PixelflyLinear(64, 64, block_size=16, density=0.5), nn.ReLU(),
                          PixelflyLinear(64, 32, block_size=16, n_factors=1, rank=2))
    x = torch.randn(*lead, 64)
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("T", [3, 200])  # 1 - gamma on h (T <= 48 outputs) / on U
def test_gamma_as_tensors_equals_gamma_as_floats(T, monkeypatch):
    """The fused function mixes with Python floats on a CPU outside a graph and with 0-d
    tensors elsewhere (GPU, torch.func, torch.compile, double backward): forcing the tensor
    branch on the CPU gives the same output and gradients."""
    from pixelfly import linear_fn
    layer = PixelflyLinear(64, 48, block_size=16, n_factors=1, rank=5, dtype=torch.float64)
    with torch.no_grad():
        layer.gamma_logit.fill_(0.7)
    x = torch.randn(T, 64, dtype=torch.float64, requires_grad=True)

    def run():
        y = layer(x)
        grads = torch.autograd.grad(y, (x, *layer.parameters()), torch.ones_like(y))
        with torch.no_grad():
            return (y.detach(), layer(x), *grads)

    floats = run()
    real = linear_fn._mixing
    monkeypatch.setattr(linear_fn, "_mixing", lambda gamma, graph: real(gamma, True))
    for a, b in zip(floats, run()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_jit_trace_follows_gamma():
    """A ``torch.jit.trace`` of the layer reads gamma at run time (the CPU's float fast path
    is off while tracing), so a trace still computes the layer after gamma changes."""
    layer = PixelflyLinear(64, 48, block_size=16, n_factors=1, rank=5, dtype=torch.float64)
    x = torch.randn(3, 64, dtype=torch.float64)
    with torch.no_grad():
        traced = torch.jit.trace(layer, x, check_trace=False)
        layer.gamma_logit.fill_(2.0)
        torch.testing.assert_close(traced(x), layer(x), rtol=1e-12, atol=1e-12)
