"""The small encoder every Long Range Arena row trains: only its attention differs.

Token embedding + learned positions -> ``depth`` pre-norm transformer blocks (bidirectional)
-> LayerNorm -> mean over the non-padding positions -> classifier. Sequences are padded
(``PAD = 0``) to a multiple of the attention block inside. A pair task (Retrieval) encodes
both documents with the same tower and classifies ``[u, v, u * v, u - v]`` as LRA does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.attention import AttentionSpec
from ..models.vit import TransformerBlock
from .lra_data import PAD

__all__ = ["METHODS", "attention_for", "LRAClassifier"]

#: row name -> the models' ``attention`` argument (see ``attention_for``)
METHODS = ("transformer", "reformer", "bigbird", "sparse_transformer", "local", "pixelfly")


def attention_for(method: str, block: int, n_random_features: int) -> AttentionSpec:
    """``transformer``: dense SDPA; ``reformer``: LSH attention (chunks of ``block``, 2
    hashing rounds); ``bigbird`` / ``sparse_transformer`` / ``local``: those block layouts
    through pixelfly's block-sparse kernel; ``pixelfly``: flat block butterfly (2 factors)
    + ``n_random_features`` random features over the complement (SPEC 4)."""
    from ..attention import PixelflyAttention
    from ..reformer import ReformerAttention
    if method == "transformer":
        return "dense"
    if method == "reformer":
        return lambda dim, h, L, causal: ReformerAttention(dim, h, L, causal, chunk_size=block)
    if method in ("bigbird", "sparse_transformer", "local"):
        return PixelflyAttention.factory(layout=method, block_size=block)
    if method == "pixelfly":
        return PixelflyAttention.factory(layout="pixelfly", block_size=block, n_random_features=n_random_features)
    raise ValueError(f"unknown method {method!r}: use one of {METHODS}")


class LRAClassifier(nn.Module):
    """``tokens [B, L]`` (or ``[B, 2, L]`` with ``pair=True``) -> logits ``[B, n_classes]``."""

    def __init__(self, vocab: int, n_classes: int, seq_len: int, *, dim: int = 64, depth: int = 2,
                 n_heads: int = 2, mlp_dim: int = 128, attention: AttentionSpec = "dense",
                 block: int = 32, pair: bool = False):
        super().__init__()
        self.seq_len, self.pair = seq_len, pair
        self.padded_len = -(-seq_len // block) * block
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.padded_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, n_heads, mlp_dim, self.padded_len, causal=False,
                                                     attention=attention) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = (nn.Sequential(nn.Linear(4 * dim, dim), nn.GELU(), nn.Linear(dim, n_classes)) if pair
                     else nn.Linear(dim, n_classes))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` -> ``[B, dim]``: the mean of the final states over non-padding tokens."""
        if tokens.dim() != 2 or tokens.shape[1] > self.padded_len:
            raise ValueError(f"tokens must be [B, L] with L <= {self.padded_len}, got {tuple(tokens.shape)}")
        tokens = F.pad(tokens, (0, self.padded_len - tokens.shape[1]), value=PAD)
        x = self.embed(tokens) + self.pos
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        keep = (tokens != PAD).unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.pair:
            return self.head(self.encode(tokens))
        if tokens.dim() != 3 or tokens.shape[1] != 2:
            raise ValueError(f"a pair task takes tokens [B, 2, L], got {tuple(tokens.shape)}")
        B = tokens.shape[0]
        u, v = self.encode(tokens.reshape(2 * B, tokens.shape[2])).view(B, 2, -1).unbind(1)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
