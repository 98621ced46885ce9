"""fit_data_constrained: exact gradient, recovery on synthetic data, diverged runs and a held-out check
on the real datablations runs (Muennighoff et al. 2023, tests/data/laws/datablations/), optimal allocation."""

import numpy as np
import pytest

from scaling_train.laws import (
    ChinchillaFit,
    DataConstrainedFit,
    find_diverged,
    fit_chinchilla,
    fit_data_constrained,
)
from scaling_train.laws._lse import LSEProblem
from scaling_train.laws.data_constrained import _jac, _terms
from tests.fixtures.laws import GPT2_VOCAB, HELD_OUT_N, SIZE_GROUPS, datablations

# Parameters of the same order as the paper's fit (R_D* = 15.4, R_N* = 5.3)
TRUE = dict(E=1.87, A=521.0, B=1488.0, alpha=0.35, beta=0.35, R_D_star=15.4, R_N_star=5.3)


def truth() -> DataConstrainedFit:
    return DataConstrainedFit(**TRUE, objective=0.0, n_points=0, n_starts=0)


def synthetic(noise=0.005, seed=0):
    """A datablations-like design: 8 sizes x 4 unique-token budgets x 7 epoch counts, 60% of it kept."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(
        np.geomspace(1e7, 2e9, 8), [1e8, 4e8, 1.5e9, 1e10], [1, 2, 4, 8, 16, 40, 100], indexing="ij"
    )
    N, U, epochs = (g.ravel() for g in grid)
    keep = rng.random(len(N)) < 0.6
    N, U, D = N[keep], U[keep], (U * epochs)[keep]
    return N, D, U, truth().predict(N, D, U) * np.exp(rng.normal(0, noise, len(N)))


def test_objective_gradient_is_exact_in_both_branches():
    """Analytic Jacobian vs central differences, with runs on both sides of U_N = N_opt(U) (excess
    parameters or not) and of D = U (repeated or not)."""
    rng = np.random.default_rng(1)
    n = 40
    N = np.exp(rng.uniform(np.log(1e6), np.log(3e9), n))
    U = np.exp(rng.uniform(np.log(1e8), np.log(1e10), n))
    D = U * np.exp(rng.uniform(np.log(0.3), np.log(200), n))
    log_x = np.column_stack([np.log(N), np.log(D), np.log(U)])
    problem = LSEProblem(log_x, np.log(rng.uniform(2.5, 4.0, n)), np.ones(n), 1e-3, _terms, _jac)
    theta = np.array([6.0, 6.1, 0.5, 0.35, 0.3, np.log(15.0), np.log(5.0), 0.4])
    lopt = (np.log(0.35 / 0.3) + 6.0 - 6.1 + 0.3 * np.log(np.minimum(U, D))) / 0.35
    assert 0 < np.sum(np.log(N) > lopt) < n and 0 < np.sum(D > U) < n  # both branches present
    _, g = problem.objective_and_grad(theta)
    eps = 1e-6
    num = [
        (problem.objective_and_grad(theta + eps * e)[0] - problem.objective_and_grad(theta - eps * e)[0])
        / (2 * eps)
        for e in np.eye(8)
    ]
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-9)


def test_no_repetition_and_no_excess_parameters_is_chinchilla():
    law = truth()
    chin = ChinchillaFit(
        E=law.E, A=law.A, B=law.B, alpha=law.alpha, beta=law.beta, objective=0.0, n_points=0, n_starts=0
    )
    D = np.array([2e9, 5e10, 3e11])
    N = 0.5 * law.chinchilla_optimal_n(D)  # below the optimal size for D tokens: no excess parameters
    np.testing.assert_allclose(law.predict(N, D, U=D), chin.predict(N, D), rtol=1e-12)
    np.testing.assert_allclose(law.predict(N, D, U=10 * D), chin.predict(N, D), rtol=1e-12)  # D < U: D' = D
    n_eff, d_eff = law.effective(N, 4 * D, U=D)  # 3 repetitions beyond the first epoch
    np.testing.assert_allclose(
        d_eff, D * (1 + TRUE["R_D_star"] * (1 - np.exp(-3 / TRUE["R_D_star"]))), rtol=1e-12
    )
    np.testing.assert_allclose(n_eff, N, rtol=1e-12)


def test_recovers_known_parameters_with_bootstrap_intervals():
    N, D, U, L = synthetic()
    fit = fit_data_constrained(N, D, U, L, n_bootstrap=30)
    assert fit.diverged == () and fit.n_points == len(N)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.02)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.02)
    assert fit.E == pytest.approx(TRUE["E"], rel=0.03)
    assert fit.R_D_star == pytest.approx(TRUE["R_D_star"], rel=0.15)
    assert fit.R_N_star == pytest.approx(TRUE["R_N_star"], rel=0.25)
    lo, hi = fit.ci["R_D_star"]
    assert lo < TRUE["R_D_star"] < hi
    assert abs(fit.rho) < 0.05 and fit.ci["rho"][0] < 0 < fit.ci["rho"][1]  # the paper's law: no size effect
    for name, (lo, hi) in fit.ci.items():
        assert lo <= getattr(fit, name) <= hi, name
    # new points, including 2x beyond the largest fitted size and 300 epochs
    Nt, Dt, Ut = np.array([4e9, 3e8, 1e9]), np.array([3e11, 3e10, 1e10]), np.array([1e9, 1e8, 1e10])
    np.testing.assert_allclose(fit.predict(Nt, Dt, Ut), truth().predict(Nt, Dt, Ut), rtol=0.01)
    low, high = fit.predict_interval(Nt, Dt, Ut)
    assert np.all(low < fit.predict(Nt, Dt, Ut)) and np.all(fit.predict(Nt, Dt, Ut) < high)
    p_lo, p_hi = fit.predict_interval(Nt, Dt, Ut, noise=False)
    assert np.all(p_hi - p_lo < high - low)  # the curve's uncertainty alone is narrower


def test_recovers_a_repetition_half_life_that_falls_with_size():
    """Data from R_D*(N) = 15.4 (N / 1e8)**-0.5: the fit finds rho inside its interval and predicts a larger,
    repeated run; the paper's seven-parameter law (``fit_rho=False``) on the same runs cannot (one R_D* for
    every size), and misses it by more."""
    N, D, U, _ = synthetic()
    law = DataConstrainedFit(**TRUE, objective=0.0, n_points=0, n_starts=0, rho=0.5)
    L = law.predict(N, D, U) * np.exp(np.random.default_rng(3).normal(0, 0.005, len(N)))
    fit = fit_data_constrained(N, D, U, L, n_bootstrap=20)
    assert fit.rho == pytest.approx(0.5, abs=0.05) and fit.ci["rho"][0] < 0.5 < fit.ci["rho"][1]
    assert fit.R_D_star == pytest.approx(TRUE["R_D_star"], rel=0.15)
    assert fit.rho_reason == "the repeated runs span 8 sizes"  # the default rule fits rho from >= 3 sizes
    paper = fit_data_constrained(N, D, U, L, fit_rho=False)
    assert paper.rho == 0.0
    two = N >= np.sort(np.unique(N))[-2]  # the two largest sizes only: rho is held at 0
    held = fit_data_constrained(N[two], D[two], U[two], L[two])
    assert held.rho == 0.0 and held.rho_reason.startswith("the repeated runs span 2 sizes (< 3): rho held at 0")
    Nt, Dt, Ut = (
        np.array([4e9, 3e8]),
        np.array([3e11, 3e10]),
        np.array([1e10, 1e8]),
    )  # 2x the largest size; 300 epochs
    err = np.abs(fit.predict(Nt, Dt, Ut) / law.predict(Nt, Dt, Ut) - 1)
    err_paper = np.abs(paper.predict(Nt, Dt, Ut) / law.predict(Nt, Dt, Ut) - 1)
    assert np.all(err < 0.005) and np.max(err_paper) > 0.02


def test_find_diverged_rules_on_a_small_example():
    N = np.array([1e8, 1e8, 1e8, 4e8, 4e8])
    D = np.array([1e9, 4e9, 8e9, 8e9, 8e9])
    U = np.array([1e9, 1e9, 1e9, 1e9, 1e9])
    L = np.array([3.5, 3.3, 3.45, 3.0, 10.5])  # run 2 rose 4.5% (kept); run 4 is near ln(50257) = 10.82
    out = find_diverged(N, D, U, L, vocab_size=GPT2_VOCAB)
    assert [(r.index, r.reason) for r in out] == [(4, "near-uniform")]
    out = find_diverged(N, D, U, L)  # without a vocabulary, run 4 is still worse than run 3 (same N, D, U)
    assert [(r.index, r.reason) for r in out] == [(4, "worse-than-run-3")]
    out = find_diverged(N, D, U, L, rise_tolerance=0.04)
    assert [r.index for r in out] == [2, 4] and out[0].reason == "worse-than-run-1"


def test_diverged_datablations_runs_are_detected_and_not_fitted():
    d = datablations()
    found = find_diverged(d["N"], d["D"], d["U"], d["L"], vocab_size=GPT2_VOCAB)
    keys = {d["key"][r.index]: r.reason for r in found}
    # the two runs near ln(vocab) (losses 11.02 and 10.88: 660 and 460 epochs of 100M tokens)
    assert {k for k, why in keys.items() if why == "near-uniform"} == {"1b566b100m", "2b246b100m"}
    # a 1.1B model on 120 epochs of 100M tokens ends at 8.14, far above smaller models on the same data
    assert keys["1b112b100m"].startswith("worse-than-run-")
    epochs = d["D"] / d["U"]
    assert all(epochs[r.index] > 1.5 for r in found)  # only repeated-data runs go off the rails here
    assert len(found) == 20  # 20 of 175 (see benchmarks/results/data_constrained.md)
    fit = fit_data_constrained(d["N"], d["D"], d["U"], d["L"], vocab_size=GPT2_VOCAB)
    assert fit.n_points == 175 - 20
    assert [r.index for r in fit.diverged] == [r.index for r in found]


def _held_out_errors(d, fit, chin, mask):
    err = fit.predict(d["N"][mask], d["D"][mask], d["U"][mask]) / d["L"][mask] - 1.0
    err_chin = chin.predict(d["N"][mask], d["D"][mask]) / d["L"][mask] - 1.0
    return err, err_chin


def _split_fit(d, below: float, **kw):
    """fit_data_constrained on the runs below ``below`` parameters, Chinchilla on the same non-diverged runs."""
    train = d["N"] < below
    fit = fit_data_constrained(
        d["N"][train], d["D"][train], d["U"][train], d["L"][train], vocab_size=GPT2_VOCAB, **kw
    )
    fitted = np.flatnonzero(train)[np.setdiff1d(np.arange(train.sum()), [r.index for r in fit.diverged])]
    chin = fit_chinchilla(d["N"][fitted], d["D"][fitted], d["L"][fitted])  # same runs, repetition ignored
    diverged = np.zeros(len(d["L"]), dtype=bool)
    diverged[[r.index for r in find_diverged(d["N"], d["D"], d["U"], d["L"], vocab_size=GPT2_VOCAB)]] = True
    return fit, chin, ~train & ~diverged & (d["D"] > 1.01 * d["U"])


@pytest.mark.slow  # ~10 s on a loaded 2-core machine (fast-tier budget, issue 16)
def test_held_out_larger_multi_epoch_runs_beat_chinchilla():
    """Fit on the runs below 500M parameters; predict the non-diverged multi-epoch runs of 574M-2.2B.

    Thresholds are the issue's (<= 5% mean error, <= half of Chinchilla's) and the nominal 90% level
    (coverage >= 0.75, about 3 binomial sd below 0.9 for 31 runs), not these groups' measured values
    (2.9% against Chinchilla's 7.4%, ratio 0.39: benchmarks/results/data_constrained.md).
    """
    d = datablations()
    fit, chin, test = _split_fit(d, HELD_OUT_N, n_bootstrap=60)
    assert test.sum() == 31
    err, err_chin = _held_out_errors(d, fit, chin, test)
    assert np.mean(np.abs(err)) <= 0.05
    assert np.mean(np.abs(err)) <= 0.5 * np.mean(np.abs(err_chin))
    assert abs(np.mean(err)) < abs(np.mean(err_chin))  # less biased (both predict too low)
    for name, (lo, hi) in SIZE_GROUPS.items():
        g = test & (d["N"] >= lo) & (d["N"] < hi)
        e, e_chin = _held_out_errors(d, fit, chin, g)
        assert np.mean(np.abs(e)) < np.mean(np.abs(e_chin)), name
    low, high = fit.predict_interval(d["N"][test], d["D"][test], d["U"][test])
    coverage = np.mean((d["L"][test] >= low) & (d["L"][test] <= high))
    assert coverage >= 0.75


@pytest.mark.slow  # ~12 s
def test_rho_was_chosen_on_the_inner_split():
    """The size exponent of R_D* was adopted because it helps on the inner split (fit < 250M, predict the
    250M-500M multi-epoch runs), which never sees the outer groups above: there it must beat the paper's
    seven-parameter law fitted on the same runs."""
    d = datablations()
    fit, _, test = _split_fit(d, 2.5e8)
    paper, _, _ = _split_fit(d, 2.5e8, fit_rho=False)
    inner = test & (d["N"] < HELD_OUT_N)
    assert inner.sum() == 21 and fit.rho > 0.3
    mae = [
        np.mean(np.abs(f.predict(d["N"][inner], d["D"][inner], d["U"][inner]) / d["L"][inner] - 1))
        for f in (fit, paper)
    ]
    assert mae[0] < 0.8 * mae[1]


def test_optimal_allocation_uses_more_epochs_when_unique_data_is_scarce():
    law = truth()
    C = 1e21
    U = np.array([1e8, 1e9, 1e10, 1e13])
    n_opt, d_opt, epochs, l_opt = law.optimal(np.full(4, C), U)
    np.testing.assert_allclose(6 * n_opt * d_opt, C, rtol=1e-12)
    assert np.all(np.diff(epochs) < 0)  # fewer unique tokens -> more epochs
    assert np.all(np.diff(l_opt) < 0)  # and a worse best loss
    assert epochs[0] > 100 and epochs[-1] < 1
    # with data to spare the optimum is Chinchilla's
    chin = ChinchillaFit(
        E=law.E, A=law.A, B=law.B, alpha=law.alpha, beta=law.beta, objective=0.0, n_points=0, n_starts=0
    )
    n_chin, d_chin, l_chin = chin.optimal(C)
    assert n_opt[-1] == pytest.approx(float(n_chin), rel=1e-3)
    assert l_opt[-1] == pytest.approx(float(l_chin), rel=1e-6)
    # no allocation on a fine grid of N does better than the reported optimum
    grid = np.geomspace(n_opt[0] / 30, n_opt[0] * 30, 2001)
    assert law.predict(grid, C / (6 * grid), U[0]).min() >= l_opt[0] * (1 - 1e-9)


def test_errors_name_the_value_and_the_allowed_range():
    N, D, U, L = synthetic()
    with pytest.raises(ValueError, match=r"len\(U\)=3"):
        fit_data_constrained(N, D, U[:3], L)
    with pytest.raises(ValueError, match=r"D\[0\]=-1.0 must be > 0"):
        fit_data_constrained(N, np.r_[-1.0, D[1:]], U, L)
    with pytest.raises(ValueError, match="6 runs left .* at least 8 are needed for 8 parameters"):
        fit_data_constrained(N[:6], D[:6], U[:6], L[:6], fit_rho=True)
    with pytest.raises(ValueError, match="at least 7 are needed for 7 parameters"):
        fit_data_constrained(N[:6], D[:6], U[:6], L[:6], fit_rho=False)
    with pytest.raises(ValueError, match="n_bootstrap > 0"):
        truth().predict_interval(1e9, 1e10, 1e9)
    with pytest.raises(ValueError, match=r"rise_tolerance=-0.1 must be in"):
        find_diverged(N, D, U, L, rise_tolerance=-0.1)
