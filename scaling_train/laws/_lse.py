"""Shared machinery of the log-sum-exp power-law fits (Hoffmann et al. 2022, approach 3).

The law ``L = E + sum_j exp(c_j) * prod_k X_k ** (-p_jk)`` is fitted in log space:
``log L_hat = LSE(c_1 - p_1 . log X, ..., e)`` and the loss is ``sum_i Huber_delta(log L_hat_i - log L_i)``.
Each concrete law supplies ``terms(theta, logX) -> (..., n, J)`` (the exponent of each LSE term) and the
Jacobian ``dterms/dtheta`` so that the objective and its gradient are exact and vectorised over a batch
of parameter vectors (the whole initialisation grid is scored in one numpy call).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

# The initialisation grid of Hoffmann et al. 2022, one axis per kind of parameter; each law takes the
# product of the axes it needs (``chinchilla.hoffmann_grid``: 6*6*5*5*5 = 4500 rows).
SCALE_GRID = np.arange(0.0, 25.01, 5.0)  # a, b = log A, log B in {0, 5, ..., 25}
E_GRID = np.arange(-1.0, 1.01, 0.5)  # e = log E in {-1, -.5, ..., 1}
EXPONENT_GRID = np.arange(0.0, 2.01, 0.5)  # alpha, beta, eta in {0, .5, ..., 2}

TermsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (theta (..., P), logX (n, K)) -> (..., n, J)
JacFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (theta (P,), logX (n, K)) -> (n, J, P)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Elementwise Huber loss: r**2/2 for |r| <= delta, else delta*(|r| - delta/2)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def lse_softmax(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-sum-exp over the last axis, softmax over it), shifted by the row maximum. Plain numpy: for the
    few points of a law fit, scipy.special.logsumexp's per-call overhead was ~2/3 of the objective's time."""
    m = np.max(t, axis=-1, keepdims=True)
    e = np.exp(t - m)
    s = np.sum(e, axis=-1, keepdims=True)
    return (m + np.log(s))[..., 0], e / s


@dataclass(frozen=True)
class LSEProblem:
    """One Huber/LSE objective: data in log space plus the law's term function and Jacobian."""

    log_x: np.ndarray  # (n, K) log of the covariates
    log_y: np.ndarray  # (n,) log of the observed loss
    weights: np.ndarray  # (n,) per-point weight (1 for a plain fit, bootstrap counts otherwise)
    delta: float
    terms: TermsFn
    jac: JacFn

    def objective_batch(self, thetas: np.ndarray) -> np.ndarray:
        """Objective at many parameter vectors at once: thetas (G, P) -> (G,)."""
        t = self.terms(thetas, self.log_x)  # (G, n, J)
        r = lse_softmax(t)[0] - self.log_y  # (G, n)
        return (huber(r, self.delta) * self.weights).sum(axis=-1)

    def objective_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = self.terms(theta, self.log_x)  # (n, J)
        lse, w = lse_softmax(t)  # w (n, J) = d lse / d t
        r = lse - self.log_y
        dr = np.clip(r, -self.delta, self.delta) * self.weights  # d huber / d r
        grad = np.einsum("n,nj,njp->p", dr, w, self.jac(theta, self.log_x))
        return float((huber(r, self.delta) * self.weights).sum()), grad


def _bfgs(problem: LSEProblem, theta0: np.ndarray, *, gtol: float, maxiter: int) -> tuple[np.ndarray, float]:
    # Dense BFGS (exact quasi-Newton for <= 5 parameters). scipy's L-BFGS-B (C port since 1.15) was
    # ~10x slower here on a 2-core machine under load: its BLAS calls oversubscribe OpenBLAS threads.
    # scale the objective to O(1) so the gradient tolerance is meaningful
    scale = 1.0 / (problem.delta * max(float(problem.weights.sum()), 1.0))

    def fun(th: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = problem.objective_and_grad(th)
        return f * scale, g * scale

    res = minimize(fun, theta0, jac=True, method="BFGS", options={"maxiter": maxiter, "gtol": gtol})
    return res.x, float(res.fun) / scale


def select_starts(problem: LSEProblem, grid: np.ndarray, shape_cols: list[int], n_best: int) -> np.ndarray:
    """Prune the initialisation grid: the ``n_best`` best points overall plus, for every distinct value
    of the exponent columns ``shape_cols``, the best point with those exponents (so every exponent basin
    is still explored). Returns indices into ``grid``."""
    f = problem.objective_batch(grid)  # (G,) one vectorised call over the whole grid
    chosen = set(np.argsort(f, kind="stable")[:n_best].tolist())
    keys = grid[:, shape_cols]
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for g in range(int(inverse.max()) + 1):
        idx = np.flatnonzero(inverse == g)
        chosen.add(int(idx[np.argmin(f[idx])]))
    return np.array(sorted(chosen))


def multistart(problem: LSEProblem, starts: np.ndarray, *, n_polish: int = 3) -> tuple[np.ndarray, float]:
    """BFGS from every row of ``starts`` with a loose tolerance, then the ``n_polish`` best results
    are polished to a tight tolerance; returns the best (theta, objective)."""
    rough = [_bfgs(problem, x0, gtol=1e-6, maxiter=200) for x0 in starts]
    order = np.argsort([f for _, f in rough])[:n_polish]
    best_x, best_f = starts[0], np.inf
    for i in order:
        x, f = _bfgs(problem, rough[i][0], gtol=1e-11, maxiter=2000)
        if f < best_f:
            best_x, best_f = x, f
    return best_x, best_f


def fit_lse(
    problem: LSEProblem, grid: np.ndarray, *, shape_cols: list[int], n_best: int | None
) -> tuple[np.ndarray, float, np.ndarray]:
    """Global fit: score the grid, keep the pruned starts (all of them when ``n_best`` is None), refine.

    Returns (theta, objective, start indices used)."""
    idx = np.arange(len(grid)) if n_best is None else select_starts(problem, grid, shape_cols, n_best)
    theta, f = multistart(problem, grid[idx])
    return theta, f, idx


def bootstrap_lse(
    problem: LSEProblem, theta: np.ndarray, starts: np.ndarray, *, n_bootstrap: int, seed: int
) -> np.ndarray:
    """Case-resampling bootstrap (multinomial weights); each replicate refits from the full-data optimum
    and the pruned starts. Returns (n_bootstrap, P) parameter draws."""
    rng = np.random.default_rng(seed)
    n = len(problem.log_y)
    draws = np.empty((n_bootstrap, len(theta)))
    for b in range(n_bootstrap):
        w = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64) * problem.weights
        p = LSEProblem(problem.log_x, problem.log_y, w, problem.delta, problem.terms, problem.jac)
        # one polish: the replicate's best rough start (the full-data optimum, mostly); polishing the next two
        # as well cost 30% of the bootstrap and left the quickstart's 20-replicate intervals identical
        draws[b], _ = multistart(p, np.vstack([theta[None], starts[:4]]), n_polish=1)
    return draws
