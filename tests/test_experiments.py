"""pixelfly.experiments: the IDX loader, the lr rule, the NTK, and each table end to end
with --quick (checks the pipeline, not the numbers)."""
import gzip
import json
import math
import os
import struct

import numpy as np
import pytest
import torch
from torch import nn

from pixelfly.experiments import fashion_mnist, ntk, results, training, tune
from pixelfly.experiments.__main__ import main
from pixelfly.experiments.baselines import RectButterfly
from pixelfly.experiments.flops import forward_flops


def write_idx(path, arr, gz=True, dtype_code=0x08, cut=0, extra=b""):
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, dtype_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    raw = raw[:len(raw) - cut] + extra
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(fashion_mnist.read_idx(write_idx(tmp_path / "a.idx", a, gz)), a)


@pytest.mark.parametrize("kw,match", [
    (dict(cut=5), "truncated"), (dict(extra=b"xx"), "trailing"), (dict(dtype_code=0x0D), "unsupported")])
def test_read_idx_rejects_bad_files(tmp_path, kw, match):
    path = write_idx(tmp_path / "bad.gz", np.zeros((3, 4)), **kw)
    with pytest.raises(ValueError, match=match):
        fashion_mnist.read_idx(path)


def test_read_idx_rejects_bad_magic_and_truncated_gzip(tmp_path):
    p = tmp_path / "m"
    p.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01x")
    with pytest.raises(ValueError, match="bad magic"):
        fashion_mnist.read_idx(p)
    good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x04abcd")
    (tmp_path / "t.gz").write_bytes(good[:-6])
    with pytest.raises(ValueError, match="gzip"):
        fashion_mnist.read_idx(tmp_path / "t.gz")


def fake_dataset(d, n_train=6, n_test=4, labels_ok=True):
    rng = np.random.default_rng(0)
    for (img, lab), n in zip(fashion_mnist._FILES.values(), (n_train, n_test)):
        write_idx(d / img, rng.integers(0, 256, (n, 28, 28)))
        write_idx(d / lab, rng.integers(0, 10, n) if labels_ok else np.full(n + 1, 3))
    return d


def test_load_fashion_mnist_from_small_files(tmp_path):
    d = fashion_mnist.load_fashion_mnist(fake_dataset(tmp_path))
    assert d.x_train.shape == (6, 1, 28, 28) and d.x_test.shape == (4, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert d.y_train.dtype == torch.int64 and d.y_test.shape == (4,)


def test_load_fashion_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="labels"):
        fashion_mnist.load_fashion_mnist(fake_dataset(tmp_path, labels_ok=False))


HAVE_FMNIST = os.path.isdir(fashion_mnist.FASHION_MNIST_DIR)
HAVE_KJV = any(os.path.isfile(p) for p in __import__("pixelfly.experiments.data").experiments.data.KJV_PATHS)
need_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed "
                                 "(apt-get install dataset-fashion-mnist)")
need_kjv = pytest.mark.skipif(not HAVE_KJV, reason="bible-kjv-text not installed (apt-get install bible-kjv-text)")


@need_fmnist
def test_real_fashion_mnist():
    d = fashion_mnist.load_fashion_mnist()
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.y_test).tolist() == [1000] * 10


def test_choose_lr_picks_lowest_finite():
    best, scores = tune.choose_lr(lambda lr: {0.1: float("nan"), 0.01: 2.0, 0.001: 3.0}[lr], (0.1, 0.01, 0.001))
    assert best == 0.01 and math.isnan(scores[0.1])
    with pytest.raises(RuntimeError, match="diverged"):
        tune.choose_lr(lambda lr: float("inf"), (0.1,))
    with pytest.raises(ValueError):
        tune.choose_lr(lambda lr: 1.0, ())


def test_cosine_warmup():
    f = [training.cosine_warmup(s, 10, 2) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0 and f[-1] < f[5] < 1.0


def test_rect_butterfly_shapes_and_flops():
    for i, o in ((64, 128), (128, 64), (64, 64)):
        m = RectButterfly(i, o, block_size=16)
        x = torch.randn(3, i, requires_grad=True)
        y = m(x)
        assert y.shape == (3, o)
        y.sum().backward()
        assert x.grad is not None and all(p.grad is not None for p in m.parameters())
        factors = sum(f.numel() for p in m.parts for f in p.factors)
        assert forward_flops(m, torch.randn(1, i)) == 2 * factors
    assert forward_flops(nn.Linear(8, 4), torch.randn(5, 8)) == 2 * 5 * 8 * 4


def test_empirical_ntk_matches_per_output_backward():
    struct = ntk.structures(64, 16, 8)["pixelfly"]
    model = ntk.build_mlp(64, struct, 0).double()
    x = torch.randn(2, 196, dtype=torch.float64)
    K = ntk.empirical_ntk(model, x)
    rows = []
    for i in range(2):
        for c in range(10):
            model.zero_grad()
            model(x)[i, c].backward()
            rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    J = torch.stack(rows)
    torch.testing.assert_close(K, J @ J.T)


def test_structures_match_the_butterfly_parameter_count():
    H = 128
    s = ntk.structures(H, 16, 8)
    layers = {k: ntk.StructLinear(H, *v) for k, v in s.items()}
    target = layers["butterfly"].effective_params()
    for k, layer in layers.items():
        if k != "dense":
            assert 0.8 * target <= layer.effective_params() <= target, k
    assert layers["pixelfly"].U.shape[1] >= 1
    # masked entries get no gradient: the weight is the structured one
    w = layers["random"]
    w.weight().sum().backward()
    assert torch.all(w.weights[0].grad[w.mask0 == 0] == 0)


def test_results_rows_need_the_keys(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        results.write_table("t", [{"task": "x"}], str(tmp_path))
    runs = [dict(task="t", model="m", method="a", metric="acc", value=v, speedup=s, params=1, flops=2.0)
            for v, s in ((0.5, 1.0), (0.7, 2.0))]
    rows = results.aggregate(runs)
    assert len(rows) == 1 and rows[0]["value"] == pytest.approx(0.6) and rows[0]["speedup"] == 1.5
    assert rows[0]["seeds"] == 2 and rows[0]["spread"] == pytest.approx(math.sqrt(0.02))


def run_quick(table, tmp_path):
    out = tmp_path / table
    assert main([table, "--quick", "--out", str(out)]) == 0
    doc = json.loads((out / f"{table}.json").read_text())
    assert doc["rows"] and doc["size"] == "quick"
    for row in doc["rows"]:
        assert set(results.ROW_KEYS) <= set(row) and row["seeds"] == 2 and math.isfinite(row["value"])
    assert (out / f"{table}.md").read_text().count("\n|") == len(doc["rows"]) + 2   # header, rule, rows
    assert (out / f"{table}.png").stat().st_size > 0 and (out / f"{table}_curves.png").stat().st_size > 0
    return doc


@need_fmnist
def test_cv_quick(tmp_path):
    doc = run_quick("cv", tmp_path)
    methods = {(r["model"], r["method"]) for r in doc["rows"]}
    assert {m for _, m in methods} == {"dense", "butterfly", "pixelfly"}
    by = {(r["model"], r["method"]): r for r in doc["rows"]}
    for model, _ in methods:
        assert by[(model, "dense")]["speedup"] == 1.0
        for method in ("butterfly", "pixelfly"):   # the variants really replaced layers
            assert by[(model, method)]["params"] != by[(model, "dense")]["params"]


@need_kjv
def test_lm_quick(tmp_path):
    doc = run_quick("lm", tmp_path)
    assert {r["method"] for r in doc["rows"]} == {"dense", "bigbird", "pixelfly"}
    assert doc["tokenizer"].startswith("bytes")


@need_fmnist
def test_ntk_quick(tmp_path):
    doc = run_quick("ntk", tmp_path)
    dense = [r for r in doc["rows"] if r["method"] == "dense" and "NTK" in r["metric"]]
    assert dense and all(r["value"] == 0 for r in dense)
    assert len({r["method"] for r in doc["rows"]}) == len(ntk.METHODS)
