"""GPT-2-style decoder-only language model (Radford et al. 2019), small enough for CPU.

Token ids ``[B, L]`` (``L <= seq_len``) -> token + learned position embeddings ->
``n_layer`` pre-norm causal blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` (GELU, tanh
approximation, as GPT-2) -> final LayerNorm -> logits ``[B, L, vocab_size]``.

Defaults are byte-level (``vocab_size = 256``) for the offline corpora of
``pixelfly.data``. With ``tie_weights=True`` (GPT-2's choice, the default) the output
layer reuses the token embedding matrix through ``F.linear`` and is not an ``nn.Linear``,
so sparsification cannot break the tie; with ``tie_weights=False`` it is an
``nn.Linear`` named ``lm_head`` (listed in ``GPT2.keep_dense``).

Init as GPT-2: every ``nn.Linear`` and ``nn.Embedding`` weight ``N(0, 0.02)``, biases zero,
and the residual-branch output projections (``attn.proj`` and ``mlp.fc2`` of every
block) ``N(0, 0.02 / sqrt(2 n_layer))``. A plugged-in attention module's ``nn.Linear``
layers get the same init; its attribute ``proj``, if an ``nn.Linear``, is treated as the
residual projection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionSpec
from .config import SizedConfig
from .vit import TransformerBlock

__all__ = ["GPT2Config", "GPT2"]


@dataclass
class GPT2Config(SizedConfig):
    """Size of a ``GPT2``. Default ("small", ~0.8M parameters + 0.05M embeddings): a few
    minutes of training on 2 CPU cores. ``GPT2Config.tiny()`` is for tests."""
    vocab_size: int = 256        # bytes
    seq_len: int = 128           # context length (GPT-2's n_ctx / block_size)
    dim: int = 128
    n_layer: int = 4
    n_heads: int = 4
    mlp_dim: int = 512           # GPT-2: 4 * dim
    dropout: float = 0.0
    tie_weights: bool = True

    TINY: ClassVar[dict] = dict(seq_len=64, dim=64, n_layer=2, n_heads=2, mlp_dim=256)


class GPT2(nn.Module):
    """Causal language model: ids ``[B, L]`` (int64, ``L <= seq_len``) -> logits
    ``[B, L, vocab_size]``. Logit ``[:, t]`` depends only on ids ``[:, :t + 1]``.

    ``attention``: ``"dense"`` or a factory ``attention(dim, n_heads, seq_len, causal)``
    (called with ``causal=True``; the module must itself be causal).
    """

    def __init__(self, config: GPT2Config | None = None, attention: AttentionSpec = "dense"):
        super().__init__()
        self.config = c = config if config is not None else GPT2Config()
        self.wte = nn.Embedding(c.vocab_size, c.dim)     # token embedding  [V, D]
        self.wpe = nn.Embedding(c.seq_len, c.dim)        # position embedding [L, D]
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.n_heads, c.mlp_dim, c.seq_len, causal=True,
                             attention=attention, dropout=c.dropout, gelu="tanh")
            for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.dim)
        self.lm_head = None if c.tie_weights else nn.Linear(c.dim, c.vocab_size, bias=False)
        self.reset_parameters()

    @property
    def keep_dense(self) -> tuple:
        """Submodules kept dense by Pixelfly (the untied output layer, if any)."""
        return () if self.lm_head is None else ("lm_head",)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            for proj in (getattr(block.attn, "proj", None), block.mlp.fc2):
                if isinstance(proj, nn.Linear):
                    nn.init.normal_(proj.weight, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, L = idx.shape
        if L > self.config.seq_len:
            raise ValueError(f"sequence length {L} exceeds the context length {self.config.seq_len}")
        pos = torch.arange(L, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))                 # [B, L, D]
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if self.lm_head is None:
            return F.linear(x, self.wte.weight)                       # [B, L, V]
        return self.lm_head(x)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuations: ``[B, L0] -> [B, L0 + max_new_tokens]``
        (the context is cropped to the last ``seq_len`` ids). ``temperature=0`` is greedy."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.seq_len:])[:, -1, :]   # [B, V]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
