"""Whole-model planning and conversion: plan, sparsify, densify, checkpoints, DDP, compile."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import pixelfly
from pixelfly import PixelflyLinear
from pixelfly.models import build_model, example_input
from pixelfly.convert import Plan, densify, plan, sparsify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp(width=128):
    return nn.Sequential(nn.Linear(64, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                         nn.Linear(width, 10), nn.Linear(30, 30))  # last: never called


def forward_mlp(model, x):
    h = x
    for m in list(model)[:5]:
        h = m(h)
    return h


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        return forward_mlp(self.body, x)


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5])
def test_plan_totals_never_exceed_budget(budget):
    model = build_model("mixer", config="tiny")
    p = plan(model, example_input("mixer", model.config, batch=8), budget=budget, block_size=16)
    assert p.dense_total > 0
    assert p.sparse_total <= budget * p.dense_total * (1 + 1e-12)
    for lay in p.layers:
        assert lay.tokens > 0 or lay.reason
        if not lay.sparse:
            assert lay.reason, lay.name
    assert "sparse" in str(p) and "budget" in str(p)


def test_plan_reports_why_layers_stay_dense():
    model = Wrapped()
    first_last = plan(model, torch.randn(16, 64), budget=0.3, block_size=16)
    assert (first_last["body.0"].reason, first_last["body.4"].reason) == ("first layer", "last layer")
    p = plan(model, torch.randn(16, 64), budget=0.3, block_size=16, dense_first_last=False)
    assert p["body.5"].reason == "not called by the example input"
    assert p["body.4"].status == "dense"  # 128 -> 10 does not divide into 16 x 16 blocks
    assert "divis" in p["body.4"].reason or "multiple" in p["body.4"].reason
    gpt = build_model("gpt2", config="tiny", tie_weights=False)
    pg = plan(gpt, example_input("gpt2", gpt.config, batch=2), budget=0.3, block_size=16)
    assert not pg["lm_head"].sparse and "keep_dense" in pg["lm_head"].reason


def test_plan_json_round_trip(tmp_path):
    model = Wrapped()
    p = plan(model, torch.randn(16, 64), budget=0.3, block_size=16, dense_first_last=False)
    path = tmp_path / "plan.json"
    p.save(path)
    q = Plan.load(path)
    assert q == p and q.to_dict() == p.to_dict()
    json.loads(path.read_text())
    q["body.2"].status = "dense"  # plans are editable
    q["body.2"].reason = "user choice"
    sparsify(model, q)
    assert isinstance(model.body[0], PixelflyLinear) and isinstance(model.body[2], nn.Linear)


def test_sparsify_keeps_untouched_parameters_identical():
    model = build_model("vit", config="tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = plan(model, example_input("vit", model.config, batch=4), budget=0.3, block_size=16)
    sparsify(model, p)
    replaced = {lay.name for lay in p.layers if lay.sparse}
    assert replaced
    after = model.state_dict()
    for k, v in before.items():
        owner = k.rsplit(".", 1)[0]
        if owner not in replaced:
            assert torch.equal(after[k], v), k
    for name in replaced:
        assert isinstance(model.get_submodule(name), PixelflyLinear)
    model(example_input("vit", model.config, batch=2)).sum().backward()


def test_from_dense_with_full_budget_matches_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64)).double()
    x = torch.randn(10, 64, dtype=torch.float64)
    want = model(x)
    p = plan(model, x, budget=1.0, block_size=16)
    for lay in p.layers:  # budget 1 keeps layers dense; force a dense layout + full rank
        lay.status, lay.butterfly_size, lay.n_factors, lay.rank = "sparse", 2, 1, 64
    sparsify(model, p, init="from_dense")
    assert all(isinstance(m, PixelflyLinear) for m in (model[0], model[2]))
    torch.testing.assert_close(model(x), want)


def test_state_dict_loads_into_fresh_sparsified_model_and_densify():
    torch.manual_seed(0)
    a = build_model("mixer", config="tiny")
    x = example_input("mixer", a.config, batch=4)
    p = plan(a, x, budget=0.25, block_size=16)
    sparsify(a, p)
    b = sparsify(build_model("mixer", config="tiny"), Plan.from_dict(p.to_dict()))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    want = a(x)
    densify(a)
    assert not any(isinstance(m, PixelflyLinear) for m in a.modules())
    torch.testing.assert_close(a(x), want, rtol=1e-4, atol=1e-5)


def test_sparsify_hugging_face_gpt2_conv1d():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=100)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    want = model(ids).logits
    p = plan(model, ids, budget=1.0, block_size=16)
    conv = [lay for lay in p.layers if lay.kind == "conv1d"]
    assert len(conv) == 8 and not p["lm_head"].sparse  # lm_head is tied to the embedding
    for lay in conv:  # dense layout + full rank reproduces the transposed Conv1D weight
        lay.status, lay.butterfly_size, lay.n_factors = "sparse", 2, 1
        lay.rank = min(lay.in_features, lay.out_features)
    sparsify(model, p, init="from_dense")
    assert isinstance(model.transformer.h[0].attn.c_attn, PixelflyLinear)
    torch.testing.assert_close(model(ids).logits, want, rtol=1e-4, atol=1e-4)
    p2 = plan(transformers.GPT2LMHeadModel(cfg), ids, budget=0.5, block_size=16)
    assert sum(lay.sparse for lay in p2.layers) > 0


def test_sparsify_by_budget_keeps_device_and_dtype():
    model = Wrapped().to(torch.float64)
    sparsify(model, 0.3, example_input=torch.randn(16, 64, dtype=torch.float64), block_size=16,
             dense_first_last=False)
    layer = model.body[0]
    assert isinstance(layer, PixelflyLinear) and layer.blocks.dtype == torch.float64
    with pytest.raises(ValueError, match="example_input"):
        sparsify(Wrapped(), 0.3)
    with pytest.raises(ValueError, match="init"):
        sparsify(Wrapped(), 0.3, example_input=torch.randn(2, 64), init="zeros")


def test_torch_compile_sparsified_model():
    model = build_model("mixer", config="tiny")
    x = example_input("mixer", model.config, batch=4)
    sparsify(model, 0.3, example_input=x, block_size=16)
    eager = model(x)
    eager.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = torch.compile(model)(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu():
    model = build_model("mixer", config="tiny")
    x = example_input("mixer", model.config, batch=4)
    sparsify(model, 0.3, example_input=x, block_size=16)
    want = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x)
        got.float().square().mean().backward()
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 0.1 * want.abs().max() + 0.05
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ddp_two_processes_match_single_process(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "ddp.pt"
    proc = subprocess.run([sys.executable, script, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = torch.load(out)
    for name, w in res["single"].items():
        torch.testing.assert_close(res["ddp"][name], w, rtol=1e-5, atol=1e-6, msg=name)
    for name, g in res["single_grads"].items():
        torch.testing.assert_close(res["ddp_grads"][name], g, rtol=1e-5, atol=1e-6, msg=name)
