"""Chinchilla parametric law L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al. 2022, approach 3)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ._lse import E_GRID, EXPONENT_GRID, SCALE_GRID, LSEProblem, bootstrap_lse, fit_lse
from ._validate import as_1d, check_range, same_length


def hoffmann_grid() -> np.ndarray:
    """The initialisation grid of Hoffmann et al.: rows (a, b, e, alpha, beta); 6*6*5*5*5 = 4500 points."""
    return np.array(list(itertools.product(SCALE_GRID, SCALE_GRID, E_GRID, EXPONENT_GRID, EXPONENT_GRID)))


def _terms(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    a, b, e, al, be = (theta[..., k, None] for k in range(5))  # (..., 1)
    ln, ld = log_x[:, 0], log_x[:, 1]  # (n,)
    e_full = np.broadcast_to(e, np.broadcast_shapes(e.shape, ln.shape))
    return np.stack([a - al * ln, b - be * ld, e_full], axis=-1)  # (..., n, 3)


def _jac(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    n = len(log_x)
    j = np.zeros((n, 3, 5))  # d term_j / d (a, b, e, alpha, beta)
    j[:, 0, 0] = 1.0
    j[:, 0, 3] = -log_x[:, 0]
    j[:, 1, 1] = 1.0
    j[:, 1, 4] = -log_x[:, 1]
    j[:, 2, 2] = 1.0
    return j


@dataclass(frozen=True)
class ChinchillaFit:
    """Fitted ``L(N, D) = E + A / N**alpha + B / D**beta``.

    ``objective`` is the Huber sum at the optimum; ``n_starts`` the BFGS starts actually run;
    ``ci`` maps each parameter name to its (low, high) bootstrap interval when requested.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    n_starts: int
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    draws: tuple[tuple[float, ...], ...] = field(default=(), repr=False)
    """Bootstrap parameter draws (E, A, B, alpha, beta) when requested: joint intervals of derived quantities
    (``optimal_interval``)."""

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        """Loss at parameters ``N`` and tokens ``D`` (broadcasting)."""
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return self.E + self.A * N ** (-self.alpha) + self.B * D ** (-self.beta)

    def optimal_interval(self, C: float, flops_per_token=None) -> dict[str, tuple[float, float]]:
        """90% intervals (5% / 95% quantiles over the bootstrap draws) of N_opt, D_opt and L_opt at ``C`` FLOPs
        (``optimal``, or ``optimal_under`` with ``flops_per_token``); draws without a finite optimum are skipped.
        Needs ``fit_chinchilla(..., n_bootstrap > 0)``."""
        if not self.draws:
            raise ValueError("optimal_interval needs bootstrap draws: fit with n_bootstrap > 0 (got 0)")
        vals = []
        for E, A, B, alpha, beta in self.draws:
            if np.all(np.isfinite([E, A, B, alpha, beta])) and min(A, B, alpha, beta) > 0:
                d = ChinchillaFit(E, A, B, alpha, beta, objective=0.0, n_points=0, n_starts=0)
                with np.errstate(all="ignore"):
                    try:
                        opt = d.optimal(C) if flops_per_token is None else d.optimal_under(C, flops_per_token)
                    except ValueError:  # no optimum in the scanned range: skipped like an infinite one
                        continue
                    vals.append([float(v) for v in opt])
        v = np.array(vals).reshape(-1, 3)
        v = v[np.all(np.isfinite(v), axis=1)]
        if not len(v):
            raise ValueError("no bootstrap draw has a finite compute-optimum (alpha, beta, A, B > 0)")
        lo, hi = np.quantile(v, [0.05, 0.95], axis=0)
        return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(("N", "D", "L"))}

    def optimal(self, C: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compute-optimal allocation for C = 6 N D FLOPs: returns (N_opt, D_opt, L_opt).

        N_opt = G (C/6)**(beta/(alpha+beta)), D_opt = (C/6)**(alpha/(alpha+beta)) / G,
        G = (alpha A / (beta B))**(1/(alpha+beta)).
        """
        C = np.asarray(C, dtype=np.float64)
        if np.any(~(C > 0)):
            raise ValueError(f"C={C} must be > 0")
        if self.alpha <= 0 or self.beta <= 0 or self.A <= 0 or self.B <= 0:
            raise ValueError(
                f"no finite compute-optimum: alpha={self.alpha}, beta={self.beta}, A={self.A}, B={self.B} must all be > 0"
            )
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        n_opt = g * (C / 6.0) ** (self.beta / s)
        d_opt = (C / 6.0) ** (self.alpha / s) / g
        return n_opt, d_opt, self.predict(n_opt, d_opt)

    def optimal_under(
        self, C: np.ndarray | float, flops_per_token, *, n_range: tuple[float, float] = (1e3, 1e13)
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compute-optimal allocation for a budget of ``C`` real FLOPs = ``flops_per_token(N) * D``: (N_opt, D_opt,
        L_opt) minimising L(N, C / flops_per_token(N)).

        ``optimal`` assumes C = 6 N D; at small N the LM head and attention make a token cost much more than
        6 N FLOPs, which moves the optimum to larger N, and an IsoFLOP sweep's budgets are real FLOPs: this is
        the frontier that goes through its optima. Found on a log-N grid of 4001 points over ``n_range``
        (0.8% apart) refined by a parabola through the best point and its neighbours; ValueError when the
        minimum is at an end of the range (no interior optimum) or the law has none (alpha, beta, A, B > 0)."""
        if self.alpha <= 0 or self.beta <= 0 or self.A <= 0 or self.B <= 0:
            raise ValueError(
                f"no finite compute-optimum: alpha={self.alpha}, beta={self.beta}, A={self.A}, B={self.B} must all be > 0"
            )
        Cs = np.atleast_1d(np.asarray(C, dtype=np.float64))
        if np.any(~(Cs > 0)):
            raise ValueError(f"C={C} must be > 0")
        ln = np.linspace(np.log(n_range[0]), np.log(n_range[1]), 4001)
        n_grid = np.exp(ln)
        f = np.asarray(flops_per_token(n_grid), dtype=np.float64)
        if f.shape != n_grid.shape or np.any(~(f > 0)):
            raise ValueError("flops_per_token(N) must give a positive number for every N")
        out = np.empty((3, len(Cs)))
        for i, c in enumerate(Cs):
            loss = self.predict(n_grid, c / f)
            k = int(np.argmin(loss))
            if k in (0, len(ln) - 1):
                raise ValueError(
                    f"no compute-optimum for C={c:.3g} within N in [{n_range[0]:.0e}, {n_range[1]:.0e}]"
                )
            y0, y1, y2 = loss[k - 1 : k + 2]
            den = y0 - 2 * y1 + y2
            shift = 0.5 * (y0 - y2) / den if den > 0 else 0.0  # vertex, in grid steps from k
            n_opt = float(np.exp(ln[k] + np.clip(shift, -1, 1) * (ln[1] - ln[0])))
            d_opt = c / float(np.asarray(flops_per_token(np.array([n_opt])), dtype=np.float64)[0])
            out[:, i] = n_opt, d_opt, float(self.predict(n_opt, d_opt))
        if np.ndim(C) == 0:
            return out[0, 0], out[1, 0], out[2, 0]
        return out[0], out[1], out[2]


_NAMES = ("A", "B", "E", "alpha", "beta")


def _to_natural(theta: np.ndarray) -> np.ndarray:
    # (..., 5) rows (a, b, e, alpha, beta) -> (A, B, E, alpha, beta)
    out = np.array(theta, dtype=np.float64, copy=True)
    out[..., :3] = np.exp(out[..., :3])
    return out


def fit_chinchilla(
    N: np.ndarray,
    D: np.ndarray,
    loss: np.ndarray,
    *,
    delta: float = 1e-3,
    n_best: int | None = 8,
    n_bootstrap: int = 0,
    confidence: float = 0.9,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> ChinchillaFit:
    """Fit ``L(N, D) = E + A / N**alpha + B / D**beta`` by Hoffmann et al.'s approach 3.

    Parametrisation ``A = exp(a), B = exp(b), E = exp(e)``;
    objective ``sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)``, minimised by
    BFGS with the analytic gradient. The full Hoffmann grid (4500 points, see ``hoffmann_grid``) is
    scored in one vectorised call; BFGS then runs from the ``n_best`` best grid points plus the best
    point of every (alpha, beta) pair (33 starts by default). ``n_best=None`` runs all 4500 starts.

    ``n_bootstrap > 0`` adds case-resampling bootstrap intervals (``confidence`` two-sided) in ``ci``.
    ``weights`` (one per point, > 0, default 1) scale each point's Huber term: a predicted final loss with
    an interval counts less than an observed one (``point_weights``).
    """
    N = as_1d("N", N, positive=True)
    D = as_1d("D", D, positive=True)
    loss = as_1d("loss", loss, positive=True)
    n = same_length(N=N, D=D, loss=loss)
    w = np.ones(n) if weights is None else as_1d("weights", weights, positive=True)
    if len(w) != n:
        raise ValueError(f"len(weights)={len(w)} != len(loss)={n}; one weight per point is needed")
    if n < 5:
        raise ValueError(f"len(N)={n} points cannot determine 5 parameters; at least 5 are needed")
    for name, x, term, what in (
        ("N", N, "A / N**alpha", "model sizes"),
        ("D", D, "B / D**beta", "token budgets"),
    ):
        if np.ptp(np.log(x)) < 1e-9:  # one value: the term is a constant beside E, any (A, alpha) fits
            raise ValueError(
                f"all {n} points have {name} = {x[0]:.6g}: the term {term} is a constant next to E and cannot be "
                f"fitted; the law needs points at >= 2 {what}"
            )
    check_range("delta", delta, 0.0, np.inf, lo_open=True)
    check_range("confidence", confidence, 0.0, 1.0, lo_open=True, hi_open=True)
    if n_best is not None and n_best < 1:
        raise ValueError(f"n_best={n_best} must be >= 1 or None (all grid points)")
    problem = LSEProblem(np.column_stack([np.log(N), np.log(D)]), np.log(loss), w, delta, _terms, _jac)
    grid = hoffmann_grid()
    theta, f, idx = fit_lse(problem, grid, shape_cols=[3, 4], n_best=n_best)
    with np.errstate(over="ignore"):
        nat = _to_natural(theta)
    if not np.all(np.isfinite(nat)):  # exp overflowed: a term's amplitude ran off with its exponent
        bad = ", ".join(f"{k}={v:.4g}" for k, v in zip(_NAMES, nat))
        raise FloatingPointError(
            f"the Chinchilla fit over {n} points diverged ({bad}): a term's amplitude and exponent grew without "
            "bound, i.e. these points do not identify it; add points at other model sizes or token budgets"
        )
    ci: dict[str, tuple[float, float]] = {}
    if n_bootstrap > 0:
        draws = _to_natural(bootstrap_lse(problem, theta, grid[idx], n_bootstrap=n_bootstrap, seed=seed))
        q = (1 - confidence) / 2
        # a refit that failed (nan) is left out; an unbounded one (inf) stays
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanquantile(draws, [q, 1 - q], axis=0)
        hi = np.where(np.isnan(hi) & np.any(np.isposinf(draws), axis=0), np.inf, hi)
        ci = {name: (float(lo[k]), float(hi[k])) for k, name in enumerate(_NAMES)}
    return ChinchillaFit(
        E=float(nat[2]),
        A=float(nat[0]),
        B=float(nat[1]),
        alpha=float(nat[3]),
        beta=float(nat[4]),
        objective=f,
        n_points=n,
        n_starts=len(idx),
        ci=ci,
        draws=tuple(tuple(float(x) for x in d[[2, 0, 1, 3, 4]]) for d in draws) if n_bootstrap > 0 else (),
    )
