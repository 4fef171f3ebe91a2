"""Checks of user arguments, written once: every public function validates what it is given
with these, at the call, naming the argument as the user wrote it (``TypeError`` for a wrong
type, ``bool`` included; ``ValueError`` for a value out of range). Torch-free."""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["is_int", "is_real", "check_int", "check_real", "block_pair", "check_budget",
           "check_low_rank_fraction"]

INT64_MAX = 2 ** 63 - 1
_HI_WHY = {2 ** 20: "2**20, the longest side of a block grid", 2 ** 30: "2**30"}


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def check_int(name: str, value, lo: int | None = None, hi: int | None = INT64_MAX) -> int:
    """``value`` as a Python int in ``[lo, hi]`` (``hi`` defaults to the int64 range the C
    core takes; ``None``: any size, for arguments the C core range-checks itself, naming
    them)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is None:
        return value
    if value < -2 ** 63:
        raise ValueError(f"{name} must be >= -2**63, got {value}")
    if value > hi:
        why = f" ({_HI_WHY[hi]})" if hi in _HI_WHY else ""
        raise ValueError(f"{name} must be <= {hi}{why}, got {value}")
    return value


def check_real(name: str, value) -> float:
    """``value`` as a float (any real number but a bool)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


def block_pair(block, name: str = "block_size") -> tuple[int, int]:
    """``block`` (an int or a pair of ints, each >= 1) as ``(b1, b2)``."""
    if is_int(block):
        pair = (int(block), int(block))
    elif isinstance(block, (tuple, list)) and len(block) == 2 and all(is_int(b) for b in block):
        pair = (int(block[0]), int(block[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (b1, b2), got {block!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {block!r}")
    return pair


def check_budget(budget, name: str = "budget") -> float:
    """``rho`` in ``(0, 1]`` (SPEC 3)."""
    rho = check_real(name, budget)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {budget!r}")
    return rho


def check_low_rank_fraction(phi, name: str = "low_rank_fraction") -> float:
    """``phi`` in ``[1/4, 1/3]`` (SPEC 3), with a 1e-9 tolerance for rounded inputs."""
    v = check_real(name, phi)
    if not (0.25 - 1e-9 <= v <= 1 / 3 + 1e-9) or math.isnan(v):
        raise ValueError(f"{name} must be in [1/4, 1/3], got {phi!r}")
    return v
