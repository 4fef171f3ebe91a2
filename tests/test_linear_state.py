"""load_state_dict of the block-sparse layers is all or nothing, and a checkpoint with another
layout keeps the Parameter objects, so an optimizer built before the load keeps training."""
import copy

import pytest
import torch
from torch import nn

from pixelfly import ButterflyLinear, PixelflyLinear
from test_linear import ref_forward


def make(n_factors, rank=4, **kw):
    return PixelflyLinear(128, 64, block_size=16, n_factors=n_factors, rank=rank, **kw)


def snapshot(layer):
    """Everything that makes the layer what it is, as (object, value) pairs."""
    return {
        "params": [(n, p, p.detach().clone()) for n, p in layer.named_parameters()],
        "buffers": [(n, b, b.clone()) for n, b in layer.named_buffers()],
        "index": [t.clone() for t in layer._idx()],
        "meta": (layer.index, layer.butterfly_size, layer.n_factors, layer.nnz_blocks),
    }


def assert_unchanged(layer, snap):
    now = dict(layer.named_parameters())
    for name, obj, value in snap["params"]:
        assert now[name] is obj and torch.equal(obj, value), name
    bufs = dict(layer.named_buffers())
    for name, obj, value in snap["buffers"]:
        assert bufs[name] is obj and torch.equal(obj, value), name
    for t, want in zip(layer._idx(), snap["index"], strict=True):
        assert torch.equal(t, want)
    assert (layer.index, layer.butterfly_size, layer.n_factors, layer.nnz_blocks) == snap["meta"]


def bad_checkpoints():
    src = make(2).state_dict()  # another layout (more blocks) than make(1)
    nnz = src["blocks"].shape[0]
    yield "blocks of the old shape for the new layout", {**src, "blocks": make(1).blocks.detach()}, "blocks"
    yield "new layout without blocks", {k: v for k, v in src.items() if k != "blocks"}, "no blocks"
    yield "new layout, U of another rank", {**src, "U": torch.zeros(64, 3)}, "size mismatch for U"
    yield "same layout, bias of another size", {**make(1).state_dict(), "bias": torch.zeros(65)}, "bias"
    yield "layout of another grid", {**src, "layout": torch.ones(3, 3, dtype=torch.bool)}, "layout"
    yield "blocks not a tensor", {**src, "blocks": [0.0] * nnz}, "expected torch.Tensor"


@pytest.mark.parametrize("case", list(bad_checkpoints()), ids=lambda c: c[0])
def test_failed_load_leaves_the_layer_as_it_was(case):
    _, state, message = case
    layer = make(1)
    x = torch.randn(5, 128)
    layer(x).sum().backward()  # grads exist too
    y = layer(x).detach()
    snap = snapshot(layer)
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    with pytest.raises(RuntimeError, match=message):
        layer.load_state_dict(state)
    assert_unchanged(layer, snap)
    assert all(torch.equal(p.grad, grads[n]) for n, p in layer.named_parameters())
    assert torch.equal(layer(x), y)


def test_load_of_another_layout_keeps_the_parameters_and_training_continues():
    torch.manual_seed(0)
    src = make(2)
    layer = make(1)
    params = dict(layer.named_parameters())
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)  # built before the load
    layer.load_state_dict(src.state_dict())
    assert all(p is params[n] for n, p in layer.named_parameters())
    assert torch.equal(layer.layout, src.layout) and layer.blocks.shape == src.blocks.shape
    assert (layer.butterfly_size, layer.n_factors) == (src.butterfly_size, src.n_factors)
    for t, want in zip(layer._idx(), src._idx(), strict=True):
        assert torch.equal(t, want)
    x = torch.randn(9, 128)
    assert torch.equal(layer(x), src(x))
    torch.testing.assert_close(layer(x), ref_forward(layer, x).float())
    # training continues: every parameter moves, the loss falls
    X, Y = torch.randn(256, 128), torch.randn(256, 64)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(layer(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for n, p in layer.named_parameters():
        assert not torch.equal(p, before[n]), f"{n} did not train after the load"
    assert losses[-1] < 0.9 * losses[0]


def test_resume_with_the_optimizer_state_of_the_checkpoint():
    """A resume loads the optimizer's state too, whose moments have the new layout's shape."""
    torch.manual_seed(0)
    src = make(2)
    src_opt = torch.optim.Adam(src.parameters(), lr=1e-2)
    X, Y = torch.randn(64, 128), torch.randn(64, 64)
    for _ in range(2):
        src_opt.zero_grad()
        nn.functional.mse_loss(src(X), Y).backward()
        src_opt.step()
    layer = make(1)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    layer.load_state_dict(src.state_dict())
    opt.load_state_dict(copy.deepcopy(src_opt.state_dict()))  # as from a file
    for model, o in ((src, src_opt), (layer, opt)):
        o.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        o.step()
    for (n, a), b in zip(layer.named_parameters(), src.parameters()):
        assert torch.equal(a, b), n


def test_load_of_another_layout_with_assign():
    src, layer = make(2), make(1)
    layer.load_state_dict(src.state_dict(), assign=True)
    x = torch.randn(4, 128)
    assert torch.equal(layer(x), src(x))


def test_load_of_a_non_butterfly_layout():
    src = make(1)
    state = src.state_dict()
    state["layout"] = state["layout"].clone()
    state["layout"][0, 0] = not state["layout"][0, 0]
    nnz = int(state["layout"].sum())
    state["blocks"] = torch.randn(nnz, 16, 16)
    layer = make(1)
    layer.load_state_dict(state)
    assert layer.nnz_blocks == nnz and (layer.butterfly_size, layer.n_factors) == (None, None)
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer(x), ref_forward(layer, x).float())
    torch.testing.assert_close(layer.to_dense()(x), layer(x))


def test_butterfly_failed_load_leaves_the_layer_as_it_was():
    layer = ButterflyLinear(64, block_size=16)
    before = [(p, p.detach().clone()) for p in layer.parameters()]
    state = layer.state_dict()
    state["factors.0"] = torch.zeros(3, 16, 16)  # the other entries would copy fine
    state["bias"] = torch.zeros(64)
    with pytest.raises(RuntimeError, match="size mismatch for factors.0"):
        layer.load_state_dict(state)
    for (p, value), q in zip(before, layer.parameters(), strict=True):
        assert p is q and torch.equal(q, value)


def test_checkpoint_with_a_0d_gamma_logit_loads():
    """Checkpoints from before gamma_logit became [1] (FSDP2 shards no 0-d parameter)."""
    src = make(1)
    state = src.state_dict()
    state["gamma_logit"] = state["gamma_logit"].reshape(())
    layer = make(1)
    layer.load_state_dict(state)
    x = torch.randn(3, 128)
    assert layer.gamma_logit.shape == (1,) and torch.equal(layer(x), src(x))


def test_token_gated_failed_load_leaves_the_layer_and_its_gate_as_they_were():
    layer = make(1, gate="token")
    snap = snapshot(layer)
    state = make(2, gate="token").state_dict()  # another layout: would resize the blocks
    state["gate.weight"] = torch.zeros(1, 127)
    with pytest.raises(RuntimeError, match="size mismatch for gate.weight"):
        layer.load_state_dict(state)
    assert_unchanged(layer, snap)
    good = make(2, gate="token")
    layer.load_state_dict(good.state_dict())
    x = torch.randn(3, 128)
    assert torch.equal(layer(x), good(x))
