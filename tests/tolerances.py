"""Tolerances derived from the dtype and the computation, for tests that compare float32 results summed in
different orders (or against a float64 reference).

A sum of n terms rounded at ``eps`` (one rounding per addition, any order) is within ``gamma * sum|x_i|``
of the exact sum, with ``gamma = n * eps`` in the worst case (Higham, Accuracy and Stability of Numerical
Algorithms, 2002, sec. 4.2) and ``gamma = lambda * sqrt(n) * eps / 2`` with probability at least
``1 - 2n exp(-lambda**2 / 2)`` when the rounding errors are independent (Higham & Mary, SIAM J. Sci. Comput.
2019). With lambda = 8 that probability is 1 - 1e-10 for n up to 10**4.
"""

from __future__ import annotations

import math

EPS32 = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps = 2**-23
EPS64 = 2.220446049250313e-16  # 2**-52


def sum_rtol(n: int, eps: float = EPS32) -> float:
    """Relative error bound of a sum of ``n`` same-sign terms rounded at ``eps`` (the bound is relative to
    ``sum|x_i|`` for mixed signs): the smaller of ``n * eps`` and ``4 * sqrt(n) * eps`` (lambda = 8).

    For example ``sum_rtol(256)`` = 64 eps32 ~ 7.6e-6 and ``sum_rtol(4096)`` = 256 eps32 ~ 3.1e-5."""
    if n < 1:
        raise ValueError(f"n={n} summed terms must be >= 1")
    return min(n, 4 * math.sqrt(n)) * eps
