"""laws/design.py: the launch ranking (greedy c-optimal design on the linearised Chinchilla law)."""

from __future__ import annotations

import numpy as np
import pytest

from scaling_train.laws import ChinchillaFit, rank_by_information
from scaling_train.laws.design import PRIOR_SD, law_jacobian

FIT = ChinchillaFit(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28, objective=0.0, n_points=0, n_starts=0)
KNOWN_ND = [(1e7, 2e8), (1e7, 8e8), (3e7, 6e8), (3e7, 2.4e9), (1e8, 2e9), (1e8, 8e9)]
KNOWN = [(n, d, 0.005 * float(FIT.predict(n, d))) for n, d in KNOWN_ND]
CANDS = [("small", 1e7, 3.2e9), ("mid", 3e7, 1e10), ("big", 3e8, 6e9), ("bigger", 1e9, 2e10)]


def _variance(known, target_compute=1e21) -> float:
    """c^T F^-1 c computed directly (no Sherman-Morrison): the quantity the ranking reduces."""
    n_opt, d_opt, _ = FIT.optimal(target_compute)
    c = law_jacobian(FIT, np.array([n_opt]), np.array([d_opt]))[0]
    F = np.diag(1.0 / np.square(PRIOR_SD))
    for n, d, sd in known:
        j = law_jacobian(FIT, np.array([n]), np.array([d]))[0]
        F += np.outer(j, j) / sd**2
    return float(c @ np.linalg.solve(F, c))


def test_reduction_is_the_variance_drop_of_adding_the_run():
    r = rank_by_information(FIT, KNOWN, CANDS, target_compute=1e21)
    v0 = _variance(KNOWN)
    assert r.sd_now == pytest.approx(np.sqrt(v0), rel=1e-9)
    for s in r.scores:
        sd = 0.005 * float(FIT.predict(s.n_params, s.tokens))
        v1 = _variance([*KNOWN, (s.n_params, s.tokens, sd)])
        assert s.reduction == pytest.approx(v0 - v1, rel=1e-6)
        assert 0 < s.reduction < v0
        assert s.per_flop == pytest.approx(s.reduction / (6 * s.n_params * s.tokens))
    per_flop = [s.per_flop for s in r.scores]
    assert per_flop == sorted(per_flop, reverse=True) and sorted(r.order) == sorted(c[0] for c in CANDS)
    n_opt, d_opt, l_opt = FIT.optimal(1e21)
    assert (r.N_opt, r.D_opt, r.L_opt) == pytest.approx((n_opt, d_opt, l_opt))
    d = r.to_dict()
    assert [o["name"] for o in d["order"]] == r.order and d["L_opt"] == pytest.approx(l_opt)


def test_more_points_never_raise_the_uncertainty_and_a_noisier_run_informs_less():
    sds = [rank_by_information(FIT, KNOWN[:k], [], target_compute=1e21).sd_now for k in range(len(KNOWN) + 1)]
    assert all(b <= a + 1e-15 for a, b in zip(sds, sds[1:])) and sds[-1] < sds[0] / 3
    quiet = rank_by_information(FIT, KNOWN, CANDS[2:3], target_compute=1e21, noise=0.002).scores[0]
    loud = rank_by_information(FIT, KNOWN, CANDS[2:3], target_compute=1e21, noise=0.02).scores[0]
    assert quiet.reduction > loud.reduction > 0


def test_a_run_near_the_target_optimum_informs_most():
    """Points only at small N: a run at the optimum's N (same FLOPs as a small-N run) tells the most about L_opt."""
    n_opt, d_opt, _ = FIT.optimal(1e21)
    C = 6 * 1e8 * 8e9
    near = ("near", n_opt, C / (6 * n_opt))
    far = ("far", 1e7, C / (6 * 1e7))
    r = rank_by_information(FIT, KNOWN, [far, near], target_compute=1e21)
    assert r.order == ["near", "far"]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"target_compute": 0}, r"target_compute=0 must be a finite number of FLOPs > 0"),
        ({"target_compute": float("inf")}, r"target_compute=inf must be a finite"),
        ({"noise": -0.1}, r"noise=-0.1 must be finite and > 0"),
        (
            {"known": [(1e7, 2e8, 0.01), (1e7, -1.0, 0.01)]},
            r"known\[1\]=\(10000000\.0, -1\.0, 0\.01\): every value",
        ),
        (
            {"candidates": [("a", 1e7, float("nan"))]},
            r"candidates\[0\]=\('a', 10000000\.0, nan\): every value must be finite and > 0",
        ),
    ],
)
def test_bad_input_names_the_value(kw, match):
    args = {"known": KNOWN, "candidates": CANDS, "target_compute": 1e21, **kw}
    with pytest.raises(ValueError, match=match):
        rank_by_information(FIT, args.pop("known"), args.pop("candidates"), **args)


def test_a_law_without_an_optimum_is_refused():
    flat = ChinchillaFit(E=1.7, A=400.0, B=410.0, alpha=0.0, beta=0.28, objective=0.0, n_points=0, n_starts=0)
    with pytest.raises(ValueError, match="no finite compute-optimum"):
        rank_by_information(flat, KNOWN, CANDS, target_compute=1e21)
