"""Input checks shared by the fits: every error names the argument, the offending value and the allowed range."""

from __future__ import annotations

import numpy as np


def as_1d(
    name: str, x: object, *, positive: bool = False, finite: bool = True, min_len: int = 1
) -> np.ndarray:
    """Return ``x`` as a float64 1-D array, raising ``ValueError`` that names ``name`` on bad input."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_len:
        raise ValueError(f"{name} has {arr.size} entries; at least {min_len} are needed")
    if finite:
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name}[{i}]={arr[i]} must be finite")
    if positive:
        bad = np.flatnonzero(~(arr > 0))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name}[{i}]={arr[i]} must be > 0")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    """Check that all arrays have one length and return it."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"len({k})={n}" for k, n in lengths.items())
        raise ValueError(f"lengths differ: {desc}; all must be equal")
    return next(iter(lengths.values()))


def check_range(
    name: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """Check ``lo <= value <= hi`` (open ends on request) and return ``value`` as float."""
    v = float(value)
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (np.isfinite(v) and ok_lo and ok_hi):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name}={value} must be in {lb}{lo}, {hi}{rb}")
    return v
