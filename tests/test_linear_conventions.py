"""PixelflyLinear and ButterflyLinear follow the conventions of an nn.Linear replacement:
torch.func (grad, vmap, per-sample gradients, higher order), float16 on the CPU, the meta
device and deferred initialisation, any input strides, clear errors for bad inputs."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

from pixelfly import ButterflyLinear, PixelflyLinear, ops, reference
from test_linear import ref_forward
from testing import assert_close_to_oracle, dtypes

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
KINDS = ["pixelfly", "pixelfly_rank0", "pixelfly_token_gate", "butterfly"]


IN = 128


def make(kind, dtype=torch.float32, device=None, vary_gate=True):
    """A small layer with a sparse layout (``IN`` inputs)."""
    if kind == "butterfly":
        return ButterflyLinear(IN, block_size=16, dtype=dtype, device=device)
    rank = 0 if kind == "pixelfly_rank0" else 3
    gate = "token" if kind == "pixelfly_token_gate" else "scalar"
    layer = PixelflyLinear(IN, 64, block_size=16, n_factors=1, rank=rank, gate=gate,
                           dtype=dtype, device=device)
    if gate == "token" and vary_gate and not layer.blocks.is_meta:
        with torch.no_grad():  # a gate that varies over tokens (it starts at 1/2 everywhere)
            layer.gate.weight.normal_(0, 0.3)
    return layer


def oracle(layer, x):
    """float64 truth of ``layer(x)`` from the pure-PyTorch reference."""
    if isinstance(layer, PixelflyLinear) and layer.gate_kind == "token":
        p = {k: v.double() for k, v in layer.named_parameters()}
        return reference.token_gated_linear(x.double(), p["blocks"], layer.layout, p["U"], p["V"],
                                            p["gate.weight"], p["gate.bias"], p["bias"])
    if isinstance(layer, PixelflyLinear):
        return ref_forward(layer, x)
    W = torch.eye(layer.features, dtype=torch.float64)
    for F in layer.dense_factors():  # W = B_n ... B_2
        W = F.double() @ W
    return x.double() @ W.t() + layer.bias.double()


def index_of(layer):
    """The layout and index tensors the layer's kernels read."""
    if isinstance(layer, PixelflyLinear):
        return [layer.layout, *layer._idx()]
    return [t for i in range(len(layer.factors)) for t in layer._idx(i)]


def close(a, b, dtype, msg=""):
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"{msg}: error {err:.3e} for {dtype}"


# ---------------------------------------------------------------- torch.func
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("kind", KINDS)
def test_func_grad_equals_autograd(kind, dtype):
    layer = make(kind, dtype)
    x = torch.randn(7, IN, dtype=dtype)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, x):
        return functional_call(layer, p, (x,)).float().square().sum()

    got_p, got_x = grad(loss, argnums=(0, 1))(params, x)
    xr = x.clone().requires_grad_()
    loss(dict(layer.named_parameters()), xr).backward()
    for name, p in layer.named_parameters():
        close(got_p[name], p.grad, dtype, name)
    close(got_x, xr.grad, dtype, "x")


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_inputs_equals_a_loop(kind, dtype):
    layer = make(kind, dtype)
    xs = torch.randn(4, 5, IN, dtype=dtype)
    want = torch.stack([layer(x) for x in xs])
    close(vmap(layer)(xs), want, dtype, "in_dims=0")
    close(vmap(layer, in_dims=1, out_dims=1)(xs.transpose(0, 1)), want.transpose(0, 1), dtype, "in_dims=1")
    close(vmap(layer)(xs[:, 0]), want[:, 0], dtype, "1-D per sample")


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_gradients(kind, dtype):
    """vmap(grad): one gradient per sample, as the loop of single-sample autograd gives."""
    layer = make(kind, dtype)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    xs, ts = torch.randn(3, IN, dtype=dtype), torch.randn(3, IN if kind == "butterfly" else 64, dtype=dtype)

    def loss(p, x, t):
        return (functional_call(layer, p, (x[None],))[0].float() - t.float()).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ts)
    for i in range(3):
        layer.zero_grad()
        loss(dict(layer.named_parameters()), xs[i], ts[i]).backward()
        for name, p in layer.named_parameters():
            close(got[name][i], p.grad, dtype, f"{name}[{i}]")


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_an_ensemble_of_layers(kind):
    """vmap over stacked parameters (a batched weight): one call per member."""
    layers = [make(kind, torch.float64) for _ in range(3)]
    params, _ = stack_module_state(layers)
    buffers = dict(layers[0].named_buffers())  # the layout: shared, not batched
    x = torch.randn(6, IN, dtype=torch.float64)

    def run(p):
        return functional_call(layers[0], (p, buffers), (x,))

    got = vmap(run)(params)
    for i, layer in enumerate(layers):
        close(got[i], layer(x), torch.float64, f"member {i}")
    gp = grad(lambda p: vmap(run)(p).sum())(params)
    for i, layer in enumerate(layers):
        layer.zero_grad()
        layer(x).sum().backward()
        for name, p in layer.named_parameters():
            close(gp[name][i], p.grad, torch.float64, f"{name}[{i}]")


@pytest.mark.parametrize("kind", KINDS)
def test_higher_order_func_transforms(kind):
    """jacrev equals autograd's Jacobian; grad of grad equals double backward."""
    layer = make(kind, torch.float64)
    x = torch.randn(2, IN, dtype=torch.float64)
    J = jacrev(layer)(x)
    J_ref = torch.autograd.functional.jacobian(layer, x)
    close(J, J_ref, torch.float64, "jacobian")

    def f(x):
        return layer(x).sin().sum()

    gg = grad(lambda x: grad(f)(x).square().sum())(x)
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(xr), xr, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g.square().sum(), xr)
    close(gg, gg_ref, torch.float64, "grad of grad")


# ---------------------------------------------------------------- float16 on the CPU
@pytest.mark.parametrize("kind", KINDS)
def test_float16_on_the_cpu_matches_the_oracle(kind):
    layer = make(kind, torch.float16)
    assert all(p.dtype == torch.float16 for p in layer.parameters())
    x = torch.randn(9, IN, dtype=torch.float16, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.float16
    y64 = oracle(layer, x.detach())
    # baseline: the same function as plain float16 PyTorch
    dense = fp16_baseline(layer)
    assert_close_to_oracle(y.detach(), y64, dense(x.detach()), "fp16 forward")
    gy = torch.randn_like(y)
    y.backward(gy)
    x64 = x.detach().double().requires_grad_()
    oracle(layer, x64).backward(gy.double())
    xb = x.detach().clone().requires_grad_()
    dense(xb).backward(gy)
    assert_close_to_oracle(x.grad, x64.grad, xb.grad, "fp16 dx")
    for p in layer.parameters():
        assert p.grad.dtype == torch.float16 and torch.isfinite(p.grad).all()


def fp16_baseline(layer):
    """The layer's function in plain float16 PyTorch: a dense layer with its weight rounded
    to float16, or (token gate) the reference on the float16 parameters."""
    if isinstance(layer, PixelflyLinear) and layer.gate_kind == "token":
        p = dict(layer.named_parameters())
        return lambda x: reference.token_gated_linear(x, p["blocks"].detach(), layer.layout,
                                                      p["U"].detach(), p["V"].detach(),
                                                      p["gate.weight"].detach(),
                                                      p["gate.bias"].detach(), p["bias"].detach())
    if isinstance(layer, PixelflyLinear):
        return layer.to_dense().double().half()
    lin = nn.Linear(IN, IN, dtype=torch.float16)
    with torch.no_grad():
        W = torch.eye(IN, dtype=torch.float64)
        for F in layer.dense_factors():
            W = F.double() @ W
        lin.weight.copy_(W)
        lin.bias.copy_(layer.bias)
    return lin


def test_half_conversion_like_nn_linear():
    layer = make("pixelfly")
    x = torch.randn(5, IN)
    y32 = layer(x)
    y16 = layer.half()(x.half())
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), y32, rtol=5e-3, atol=5e-3)


# ---------------------------------------------------------------- meta device
@pytest.mark.parametrize("dtype", dtypes + [torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_meta_construction_and_deferred_init(kind, dtype):
    normal = make(kind, dtype, vary_gate=False)
    with torch.device("meta"):
        layer = make(kind, dtype)
    assert all(t.is_meta for t in layer.state_dict().values())
    # shape inference on the meta device works; a real input raises, never garbage
    assert layer(torch.empty(3, 5, IN, device="meta", dtype=dtype)).shape[:2] == (3, 5)
    with pytest.raises(RuntimeError, match="meta device.*to_empty"):
        layer(torch.randn(3, IN, dtype=dtype))
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    for got, want in zip(index_of(layer), index_of(normal), strict=True):  # rebuilt, not garbage
        assert torch.equal(got, want)
    x = torch.randn(11, IN, dtype=dtype)
    close(layer(x), oracle(layer, x), dtype if dtype != torch.float16 else torch.float16, "forward")
    for name, p in normal.named_parameters():  # same distribution as a normal layer
        q = dict(layer.named_parameters())[name]
        assert q.shape == p.shape and q.dtype == p.dtype and torch.isfinite(q).all()
        if p.numel() > 1 and p.double().std() > 0:
            ratio = q.double().std() / p.double().std()
            assert 0.8 < ratio < 1.25, (name, ratio)
            assert q.double().abs().max() <= 5 * p.double().abs().max()
        else:
            assert torch.equal(q, p)  # gamma_logit, the token gate restart at 0


def test_to_empty_then_load_state_dict():
    """The empty-weight loading path: meta, to_empty, load the checkpoint."""
    src = make("pixelfly")
    with torch.device("meta"):
        layer = make("pixelfly")
    layer.to_empty(device="cpu")
    layer.load_state_dict(src.state_dict())
    x = torch.randn(4, IN)
    assert torch.equal(layer(x), src(x))
    with torch.device("meta"):
        layer = make("pixelfly")
    layer.load_state_dict(src.state_dict(), assign=True)
    assert torch.equal(layer(x), src(x))


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_placed_one_by_one_from_meta(kind):
    """Hugging Face's empty-weight loading: built on meta, each checkpoint tensor set as the
    module's attribute (no _apply, no load_state_dict); the index follows the parameters."""
    src = make(kind)
    with torch.device("meta"):
        layer = make(kind)
    for key, value in src.state_dict().items():
        *path, name = key.split(".")
        owner = layer.get_submodule(".".join(path))
        if name in owner._parameters:
            setattr(owner, name, nn.Parameter(value.clone()))
        else:
            setattr(owner, name, value.clone())
    x = torch.randn(4, IN)
    assert torch.equal(layer(x), src(x))
    for got, want in zip(index_of(layer), index_of(src), strict=True):
        assert torch.equal(got, want)


def test_initial_scale_after_deferred_init_matches_nn_linear():
    x = torch.randn(2048, 1024)
    dense = nn.Linear(1024, 1024)(x).std().item()
    with torch.device("meta"):
        layer = PixelflyLinear(1024, 1024, density=0.25)
    layer.to_empty(device="cpu").reset_parameters()
    assert 0.8 < layer(x).std().item() / dense < 1.25


# ---------------------------------------------------------------- input strides and shapes
def strided_inputs(dtype):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)
    return {
        "expanded row": r(IN).expand(7, IN),
        "expanded [1, in]": r(1, IN).expand(7, IN),
        "expanded lead": r(3, 1, IN).expand(3, 5, IN),
        "transposed": r(IN, 7).t(),
        "every other column": r(7, 2 * IN)[:, ::2],
        "left columns (ld > in)": r(7, IN + 32)[:, :IN],
        "one row of a transposed": r(IN, 1).t(),
        "permuted 3-D": r(5, IN, 3).permute(2, 0, 1),
        "1-D": r(IN),
        "no rows": r(0, IN),
    }


@pytest.mark.parametrize("dtype", dtypes + [torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_strided_inputs_like_nn_linear(kind, dtype):
    layer = make(kind, dtype)
    for name, x in strided_inputs(dtype).items():
        want = layer(x.contiguous())
        got = layer(x)
        assert got.shape == want.shape == (*x.shape[:-1], want.shape[-1]), name
        assert torch.equal(got, want), name  # the same rows reach the kernels
        # gradients flow back through the view as through the contiguous copy
        base = x if x._base is None else x._base
        leaf = base.detach().clone().requires_grad_()
        view = torch.as_strided(leaf, x.shape, x.stride(), x.storage_offset())
        layer(view).float().sum().backward()
        leaf2 = base.detach().clone().requires_grad_()
        layer(torch.as_strided(leaf2, x.shape, x.stride(), x.storage_offset()).contiguous()).float().sum().backward()
        close(leaf.grad, leaf2.grad, dtype, name + " grad")


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_not_a_view(kind):
    """As nn.Linear's: an in-place op on the output is not hidden from FSDP2's hooks."""
    layer = make(kind)
    for x in (torch.randn(IN), torch.randn(5, IN), torch.randn(2, 5, IN)):
        assert layer(x)._base is None


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_name_the_input(kind):
    layer = make(kind)
    with pytest.raises(ValueError, match=rf"input x must have shape \[\*, {IN}\].*got shape \(\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(ValueError, match=rf"input x must have shape \[\*, {IN}\].*got shape \(3, 65\)"):
        layer(torch.randn(3, 65))
    with pytest.raises(RuntimeError, match="linear need to be at least 1D"):  # nn.Linear's own
        nn.Linear(64, 64)(torch.tensor(1.0))


def test_vmap_over_the_index_is_refused():
    layer = make("pixelfly_rank0")
    idx = layer._idx()
    stacked = torch.stack([idx[1], idx[1]])  # col_idx batched
    x = torch.randn(3, IN)
    with pytest.raises(ValueError, match="vmap over the layout index is not supported"):
        vmap(lambda c: ops.bsmm_fwd(x, layer.blocks, idx[0], c, *idx[2:]))(stacked)
