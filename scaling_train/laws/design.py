"""Which planned run to train next: the one that most reduces the uncertainty of the law's prediction at a
target compute, per FLOP it costs (a greedy c-optimal design on the linearised Chinchilla law).

    ranking = rank_by_information(fit, known, candidates, target_compute=1e21)
    ranking.order            # candidate names, most informative per FLOP first
    ranking.sd_now           # sd (nats) of L_opt(target_compute) from the points known so far

The law ``L(N, D) = E + A N^-alpha + B D^-beta`` in ``theta = (E, ln A, alpha, ln B, beta)`` is linearised
at the current fit: each point i with loss sd ``s_i`` adds ``J_i J_i^T / s_i^2`` to the Fisher information
``F`` (``J_i`` = dL/dtheta at (N_i, D_i)), plus a weak Gaussian prior ``PRIOR_SD`` so that ``F`` is
invertible with few points. The target is ``g = L_opt(C*)``, the loss at the compute-optimal (N*, D*) for
``C* = target_compute`` FLOPs (C = 6 N D); by the envelope theorem its gradient is ``c = J(N*, D*)``. Its
variance is ``c^T F^-1 c``; a candidate run j measured with sd ``s_j`` lowers it by

    r_j = (c^T F^-1 J_j)^2 / (s_j^2 + J_j^T F^-1 J_j)        (Sherman-Morrison)

and the ranking orders candidates by ``r_j / compute_j``: where a FLOP buys the most certainty at C*. A
candidate's ``s_j`` is ``noise`` times its predicted loss (the seed-to-seed noise of a finished run's final
loss). ``known`` carries the points already measured or in flight: finished runs at that noise, stopped or
running runs at the sd of their predicted interval, so that a run already training is not duplicated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .chinchilla import ChinchillaFit

PRIOR_SD = (1.0, 5.0, 0.5, 5.0, 0.5)
"""Weak prior sd of (E [nats], ln A, alpha, ln B, beta) around the fit: keeps F invertible with few points;
a few points already dominate it (the ranking's order, not its scale, is what is used)."""


@dataclass(frozen=True)
class LaunchScore:
    """One candidate: ``reduction`` of Var L_opt(C*) (nats^2) if it were trained, ``per_flop`` that over its
    compute (6 N D)."""

    name: str
    n_params: float
    tokens: float
    reduction: float
    per_flop: float


@dataclass(frozen=True)
class LaunchRanking:
    """``scores`` most informative per FLOP first; ``L_opt`` the law's loss at its optimum (``N_opt``,
    ``D_opt``) for ``target_compute``, and ``sd_now`` its sd from the known points (linearised)."""

    target_compute: float
    N_opt: float
    D_opt: float
    L_opt: float
    sd_now: float
    scores: tuple[LaunchScore, ...]

    @property
    def order(self) -> list[str]:
        return [s.name for s in self.scores]

    def to_dict(self) -> dict:
        return {
            "target_compute": self.target_compute,
            "N_opt": self.N_opt,
            "D_opt": self.D_opt,
            "L_opt": self.L_opt,
            "sd_now": self.sd_now,
            "order": [
                {
                    "name": s.name,
                    "N": s.n_params,
                    "D": s.tokens,
                    "reduction": s.reduction,
                    "per_flop": s.per_flop,
                }
                for s in self.scores
            ],
        }


def law_jacobian(fit: ChinchillaFit, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """dL/dtheta at (N, D), theta = (E, ln A, alpha, ln B, beta): shape (len(N), 5)."""
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    tn = fit.A * N ** (-fit.alpha)
    td = fit.B * D ** (-fit.beta)
    return np.stack([np.ones_like(N), tn, -tn * np.log(N), td, -td * np.log(D)], axis=-1)


def _checked_points(what: str, pts: Sequence[tuple], width: int) -> np.ndarray:
    arr = np.array([tuple(p)[-width:] for p in pts], dtype=np.float64).reshape(-1, width)
    bad = ~np.all(np.isfinite(arr) & (arr > 0), axis=1)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}[{i}]={tuple(pts[i])!r}: every value must be finite and > 0")
    return arr


def rank_by_information(
    fit: ChinchillaFit,
    known: Sequence[tuple[float, float, float]],
    candidates: Sequence[tuple[str, float, float]],
    *,
    target_compute: float,
    noise: float = 0.005,
) -> LaunchRanking:
    """Rank ``candidates`` (name, N, D) by the reduction of Var L_opt(``target_compute``) per FLOP (module
    docstring), given the ``known`` points (N, D, loss sd in nats). ``noise``: a candidate's relative sd.

    Raises ``ValueError`` for a non-positive or non-finite input, and when the law has no finite
    compute-optimum (alpha, beta, A, B must be > 0)."""
    if not (
        isinstance(target_compute, (int, float)) and math.isfinite(target_compute) and target_compute > 0
    ):
        raise ValueError(f"target_compute={target_compute!r} must be a finite number of FLOPs > 0")
    if not (math.isfinite(noise) and noise > 0):
        raise ValueError(f"noise={noise!r} must be finite and > 0 (a relative sd of a final loss)")
    kn = _checked_points("known", known, 3)
    cand = _checked_points("candidates", candidates, 2)
    n_opt, d_opt, l_opt = fit.optimal(target_compute)  # ValueError without a finite optimum
    c = law_jacobian(fit, np.array([float(n_opt)]), np.array([float(d_opt)]))[0]
    F = np.diag(1.0 / np.square(PRIOR_SD))
    if len(kn):
        J = law_jacobian(fit, kn[:, 0], kn[:, 1])
        F = F + (J / kn[:, 2:3] ** 2).T @ J
    Fi_c = np.linalg.solve(F, c)
    var_now = float(c @ Fi_c)
    scores = []
    if len(cand):
        Jc = law_jacobian(fit, cand[:, 0], cand[:, 1])
        s2 = (noise * fit.predict(cand[:, 0], cand[:, 1])) ** 2
        num = (Jc @ Fi_c) ** 2  # (c^T F^-1 J_j)^2, F symmetric
        den = s2 + np.einsum("ij,ij->i", Jc, np.linalg.solve(F, Jc.T).T)
        red = num / den
        flops = 6.0 * cand[:, 0] * cand[:, 1]
        for (name, _, _), nn, dd, r, f in zip(candidates, cand[:, 0], cand[:, 1], red, flops):
            scores.append(LaunchScore(str(name), float(nn), float(dd), float(r), float(r / f)))
        scores.sort(key=lambda s: (-s.per_flop, s.n_params * s.tokens, s.name))
    return LaunchRanking(
        float(target_compute),
        float(n_opt),
        float(d_opt),
        float(l_opt),
        math.sqrt(max(var_now, 0.0)),
        tuple(scores),
    )
