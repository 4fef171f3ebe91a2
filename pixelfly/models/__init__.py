"""The paper's model families, small and readable: MLP-Mixer, ViT, GPT-2.

Every weight matrix that Pixelfly sparsifies is an ``nn.Linear`` whose sizes are, in the
default configurations, multiples of 32 (the block size); each model lists in
``model.keep_dense`` the first/last layers the paper leaves dense (patch embedding,
classifier head). ``build_model`` builds one by name::

    model = build_model("vit")                               # default ("small") config
    model = build_model("gpt2", config="tiny", n_layer=1)    # tiny config + overrides
    x = example_input("gpt2", model.config, batch=2)         # [2, 64] token ids
"""
from __future__ import annotations

import dataclasses
from typing import Union

import torch
from torch import nn

from .attention import AttentionFactory, AttentionSpec, MultiHeadSelfAttention, resolve_attention
from .gpt2 import GPT2, GPT2Config
from .mixer import MixerConfig, MLPMixer
from .vit import ViT, ViTConfig

__all__ = [
    "MODELS", "build_model", "get_config", "example_input",
    "MixerConfig", "MLPMixer", "ViTConfig", "ViT", "GPT2Config", "GPT2",
    "MultiHeadSelfAttention", "AttentionFactory", "AttentionSpec", "resolve_attention",
]

#: name -> (config class, model class)
MODELS = {
    "mixer": (MixerConfig, MLPMixer),
    "vit": (ViTConfig, ViT),
    "gpt2": (GPT2Config, GPT2),
}

ConfigLike = Union[str, MixerConfig, ViTConfig, GPT2Config, None]


def _lookup(name: str):
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None


def get_config(name: str, config: ConfigLike = None, **overrides):
    """The configuration of model ``name``: ``config`` is ``None``/``"small"`` (defaults),
    ``"tiny"``, or a config instance; ``overrides`` replace individual fields."""
    config_cls, _ = _lookup(name)
    if config is None or config == "small":
        config = config_cls()
    elif config == "tiny":
        config = config_cls.tiny()
    elif not isinstance(config, config_cls):
        raise TypeError(f"config for {name!r} must be 'small', 'tiny' or a {config_cls.__name__}, "
                        f"got {config!r}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown {config_cls.__name__} fields {sorted(unknown)}; valid: {sorted(fields)}")
    return dataclasses.replace(config, **overrides)


def build_model(name: str, config: ConfigLike = None, attention: AttentionSpec = "dense",
                **overrides) -> nn.Module:
    """Build ``"mixer"``, ``"vit"`` or ``"gpt2"`` (see ``get_config`` for ``config`` and
    ``overrides``). ``attention`` (``"dense"`` or a factory
    ``attention(dim, n_heads, seq_len, causal) -> nn.Module``) applies to ViT and GPT-2;
    the Mixer has no attention and rejects anything but ``"dense"``."""
    _, model_cls = _lookup(name)
    cfg = get_config(name, config, **overrides)
    if model_cls is MLPMixer:
        if not (isinstance(attention, str) and attention == "dense"):
            raise ValueError("the MLP-Mixer has no attention layers; attention must be 'dense'")
        return MLPMixer(cfg)
    return model_cls(cfg, attention=attention)


def example_input(name: str, config=None, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A representative input for ``build_model(name, config)`` (e.g. for tracing):
    images ``[batch, in_chans, image_size, image_size]`` (float32, standard normal) for
    ``"mixer"``/``"vit"``; token ids ``[batch, seq_len]`` (int64, uniform) for ``"gpt2"``.
    Deterministic in ``seed``; does not touch the global RNG."""
    cfg = get_config(name, config)
    g = torch.Generator().manual_seed(seed)
    if name == "gpt2":
        return torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=g)
    return torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g)
