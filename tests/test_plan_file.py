"""Plan files: save/load round trip and validation of bad plans (issue 10), with errors that
name the layer and the field."""
import json

import pytest
import torch
from torch import nn

import pixelfly
from pixelfly import Plan, PlanError


def model():
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 64))


def good():
    p = pixelfly.plan(model(), torch.randn(32, 64), budget=0.3, block_size=16, dense_first_last=False)
    assert any(lay.sparse for lay in p.layers)
    return p


def sparse_name(p):
    return next(lay.name for lay in p.layers if lay.sparse)


def test_save_load_compares_equal(tmp_path):
    p = good()
    p.save(tmp_path / "p.json")
    q = Plan.load(tmp_path / "p.json")
    assert q == p
    q.save(tmp_path / "q.json")
    assert (tmp_path / "q.json").read_text() == (tmp_path / "p.json").read_text()


def edited(tmp_path, edit):
    d = good().to_dict()
    edit(d)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    return path


def layer0(d):
    return next(lay for lay in d["layers"] if lay["status"] == "sparse")


@pytest.mark.parametrize("field,value,match", [
    ("rank", None, r"'rank' must be an int >= 0, got None"),
    ("rank", -1, r"'rank' must be an int >= 0"),
    ("rank", 1.5, r"'rank' must be an int >= 0"),
    ("rank", 10_000, r"'rank' must be an int in \[0, "),
    ("n_factors", None, r"'n_factors' must be an int >= 0, got None"),
    ("n_factors", 0, r"'n_factors' must be an int in \[1, log2"),
    ("n_factors", 9, r"'n_factors' must be an int in \[1, log2"),
    ("butterfly_size", None, r"'butterfly_size' must be an int >= 0"),
    ("butterfly_size", 6, r"'butterfly_size' must be a power of two"),
    ("butterfly_size", 64, r"'butterfly_size' must be a power of two in \[2, "),
    ("status", "sprase", r"'status' must be one of \('sparse', 'dense'\)"),
    ("status", "over_budget", r"'status' must be one of"),
    ("kind", "conv2d", r"'kind' must be one of"),
    ("out_features", "128", r"'out_features' must be an int >= 1"),
    ("out_features", 120, r"does not divide into the plan's 16x16 blocks"),
    ("tokens", -3, r"'tokens' must be an int >= 0"),
    ("density", float("nan"), r"'density' must be a finite number"),
    ("name", 3, r"'name' must be a non-empty str"),
    ("reason", None, r"'reason' must be a str"),
])
def test_bad_layer_field_names_layer_and_field(tmp_path, field, value, match):
    path = edited(tmp_path, lambda d: layer0(d).__setitem__(field, value))
    with pytest.raises(PlanError, match=match) as e:
        Plan.load(path)
    if field != "name":
        assert repr(sparse_name(good())) in str(e.value)


@pytest.mark.parametrize("field", ["rank", "n_factors", "butterfly_size", "status", "in_features"])
def test_missing_layer_field(tmp_path, field):
    path = edited(tmp_path, lambda d: layer0(d).pop(field))
    with pytest.raises(PlanError, match=f"field {field!r} is missing"):
        Plan.load(path)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("block_size"), "'block_size' is missing"),
    (lambda d: d.__setitem__("block_size", [16]), "'block_size' must be a pair"),
    (lambda d: d.__setitem__("budget", 2), "'budget' must be a number in"),
    (lambda d: d.__setitem__("layers", {}), "'layers' must be a list"),
    (lambda d: d.__setitem__("extra", 1), "unknown fields"),
    (lambda d: layer0(d).__setitem__("colour", 1), "unknown fields"),
    (lambda d: d["layers"].append(dict(layer0(d))), "listed twice"),
    (lambda d: d["layers"].append(3), r"layers\[\d\] must be an object"),
])
def test_bad_plan_structure(tmp_path, edit, match):
    with pytest.raises(PlanError, match=match):
        Plan.load(edited(tmp_path, edit))


def test_truncated_and_non_json_files(tmp_path):
    good().save(tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text()
    (tmp_path / "t.json").write_text(text[: len(text) // 2])
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(tmp_path / "t.json")
    (tmp_path / "b.json").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(tmp_path / "b.json")
    (tmp_path / "l.json").write_text("[1, 2]")
    with pytest.raises(PlanError, match="must be a JSON object"):
        Plan.load(tmp_path / "l.json")


def test_plan_must_fit_the_model():
    p = good()
    name = sparse_name(p)
    with pytest.raises(PlanError, match=f"plan layer {name!r}: fields 'out_features' x 'in_features'"):
        wide = model()
        wide[int(name)] = nn.Linear(wide[int(name)].in_features, 256)
        pixelfly.sparsify(wide, p)
    with pytest.raises(PlanError, match="'nope' is not a linear layer of this model"):
        p2 = Plan.from_dict(p.to_dict())
        p2.layers[0].name = "nope"
        pixelfly.sparsify(model(), p2)
    p3 = Plan.from_dict(p.to_dict())
    p3[name].kind = "conv1d"
    with pytest.raises(PlanError, match="field 'kind' is 'conv1d'"):
        pixelfly.sparsify(model(), p3)


def test_edited_plan_is_revalidated_when_applied():
    p = good()
    p[sparse_name(p)].rank = None
    with pytest.raises(PlanError, match="'rank'"):
        pixelfly.sparsify(model(), p)
    with pytest.raises(PlanError, match="'rank'"):
        p.save("/dev/null")
    assert issubclass(PlanError, ValueError)
