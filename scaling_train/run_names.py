"""Run names: built by the sweep planner, read back by the report and anyone with a sweep folder.

    N2.2e5-D1.1e6-B16-lr3e-3-s0-1a2b3c4d   non-embedding N, tokens D, global batch B, peak LR, seed, config hash

One module for both directions, below every package that reads run folders (no training code: the report
and the fitter may import it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def fmt_e(x: float, digits: int = 1) -> str:
    """3.2e7 style: ``f"{x:.1e}"`` without '+', zero padding or a trailing '.0'."""
    m, ex = f"{x:.{digits}e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return f"{m}e{int(ex)}"


NAME_RE = re.compile(
    r"^N(?P<N>[0-9.]+e-?\d+)-D(?P<D>[0-9.]+e-?\d+)-B(?P<B>\d+)-lr(?P<lr>[0-9.]+e-?\d+)-s(?P<seed>\d+)-(?P<hash>[0-9a-f]{8})$"
)


def run_name(*, n_params: float, tokens: float, batch_size: int, lr: float, seed: int, cfg_hash: str) -> str:
    return f"N{fmt_e(n_params)}-D{fmt_e(tokens)}-B{batch_size}-lr{fmt_e(lr)}-s{seed}-{cfg_hash}"


def parse_run_name(name: str) -> dict[str, Any]:
    """``'N2.2e5-D1.1e6-B16-lr3e-3-s0-1a2b3c4d'`` -> {N: 2.2e5, D: 1.1e6, B: 16, lr: 3e-3, seed: 0, hash}."""
    m = NAME_RE.match(Path(name).name)
    if not m:
        raise ValueError(f"{name!r} is not a sweep run name like 'N2.2e5-D1.1e6-B16-lr3e-3-s0-1a2b3c4d'")
    g = m.groupdict()
    return {
        "N": float(g["N"]),
        "D": float(g["D"]),
        "B": int(g["B"]),
        "lr": float(g["lr"]),
        "seed": int(g["seed"]),
        "hash": g["hash"],
    }
