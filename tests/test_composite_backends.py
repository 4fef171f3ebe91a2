"""Which implementation each device gets (pixelfly.backends): the composite fallback for
every device, the CPU switch, and the CUDA safety gate (composite until the native kernels
are selected explicitly), including the environment variables read at import."""
import os
import subprocess
import sys

import pytest
import torch

from pixelfly import backends, composite, ops
from pixelfly.layouts import BlockIndex, random_layout

BSMM = ("bsmm_fwd", "bsmm_bwd_x", "bsmm_bwd_w")
BUILT_CUDA = backends.HAS_CUDA_KERNELS       # this build's real state
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean(monkeypatch):
    """Restore the process's backend state (from its environment) after the test."""
    yield monkeypatch
    for dev in list(backends._overlays):
        backends._overlays.pop(dev)._destroy()
    monkeypatch.undo()
    backends.configure_from_env()


def has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pixelfly::{op}", key)


def test_composite_is_registered_for_every_other_device():
    for op in backends.COMPOSITE_OPS:
        assert has_kernel(op, "CompositeExplicitAutograd"), op
        assert ops.implementation("mps", op) == "composite"
        assert ops.implementation("xpu", op) == "composite"
    with pytest.raises(ValueError, match="op must be one of"):
        ops.implementation("cpu", "nope")


def test_cuda_defaults_to_composite_even_with_native_kernels(clean):
    # Pretend the CUDA kernels were built: the gate must still pick the composite ops, by
    # registering them over the CUDA key, until PIXELFLY_NATIVE_CUDA=1 / use_native_cuda().
    clean.setattr(backends, "HAS_CUDA_KERNELS", True)
    clean.setattr(backends, "NATIVE_OPS", dict(backends.NATIVE_OPS, cuda=BSMM))
    backends.configure_from_env({})
    assert [ops.implementation("cuda", op) for op in BSMM] == ["composite"] * 3
    assert ops.implementation("cpu") == "native"
    assert all(has_kernel(op, "CUDA") for op in BSMM)
    assert backends.use_native_cuda(True) is False
    assert [ops.implementation("cuda:0", op) for op in BSMM] == ["native"] * 3
    assert BUILT_CUDA or not any(has_kernel(op, "CUDA") for op in BSMM)   # the overlay is gone
    assert backends.use_native_cuda(False) is True
    assert ops.implementation("cuda") == "composite"
    backends.configure_from_env({"PIXELFLY_NATIVE_CUDA": "1"})
    assert ops.implementation("cuda") == "native"
    backends.configure_from_env({"PIXELFLY_NATIVE_CUDA": "1", "PIXELFLY_COMPOSITE": "cuda"})
    assert ops.implementation("cuda") == "composite" and ops.implementation("cpu") == "native"


def test_native_cuda_without_kernels(clean):
    clean.setattr(backends, "HAS_CUDA_KERNELS", False)
    clean.setattr(backends, "NATIVE_OPS", dict(backends.NATIVE_OPS, cuda=()))
    with pytest.raises(RuntimeError, match="built without its CUDA kernels"):
        backends.use_native_cuda(True)
    with pytest.warns(RuntimeWarning, match="composite"):
        backends.configure_from_env({"PIXELFLY_NATIVE_CUDA": "1"})
    assert ops.implementation("cuda") == "composite"


def test_environment_values(clean):
    backends.configure_from_env({"PIXELFLY_COMPOSITE": "cpu"})
    assert ops.implementation("cpu") == "composite" and ops.implementation("cpu", "bsattn_bwd") == "composite"
    backends.configure_from_env({"PIXELFLY_COMPOSITE": "0"})
    assert ops.implementation("cpu") == "native"
    backends.configure_from_env({"PIXELFLY_COMPOSITE": "1"})
    assert ops.implementation("cpu") == "composite" and ops.implementation("cuda") == "composite"
    for env in ({"PIXELFLY_COMPOSITE": "gpu"}, {"PIXELFLY_NATIVE_CUDA": "yes"}):
        with pytest.raises(ValueError, match=next(iter(env))):
            backends.configure_from_env(env)
    with pytest.raises(ValueError, match="device must be"):
        ops.use_composite("mps")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        ops.use_composite("cpu", 1)


def test_switch_routes_torch_ops(clean):
    layout = random_layout(3, 4, 0.5, seed=1)
    it = ops.index_tensors(BlockIndex.from_layout(layout))
    x, w = torch.randn(5, 64), torch.randn(it[1].numel(), 16, 16)
    calls = []
    orig = composite._gather_mm
    clean.setattr(composite, "_gather_mm", lambda *a: calls.append(1) or orig(*a))
    y = torch.ops.pixelfly.bsmm_fwd(x, w, *it)
    assert calls == []
    assert ops.use_composite("cpu") is False
    yc = torch.ops.pixelfly.bsmm_fwd(x, w, *it)
    assert calls == [1]
    torch.testing.assert_close(yc, y)
    assert ops.use_composite("cpu", False) is True
    torch.ops.pixelfly.bsmm_fwd(x, w, *it)
    assert calls == [1]


def test_environment_is_read_at_import():
    code = ("import pixelfly.ops as o; "
            "print(o.implementation('cpu'), o.implementation('cuda'), o.implementation('cpu', 'bsattn_fwd'))")
    env = dict(os.environ, PIXELFLY_COMPOSITE="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["composite", "composite", "composite"]
