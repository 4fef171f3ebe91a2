"""Argument checks of the pixelfly ops, with messages that name the caller's arguments.

Every op is validated once, here, before a kernel runs: at the Python boundary a user calls
(:mod:`pixelfly.ops`, :mod:`pixelfly.attention_ops`) and by the composite ops, which
``torch.ops.pixelfly.*`` also reaches directly. The C++ bindings keep only cheap invariant
checks (``csrc/torch/checks.h``) and the C core checks the index contents. What each
backend supports beyond the ops' contract (the native CPU kernels have no float16, the CUDA
kernels no float64) is that backend's error.
"""
from __future__ import annotations

import math

import torch

from ._memory import physical_memory

__all__ = ["INDEX_FIELDS", "ATTENTION_INDEX_FIELDS", "bsmm_args", "bsmm_lowrank_args", "attention_args",
           "attention_bwd_args", "rows_ok", "int_arg"]

INDEX_FIELDS = ("row_ptr", "col_idx", "col_ptr", "row_idx", "csc_blk")
ATTENTION_INDEX_FIELDS = INDEX_FIELDS[:4]
_PHYSICAL_MEMORY = physical_memory()   # read once: torch.compile traces these checks


def _fail(cls, msg, prefix="pixelfly"):
    raise cls(f"{prefix}: {msg}")


def _tensor(name, t, prefix="pixelfly"):
    if not isinstance(t, torch.Tensor):
        _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}", prefix)


def _floating(name, t, prefix="pixelfly"):
    if not (t.is_floating_point() and t.dtype.itemsize >= 2):
        _fail(TypeError, f"{name} must be a floating-point tensor (float16, bfloat16, float32 "
                         f"or float64), got dtype {t.dtype}", prefix)


def _index_array(name, t, devices, prefix="pixelfly"):
    _tensor(name, t, prefix)
    if t.dtype != torch.int64:
        _fail(TypeError, f"{name} must be int64, got {t.dtype}", prefix)
    if t.device not in devices:
        where = " or ".join(str(d) for d in devices)
        _fail(ValueError, f"{name} must be on {where}, got {t.device}", prefix)
    if t.dim() != 1:
        _fail(ValueError, f"{name} must be 1-D, got {t.dim()}-D", prefix)


def int_arg(fn, name, value):
    """``value`` if it is an int (not a bool), else a TypeError naming ``fn``'s ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    return value


def rows_ok(t) -> bool:
    """Whether the kernels read the 2-D ``t`` in place: unit stride inside a row and rows at
    least a row apart (any strides for a single row or column). Other views are copied."""
    T, n = t.shape
    unit = n <= 1 or t.stride(1) == 1
    return T == 0 or n == 0 or (unit and (T == 1 or t.stride(0) >= n))


# ------------------------------------------------------------------ block-sparse matmul
def _bsmm_index(idx, device):
    """``(R, C, nnz)`` of the five index tensors, checked to live on ``device``."""
    if len(idx) != len(INDEX_FIELDS):
        _fail(TypeError, f"the index must be the {len(INDEX_FIELDS)} tensors "
                         f"{', '.join(INDEX_FIELDS)}, got {len(idx)}")
    for name, t in zip(INDEX_FIELDS, idx):
        _index_array(name, t, (device,))
    if idx[0].numel() < 1:
        _fail(ValueError, "row_ptr must have R+1 >= 1 entries (R block-rows)")
    if idx[2].numel() < 1:
        _fail(ValueError, "col_ptr must have C+1 >= 1 entries (C block-columns)")
    nnz = idx[1].numel()
    for name, t in zip(INDEX_FIELDS[3:], idx[3:]):
        if t.numel() != nnz:
            _fail(ValueError, f"{name} must have nnz = col_idx.numel() = {nnz} entries, got {t.numel()}")
    return idx[0].numel() - 1, idx[2].numel() - 1, nnz


def _features(what, n, grid, bname, b):
    """``in_features = 4 block-columns x b2 = 8``: where a number of columns comes from."""
    return f"{what} = {n} {grid} x {bname} = {b}"


def _dense(name, t, cols, what, device):
    """An activation ``[T, cols]`` on ``device``."""
    if t.device != device:
        _fail(ValueError, f"{name} must be on {device}, got {t.device}")
    if t.dim() != 2:
        _fail(ValueError, f"{name} must be 2-D [T, features], got {t.dim()}-D")
    if t.shape[1] != cols:
        _fail(ValueError, f"{name} must have {cols} columns ({what}), got {t.shape[1]}")


def _blocks(blocks, act, act_name, nnz):
    if blocks.device != act.device:
        _fail(ValueError, f"blocks must be on {act.device}, got {blocks.device}")
    if blocks.dim() != 3:
        _fail(ValueError, f"blocks must be 3-D [nnz, b1, b2], got {blocks.dim()}-D")
    if blocks.shape[0] != nnz:
        _fail(ValueError, f"blocks has {blocks.shape[0]} blocks but the index has {nnz}")
    if blocks.shape[1] <= 0 or blocks.shape[2] <= 0:
        _fail(ValueError, f"blocks must have positive block sizes, got {list(blocks.shape[1:])}")
    if blocks.dtype != act.dtype:
        _fail(TypeError, f"blocks ({blocks.dtype}) and {act_name} ({act.dtype}) must share a dtype")


def _block_size(name, b, t, tname, n, grid):
    """``b`` (b1 or b2 of bsmm_bwd_w) against the columns of ``t`` over ``n`` blocks."""
    if t.dim() == 2 and n >= 1 and not (t.shape[1] % n == 0 and t.shape[1] // n == b):
        _fail(ValueError, f"{name} = {b} does not match {tname}: {tname} has {t.shape[1]} columns "
                          f"for the index's {n} {grid} ({name} must be {tname}.size(1) / {n})")


def _human_bytes(b):
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0
    while b >= 1024 and i < len(units) - 1:
        b /= 1024
        i += 1
    return f"{b:.1f} {units[i]}" if i else f"{b:.0f} {units[i]}"


def _fits(name, t, out, rows, cols):
    """Before a CPU op allocates its ``[rows, cols]`` output ``out`` (and a copy of ``t`` if
    the kernels cannot read it in place): an error naming ``t`` when that cannot fit in this
    machine's memory."""
    if t.device.type != "cpu" or isinstance(rows, torch.SymInt) or isinstance(t.shape[0], torch.SymInt):
        return
    es = t.element_size()
    need = rows * cols * es + (0 if rows_ok(t) else t.numel() * es)
    if need > _PHYSICAL_MEMORY:
        _fail(ValueError, f"{name} has {t.shape[0]} rows: the output {out} [{rows}, {cols}] "
                          f"({t.dtype}) needs {_human_bytes(need)}, more than this machine's "
                          f"{_human_bytes(_PHYSICAL_MEMORY)} of memory")


def bsmm_args(op: str, act, other, idx, b1=None, b2=None):
    """Check the arguments of ``bsmm_fwd(x, blocks, *idx)``, ``bsmm_bwd_x(dy, blocks, *idx)``
    or ``bsmm_bwd_w(dy, x, *idx, b1, b2)`` (``op`` is the op's name)."""
    act_name = "x" if op == "bsmm_fwd" else "dy"
    other_name = "x" if op == "bsmm_bwd_w" else "blocks"
    _tensor(act_name, act)
    _tensor(other_name, other)
    _floating(act_name, act)
    R, C, nnz = _bsmm_index(idx, act.device)
    if op == "bsmm_bwd_w":
        dy, x = act, other
        _floating("x", x)
        for name, b in (("b1", b1), ("b2", b2)):
            if isinstance(b, torch.SymInt):   # traced (torch.compile dynamic shapes)
                continue
            if isinstance(b, bool) or not isinstance(b, int):
                _fail(TypeError, f"{name} must be an int, got {type(b).__name__}")
            if not 0 < b < 2 ** 63:
                _fail(ValueError, f"{name} must be a positive block size, got {b}")
        _block_size("b1", b1, dy, "dy", R, "block-rows")    # before R * b1 (it may not fit in 64 bits)
        _block_size("b2", b2, x, "x", C, "block-columns")
        _dense("dy", dy, R * b1, _features("out_features", R, "block-rows", "b1", b1), dy.device)
        _dense("x", x, C * b2, _features("in_features", C, "block-columns", "b2", b2), dy.device)
        if dy.shape[0] != x.shape[0]:
            _fail(ValueError, f"dy and x must have the same number of rows, got {dy.shape[0]} "
                              f"and {x.shape[0]}")
        if dy.dtype != x.dtype:
            _fail(TypeError, f"dy ({dy.dtype}) and x ({x.dtype}) must share a dtype")
        _fits("dy", dy, "dB", nnz, b1 * b2)
        _fits("x", x, "dB", nnz, b1 * b2)
        return
    _blocks(other, act, act_name, nnz)
    b1, b2 = other.shape[1], other.shape[2]
    if op == "bsmm_fwd":
        _dense("x", act, C * b2, _features("in_features", C, "block-columns", "b2", b2), act.device)
        _fits("x", act, "y", act.shape[0], R * b1)
    else:
        _dense("dy", act, R * b1, _features("out_features", R, "block-rows", "b1", b1), act.device)
        _fits("dy", act, "dx", act.shape[0], C * b2)


def bsmm_lowrank_args(op: str, act, blocks, idx, lr_a, lr_b, bias=None):
    """Check the arguments of ``bsmm_fwd_lowrank`` / ``bsmm_bwd_x_lowrank(act, blocks, *idx,
    lr_a, lr_b, bias)``: those of the plain op, then ``lr_a [T, r]``, ``lr_b [width, r]`` and
    ``bias [width]`` (``width``: the output's columns) in ``act``'s dtype and device."""
    plain = op[: -len("_lowrank")]
    bsmm_args(plain, act, blocks, idx)
    act_name = "x" if plain == "bsmm_fwd" else "dy"
    R, C = idx[0].shape[0] - 1, idx[2].shape[0] - 1
    width = R * blocks.shape[1] if plain == "bsmm_fwd" else C * blocks.shape[2]
    for name, t in (("lr_a", lr_a), ("lr_b", lr_b)) + ((("bias", bias),) if bias is not None else ()):
        _tensor(name, t)
        if t.device != act.device:
            _fail(ValueError, f"{name} must be on {act.device} ({act_name}'s device), got {t.device}")
        if t.dtype != act.dtype:
            _fail(TypeError, f"{name} ({t.dtype}) must have {act_name}'s dtype ({act.dtype})")
    if lr_a.dim() != 2 or lr_a.shape[0] != act.shape[0]:
        _fail(ValueError, f"lr_a must have shape [T = {act.shape[0]}, rank], got {list(lr_a.shape)}")
    if list(lr_b.shape) != [width, lr_a.shape[1]]:
        _fail(ValueError, f"lr_b must have shape [{width}, rank = {lr_a.shape[1]}] (the output's "
                          f"columns x lr_a's), got {list(lr_b.shape)}")
    if bias is not None and list(bias.shape) != [width]:
        _fail(ValueError, f"bias must have shape [{width}] (the output's columns), got {list(bias.shape)}")


# ------------------------------------------------------------------ block-sparse attention
_ATTN = "pixelfly.bsattn"


def _like_q(name, t, q):
    _tensor(name, t, _ATTN)
    if t.dim() not in (3, 4):
        _fail(ValueError, f"{name} must be 3-D [N, L, d] or 4-D [B, H, L, d], got {t.dim()}-D", _ATTN)
    if t.device != q.device:
        _fail(ValueError, f"{name} must be on {q.device}, got {t.device}", _ATTN)
    if t.dtype != q.dtype:
        _fail(TypeError, f"{name} ({t.dtype}) must have q's dtype ({q.dtype})", _ATTN)
    if t.shape != q.shape:
        _fail(ValueError, f"{name} must have q's shape {list(q.shape)}, got {list(t.shape)}", _ATTN)


def attention_args(q, k, v, idx, block, scale, features=None, key_mask=None):
    """Check the arguments of ``bsattn_fwd(q, k, v, *idx, block, scale, causal, features,
    key_mask)``; returns the number of block-rows ``R = L / block``. The index may live on the
    CPU (the module's index) or on q's device."""
    _tensor("q", q, _ATTN)
    if not (q.is_floating_point() and q.dtype.itemsize >= 2):
        _fail(TypeError, f"q must be float16, bfloat16, float32 or float64, got {q.dtype}", _ATTN)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _like_q(name, t, q)
    L, d = q.shape[-2], q.shape[-1]
    if block <= 0:
        _fail(ValueError, f"block must be positive, got {block}", _ATTN)
    if L <= 0 or L % block:
        _fail(ValueError, f"the sequence length L = q.size(-2) = {L} must be a positive "
                          f"multiple of block = {block}", _ATTN)
    if d <= 0:
        _fail(ValueError, "the head dim d = q.size(-1) must be positive", _ATTN)
    if not math.isfinite(scale):
        _fail(ValueError, f"scale must be finite, got {scale}", _ATTN)
    R = L // block
    if features is not None:
        _tensor("features", features, _ATTN)
        if features.dim() != 2 or features.shape[1] != d or not features.is_floating_point():
            _fail(ValueError, f"features must be a floating-point [r, d = {d}] tensor, got "
                              f"{features.dtype} {list(features.shape)}", _ATTN)
        if features.device != q.device:
            _fail(ValueError, f"features must be on {q.device} (q's device), got {features.device}", _ATTN)
        if features.shape[0] and scale < 0:
            _fail(ValueError, f"scale must be >= 0 with features (they use sqrt(scale)), got {scale}", _ATTN)
    if key_mask is not None:
        _tensor("key_mask", key_mask, _ATTN)
        rows = q.shape[0]
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (rows, L):
            _fail(ValueError, f"key_mask must be a bool tensor of shape [{rows}, {L}] (q's batch, L), "
                              f"got {key_mask.dtype} {list(key_mask.shape)}", _ATTN)
        if key_mask.device != q.device:
            _fail(ValueError, f"key_mask must be on {q.device} (q's device), got {key_mask.device}", _ATTN)
    if len(idx) != len(ATTENTION_INDEX_FIELDS):
        _fail(TypeError, f"the index must be the {len(ATTENTION_INDEX_FIELDS)} tensors "
                         f"{', '.join(ATTENTION_INDEX_FIELDS)}, got {len(idx)}", _ATTN)
    devices = (torch.device("cpu"),) if q.device.type == "cpu" else (torch.device("cpu"), q.device)
    for name, t in zip(ATTENTION_INDEX_FIELDS, idx):
        _index_array(name, t, devices, _ATTN)
    for name, t in (("row_ptr", idx[0]), ("col_ptr", idx[2])):
        if t.numel() != R + 1:
            _fail(ValueError, f"{name} must have {R + 1} entries (L/block + 1), got {t.numel()}", _ATTN)
    if idx[3].numel() != idx[1].numel():
        _fail(ValueError, f"row_idx must have {idx[1].numel()} entries (nnz = col_idx.numel()), "
                          f"got {idx[3].numel()}", _ATTN)
    return R


def attention_bwd_args(dout, dlse, q, out, lse):
    """Check what ``bsattn_bwd`` takes beyond ``bsattn_fwd``'s arguments (checked with
    :func:`attention_args`): ``dout`` and ``out`` like q, ``lse`` and ``dlse`` (may be None)
    of shape ``q.shape[:-1]`` in float32 (float64 for float64 q)."""
    _like_q("dout", dout, q)
    _like_q("out", out, q)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse_shape = tuple(q.shape[:-1])
    for name, t in (("lse", lse), ("dlse", dlse)):
        if t is None:
            continue
        _tensor(name, t, _ATTN)
        if t.device != q.device:
            _fail(ValueError, f"{name} must be on {q.device}, got {t.device}", _ATTN)
        if t.dtype != ct:
            _fail(TypeError, f"{name} must be {ct} for q of dtype {q.dtype}, got {t.dtype}", _ATTN)
        if tuple(t.shape) != lse_shape:
            _fail(ValueError, f"{name} must have shape {list(lse_shape)}, got {list(t.shape)}", _ATTN)
