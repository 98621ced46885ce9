"""The noise scale calibrated against measured critical batches, and batch sweeps read off loss curves.

Synthetic data with a known truth: the ratio measured / B_simple = 6 (L / 3)**-1.5 (or a constant), the
noise scale B_simple(L) = 2e4 (L / 3)**-4 tokens, log-normal scatter; and loss curves built so that the
steps to any loss follow S(B) = S_min (1 + B_noise / B) exactly."""

from __future__ import annotations

import numpy as np
import pytest

from scaling_train.laws import (
    batch_sweeps_from_curves,
    fit_batch_sweep,
    fit_cbs_calibration,
    steps_to_target,
)


def _measurements(seed: int, *, n: int = 12, slope: float = -1.5, noise: float = 0.15):
    rng = np.random.default_rng(seed)
    L = np.exp(rng.uniform(np.log(2.5), np.log(4.0), n))
    ratio = 6.0 * (L / 3.0) ** slope
    b = 2e4 * (L / 3.0) ** -4 * np.exp(rng.normal(0, 0.05, n))
    measured = ratio * b * np.exp(rng.normal(0, noise, n))
    return L, measured, b


def test_calibration_recovers_a_loss_dependent_ratio():
    L, m, b = _measurements(0, n=30, noise=0.05)
    cal = fit_cbs_calibration(L, m, b, sources=["branches", "batch_sweep"])
    assert cal.form == "loss" and cal.loo_rmse["loss"] < cal.loo_rmse["constant"]
    assert cal.coef[1] == pytest.approx(-1.5, abs=0.15)
    p = cal.predict(loss=3.0, b_simple=2e4)
    assert p.ratio == pytest.approx(6.0, rel=0.08) and p.value == pytest.approx(1.2e5, rel=0.08)
    assert p.low < p.value < p.high and "batch_sweep, branches" in p.source


def test_calibration_picks_the_constant_when_the_ratio_does_not_move():
    L, m, b = _measurements(1, n=10, slope=0.0, noise=0.2)
    cal = fit_cbs_calibration(L, m, b)
    assert cal.form == "constant" and len(cal.coef) == 1
    assert np.exp(cal.coef[0]) == pytest.approx(6.0, rel=0.2)


@pytest.mark.parametrize("slope", [-1.5, 0.0])
def test_calibrated_interval_covers_new_measurements(slope):
    """90% intervals from 8 measurements cover a new measurement at a new loss ~90% of the time."""
    hits, n = 0, 300
    for seed in range(n):
        L, m, b = _measurements(seed, n=9, slope=slope)
        cal = fit_cbs_calibration(L[:8], m[:8], b[:8])
        p = cal.predict(loss=L[8], b_simple=b[8])
        hits += p.low <= m[8] <= p.high
    assert 0.8 <= hits / n <= 0.98


def test_calibration_one_measurement_needs_its_own_uncertainty():
    with pytest.raises(ValueError, match="without their own uncertainty"):
        fit_cbs_calibration([3.0], [1e5], [2e4])
    cal = fit_cbs_calibration([3.0], [1e5], [2e4], measured_sd_log=[0.3])
    assert cal.form == "constant" and cal.sigma_log == pytest.approx(0.3)
    p = cal.predict(loss=3.0, b_simple=4e4, b_simple_sd_log=0.4)
    assert p.value == pytest.approx(2e5)
    assert np.log(p.high / p.value) == pytest.approx(np.log(p.value / p.low))  # symmetric in log
    with pytest.raises(ValueError, match="measured_sd_log must be 2 finite values"):
        fit_cbs_calibration([3.0, 2.9], [1e5, 1e5], [2e4, 2e4], measured_sd_log=[0.1])


def test_steps_to_target_interpolates_and_reports_never():
    s, lo = np.array([10.0, 20, 30]), np.array([5.0, 4.0, 3.0])
    assert steps_to_target(s, lo, 3.5) == pytest.approx(25.0)
    assert np.isnan(steps_to_target(s, lo, 2.0))


def test_batch_sweeps_from_curves_recover_b_noise():
    """Curves L_B(s) = 2 + 3 / (1 + s / (1 + B_noise / B) / 50)**0.7 reach every loss after exactly
    S(B) = S_min (1 + B_noise / B) steps; rows every 5 steps with small noise, smoothed with zero lag."""
    b_noise, rng = 40.0, np.random.default_rng(3)
    curves = {}
    for B in (8, 16, 32, 64, 128):
        steps = np.arange(5, 400 * 8 / B * 3 + 5, 5, dtype=np.float64)  # the same tokens per batch size
        x = steps / (1 + b_noise / B)
        curves[B] = (steps, 2 + 3 / (1 + x / 50) ** 0.7 + rng.normal(0, 0.003, len(steps)))
    sweeps = batch_sweeps_from_curves(curves, n_params=1e6, seq_len=64, n_targets=4)
    assert len(sweeps) == 4 and sweeps[0].target_loss > sweeps[-1].target_loss
    for sw in sweeps:
        fit = fit_batch_sweep(sw)
        assert fit.B_crit == pytest.approx(b_noise, rel=0.15)
        assert fit.B_crit_low <= b_noise <= fit.B_crit_high


def test_batch_sweeps_from_curves_errors():
    with pytest.raises(ValueError, match="a batch sweep needs >= 3"):
        batch_sweeps_from_curves({8: ([1, 2], [3, 2])}, n_params=1e6, seq_len=64)
    flat = (np.arange(1.0, 20), np.full(19, 3.0))
    with pytest.raises(ValueError, match="no loss range is reached by every batch size"):
        batch_sweeps_from_curves({8: flat, 16: flat, 32: flat}, n_params=1e6, seq_len=64)
