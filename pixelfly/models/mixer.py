"""MLP-Mixer (Tolstikhin et al. 2021), small enough to train on CPU.

An image ``[B, C, H, W]`` is cut into ``N = (H/p)(W/p)`` patches of ``C p^2`` pixels, each
embedded to width ``D``; ``depth`` Mixer layers then alternate

    token mixing:    x = x + MLP_tok(LN(x)^T)^T      (mixes the N patches, per channel)
    channel mixing:  x = x + MLP_ch(LN(x))           (mixes the D channels, per patch)

and a final LayerNorm, mean over patches and a linear head give the logits. Every weight
matrix is an ``nn.Linear``; the two the paper keeps dense (patch embedding, classifier)
are named in ``MLPMixer.keep_dense``.

The defaults are sized for 8x8 images (scikit-learn digits): patch size 1 gives
``N = 64`` tokens so the token-mixing layers are ``64 -> 128 -> 64``, multiples of the
32 block size (patch size 2 would give 16 tokens, too few for a 32 x 32 block).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImageConfig

__all__ = ["MixerConfig", "MLPMixer", "MLP", "PatchEmbed", "patchify"]


@dataclass
class MixerConfig(ImageConfig):
    """Size of an ``MLPMixer``. Default ("small", ~0.6M parameters): a few minutes of
    training on 2 CPU cores on 8x8 digits. ``MixerConfig.tiny()`` is for tests."""
    image_size: int = 8
    patch_size: int = 1
    in_chans: int = 1
    num_classes: int = 10
    dim: int = 128               # channel width D
    depth: int = 4
    token_mlp_dim: int = 128     # hidden width of the token-mixing MLP
    channel_mlp_dim: int = 512   # hidden width of the channel-mixing MLP
    dropout: float = 0.0

    TINY: ClassVar[dict] = dict(dim=64, depth=2, token_mlp_dim=64, channel_mlp_dim=128)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), C p p]``, patches in row-major order; each patch
    flattened channel-major (the layout a stride-``p`` ``Conv2d`` would read)."""
    B, C, H, W = x.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image {H}x{W} not divisible by patch size {p}")
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


class PatchEmbed(nn.Module):
    """Patchify then a shared ``nn.Linear``: ``[B, C, H, W] -> [B, N, D]`` (equivalent to
    the originals' stride-``p`` convolution)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size * patch_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch_size))


class MLP(nn.Module):
    """``fc1 -> GELU -> dropout -> fc2 -> dropout``: ``[..., dim] -> [..., out_dim or dim]``.

    ``approximate="tanh"`` gives GPT-2's GELU."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, dropout: float = 0.0,
                 approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim if out_dim is None else out_dim)
        self.approximate = approximate
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.gelu(self.fc1(x), approximate=self.approximate))
        return self.drop(self.fc2(x))


class MixerBlock(nn.Module):
    """One Mixer layer: ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, num_patches: int, dim: int, token_mlp_dim: int, channel_mlp_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = MLP(num_patches, token_mlp_dim, dropout=dropout)     # acts on [B, D, N]
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = MLP(dim, channel_mlp_dim, dropout=dropout)         # acts on [B, N, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """MLP-Mixer classifier: images ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    Init as the reference (Flax) Mixer via timm: ``nn.Linear`` weights Xavier-uniform,
    biases zero (MLP biases ``N(0, 1e-6)``), classifier head zero.
    """

    #: submodules kept dense by Pixelfly (first and last layer).
    keep_dense = ("stem", "head")

    def __init__(self, config: MixerConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else MixerConfig()
        self.stem = PatchEmbed(c.patch_size, c.in_chans, c.dim)
        self.blocks = nn.ModuleList(
            MixerBlock(c.num_patches, c.dim, c.token_mlp_dim, c.channel_mlp_dim, c.dropout)
            for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if ".fc" in name:
                    nn.init.normal_(m.bias, std=1e-6)
                else:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, N, D]`` (after the final LayerNorm)."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=1))
