"""PixelflyLinear(layout=...) with any block layout, named layouts in plans, and the
authors' per-layer configs (apply_fly_configs) through plan -> JSON -> sparsify."""
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

import pixelfly
from pixelfly import PixelflyLinear, reference
from pixelfly.custom_layout import LAYOUT_NAMES, layout_from_spec
from pixelfly.models import build_model, example_input
from pixelfly.convert import sparsify as sparsify_model
from testing import assert_close_to_oracle


def layouts_96x64(b=16):  # a 6 x 4 block grid
    R, C = 96 // b, 64 // b
    own = np.zeros((R, C), bool)
    own[::2, 1] = own[1, :] = True
    return {
        "fly_config": pixelfly.fly_config_layout(96, 64, 4, 2, block=b),
        "bigbird": pixelfly.bigbird_layout(R, C, 0, 1, 1, seed=3),
        "random": pixelfly.random_layout(R, C, 0.4, seed=5),
        "own": own,
        "empty": np.zeros((R, C), bool),
        "full": np.ones((R, C), bool),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(layouts_96x64()))
@pytest.mark.parametrize("rank", [0, 3])
def test_forward_and_gradients_match_reference(dtype, name, rank):
    lay = layouts_96x64()[name]
    layer = PixelflyLinear(64, 96, block_size=16, layout=lay, rank=rank, dtype=dtype)
    assert np.array_equal(layer.layout.numpy(), lay) and layer.blocks.shape[0] == lay.sum()
    x = torch.randn(5, 3, 64, dtype=dtype, requires_grad=True)
    y = layer(x)
    p = {k: v.detach() for k, v in layer.named_parameters()}
    g = layer.gamma.detach()
    p64 = {k: v.double().requires_grad_() for k, v in p.items()}
    x64 = x.detach().double().requires_grad_()
    gl = p64.get("gamma_logit")
    y64 = reference.pixelfly_linear(x64, p64["blocks"], lay, p64.get("U"), p64.get("V"),
                                    torch.sigmoid(gl) if rank else 1.0, p64["bias"])
    base = reference.pixelfly_linear(x.detach(), p["blocks"], lay, p.get("U"), p.get("V"), g if rank else 1.0, p["bias"])
    assert_close_to_oracle(y.detach(), y64.detach(), base, "forward")
    gy = torch.randn_like(y)
    y.backward(gy)
    y64.backward(gy.double())
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    for k, v in layer.named_parameters():
        if v.numel() == 0:  # the blocks of an empty layout
            continue
        ref = p64[k].grad if p64[k].grad is not None else torch.zeros_like(p64[k])
        assert (v.grad.double() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item()), k
    assert (x.grad.double() - x64.grad).abs().max().item() <= tol * max(1.0, x64.grad.abs().max().item())


def test_from_dense_state_dict_and_repr():
    lay = pixelfly.fly_config_layout(128, 96, 16, 2, block=16)   # cells of 8 x 6: straddle blocks
    lin = nn.Linear(96, 128, dtype=torch.float64)
    sp = PixelflyLinear.from_dense(lin, block_size=16, layout=lay, rank=0)
    mask = torch.from_numpy(pixelfly.layout_to_mask(lay, 16))
    torch.testing.assert_close(sp.to_dense().weight, lin.weight * mask)  # masked weights kept
    full = PixelflyLinear.from_dense(lin, block_size=16, layout=lay, rank=96)
    x = torch.randn(4, 96, dtype=torch.float64)
    torch.testing.assert_close(full(x), lin(x))                        # + full rank: exact
    assert "layout=custom" in repr(sp)
    # a checkpoint with a custom layout loads into a flat-butterfly layer of the same grid
    buf = io.BytesIO()
    torch.save(full.state_dict(), buf)
    buf.seek(0)
    other = PixelflyLinear(96, 128, block_size=16, n_factors=1, rank=96, dtype=torch.float64)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other(x), full(x))


def test_initial_output_scale_matches_nn_linear():
    x = torch.randn(2048, 768)
    dense = nn.Linear(768, 3072)(x).std().item()
    lay = pixelfly.fly_config_layout(3072, 768, 16, 2)
    for kw in [dict(rank=0), dict(rank=32), dict(rank=32, gate="token")]:
        got = PixelflyLinear(768, 3072, layout=lay, **kw)(x).std().item()
        assert 0.8 < got / dense < 1.25, (kw, got, dense)


def test_bad_layout_arguments():
    lay = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match=r"layout must have the block grid's shape \(6, 4\)"):
        PixelflyLinear(64, 96, block_size=16, layout=lay)
    with pytest.raises(TypeError, match="layout must be a boolean"):
        PixelflyLinear(64, 96, block_size=16, layout=np.ones((6, 4)))
    with pytest.raises(ValueError, match="n_factors"):
        PixelflyLinear(64, 96, block_size=16, layout=np.ones((6, 4), bool), n_factors=1)
    with pytest.raises(ValueError, match="density"):
        PixelflyLinear(64, 96, block_size=16, layout=np.ones((6, 4), bool), density=0.5)


def test_layout_specs():
    R, C = 6, 4
    assert np.array_equal(layout_from_spec({"name": "fly_config", "butterfly_size": 4, "n_factors": 2}, 96, 64, 16),
                          pixelfly.fly_config_layout(96, 64, 4, 2, block=16))
    assert np.array_equal(layout_from_spec({"name": "bigbird", "window": 0, "n_global": 1, "n_random": 1, "seed": 3},
                                           96, 64, 16), pixelfly.bigbird_layout(R, C, 0, 1, 1, seed=3))
    assert np.array_equal(layout_from_spec({"name": "flat_butterfly", "n_factors": 1}, 96, 64, (16, 16)),
                          pixelfly.flat_butterfly_layout(R, C, 1))
    own = [[1, 0, 0, 1]] * 6
    assert np.array_equal(layout_from_spec({"name": "blocks", "layout": own}, 96, 64, 16), np.array(own, bool))
    for name in LAYOUT_NAMES:
        assert isinstance(name, str)
    with pytest.raises(ValueError, match="spec name must be one of"):
        layout_from_spec({"name": "nope"}, 96, 64, 16)
    with pytest.raises(TypeError, match="bigbird"):
        layout_from_spec({"name": "bigbird", "windw": 1}, 96, 64, 16)
    with pytest.raises(ValueError, match="butterfly_size"):
        layout_from_spec({"name": "fly_config", "butterfly_size": 3, "n_factors": 1}, 96, 64, 16)
    with pytest.raises(TypeError, match="'name'"):
        layout_from_spec("fly_config", 96, 64, 16)


RELEASE_FBBFLYLR = {  # the release's configs/model/gpt2_mlp_cfg/fbbflylr.yaml, as Hydra loads it
    "_target_": "src.models.layers.fastlinear.SparseLRLinear", "rank": 32,
    "sparse_cfg": {"_target_": "src.models.layers.blocksparse_linear.BlockSparseLinear", "backend": "dense",
                   "sparsity_config": {"_target_": "FlatBlockButterflySparsityConfig",
                                       "block": 16, "butterfly_size": 16, "n_factors": 2}}}


def test_fly_config_reads_release_fields():
    c = pixelfly.fly_config(RELEASE_FBBFLYLR)
    assert c == {"layout": {"name": "fly_config", "butterfly_size": 16, "n_factors": 2}, "block": 16,
                 "rank": 32, "gate": "token"}
    flat = pixelfly.fly_config({"butterfly_size": 8, "n_factors": 3, "shuffle": True, "global_size": 4})
    assert flat["gate"] == "scalar" and flat["rank"] == 0 and flat["layout"]["shuffle"] is True
    assert pixelfly.fly_config({**RELEASE_FBBFLYLR, "gating": False})["gate"] == "scalar"
    with pytest.raises(ValueError, match="butterfly_size"):
        pixelfly.fly_config({"n_factors": 2})


def test_whole_model_from_release_configs_through_json(tmp_path):
    torch.manual_seed(0)
    model = build_model("gpt2", config="tiny")
    ex = example_input("gpt2", model.config, batch=2)
    p = pixelfly.plan(model, ex, budget=0.5, block_size=16)
    p = pixelfly.apply_fly_configs(p, {"*.mlp.fc1": RELEASE_FBBFLYLR, "*.mlp.fc2": {**RELEASE_FBBFLYLR, "rank": 0.25}})
    p.save(tmp_path / "plan.json")
    q = pixelfly.Plan.load(tmp_path / "plan.json")
    assert json.loads(json.dumps(q.to_dict())) == p.to_dict()
    fc1 = q["blocks.0.mlp.fc1"]
    want = pixelfly.fly_config_layout(256, 64, 16, 2, block=16)
    assert fc1.layout["name"] == "fly_config" and fc1.gate == "token" and fc1.rank == 32
    assert fc1.nnz == want.sum() and fc1.density == want.mean() and 0 < fc1.cost < fc1.dense_cost
    assert q["blocks.0.mlp.fc2"].rank == 16  # 0.25 * min(64, 256), the release's float rank
    assert q["blocks.0.attn.qkv"].layout is None  # unmatched layers keep their plan
    sparsify_model(model, q)
    layer = model.get_submodule("blocks.1.mlp.fc1")
    assert isinstance(layer, PixelflyLinear) and layer.gate_kind == "token" and layer.custom_layout
    assert np.array_equal(layer.layout.numpy(), want)
    assert model.get_submodule("blocks.1.attn.qkv").gate_kind == "scalar"
    out = model(ex) if not isinstance(ex, dict) else model(**ex)
    (out if torch.is_tensor(out) else out[0]).float().sum().backward()
    with pytest.raises(ValueError, match="block"):
        pixelfly.apply_fly_configs(p, {"*.mlp.fc1": {**RELEASE_FBBFLYLR, "sparse_cfg": {
            "sparsity_config": {"block": 32, "butterfly_size": 16, "n_factors": 2}}}})
    with pytest.raises(ValueError, match="blocks.0.attn.proj"):
        pixelfly.apply_fly_configs(p, {"*.attn.proj": {"butterfly_size": 128, "n_factors": 2, "block": 16}})
