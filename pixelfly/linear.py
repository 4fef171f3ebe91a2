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

from . import ops
from .custom_layout import as_block_layout
from .gate import check_gate, new_token_gate, reset_token_gate, token_gated_linear
from .linear_fn import pixelfly_linear
from .layouts import MAX_GRID, BlockIndex, default_butterfly_size, flat_butterfly_layout

__all__ = ["PixelflyLinear", "choose_config"]


def _pair(block):
    if isinstance(block, bool) or not isinstance(block, (int, tuple, list)):
        raise TypeError(f"block_size must be an int or a pair of ints, got {block!r}")
    b1, b2 = (block, block) if isinstance(block, int) else tuple(block)
    if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in (b1, b2)):
        raise ValueError(f"block_size must be positive integers, got {block!r}")
    return b1, b2


def _butterfly_configs(R: int, C: int):
    """Every (butterfly_size n, n_factors m) valid on an R x C grid, with its block count."""
    n = 2
    while n <= min(R, C):
        for m in range(1, int(math.log2(n)) + 1):
            yield n, m, int(flat_butterfly_layout(R, C, m, n).sum())
        n *= 2


def choose_config(out_features: int, in_features: int, density: float, block_size=32,
                  low_rank_fraction: float = 0.25):
    """Split a parameter density into a flat-butterfly layout and a rank.

    A fraction ``low_rank_fraction`` of the ``density * out * in`` parameters goes to the
    low-rank factors (``rank = floor(share / (out + in))``), the rest to the butterfly part,
    whose ``(butterfly_size, n_factors)`` keeps the most blocks that fit (ties: more
    factors). When not even the sparsest butterfly fits, the sparsest is used and the rank
    shrinks to what is left (possibly 0); only then can the density exceed the request.

    Returns ``(butterfly_size, n_factors, rank)``.
    """
    if not (0.0 < float(density) <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density}")
    b1, b2 = _pair(block_size)
    R, C = out_features // b1, in_features // b2
    params = density * out_features * in_features
    rank = int(low_rank_fraction * params // (out_features + in_features))
    rank = max(0, min(rank, min(out_features, in_features)))
    left = params - rank * (out_features + in_features)
    configs = list(_butterfly_configs(R, C))
    if not configs:
        raise ValueError(f"a {out_features}x{in_features} weight with blocks {b1}x{b2} has a "
                         f"{R}x{C} block grid; a butterfly needs at least 2x2 blocks")
    fitting = [c for c in configs if c[2] * b1 * b2 <= left]
    if fitting:
        pick = max(fitting, key=lambda c: (c[2], c[1]))
    else:  # sparsest butterfly; the low-rank part gets what is left of the density
        pick = min(configs, key=lambda c: (c[2], -c[1]))
        rank = max(0, min(rank, int((params - pick[2] * b1 * b2) // (out_features + in_features))))
    return pick[0], pick[1], rank


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
            ``n_factors``, ``butterfly_size`` and ``rank`` with :func:`choose_config`. Used
            when ``n_factors`` is not given (default ``0.25``).
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
    ``V [in, r]``, ``gamma_logit`` (scalar; these three are absent when ``r == 0``, and then
    ``gamma = 1``),
    ``bias [out]``. Buffer ``layout [R, C]`` (bool) is saved in ``state_dict``.

    Example::

        >>> layer = PixelflyLinear(1024, 4096, density=0.25)
        >>> y = layer(torch.randn(8, 128, 1024))          # like nn.Linear(1024, 4096)
        >>> layer2 = PixelflyLinear.from_dense(nn.Linear(1024, 4096), density=0.25)
        >>> dense = layer2.to_dense()                      # nn.Linear with the same function
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 block_size=32, n_factors: int | None = None, butterfly_size: int | None = None,
                 rank: int | None = None, density: float | None = None,
                 low_rank_fraction: float = 0.25, layout=None, gate: str = "scalar",
                 device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        b1, b2 = _pair(block_size)
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
            density = 0.25 if density is None else density
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
        self.register_buffer("layout", torch.tensor(np.asarray(layout), device=device))
        self._set_index(layout)
        self.blocks = nn.Parameter(torch.empty(self.index.nnz, b1, b2, **factory))
        # U, V exist only with a low-rank part (an unused parameter would trip DDP).
        self.register_parameter("U", nn.Parameter(torch.empty(out_features, rank, **factory)) if rank else None)
        self.register_parameter("V", nn.Parameter(torch.empty(in_features, rank, **factory)) if rank else None)
        self.gamma_logit = nn.Parameter(torch.zeros((), **factory)) if rank > 0 and gate == "scalar" else None
        if gate == "token":
            self.gate = new_token_gate(in_features, **factory)
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    # ---------------------------------------------------------------- index
    def _set_index(self, layout):
        self.index = BlockIndex.from_layout(np.asarray(layout, dtype=bool))
        dev = self.layout.device
        for name, t in zip(ops.INDEX_FIELDS, ops.index_tensors(self.index, dev)):
            self.register_buffer(name, t, persistent=False)

    def _idx(self):
        return tuple(getattr(self, f) for f in ops.INDEX_FIELDS)

    # ----------------------------------------------------------------- init
    @property
    def gamma(self) -> torch.Tensor:
        """The mixing weight in ``[0, 1]`` (1 when the layer has no low-rank part). With the
        token gate: its value for a zero input, ``1 - sigmoid(gate.bias)`` (1/2 at init)."""
        if self.gate_kind == "token":
            return 1 - torch.sigmoid(self.gate.bias[0])
        if self.gamma_logit is None:
            return torch.ones((), device=self.blocks.device, dtype=self.blocks.dtype)
        return torch.sigmoid(self.gamma_logit)

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
        variance (``s = 1`` without low rank, else ``1/2``); the low-rank part the rest.
        """
        b1, b2 = self.block_size
        if self.gate_kind == "token":
            reset_token_gate(self.gate)
        g = float(self.gamma) if self.rank else 1.0
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
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension {self.in_features} (in_features), "
                             f"got shape {tuple(x.shape)}")
        if x.dtype != self.blocks.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"input dtype {x.dtype} does not match the layer's {self.blocks.dtype}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        if self.gate_kind == "token":
            return self._token_gated(x2).reshape(*lead, self.out_features)
        g = self.gamma
        blocks = self.blocks * g if self.rank else self.blocks
        if torch.is_autocast_enabled(x.device.type):  # like nn.Linear: run in the autocast dtype
            dt = torch.get_autocast_dtype(x.device.type)
            x2, blocks = x2.to(dt), blocks.to(dt)
        V = Ut = None
        if self.rank:
            V, Ut = self.V.to(x2.dtype), (self.U * (1 - g)).t().to(x2.dtype)
        bias = self.bias.to(x2.dtype) if self.bias is not None else None
        y = pixelfly_linear(x2, blocks, self._idx(), V, Ut, bias)
        return y.reshape(*lead, self.out_features)

    def _token_gated(self, x2):
        blocks, V, U, gw, gb = self.blocks, self.V, self.U, self.gate.weight, self.gate.bias
        if torch.is_autocast_enabled(x2.device.type):
            x2 = x2.to(torch.get_autocast_dtype(x2.device.type))
        V, U, gw, gb, blocks = (t.to(x2.dtype) for t in (V, U, gw, gb, blocks))
        bias = self.bias.to(x2.dtype) if self.bias is not None else None
        return token_gated_linear(x2, blocks, self._idx(), V, U, gw, gb, bias)

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
        rows = torch.repeat_interleave(torch.arange(R, device=W.device), self.row_ptr.diff())
        cols = self.col_idx
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
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accept a checkpoint whose layout (and so block count) differs from this layer's."""
        key = prefix + "layout"
        if key in state_dict and tuple(state_dict[key].shape) == tuple(self.layout.shape):
            new = state_dict[key].to(torch.bool)
            if not torch.equal(new.cpu(), self.layout.cpu()):
                self.layout = new.to(self.layout.device)
                self._set_index(new.cpu().numpy())
                b1, b2 = self.block_size
                self.blocks = nn.Parameter(self.blocks.new_empty(self.index.nnz, b1, b2))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
