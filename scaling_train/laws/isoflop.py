"""IsoFLOP analysis (Hoffmann et al. 2022, approach 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_1d, same_length


@dataclass(frozen=True)
class IsoFLOPParabola:
    """One FLOP budget: ``L(log N) = c2 (log N)**2 + c1 log N + c0`` and its minimum."""

    C: float
    c2: float
    c1: float
    c0: float
    N_opt: float
    D_opt: float
    L_opt: float
    n_points: int


@dataclass(frozen=True)
class IsoFLOPFit:
    """Power laws through the per-budget optima: ``N_opt = coef_n C**a``, ``D_opt = coef_d C**b``."""

    parabolas: tuple[IsoFLOPParabola, ...]
    a: float
    coef_n: float
    b: float
    coef_d: float

    def predict_N_opt(self, C: np.ndarray | float) -> np.ndarray:
        return self.coef_n * np.asarray(C, dtype=np.float64) ** self.a

    def predict_D_opt(self, C: np.ndarray | float) -> np.ndarray:
        return self.coef_d * np.asarray(C, dtype=np.float64) ** self.b


def _group_budgets(C: np.ndarray, rtol: float) -> np.ndarray:
    # budgets within a relative tolerance share a group: sort log C and split at gaps > log(1 + rtol)
    order = np.argsort(C)
    gaps = np.diff(np.log(C[order])) > np.log1p(rtol)
    labels_sorted = np.concatenate([[0], np.cumsum(gaps)])
    labels = np.empty(len(C), dtype=np.int64)
    labels[order] = labels_sorted
    return labels


def fit_isoflop(
    N: np.ndarray,
    D: np.ndarray,
    loss: np.ndarray,
    *,
    compute: np.ndarray | None = None,
    rtol: float = 0.05,
    min_points: int = 3,
) -> IsoFLOPFit:
    """IsoFLOP analysis. Runs are grouped by FLOP budget (``compute`` if given, else C = 6 N D; budgets
    within ``rtol`` relative difference are one group). Per budget a parabola in log N is fitted to the
    loss; its vertex gives N_opt (and D_opt = C / (6 N_opt)). A least-squares line through
    (log C, log N_opt) and (log C, log D_opt) gives ``N_opt ∝ C**a`` and ``D_opt ∝ C**b``.

    Budgets with fewer than ``min_points`` runs, runs at fewer than 3 distinct sizes, or an upward-open
    parabola whose vertex lies outside the sampled N range are rejected with an error naming the budget
    (an optimum outside the sweep is an extrapolation the analysis cannot support)."""
    N = as_1d("N", N, positive=True)
    D = as_1d("D", D, positive=True)
    loss = as_1d("loss", loss, positive=True)
    same_length(N=N, D=D, loss=loss)
    C = 6.0 * N * D if compute is None else as_1d("compute", compute, positive=True)
    same_length(N=N, compute=C)
    if min_points < 3:
        raise ValueError(f"min_points={min_points} must be >= 3 (a parabola has 3 coefficients)")
    labels = _group_budgets(C, rtol)
    parabolas = []
    for g in range(int(labels.max()) + 1):
        m = labels == g
        c = float(np.exp(np.mean(np.log(C[m]))))
        if m.sum() < min_points:
            raise ValueError(
                f"budget C={c:.3g} has {int(m.sum())} runs; at least min_points={min_points} are needed"
            )
        x = np.log(N[m])
        sizes = np.unique(np.round(x, 9))
        if len(sizes) < 3:
            raise ValueError(
                f"budget C={c:.3g} has runs at {len(sizes)} distinct size(s) "
                f"({', '.join(f'{v:.3g}' for v in np.exp(sizes))}); a parabola in log N needs >= 3"
            )
        xm = float(np.mean(x))  # centred: the fit is well conditioned however large N is
        k2, k1, k0 = np.polyfit(x - xm, loss[m], 2)
        c2, c1, c0 = k2, k1 - 2 * k2 * xm, k0 - k1 * xm + k2 * xm * xm
        if c2 <= 0:
            raise ValueError(f"budget C={c:.3g}: parabola curvature c2={c2:.3g} must be > 0 (no minimum)")
        x_opt = -c1 / (2 * c2)
        if not (x.min() <= x_opt <= x.max()):
            raise ValueError(
                f"budget C={c:.3g}: N_opt={np.exp(x_opt):.3g} lies outside the sampled N range "
                f"[{np.exp(x.min()):.3g}, {np.exp(x.max()):.3g}]; extend the sweep"
            )
        n_opt = float(np.exp(x_opt))
        parabolas.append(
            IsoFLOPParabola(
                C=c, c2=float(c2), c1=float(c1), c0=float(c0), N_opt=n_opt, D_opt=c / (6.0 * n_opt),
                L_opt=float(c0 - c1 * c1 / (4 * c2)), n_points=int(m.sum()),
            )
        )  # fmt: skip
    if len(parabolas) < 2:
        raise ValueError(f"found {len(parabolas)} FLOP budget(s); at least 2 are needed for N_opt ∝ C**a")
    lc = np.log([p.C for p in parabolas])
    a, ln_kn = np.polyfit(lc, np.log([p.N_opt for p in parabolas]), 1)
    b, ln_kd = np.polyfit(lc, np.log([p.D_opt for p in parabolas]), 1)
    return IsoFLOPFit(
        tuple(parabolas), a=float(a), coef_n=float(np.exp(ln_kn)), b=float(b), coef_d=float(np.exp(ln_kd))
    )
