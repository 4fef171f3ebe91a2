"""Hugging Face transformers models: save a sparsified model with ``save_pretrained`` and
rebuild it with :func:`from_pretrained`.

:func:`pixelfly.sparsify` records the plan in the model's config, as a
``quantization_config`` of method ``"pixelfly"`` (the slot transformers gives to methods that
replace layers). So ``model.save_pretrained(dir)`` writes the weights (safetensors) and the
plan (``config.json``) in one call, and ``pixelfly.from_pretrained(ModelClass, dir)`` builds
the model, sparsifies it with the saved plan and lets transformers load the weights into it
(with its own key renaming, e.g. ViT's). A plain ``ModelClass.from_pretrained(dir)`` in a
process that has loaded this module raises an error that points here, rather than
re-initialising the sparsified layers as dense ones.
"""
from __future__ import annotations

import os

import torch

from .linear import PixelflyLinear
from .planfile import Plan, PlanError

__all__ = ["from_pretrained", "METHOD"]

#: The ``quant_method`` under which the plan is stored in a model's config.
METHOD = "pixelfly"

_LOAD_HINT = ("this directory holds a pixelfly-sparsified model: load it with "
              "pixelfly.from_pretrained(ModelClass, path) (a plain from_pretrained would re-initialise "
              "the sparsified layers as dense ones)")


def _stored(config):
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    d = qc if isinstance(qc, dict) else getattr(qc, "to_dict", lambda: {})()
    return d if d.get("quant_method") == METHOD else False


def check_can_record(model) -> None:
    """A model quantized by another method cannot hold a pixelfly plan."""
    if _stored(model.config) is False:
        raise ValueError("sparsify: this Hugging Face model has a quantization_config of another method; "
                         "pixelfly sparsifies float models only")


def record_plan(model, p: Plan) -> None:
    """Store the plan in ``model.config`` (saved in ``config.json`` by ``save_pretrained``)."""
    _register()
    model.config.quantization_config = {"quant_method": METHOD, "plan": p.to_dict()}


def forget_plan(model) -> None:
    if _stored(model.config):
        del model.config.quantization_config


def plan_of(config) -> Plan:
    """The plan a config (or a saved model's directory) holds; :class:`PlanError` if none."""
    d = _stored(config)
    if not d:
        raise PlanError("this model was not sparsified by pixelfly: its config holds no pixelfly plan "
                        "(quantization_config with quant_method 'pixelfly')")
    if "plan" not in d:
        raise PlanError("the config's pixelfly quantization_config has no 'plan'")
    return Plan.from_dict(d["plan"])


def from_pretrained(model_class, path, **kwargs):
    """Rebuild a sparsified Hugging Face model saved with ``model.save_pretrained(path)``.

    Args:
        model_class: the transformers class (``GPT2LMHeadModel``, ...).
        path: the directory (or anything ``model_class.from_pretrained`` accepts).
        kwargs: passed to ``model_class.from_pretrained`` (e.g. ``dtype``; ``config`` replaces
            the saved config, which must then hold the plan).

    Returns the model (an instance of ``model_class``) with the plan's layers as
    :class:`PixelflyLinear` holding the saved weights, in eval mode like ``from_pretrained``.
    """
    from .convert import sparsify

    _register()
    config = kwargs.pop("config", None)
    if config is None:
        config = model_class.config_class.from_pretrained(path)
    p = plan_of(config)
    del config.quantization_config  # transformers must not dispatch it to the quantizer below

    def __init__(self, cfg, *args, **kw):
        model_class.__init__(self, cfg, *args, **kw)
        # transformers builds on the meta device; a PixelflyLinear needs its real layout and index
        for e in p.layers:
            if e.sparse and e.name in dict(self.named_modules()):
                self.get_submodule(e.name).to_empty(device="cpu")
        sparsify(self, p)

    sparse_cls = type(model_class.__name__, (model_class,), {"__init__": __init__})
    kwargs["output_loading_info"] = True
    model, info = sparse_cls.from_pretrained(path, config=config, **kwargs)
    model.__class__ = model_class
    sparse = {e.name for e in p.layers if e.sparse}
    bad = sorted(k for k in set(info["missing_keys"]) | set(info["unexpected_keys"])
                 | {k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]}
                 if k.rpartition(".")[0] in sparse)
    if bad:
        raise PlanError(f"from_pretrained: the checkpoint in {os.fspath(path)!r} does not match its plan "
                        f"(keys missing, unexpected or of another shape: {bad[:6]})")
    for name in sparse:
        mod = model.get_submodule(name)
        if not isinstance(mod, PixelflyLinear):
            raise PlanError(f"from_pretrained: layer {name!r} was not rebuilt as a PixelflyLinear")
        if not torch.equal(mod.layout.cpu(), torch.from_numpy(mod.index.layout)):
            raise PlanError(f"from_pretrained: layer {name!r}: the saved layout differs from the plan's")
    return model


_REGISTERED = False


def _register() -> None:
    """Make transformers reject a plain ``from_pretrained`` of a pixelfly checkpoint."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                                  register_quantization_config, register_quantizer)
        from transformers.quantizers.base import HfQuantizer
        from transformers.utils.quantization_config import QuantizationConfigMixin
    except ImportError:  # another transformers version: from_pretrained still works
        _REGISTERED = True
        return
    if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        class PixelflyConfig(QuantizationConfigMixin):
            def __init__(self, **kwargs):
                raise ValueError(_LOAD_HINT)
        register_quantization_config(METHOD)(PixelflyConfig)
    if METHOD not in AUTO_QUANTIZER_MAPPING:
        class PixelflyQuantizer(HfQuantizer):
            def __init__(self, *args, **kwargs):
                raise ValueError(_LOAD_HINT)

            def is_serializable(self):
                return False

            def is_trainable(self):
                return False
        register_quantizer(METHOD)(PixelflyQuantizer)
    _REGISTERED = True


_register()
