"""Vision Transformer (Dosovitskiy et al. 2021), small enough to train on CPU.

``[B, C, H, W]`` images -> ``N`` patch tokens of width ``D`` (+ learned position
embedding) -> ``depth`` pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` -> final
LayerNorm -> pooled token -> linear head -> logits ``[B, num_classes]``.

``pool="mean"`` (default, as timm's ``global_pool="avg"``) averages the ``N`` tokens, so
the attention runs over exactly ``N`` positions (64 for 8x8 images with patch size 1: a
length that block-sparse attention layouts can tile); ``pool="cls"`` prepends the
original class token (``N + 1`` positions).

The attention of every block comes from the ``attention`` argument: ``"dense"``
(``MultiHeadSelfAttention``) or a factory ``attention(dim, n_heads, seq_len, causal)``
(see ``pixelfly.models.attention``); ViT calls it with ``causal=False``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .attention import AttentionSpec, resolve_attention
from .config import ImageConfig
from .mixer import MLP, PatchEmbed

__all__ = ["ViTConfig", "ViT", "TransformerBlock"]


@dataclass
class ViTConfig(ImageConfig):
    """Size of a ``ViT``. Default ("small", ~0.8M parameters): a few minutes of training
    on 2 CPU cores on 8x8 digits. ``ViTConfig.tiny()`` is for tests."""
    image_size: int = 8
    patch_size: int = 1
    in_chans: int = 1
    num_classes: int = 10
    dim: int = 128
    depth: int = 4
    n_heads: int = 4
    mlp_dim: int = 512
    pool: str = "mean"          # "mean" or "cls"
    dropout: float = 0.0

    TINY: ClassVar[dict] = dict(dim=64, depth=2, n_heads=2, mlp_dim=128)


    @property
    def seq_len(self) -> int:
        """Number of positions the attention sees."""
        return self.num_patches + (1 if self.pool == "cls" else 0)




class TransformerBlock(nn.Module):
    """Pre-norm transformer block ``[B, L, D] -> [B, L, D]``:
    ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, n_heads: int, mlp_dim: int, seq_len: int, causal: bool,
                 attention: AttentionSpec = "dense", dropout: float = 0.0, gelu: str = "none"):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = resolve_attention(attention, dim, n_heads, seq_len, causal, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dropout=dropout, approximate=gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """ViT classifier: images ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    Init as timm's ViT: ``nn.Linear`` weights truncated normal (std 0.02), biases zero;
    position embedding (and class token) truncated normal (std 0.02).
    """

    #: submodules kept dense by Pixelfly (first and last layer).
    keep_dense = ("stem", "head")

    def __init__(self, config: ViTConfig | None = None, attention: AttentionSpec = "dense"):
        super().__init__()
        self.config = c = config if config is not None else ViTConfig()
        if c.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {c.pool!r}")
        self.stem = PatchEmbed(c.patch_size, c.in_chans, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.dim))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.n_heads, c.mlp_dim, c.seq_len, causal=False,
                             attention=attention, dropout=c.dropout)
            for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, L, D]`` (after the final LayerNorm; ``L = config.seq_len``)."""
        x = self.stem(x)                                            # [B, N, D]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.forward_features(x)
        h = h[:, 0] if self.cls_token is not None else h.mean(dim=1)
        return self.head(h)
