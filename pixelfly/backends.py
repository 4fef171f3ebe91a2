"""Which implementation each device gets: native kernels or the composite (pure PyTorch) ops.

* Every device without native kernels (CUDA without the extension, Apple MPS, Intel XPU,
  ...) runs the composite ops of :mod:`pixelfly.composite` and
  :mod:`pixelfly.composite_attention`, registered under the same ``torch.ops.pixelfly.*``
  names at the ``CompositeExplicitAutograd`` key (autograd and fake kernels are the ops').
* CPU runs the native C kernels; ``PIXELFLY_COMPOSITE=cpu`` (or ``1``) or
  ``use_composite("cpu")`` runs the composite ops there instead (tests, debugging).
* CUDA: the native kernels (``pixelfly._ops_cuda``, when built) have not yet passed the GPU
  test suite on real hardware, so CUDA tensors take the composite ops by default. The
  native kernels are selected explicitly: ``PIXELFLY_NATIVE_CUDA=1`` or
  ``use_native_cuda()``.

Switching installs (or removes) a Python registration of the composite ops at the device's
dispatch key on top of the native one; removing it restores the native kernel.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import _ops  # noqa: F401  (defines the schemas and the CPU kernels)
from . import composite, composite_attention

try:  # CUDA kernels are optional: built only when torch has CUDA and nvcc was found.
    from . import _ops_cuda  # noqa: F401
    HAS_CUDA_KERNELS = True
except ImportError:
    HAS_CUDA_KERNELS = False

__all__ = ["HAS_CUDA_KERNELS", "use_composite", "use_native_cuda", "implementation",
           "COMPOSITE_OPS"]

COMPOSITE_OPS = {
    "bsmm_fwd": composite.bsmm_fwd,
    "bsmm_bwd_x": composite.bsmm_bwd_x,
    "bsmm_bwd_w": composite.bsmm_bwd_w,
    "bsmm_fwd_lowrank": composite.bsmm_fwd_lowrank,
    "bsmm_bwd_x_lowrank": composite.bsmm_bwd_x_lowrank,
    "bsattn_fwd": composite_attention.bsattn_fwd,
    "bsattn_bwd": composite_attention.bsattn_bwd,
}
# Ops with a native kernel per device (what an overlay replaces).
NATIVE_OPS = {"cpu": tuple(COMPOSITE_OPS),
              "cuda": ("bsmm_fwd", "bsmm_bwd_x", "bsmm_bwd_w") if HAS_CUDA_KERNELS else ()}
_DEVICES = ("cpu", "cuda")


def _register(key, names):
    lib = torch.library.Library("pixelfly", "IMPL")
    with warnings.catch_warnings():   # "Overriding a previously registered kernel": intended
        warnings.simplefilter("ignore")
        for name in names:
            lib.impl(name, COMPOSITE_OPS[name], key)
    return lib


_fallback = _register("CompositeExplicitAutograd", COMPOSITE_OPS)
_overlays: dict = {}   # device type -> Library holding the composite ops at its key


def _device(device):
    dev = torch.device(device).type
    if dev not in _DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda' (other devices always use the "
                         f"composite ops), got {device!r}")
    return dev


def use_composite(device, enabled: bool = True) -> bool:
    """Run the composite ops on ``device`` ('cpu' or 'cuda') instead of its native kernels
    (``enabled=False``: the native kernels again). Returns the previous setting."""
    dev = _device(device)
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    prev = implementation(dev) == "composite"
    if enabled and dev not in _overlays and NATIVE_OPS[dev]:
        _overlays[dev] = _register(dev.upper(), NATIVE_OPS[dev])
    elif not enabled and dev in _overlays:
        _overlays.pop(dev)._destroy()
    return prev


def use_native_cuda(enabled: bool = True) -> bool:
    """Select the native CUDA kernels (``False``: the composite ops, the default). Returns
    whether they were selected before. ``RuntimeError`` if they were not built."""
    if enabled and not HAS_CUDA_KERNELS:
        raise RuntimeError("pixelfly was built without its CUDA kernels (torch had no CUDA or "
                           "nvcc was not found at build time); rebuild with PIXELFLY_CUDA=1, "
                           "or use the composite ops (the default)")
    return not use_composite("cuda", not enabled)


def implementation(device, op: str = "bsmm_fwd") -> str:
    """'native' or 'composite': what ``torch.ops.pixelfly.<op>`` runs on ``device`` now."""
    if op not in COMPOSITE_OPS:
        raise ValueError(f"op must be one of {sorted(COMPOSITE_OPS)}, got {op!r}")
    dev = torch.device(device).type
    if dev not in _DEVICES or dev in _overlays or op not in NATIVE_OPS[dev]:
        return "composite"
    return "native"


def _env_devices(name, value):
    value = value.strip().lower()
    if value in ("", "0", "none"):
        return ()
    if value in ("1", "all"):
        return _DEVICES
    devs = tuple(v.strip() for v in value.split(","))
    if not all(d in _DEVICES for d in devs):
        raise ValueError(f"{name} must be 0, 1, 'cpu', 'cuda' or 'cpu,cuda', got {value!r}")
    return devs


def _flag(name, value):
    value = value.strip().lower()
    if value not in ("", "0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def configure_from_env(environ=os.environ):
    """Apply ``PIXELFLY_COMPOSITE`` and ``PIXELFLY_NATIVE_CUDA`` (done once at import)."""
    forced = _env_devices("PIXELFLY_COMPOSITE", environ.get("PIXELFLY_COMPOSITE", ""))
    native_cuda = _flag("PIXELFLY_NATIVE_CUDA", environ.get("PIXELFLY_NATIVE_CUDA", ""))
    if native_cuda and not HAS_CUDA_KERNELS:
        warnings.warn("PIXELFLY_NATIVE_CUDA=1 but pixelfly was built without its CUDA kernels: "
                      "CUDA tensors use the composite ops", RuntimeWarning, stacklevel=2)
    use_composite("cpu", "cpu" in forced)
    use_composite("cuda", "cuda" in forced or not native_cuda)


configure_from_env()
