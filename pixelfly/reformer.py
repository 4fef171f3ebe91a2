"""Reformer's LSH attention (Kitaev, Kaiser, Levskaya, *Reformer*, ICLR 2020), in plain
PyTorch: the seed paper's baseline on the long-range tasks.

For one head, with shared query/key vectors ``qk`` (keys are the unit-normalised ``qk``)::

    buckets  h_r(x) = argmax([x R_r ; -x R_r])     R_r: [d, n_buckets / 2] random, round r
    round r  sort positions by (bucket, position); cut the sorted sequence into chunks of
             ``chunk_size``; each chunk's queries attend to the keys of their own chunk and
             of the previous one (the first chunk's previous is the last: the sort is cyclic)
    scores   scale * q . k_hat; keys the causal mask (``j > i``) or ``key_mask`` exclude get
             -1e9; a query's own position gets -1e5, so a token attends to itself only when
             nothing else is available
    output   per round softmax(scores) v with its log-sum-exp ``lse_r``; the rounds are
             combined with weights ``softmax_r(lse_r)`` (one normaliser over all rounds;
             a key found in several rounds counts once per round, as in the paper's
             implementations)

``lsh_attention`` takes the buckets as an argument (``lsh_buckets`` draws them), so the
same hashing can be replayed by the brute-force oracle ``pixelfly.reference.lsh_attention``
and gradients are those of a fixed hashing. ``ReformerAttention`` is the
``[B, L, dim] -> [B, L, dim]`` module the models take (``build_model(..., attention="reformer")``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["lsh_buckets", "lsh_attention", "ReformerAttention"]

MASKED = -1e9      # score of a key the causal mask or the key mask excludes
SELF = -1e5        # score of a query's own position


def lsh_buckets(qk, n_buckets: int, n_hashes: int, *, generator: torch.Generator | None = None,
                rotations: torch.Tensor | None = None):
    """Angular LSH buckets ``[B, H, n_hashes, L]`` (int64 in ``[0, n_buckets)``) of
    ``qk: [B, H, L, d]``: ``argmax([x R; -x R])`` with ``rotations`` ``R: [d, n_hashes,
    n_buckets / 2]`` (drawn from ``generator`` when not given; shared by batch and heads)."""
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, int) or n_buckets < 2 or n_buckets % 2:
        raise ValueError(f"n_buckets must be an even int >= 2, got {n_buckets!r}")
    if isinstance(n_hashes, bool) or not isinstance(n_hashes, int) or n_hashes < 1:
        raise ValueError(f"n_hashes must be a positive int, got {n_hashes!r}")
    d = qk.shape[-1]
    if rotations is None:
        rotations = torch.randn(d, n_hashes, n_buckets // 2, generator=generator,
                                dtype=torch.float32).to(qk.device)
    if tuple(rotations.shape) != (d, n_hashes, n_buckets // 2):
        raise ValueError(f"rotations must be [d, n_hashes, n_buckets / 2] = "
                         f"{[d, n_hashes, n_buckets // 2]}, got {list(rotations.shape)}")
    rot = torch.einsum("bhld,dnr->bhnlr", qk.detach().to(rotations.dtype), rotations)
    return torch.cat([rot, -rot], -1).argmax(-1)


def _gather(x, idx):
    """``x [B, H, L, ...]`` gathered along L by ``idx [B, H, n, L]`` -> ``[B, H, n, L, ...]``."""
    B, H, n, L = idx.shape
    flat = idx.reshape(B, H, n * L)
    if x.dim() == 3:
        return x.gather(2, flat).view(B, H, n, L)
    return x.gather(2, flat[..., None].expand(B, H, n * L, x.shape[-1])).view(B, H, n, L, -1)


def _look_back(x):
    """Each chunk beside its predecessor (cyclic): ``[..., C, c, *] -> [..., C, 2c, *]``."""
    return torch.cat([x, x.roll(1, dims=3)], 4)


def lsh_attention(qk, v, buckets, chunk_size: int, *, causal: bool = False,
                  key_mask: torch.Tensor | None = None, scale: float | None = None):
    """LSH attention of ``qk, v: [B, H, L, d]`` with given ``buckets [B, H, n_hashes, L]``
    (see the module docstring). ``L`` must be a multiple of ``chunk_size``; ``key_mask``:
    optional ``[B, L]`` bool, False for keys nobody may attend to (padding). Returns
    ``[B, H, L, d]`` in ``qk``'s dtype (computed in float32 at least)."""
    B, H, L, d = qk.shape
    if v.shape != qk.shape:
        raise ValueError(f"v must have qk's shape {tuple(qk.shape)}, got {tuple(v.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 \
            or L % chunk_size:
        raise ValueError(f"chunk_size must be a positive int dividing L = {L}, got {chunk_size!r}")
    if buckets.dim() != 4 or tuple(buckets.shape[:2]) != (B, H) or buckets.shape[3] != L:
        raise ValueError(f"buckets must be [B, H, n_hashes, L] = [{B}, {H}, n, {L}], got "
                         f"{list(buckets.shape)}")
    if key_mask is not None and (key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, L)):
        raise ValueError(f"key_mask must be a bool tensor [B, L] = {[B, L]}, got "
                         f"{key_mask.dtype} {list(key_mask.shape)}")
    scale = d ** -0.5 if scale is None else scale
    dtype = qk.dtype
    cdt = torch.promote_types(dtype, torch.float32)
    qk, v = qk.to(cdt), v.to(cdt)
    n = buckets.shape[2]
    C, c = L // chunk_size, chunk_size
    pos = torch.arange(L, device=qk.device)

    # sort every round by (bucket, position) and cut into chunks
    order = (buckets.to(qk.device) * L + pos).argsort(-1)                     # [B, H, n, L]
    sq = _gather(qk, order).view(B, H, n, C, c, d)
    sk = F.normalize(sq, dim=-1)
    sv = _gather(v, order).view(B, H, n, C, c, d)
    sp = order.view(B, H, n, C, c)
    if C > 1:                             # one chunk has no other to look back to
        sk, sv, kp = _look_back(sk), _look_back(sv), _look_back(sp)
    else:
        kp = sp

    s = (sq @ sk.transpose(-1, -2)) * scale                                   # [B,H,n,C,c,w]
    qp, kp = sp[..., :, None], kp[..., None, :]
    excluded = torch.zeros_like(s, dtype=torch.bool)
    if causal:
        excluded = excluded | (kp > qp)
    if key_mask is not None:
        keep = key_mask[:, None, :].expand(B, H, L).gather(2, kp.flatten(2)).view(kp.shape)
        excluded = excluded | ~keep
    s = torch.where(excluded, MASKED, s)
    s = torch.where(kp == qp, SELF, s)
    lse = torch.logsumexp(s, -1)                                              # [B,H,n,C,c]
    out = torch.exp(s - lse[..., None]) @ sv                                  # [B,H,n,C,c,d]

    # back to positions, rounds weighted by their share of the total normaliser
    undo = order.argsort(-1)
    out = out.view(B, H, n, L, d).gather(3, undo[..., None].expand(B, H, n, L, d))
    lse = lse.view(B, H, n, L).gather(3, undo)
    w = torch.softmax(lse, 2)[..., None]
    return (w * out).sum(2).to(dtype)


class ReformerAttention(nn.Module):
    """Multi-head self-attention with shared query/key and LSH attention (Reformer).

    Args:
        dim, n_heads: width and heads (``dim`` divisible by ``n_heads``).
        seq_len: longest sequence (kept for the models' attention contract).
        causal: position ``i`` attends to ``j <= i`` only.
        chunk_size: sorted chunk length (the paper's bucket size); sequences are padded to a
            multiple of it inside (padding masked).
        n_hashes: hashing rounds. n_buckets: buckets per round (even; default about
            ``L / chunk_size``, at least 2).
        dropout: on the attention output (training only). bias: projection biases.
        seed: hashing of evaluation mode (fixed, reproducible); training draws fresh random
            rotations every call from torch's global generator, as in the paper.

    Shapes: ``x: [B, L, dim] -> [B, L, dim]``; ``key_mask``: optional ``[B, L]`` bool.
    """

    def __init__(self, dim: int, n_heads: int, seq_len: int | None = None, causal: bool = False, *,
                 chunk_size: int = 32, n_hashes: int = 2, n_buckets: int | None = None,
                 dropout: float = 0.0, bias: bool = True, seed: int = 0):
        super().__init__()
        for name, val in (("dim", dim), ("n_heads", n_heads), ("chunk_size", chunk_size),
                          ("n_hashes", n_hashes)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if dim % n_heads:
            raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}")
        if n_buckets is not None and (isinstance(n_buckets, bool) or not isinstance(n_buckets, int)
                                      or n_buckets < 2 or n_buckets % 2):
            raise ValueError(f"n_buckets must be an even int >= 2 or None, got {n_buckets!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.seq_len, self.causal = seq_len, bool(causal)
        self.chunk_size, self.n_hashes, self.n_buckets = chunk_size, n_hashes, n_buckets
        self.dropout, self.seed = float(dropout), int(seed)
        self.qk = nn.Linear(dim, dim, bias=bias)        # shared queries and keys
        self.v = nn.Linear(dim, dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def buckets_for(self, L: int) -> int:
        if self.n_buckets is not None:
            return self.n_buckets
        return max(2, (L // self.chunk_size + 1) // 2 * 2)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, L, {self.dim}], got {tuple(x.shape)}")
        B, L, D = x.shape
        pad = -L % self.chunk_size
        if pad:
            km = key_mask if key_mask is not None else torch.ones(B, L, dtype=torch.bool, device=x.device)
            key_mask = F.pad(km, (0, pad), value=False)
            x = F.pad(x, (0, 0, 0, pad))
        Lp = L + pad
        qk = self.qk(x).view(B, Lp, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, Lp, self.n_heads, self.head_dim).transpose(1, 2)
        g = None if self.training else torch.Generator().manual_seed(self.seed)
        buckets = lsh_buckets(qk, self.buckets_for(Lp), self.n_hashes, generator=g)
        y = lsh_attention(qk, v, buckets, self.chunk_size, causal=self.causal, key_mask=key_mask)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, Lp, D)[:, :L]
        return self.proj(F.dropout(y, self.dropout, self.training))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_heads={self.n_heads}, causal={self.causal}, "
                f"chunk_size={self.chunk_size}, n_hashes={self.n_hashes}, n_buckets={self.n_buckets}")
