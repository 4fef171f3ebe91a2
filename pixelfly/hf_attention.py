"""Pixelfly attention inside Hugging Face transformers models (``attn_implementation=``).

:func:`register_hf_attention` registers attention functions with transformers'
``AttentionInterface`` (and the matching mask builder with its ``AttentionMaskInterface``),
so any model written against that interface (GPT-2, Llama, Mistral, Qwen2, BERT, ...) takes
``attn_implementation="pixelfly"`` at load time or ``model.set_attn_implementation("pixelfly")``
later. Default names (all blocks of 32):

    ``"pixelfly"``                     the method's attention (SPEC section 4): flat block
                                       butterfly, 2 factors, plus the low-rank part
                                       (64 random features, one shared normaliser)
    ``"pixelfly_sparse"``              the same butterfly, sparse part only
    ``"pixelfly_bigbird"``             BigBird blocks (window 1, 1 global, 1 random)
    ``"pixelfly_sparse_transformer"``  strided (Child et al.)
    ``"pixelfly_local"``               block band (window 1)

``register_hf_attention(name, layout=..., block_size=..., n_random_features=...)`` adds
others. ``import pixelfly`` registers the
defaults as soon as transformers' ``modeling_utils`` is loaded (see
:mod:`pixelfly.hf_import_hook`), without importing torch or transformers itself.

What a call computes, for the ``q, k, v`` and mask a model passes:

* **Layout.** Built once over the model's ``max_position_embeddings`` (``n_positions``)
  rounded up to blocks; a sequence of ``L`` tokens uses the top-left ``ceil(L/b)`` block
  square. So a token's pattern never depends on how many tokens follow: a causal model
  gives the same result with and without the KV cache. (Longer sequences than that build
  a layout for their own length.)
* **Masks.** The model's causal and padding masks are applied exactly, element by element
  (padded keys are excluded inside a block, in both parts). Any other mask structure (sliding window,
  chunked, packed sequences, additive biases) is refused with a ``ValueError``.
* **Lengths that are not a multiple of the block** are padded inside and the padding masked.
* **Grouped-query attention**: key/value heads are repeated to the query heads.
* **KV cache**: the prefill (query length = key length) runs the block-sparse kernel;
  later steps (fewer queries than cached keys) compute their rows directly over the cache,
  restricted to the same layout rows (dense work over the cache, linear in its length).
* **Cross-attention** (not causal, query length != key length) runs transformers' SDPA.
* **Dropout** (``attn_pdrop`` etc. in training): the fused kernel never forms the
  attention probabilities, so it drops the attention *output* instead (as
  :class:`pixelfly.PixelflyAttention`): same expectation, not the same noise as dense.
* ``scaling`` is honoured; ``softcap``, ``sliding_window``, ``s_aux`` (sinks) and
  ``position_bias`` raise ``ValueError``; ``output_attentions`` returns no weights (as SDPA).
"""
from __future__ import annotations

import math
import warnings
import weakref

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["register_hf_attention", "PixelflyHFAttention", "DEFAULTS"]

#: random features of the default "pixelfly" attention's low-rank part
DEFAULT_FEATURES = 64

#: the names registered by default -> (layout, settings)
DEFAULTS = {"pixelfly": ("pixelfly", {"n_random_features": DEFAULT_FEATURES}),
            "pixelfly_sparse": ("pixelfly", {}),
            "pixelfly_bigbird": ("bigbird", {}),
            "pixelfly_sparse_transformer": ("sparse_transformer", {}),
            "pixelfly_local": ("local", {})}

_UNSUPPORTED = {"softcap": "attention logit soft-capping", "sliding_window": "sliding-window attention",
                "s_aux": "attention sinks", "position_bias": "an additive position bias"}


def _check_positive_int(name, val):
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
        raise ValueError(f"{name} must be a positive int, got {val!r}")


class PixelflyHFAttention:
    """An attention function of transformers' ``AttentionInterface`` that runs pixelfly's
    block-sparse (+ optional low-rank) attention; see the module docstring for what it
    does with what models pass. Settings: ``layout`` (``pixelfly.attention.LAYOUTS`` or a
    boolean ``(G, G)`` array over the model's ``G``-block grid), ``block_size``, ``n_factors``,
    ``butterfly_size``, ``layout_kwargs`` (the baselines' options), ``n_random_features``
    (0: sparse only) and ``feature_seed`` (the random features of layer ``i`` are drawn from
    ``feature_seed + i``: fixed, so training, evaluation and generation all see the same)."""

    def __init__(self, name: str, layout="pixelfly", *, block_size: int = 32, n_factors: int = 2,
                 butterfly_size: int | None = None, n_random_features: int = 0,
                 feature_seed: int = 0, layout_kwargs: dict | None = None):
        from .attention import LAYOUTS
        if isinstance(layout, str) and layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use one of {LAYOUTS} or a boolean array")
        _check_positive_int("block_size", block_size)
        _check_positive_int("n_factors", n_factors)
        if isinstance(n_random_features, bool) or not isinstance(n_random_features, int) \
                or n_random_features < 0:
            raise ValueError(f"n_random_features must be an int >= 0, got {n_random_features!r}")
        self.__name__ = self.name = name
        self.layout_spec = layout if isinstance(layout, str) else np.asarray(layout, bool)
        self.block_size, self.n_factors, self.butterfly_size = block_size, n_factors, butterfly_size
        self.n_random_features, self.feature_seed = n_random_features, int(feature_seed)
        self.layout_kwargs = dict(layout_kwargs or {})
        self._indices: dict = {}
        self._features: dict = {}
        self._last_mask = None

    def __repr__(self):
        lay = self.layout_spec if isinstance(self.layout_spec, str) else "array"
        return (f"PixelflyHFAttention({self.name!r}, layout={lay!r}, block_size={self.block_size}, "
                f"n_random_features={self.n_random_features})")

    # ------------------------------------------------------------ layout and features
    def grid(self, config, n_blocks: int) -> int:
        """The block grid the layout is built on: the model's positions in blocks, or
        ``n_blocks`` when the sequence is longer (or the config gives no maximum)."""
        max_pos = getattr(config, "max_position_embeddings", None)
        g = -(-int(max_pos) // self.block_size) if isinstance(max_pos, int) and max_pos > 0 else 0
        return max(g, n_blocks)

    def index(self, config, n_blocks: int, causal: bool):
        """``AttentionIndex`` of the ``n_blocks x n_blocks`` top-left square of the layout."""
        from .attention import build_attention_layout
        from .attention_ops import AttentionIndex
        G = self.grid(config, n_blocks)
        key = (G, n_blocks, bool(causal))
        idx = self._indices.get(key)
        if idx is None:
            lay = build_attention_layout(G, self.layout_spec, n_factors=self.n_factors,
                                         butterfly_size=self.butterfly_size, causal=causal,
                                         **self.layout_kwargs)
            idx = self._indices[key] = AttentionIndex(np.ascontiguousarray(lay[:n_blocks, :n_blocks]))
        return idx

    def layout(self, config, L: int, causal: bool) -> np.ndarray:
        """The block layout a sequence of ``L`` tokens uses (``ceil(L / block_size)`` square)."""
        return self.index(config, -(-int(L) // self.block_size), causal).layout

    def features(self, module, head_dim: int, device):
        """The ``[r, head_dim]`` random-feature projection of ``module``'s layer (or None)."""
        if not self.n_random_features:
            return None
        from .attention import gaussian_features
        layer = int(getattr(module, "layer_idx", 0) or 0)
        key = (layer, head_dim, str(device))
        w = self._features.get(key)
        if w is None:
            g = torch.Generator().manual_seed(self.feature_seed + layer)
            w = self._features[key] = gaussian_features(self.n_random_features, head_dim,
                                                        generator=g).to(device)
        return w

    # ---------------------------------------------------------------- the call
    def __call__(self, module, query, key, value, attention_mask, dropout: float = 0.0,
                 scaling: float | None = None, is_causal: bool | None = None, **kwargs):
        for arg, what in _UNSUPPORTED.items():
            if kwargs.get(arg) is not None:
                raise ValueError(f"attn_implementation={self.name!r} does not support {what} "
                                 f"({arg}={kwargs[arg]!r}); use 'eager' or 'sdpa' for this model")
        if kwargs.get("output_attentions"):
            warnings.warn(f"attn_implementation={self.name!r} returns no attention weights "
                          "(output_attentions)", stacklevel=2)
        B, H, Lq, d = query.shape
        Hkv, Lk = key.shape[1], key.shape[2]
        if H % Hkv:
            raise ValueError(f"query has {H} heads, not a multiple of the {Hkv} key/value heads")
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        cross = getattr(module, "is_cross_attention", False)
        if cross or (not causal and Lq != Lk):
            from transformers.integrations.sdpa_attention import sdpa_attention_forward
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=False)
        if attention_mask is None and causal and 1 < Lq < Lk:
            key, value, Lk = key[:, :, :Lq], value[:, :, :Lq], Lq   # empty static cache (as SDPA)
        key_mask, pos, empty = self._structure(attention_mask, B, causal, Lq, Lk)
        if Hkv != H:
            key = key.repeat_interleave(H // Hkv, 1)
            value = value.repeat_interleave(H // Hkv, 1)
        scale = d ** -0.5 if scaling is None else float(scaling)
        cdt = torch.float32 if query.dtype == torch.float16 else query.dtype   # no fp16 kernels
        q, k, v = (t.to(cdt) for t in (query, key, value))
        w = self.features(module, d, query.device)
        config = getattr(module, "config", None)
        if Lq == Lk:
            y = self._whole(config, q, k, v, key_mask, causal, scale, w)
        else:
            y = self._rows(config, q, k, v, key_mask, pos, scale, w)
        if empty is not None:
            y = torch.where(empty[:, None, :, None], 0, y)
        if dropout > 0:
            y = F.dropout(y, dropout, training=True)
        return y.to(query.dtype).transpose(1, 2).contiguous(), None

    def _structure(self, mask, B, causal, Lq, Lk):
        """:func:`_mask_structure` of the model's mask, remembered for the next layers (the
        models pass every layer the same mask tensor)."""
        key = (B, causal, Lq, Lk, None if mask is None else mask._version)
        last = self._last_mask
        if mask is not None and last is not None and last[0]() is mask and last[1] == key:
            return last[2]
        found = _mask_structure(_bool_mask(mask, B, Lq, Lk, self.name), causal, Lq, Lk, self.name)
        self._last_mask = None if mask is None else (weakref.ref(mask), key, found)
        return found

    def _whole(self, config, q, k, v, key_mask, causal, scale, w):
        """Query length = key length: the block-sparse kernel, padded to whole blocks."""
        from .attention import sparse_lowrank_attention
        B, H, L, d = q.shape
        b = self.block_size
        R = -(-L // b)
        pad = R * b - L
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            if key_mask is not None or not causal:   # causal rows < L never see the tail
                km = key_mask if key_mask is not None else q.new_ones(B, L, dtype=torch.bool)
                key_mask = F.pad(km, (0, pad), value=False)
        y = sparse_lowrank_attention(q, k, v, self.index(config, R, causal), b, scale=scale,
                                     causal=causal, features=w, key_mask=key_mask)
        return y[:, :, :L]

    def _rows(self, config, q, k, v, key_mask, pos, scale, w):
        """Cache steps (fewer queries than keys, causal): query ``i`` at position ``pos[i]``
        attends over the cache to the keys its layout row allows, computed directly."""
        from .attention_lowrank import features as _features
        q, k, v = (t.float() if t.dtype == torch.bfloat16 else t for t in (q, k, v))
        B, H, Lq, d = q.shape
        Lk = k.shape[2]
        b = self.block_size
        R = max(-(-Lk // b), int(pos.max()) // b + 1)
        lay = torch.from_numpy(self.index(config, R, True).layout).to(q.device)
        j = torch.arange(Lk, device=q.device)
        past = j[None, :] <= pos[:, None]                                   # [Lq, Lk]
        sup = lay[pos // b][:, j // b] & past
        km = torch.ones(B, Lk, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        k = torch.where(km[:, None, :, None], k, 0)
        v = torch.where(km[:, None, :, None], v, 0)
        km = km[:, None, None, :]
        sup = sup & km                                                       # [B, 1, Lq, Lk]
        s = (q @ k.transpose(-1, -2)) * scale
        s = torch.where(sup, s, float("-inf"))
        m = s.amax(-1, keepdim=True)
        if w is None:
            m = torch.where(torch.isfinite(m), m, 0).detach()
            p = torch.where(sup, torch.exp(s - m), 0)
            den = p.sum(-1, keepdim=True)
            return torch.where(den > 0, (p @ v) / torch.where(den > 0, den, 1), 0)
        rs = math.sqrt(scale)
        phq, offq = _features(q * rs, w.to(q.dtype), per_row=True)
        phk, offk = _features(k * rs, w.to(q.dtype), per_row=False)
        lr = past & km & ~sup
        kap = torch.where(lr, phq @ phk.transpose(-1, -2), 0)
        M = torch.maximum(torch.where(torch.isfinite(m), m, offq + offk), offq + offk).detach()
        a = torch.where(sup, torch.exp(s - M), 0) + kap * torch.exp(offq + offk - M)
        den = a.sum(-1, keepdim=True)
        return torch.where(den > 0, (a @ v) / torch.where(den > 0, den, 1), 0)


def _bool_mask(mask, B: int, Lq: int, Lk: int, name: str):
    """The model's attention mask as ``[B, Lq, Lk]`` bool (True: attend), or None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise ValueError(f"attn_implementation={name!r} takes a 4-D attention mask (or None), got "
                         f"{type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}")
    if tuple(mask.shape[-2:]) != (Lq, Lk) or mask.shape[0] not in (1, B):
        raise ValueError(f"attention mask has shape {tuple(mask.shape)}, expected "
                         f"[{B}, 1, {Lq}, {Lk}]")
    if mask.dtype != torch.bool:
        keep = mask == 0
        if not bool(torch.all(keep | (mask <= torch.finfo(mask.dtype).min / 2))):
            raise ValueError(f"attn_implementation={name!r} does not support an additive attention "
                             "bias: the mask may hold only 0 (attend) and the dtype's minimum / -inf")
        mask = keep
    if mask.shape[1] != 1 and not bool((mask == mask[:, :1]).all()):
        raise ValueError(f"attn_implementation={name!r} needs one mask for all heads")
    return mask[:, 0].expand(B, Lq, Lk)


def _mask_structure(allowed, causal: bool, Lq: int, Lk: int, name: str):
    """Split a ``[B, Lq, Lk]`` mask into what the kernels apply: ``key_mask [B, Lk]`` (None:
    every key), the queries' positions ``pos [Lq]`` among the keys (causal), and the rows
    that attend to nothing ``empty [B, Lq]`` (None: none). Raises if the mask is anything
    else than (causal) x (key padding)."""
    device = allowed.device if allowed is not None else None
    if allowed is None:
        return None, torch.arange(Lk - Lq, Lk, device=device), None
    j = torch.arange(Lk, device=device)
    key_mask = allowed.any(1)                                                # [B, Lk]
    has = allowed.any(2)                                                     # [B, Lq]
    if causal:
        if Lq == Lk:
            pos = j
        else:   # the last key each query sees (its own slot), over the batch
            last = torch.where(allowed, j, -1).amax(2).amax(0)
            pos = torch.where(last >= 0, last, torch.arange(Lk - Lq, Lk, device=device))
        expect = (j[None, :] <= pos[:, None])[None] & key_mask[:, None, :]
    else:
        pos = None
        expect = key_mask[:, None, :].expand_as(allowed)
    if not torch.equal(allowed, expect & has[:, :, None]):
        raise ValueError(f"attn_implementation={name!r} supports causal and padding masks only; "
                         "this model passed another mask structure (sliding window, chunked or "
                         "packed sequences, a custom mask): use 'sdpa' or 'eager' for it")
    empty = None if bool(has.all()) else ~has
    if bool(key_mask.all()):
        key_mask = None
    return key_mask, pos, empty


def register_hf_attention(name: str | None = None, layout="pixelfly", **settings):
    """Register pixelfly attention with transformers under ``name`` (``attn_implementation``),
    with :class:`PixelflyHFAttention` ``settings``, and return it. Registering a name again
    replaces it. With no ``name``: the default names (:data:`DEFAULTS`) that are not
    registered yet; returns the ``"pixelfly"`` function."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface
    if name is None:
        if settings or layout != "pixelfly":
            raise ValueError("give a name to register non-default settings")
        for n, (lay, defaults) in DEFAULTS.items():
            if n not in AttentionInterface._global_mapping:
                register_hf_attention(n, lay, **defaults)
        return AttentionInterface._global_mapping["pixelfly"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if name in ("eager", "sdpa", "flex_attention") or name.startswith(("flash_attention", "paged")):
        raise ValueError(f"name {name!r} is one of transformers' own attention implementations")
    fn = PixelflyHFAttention(name, layout, **settings)
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)   # boolean 4-D masks (or None)
    return fn


def check_attn_implementation(model, attention) -> None:
    """Raise unless ``model`` is a transformers model that can switch to ``attention``
    (registering the default pixelfly names first)."""
    from transformers import PreTrainedModel
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"attention={attention!r} applies to Hugging Face transformers models; "
                         f"{type(model).__name__} is not one (pixelfly's own models take "
                         "build_model(..., attention=...))")
    register_hf_attention()
    valid = ["eager"] + ALL_ATTENTION_FUNCTIONS.valid_keys()
    if not isinstance(attention, str) or attention not in valid:
        raise ValueError(f"attention={attention!r} is not a registered attn_implementation; "
                         f"pixelfly's: {sorted(DEFAULTS)} (or register_hf_attention(name, ...))")
