"""Input checks shared by every op: each error names the argument and what was expected."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = True,
) -> torch.Tensor:
    """Raise a ValueError naming ``name`` when ``t`` is not a tensor of the expected rank/shape.

    ``shape`` entries of None match any size.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape, strict=False)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return t


def check_same(names_tensors: Iterable[tuple[str, torch.Tensor | None]], *, dtype: bool = True) -> None:
    """Raise when the tensors are on different devices or (if ``dtype``) have different dtypes."""
    items = [(n, t) for n, t in names_tensors if t is not None]
    if not items:
        return
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {t0.device}; all inputs must be on one device")
        if dtype and t.dtype != t0.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {n0} has {t0.dtype}; all inputs must share one dtype")


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (any integral type, bools refused), else a
    ValueError naming ``name``, the allowed range and the value."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an int {allowed}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: object) -> float:
    """``value`` as a finite float > 0 (an epsilon, a RoPE base, a scale factor), else a
    ValueError naming ``name``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not (0 < float(value) < math.inf):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def square_root(n: int) -> int | None:
    """The side G of a perfect square n = G*G (G >= 1), else None. A symbolic size (torch.compile
    with dynamic shapes) is specialised: the grid's side sets the position table's shape."""
    n = int(n)
    if n < 1:
        return None
    side = int(n**0.5)  # not math.isqrt: torch.compile cannot trace it; exact after the fix-ups
    while side * side > n:
        side -= 1
    while (side + 1) * (side + 1) <= n:
        side += 1
    return side if side * side == n else None


def square_side(n: int, name: str) -> int:
    """sqrt(n) for a perfect square n >= 1, else a ValueError naming ``name``."""
    side = square_root(n)
    if side is None:
        raise ValueError(f"{name}: expected a square number (G*G for a G x G grid), got {n}")
    return side


#: CUDA's launch limits (every GPU since sm_30): grid axis x takes 2^31 - 1 blocks, y and z 65,535.
MAX_GRID = (2**31 - 1, 65535, 65535)


def check_grid(kernel: str, grid: Sequence[int]) -> tuple[int, ...]:
    """``grid`` as a tuple when every axis fits :data:`MAX_GRID`, else a ValueError naming the
    kernel, the axis and both sizes (raised before a launch that a GPU would refuse)."""
    for axis, (n, limit) in enumerate(zip(grid, MAX_GRID, strict=False)):
        if n > limit:
            raise ValueError(
                f"{kernel}: grid axis {'xyz'[axis]} needs {n} blocks, more than the GPU's {limit}; "
                "split the batch into smaller calls"
            )
    return tuple(int(n) for n in grid)
