"""``PixelflyLinear``: a drop-in replacement for ``nn.Linear`` with a Pixelfly weight

    W = gamma * B + (1 - gamma) * U V^T            (SPEC section 2)

``B`` is block-sparse with a flat block butterfly layout and only its kept blocks exist
(``blocks: [nnz, b1, b2]``); ``U: [out, r]``, ``V: [in, r]``; ``gamma = sigmoid(gamma_logit)``
is learnable and stays in ``[0, 1]``. The forward pass never forms ``W``:

    y = x (gamma B)^T + (x V) ((1 - gamma) U)^T + bias
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import defaults, ops
from .args import block_pair
from .costs import butterfly_candidates, choose_config
from .custom_layout import as_block_layout
from .gate import check_gate, new_token_gate, reset_token_gate, token_gated_linear
from .layer_state import refuse_load, shape_errors
from .linear_fn import pixelfly_linear
from .ops_func import kernel_rows
from .layouts import MAX_GRID, BlockIndex, default_butterfly_size, flat_butterfly_layout
from ._memory import physical_memory

_MEMORY = physical_memory()

__all__ = ["PixelflyLinear", "choose_config"]

_unsafe_view = torch.ops.aten._unsafe_view.default  # reshape that autograd sees as no view


class PixelflyLinear(nn.Module):
    r"""Pixelfly linear layer, a drop-in for ``nn.Linear``: ``y = x W^T + bias`` with
    ``W = gamma * B + (1 - gamma) * U V^T`` and ``x`` of shape ``[*, in_features]``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        block_size: ``b`` or ``(b1, b2)``; must divide ``(out_features, in_features)``.
        n_factors: flat butterfly factors ``m`` (``1 <= m <= log2 butterfly_size``).
        butterfly_size: butterfly size ``n`` (default: largest power of two <= block grid).
        rank: rank ``r`` of the low-rank part (0 = sparse only).
        density: total parameter density (sparse + low rank, vs ``nn.Linear``); picks
            ``n_factors``, ``butterfly_size`` and ``rank`` with :func:`~pixelfly.costs.choose_config`
            (the planner's butterfly rule). Used when ``n_factors`` is not given (default
            ``pixelfly.defaults.DENSITY``, 0.25).
        low_rank_fraction: share of the density spent on the low-rank part (default 1/4).
        layout: any boolean block layout ``[out/b1, in/b2]`` (NumPy or torch), e.g. from
            :func:`~pixelfly.fly_config_layout` (the authors' rule), ``bigbird_layout``,
            ``random_layout`` or your own, instead of the flat butterfly; then give ``rank``
            (default 0), not ``n_factors``, ``butterfly_size`` or ``density``.
        gate: ``"scalar"`` (SPEC 2's learnable ``gamma``, default) or ``"token"`` (the
            authors' ``SparseLRLinear`` gate: ``gamma = 1 - sigmoid(x w + c)`` per token,
            from a submodule ``gate = nn.Linear(in_features, 1)``; see :mod:`pixelfly.gate`).
            ``"token"`` needs ``rank > 0``.

    Parameters: ``blocks [nnz, b1, b2]`` (the only storage of ``B``), ``U [out, r]``,
    ``V [in, r]``, ``gamma_logit [1]`` (one element, not 0-d: FSDP2 shards no 0-d parameter;
    these three are absent when ``r == 0``, and then ``gamma = 1``),
    ``bias [out]``. Buffer ``layout [R, C]`` (bool) is saved in ``state_dict``; a
    checkpoint with another layout loads too (see ``_load_from_state_dict``).

    Example::

        >>> layer = PixelflyLinear(1024, 4096, density=0.25)
        >>> y = layer(torch.randn(8, 128, 1024))          # like nn.Linear(1024, 4096)
        >>> layer2 = PixelflyLinear.from_dense(nn.Linear(1024, 4096), density=0.25)
        >>> dense = layer2.to_dense()                      # nn.Linear with the same function
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 block_size=defaults.BLOCK_SIZE, n_factors: int | None = None, butterfly_size: int | None = None,
                 rank: int | None = None, density: float | None = None,
                 low_rank_fraction: float = defaults.LOW_RANK_FRACTION, layout=None, gate: str = "scalar",
                 device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        b1, b2 = block_pair(block_size)
        if out_features % b1 or in_features % b2:
            raise ValueError(
                f"block_size {b1}x{b2} must divide the weight shape {out_features}x{in_features} "
                f"(out_features % {b1} = {out_features % b1}, in_features % {b2} = "
                f"{in_features % b2}); pick a block size that divides both or pad the features")
        for name, v, b in (("out_features", out_features, b1), ("in_features", in_features, b2)):
            if v // b > MAX_GRID:
                raise ValueError(f"{name} = {v} is {v // b} blocks of {b}, more than a block grid's "
                                 f"{MAX_GRID} (2**20): use larger blocks or fewer features")
        self.in_features, self.out_features, self.block_size = in_features, out_features, (b1, b2)
        if layout is not None:  # a layout of the user's: no butterfly to choose
            given = [k for k, v in (("n_factors", n_factors), ("butterfly_size", butterfly_size),
                                    ("density", density)) if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} choose a flat butterfly layout; with layout= "
                                 "give rank= (and the layout) only")
            layout = as_block_layout(layout, out_features // b1, in_features // b2)
        elif n_factors is None:
            density = defaults.DENSITY if density is None else density
            n, m, r = choose_config(out_features, in_features, density, (b1, b2),
                                    low_rank_fraction)
            butterfly_size = butterfly_size if butterfly_size is not None else n
            n_factors = m
            rank = r if rank is None else rank
        rank = 0 if rank is None else rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be an int in [0, {min(in_features, out_features)}], got {rank!r}")
        self.custom_layout = layout is not None
        if layout is None:
            layout = flat_butterfly_layout(out_features // b1, in_features // b2, n_factors,
                                           butterfly_size)
            butterfly_size = butterfly_size or default_butterfly_size(*layout.shape)
        self.n_factors, self.butterfly_size = n_factors, butterfly_size  # None for a custom layout
        self.rank = rank
        self.gate_kind = check_gate(gate, rank)
        factory = {"device": device, "dtype": dtype}
        self._set_index(BlockIndex.from_layout(np.asarray(layout, dtype=bool)),
                        torch.get_default_device() if device is None else torch.device(device))
        self.blocks = nn.Parameter(torch.empty(self.index.nnz, b1, b2, **factory))
        # U, V exist only with a low-rank part (an unused parameter would trip DDP).
        self.register_parameter("U", nn.Parameter(torch.empty(out_features, rank, **factory)) if rank else None)
        self.register_parameter("V", nn.Parameter(torch.empty(in_features, rank, **factory)) if rank else None)
        self.gamma_logit = nn.Parameter(torch.zeros(1, **factory)) if rank > 0 and gate == "scalar" else None
        if gate == "token":
            self.gate = new_token_gate(in_features, **factory)
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    # ---------------------------------------------------------------- index
    # self.index (a BlockIndex) is the truth. The ``layout`` buffer (saved in state_dict) and
    # the index tensors the kernels read are derived from it, on the parameters' device. The
    # index tensors are plain attributes, not buffers: loaders that fill buffers with
    # placeholders (to_empty, Hugging Face's empty-weight loading) cannot clobber them.
    def _set_index(self, index: BlockIndex, device):
        self.index = index
        self.register_buffer("layout", torch.tensor(index.layout, device=device))
        self._index_t = ops.index_tensors(index, device)

    def _idx(self):
        """The five index tensors (``ops.INDEX_FIELDS``) on the parameters' device."""
        idx = self._index_t
        if idx[0].is_meta and not self.blocks.is_meta:  # parameters placed without _apply
            self._index_t = idx = ops.index_tensors(self.index, self.blocks.device)
        return idx

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # moves (or to_empty's placeholders) ...
        self._set_index(self.index, self.blocks.device)  # ... then the values of self.index
        return self

    # ----------------------------------------------------------------- init
    @property
    def gamma(self) -> torch.Tensor:
        """The mixing weight in ``[0, 1]`` (1 when the layer has no low-rank part). With the
        token gate: its value for a zero input, ``1 - sigmoid(gate.bias)`` (1/2 at init)."""
        if self.gate_kind == "token":
            return 1 - torch.sigmoid(self.gate.bias[0])
        if self.gamma_logit is None:
            return torch.ones((), device=self.blocks.device, dtype=self.blocks.dtype)
        return torch.sigmoid(self.gamma_logit)[0]

    @property
    def nnz_blocks(self) -> int:
        return self.index.nnz

    @property
    def density(self) -> float:
        """Stored parameters of the weight (blocks + U + V) over ``out * in``."""
        b1, b2 = self.block_size
        stored = self.index.nnz * b1 * b2 + self.rank * (self.in_features + self.out_features)
        return stored / (self.in_features * self.out_features)

    @torch.no_grad()
    def reset_parameters(self):
        """Initialise so the output has ``nn.Linear``'s scale: ``Var(y_i) = Var(x) / 3``.

        ``nn.Linear`` draws ``U(-1/sqrt(in), 1/sqrt(in))``, so each output has variance
        ``in * 1/(3 in) * E[x^2] = E[x^2] / 3``. Here the sparse part sees ``k`` inputs per
        output on average (``k = nnz * b1 * b2 / out``) and gets a share ``s`` of that
        variance (``s = 1`` without low rank, else ``1/2``); the low-rank part the rest;
        ``gamma`` restarts at 1/2. With ``to_empty`` this is deferred initialisation: a layer
        built on the meta device becomes one distributed as a freshly built one.
        """
        b1, b2 = self.block_size
        if self.gate_kind == "token":
            reset_token_gate(self.gate)
        elif self.rank:
            self.gamma_logit.zero_()
        g = 1.0 if self.rank == 0 else 0.5  # gamma starts at 1/2 (either gate)
        share = 1.0 if self.rank == 0 else 0.5
        k = max(1.0, self.index.nnz * b1 * b2 / self.out_features)
        bound = math.sqrt(3.0 * share / (3.0 * g * g * k))
        nn.init.uniform_(self.blocks, -bound, bound)
        if self.rank:
            nn.init.normal_(self.V, 0.0, 1.0 / math.sqrt(self.in_features))
            nn.init.normal_(self.U, 0.0, math.sqrt((1 - share) / (3.0 * (1 - g) ** 2 * self.rank)))
        if self.bias is not None:
            lim = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -lim, lim)

    # -------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt, cdt = self._dtypes(x)
        x2 = x.reshape(-1, self.in_features)
        x2 = x2 if x2.dtype == cdt else x2.to(cdt)
        if self.gate_kind == "token":
            y = token_gated_linear(kernel_rows(x2), *self._token_operands(cdt))
        else:
            y = pixelfly_linear(x2, *self._operands(cdt))
        if dt != cdt:
            y = y.to(dt)
        # not a view (a view would hide an in-place op on the output from FSDP2's hooks)
        return y if x.ndim == 2 else _unsafe_view(y, (*x.shape[:-1], self.out_features))

    def _dtypes(self, x):
        """Check ``x``; return the output dtype and the one the kernels compute in."""
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"PixelflyLinear: input x must have shape [*, {self.in_features}] "
                             f"(last dimension {self.in_features}), got shape {tuple(x.shape)}")
        rows = x.numel() // self.in_features
        if rows * max(self.in_features, self.out_features) * x.element_size() > _MEMORY:
            raise ValueError(f"PixelflyLinear: input x has {rows} rows of {self.in_features}: its "
                             f"rows and the output would need more memory than this machine has")
        blocks = self.blocks
        if blocks.is_meta and not x.is_meta:
            raise RuntimeError(
                "PixelflyLinear: the layer's parameters are on the meta device (no data); "
                "materialise it first: to_empty(device=...) then reset_parameters() or "
                "load_state_dict(...)")
        if x.device != blocks.device:
            raise ValueError(f"PixelflyLinear: input x is on {x.device} but the layer's "
                             f"parameters are on {blocks.device}; move one of them (.to(...))")
        dev = x.device.type
        if dev != "meta" and torch.is_autocast_enabled(dev):  # as nn.Linear: the autocast dtype
            dt = torch.get_autocast_dtype(dev)
        elif x.dtype != blocks.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the layer's {blocks.dtype}")
        else:
            dt = x.dtype
        # float16 on the CPU (accepted, as by nn.Linear) runs in float32: no fp16 CPU kernels
        return dt, torch.float32 if dt == torch.float16 and dev == "cpu" else dt

    def _operands(self, cdt):
        """``(B, index, V, U, bias, gamma)`` for :func:`pixelfly_linear`, in ``cdt`` (gamma:
        the parameter's dtype, a one-element tensor; ``None`` without a low-rank part)."""
        blocks, V, U, bias = self.blocks, self.V, self.U, self.bias
        g = torch.sigmoid(self.gamma_logit) if self.rank else None
        if blocks.dtype != cdt:
            blocks = blocks.to(cdt)
            V, U = (None, None) if V is None else (V.to(cdt), U.to(cdt))
            bias = None if bias is None else bias.to(cdt)
        return blocks, self._idx(), V, U, bias, g

    def _token_operands(self, cdt):
        """``(B, index, V, U, gate weight, gate bias, bias)`` for :func:`token_gated_linear`."""
        ts = (self.blocks, self.V, self.U, self.gate.weight, self.gate.bias, self.bias)
        if self.blocks.dtype != cdt:
            ts = tuple(None if t is None else t.to(cdt) for t in ts)
        blocks, V, U, gw, gb, bias = ts
        return blocks, self._idx(), V, U, gw, gb, bias

    def extra_repr(self) -> str:
        b1, b2 = self.block_size
        R, C = self.layout.shape
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block={b1}x{b2}, blocks={self.index.nnz}/{R * C}, "
                + ("layout=custom, " if self.custom_layout else
                   f"butterfly_size={self.butterfly_size}, n_factors={self.n_factors}, ")
                + f"rank={self.rank}, density={self.density:.4f}"
                + (", gate=token" if self.gate_kind == "token" else ""))

    # ----------------------------------------------------------- conversion
    @torch.no_grad()
    def weight_dense(self) -> torch.Tensor:
        """The dense ``out x in`` weight ``gamma B + (1 - gamma) U V^T`` (for checks only)."""
        if self.gate_kind == "token":
            raise ValueError("a token-gated layer (gate='token') has no single dense weight: "
                             "its mix of B and U V^T depends on the input")
        b1, b2 = self.block_size
        W = self.blocks.new_zeros(self.out_features, self.in_features)
        Wb = W.view(self.layout.shape[0], b1, self.layout.shape[1], b2).permute(0, 2, 1, 3)
        R = self.layout.shape[0]
        row_ptr, cols = self._idx()[:2]
        rows = torch.repeat_interleave(torch.arange(R, device=W.device), row_ptr.diff())
        Wb[rows, cols] = self.blocks * self.gamma
        if self.rank:
            W += (1 - self.gamma) * (self.U @ self.V.t())
        return W

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (same device and dtype)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.blocks.device, dtype=self.blocks.dtype)
        lin.weight.copy_(self.weight_dense())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: nn.Linear, **kwargs) -> "PixelflyLinear":
        """Convert an ``nn.Linear``: keep its weights on the layout's blocks and fit ``U, V`` to
        the residual (the weight off the layout) by truncated SVD; ``gamma`` starts at 1/2.

        ``kwargs`` are those of the constructor (``block_size``, ``density``, ``n_factors``,
        ``rank``, ...). With full rank the result equals ``linear`` up to rounding.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        W = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=W.device, dtype=W.dtype, **kwargs)
        b1, b2 = layer.block_size
        R, C = layer.layout.shape
        blocks = W.view(R, b1, C, b2).permute(0, 2, 1, 3)[layer.layout]
        g = float(layer.gamma)
        layer.blocks.copy_(blocks / g)
        if layer.rank:
            mask = layer.layout.repeat_interleave(b1, 0).repeat_interleave(b2, 1)
            resid = (W * ~mask).double()
            P, S, Qh = torch.linalg.svd(resid, full_matrices=False)
            r = layer.rank
            scale = S[:r].sqrt() / math.sqrt(1 - g)
            layer.U.copy_(P[:, :r] * scale)
            layer.V.copy_(Qh[:r].t() * scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    # ---------------------------------------------------------- state dicts
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Load a checkpoint, also one whose layout (so its block count) differs from this
        layer's. All or nothing: every shape is checked (against the checkpoint's layout)
        before anything changes, and on an error the layer keeps its layout, index and
        parameters. A new layout resizes ``blocks`` in place: the Parameter object stays the
        same, so an optimizer built before the load keeps training it (per-parameter state of
        the old shape, e.g. Adam moments, must come from the same checkpoint or be reset)."""
        g = state_dict.get(prefix + "gamma_logit")
        if isinstance(g, torch.Tensor) and g.dim() == 0:  # saved before gamma_logit was [1]
            state_dict[prefix + "gamma_logit"] = g.reshape(1)
        new = self._checkpoint_index(state_dict.get(prefix + "layout"))
        b1, b2 = self.block_size
        expected = {} if new is None else {"blocks": (new.nnz, b1, b2)}
        errors = shape_errors(self, state_dict, prefix, expected)
        if new is not None and prefix + "blocks" not in state_dict:
            errors.append(f"{prefix}layout differs from this layer's but the state dict has no "
                          f"{prefix}blocks for it")
        if errors:
            return refuse_load(state_dict, prefix, errors, error_msgs, "PixelflyLinear")
        if new is None:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                 missing_keys, unexpected_keys, error_msgs)
        param = self.blocks
        old = (self.index, self.layout, param.data, param.grad, self.butterfly_size,
               self.n_factors, self.custom_layout)
        self._set_index(new, self.layout.device)
        param.grad = None
        param.data = param.new_empty(new.nnz, b1, b2)
        self.butterfly_size, self.n_factors = _butterfly_config_of(new.layout)
        self.custom_layout = self.n_factors is None
        n_errors, ok = len(error_msgs), False
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                          missing_keys, unexpected_keys, error_msgs)
            ok = len(error_msgs) == n_errors
        finally:
            if not ok:  # roll back to the layer as it was
                index, layout, data, grad, self.butterfly_size, self.n_factors, self.custom_layout = old
                self._set_index(index, layout.device)
                self.layout, self.blocks = layout, param
                param.data = data
                param.grad = grad

    def _checkpoint_index(self, layout):
        """The BlockIndex of a checkpoint's layout when it is a valid one that differs from
        this layer's, else None (a wrong shape is reported by :func:`shape_errors`)."""
        if (not isinstance(layout, torch.Tensor) or layout.is_meta
                or tuple(layout.shape) != tuple(self.layout.shape)):
            return None
        new = layout.detach().cpu().to(torch.bool).numpy()
        return None if np.array_equal(new, self.index.layout) else BlockIndex.from_layout(new)


def _butterfly_config_of(layout):
    """``(butterfly_size, n_factors)`` of a flat butterfly layout, ``(None, None)`` for
    another layout."""
    R, C = layout.shape
    for n, m, nnz in butterfly_candidates(R, C, min_n=2):
        if nnz == layout.sum() and np.array_equal(flat_butterfly_layout(R, C, m, n), layout):
            return n, m
    return None, None
