import numpy as np
import pytest

from scaling_train.laws import (
    Curve,
    NotEnoughDataError,
    fit_multipower,
    predict_final_loss,
    schedule_from_samples,
)
from tests.fixtures.laws import mpl_loss
from tests.fixtures.realdata import (
    MP_REFERENCES,
    MP_TARGETS,
    cooldown_curve,
    gemstone_cooldowns,
    gemstone_hot,
    multipower_curve,
)


def cosine(T, warm=200, floor=0.1):
    t = np.arange(1, T + 1)
    lr = floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * np.clip((t - warm) / (T - warm), 0, 1)))
    lr[:warm] = t[:warm] / warm
    return lr


def wsd(T, decay_from, warm=200):
    t = np.arange(1, T + 1)
    lr = np.ones(T)
    lr[:warm] = t[:warm] / warm
    lr[decay_from:] = np.linspace(1, 0.01, T - decay_from)
    return lr


def test_binned_law_matches_exact_sum():
    lr = wsd(6000, 4500)
    steps = np.arange(300, 6001, 100).astype(float)
    y = mpl_loss(lr, steps)
    fit = fit_multipower([Curve(steps, y, lr)], prior_weight=0.0)
    assert fit.rmse < 2e-3  # the binned evaluation reproduces the exact law closely


def test_recovers_multipower_parameters_from_synthetic_runs():
    rng = np.random.default_rng(0)
    curves = []
    for lr in (cosine(8000), wsd(8000, 6000), np.r_[np.linspace(0, 1, 200)[1:], np.ones(7801)]):
        steps = np.arange(250, len(lr) + 1, 50).astype(float)
        curves.append(Curve(steps, mpl_loss(lr, steps) + rng.normal(0, 0.003, len(steps)), lr))
    fit = fit_multipower(curves, prior_weight=0.0, max_points=200)
    assert fit.alpha == pytest.approx(0.45, abs=0.1)
    # the fitted law predicts a different schedule's end well
    lr = wsd(8000, 7000)
    truth = mpl_loss(lr, np.array([8000.0]))[0]
    pred = fit.predict(Curve([250.0], [4.0], lr), np.array([8000.0]), index=0)[0]
    assert pred == pytest.approx(truth, rel=3e-3)


def test_a_schedule_power_is_fitted_and_predicted_in_the_same_view():
    # runs whose loss follows the multi-power law of (lr / peak) ** 0.6: the fit in that view recovers the law and
    # predicts an unseen schedule's end; the plain view (power 1) describes the same curves worse
    rng = np.random.default_rng(1)
    p = 0.6
    curves = []
    for lr in (cosine(8000), wsd(8000, 6000), np.r_[np.linspace(0, 1, 200)[1:], np.ones(7801)]):
        steps = np.arange(250, len(lr) + 1, 50).astype(float)
        curves.append(Curve(steps, mpl_loss(lr**p, steps) + rng.normal(0, 0.001, len(steps)), lr))
    fit = fit_multipower(curves, prior_weight=0.0, max_points=200, lr_power=p)
    plain = fit_multipower(curves, prior_weight=0.0, max_points=200)
    assert fit.lr_power == p and plain.lr_power == 1.0
    assert fit.alpha == pytest.approx(0.45, abs=0.1)
    assert fit.rmse < plain.rmse
    lr = wsd(8000, 7000)
    truth = mpl_loss(lr**p, np.array([8000.0]))[0]
    pred = fit.predict(Curve([250.0], [4.0], lr), np.array([8000.0]), index=0)[
        0
    ]  # predicts in the fit's view
    assert pred == pytest.approx(truth, rel=3e-3)
    with pytest.raises(ValueError, match=r"lr_power=0 must be in \(0, 2\]"):
        fit_multipower(curves, lr_power=0)


# with references the prediction blends the joint fit with the target-alone fit (predict.py): 0.31% at 25%
# (the joint fit alone had 0.26% here, but was 1-6% off on other ladders); the target is 0.4%
@pytest.mark.parametrize(
    "use_refs, fraction, target", [(True, 0.25, 0.004), (False, 0.25, 0.01), (True, 0.5, 0.003)]
)
def test_multipower_25m_final_loss(use_refs, fraction, target):
    refs = [multipower_curve(n) for n in MP_REFERENCES] if use_refs else []
    errs, covered = [], 0
    for name in MP_TARGETS:
        c = multipower_curve(name)
        pred = predict_final_loss(c.truncated(fraction), refs)
        errs.append(abs(pred.loss / c.losses[-1] - 1))
        covered += pred.low <= c.losses[-1] <= pred.high
        assert pred.low < pred.loss < pred.high
    assert np.mean(errs) <= target, f"mean relative error {np.mean(errs):.4f} > {target}"
    assert covered >= 4


def test_gemstone_cooldown_with_earlier_cooldowns_as_references():
    cds, hot = gemstone_cooldowns(), gemstone_hot()
    errs = []
    for cd in cds[::7]:
        refs = [
            cooldown_curve(c, hot, observed_end=True)
            for c in cds
            if c.run == cd.run and c.end_step < cd.begin_step
        ]
        if refs:
            pred = predict_final_loss(cooldown_curve(cd, hot, observed_end=False), refs[-3:])
            errs.append(abs(pred.loss / cd.loss_end - 1))
    assert len(errs) >= 10 and np.mean(errs) < 0.004


def test_nan_inf_and_spikes_are_dropped_and_counted():
    c = multipower_curve("cosine_72000").truncated(0.5)
    clean = predict_final_loss(c)
    y = c.losses.copy()
    y[[5, 40]] = np.nan
    y[60] = np.inf
    y[[80, 81]] += 2.0  # loss spikes
    dirty = predict_final_loss(Curve(c.steps, y, c.lr))
    assert dirty.n_dropped == 3 and dirty.n_spikes >= 2
    assert dirty.loss == pytest.approx(clean.loss, rel=2e-3)


@pytest.mark.parametrize("schedule", ["wsd", "cosine"])
def test_a_schedule_ending_at_zero_gives_finite_predictions(schedule):
    """WSD or cosine decaying to exactly 0 (min_lr_ratio 0) over fewer steps than the annealing term has bins
    (48; the quickstart's runs under WSD): the last drop bin is the last step alone, of eta 0 and no area after
    it, which made 0**-gamma * 0 = nan and every prediction nan. Now finite, and the same as a schedule whose
    last LR is 1e-9 of the peak (seen as 1e-9 ** LR_POWER), at every point of the run."""
    T = 200 if schedule == "wsd" else 60
    lr = wsd(T, 160, warm=10) if schedule == "wsd" else cosine(T, warm=5, floor=0.0)
    lr[-1] = 0.0
    assert lr[-1] == 0.0 and lr.min() == 0.0
    steps = np.arange(T // 20, T + 1, T // 20).astype(float)
    y = mpl_loss(np.maximum(lr, 1e-6), steps)
    tiny = lr.copy()
    tiny[-1] = 1e-9
    for frac in (0.3, 0.6, 0.95):
        p = predict_final_loss(Curve(steps, y, lr).observed_until(frac * T))
        q = predict_final_loss(Curve(steps, y, tiny).observed_until(frac * T))
        assert np.isfinite([p.loss, p.low, p.high]).all() and p.low < p.loss < p.high
        assert p.loss == pytest.approx(q.loss, rel=1e-6)
    assert p.loss == pytest.approx(y[-1], rel=0.01)


def test_a_non_finite_candidate_is_dropped_never_returned(monkeypatch):
    from scaling_train.laws import curve as curve_mod
    from scaling_train.laws import predict as pred_mod

    lr = cosine(2000)
    steps = np.arange(100, 2001, 100).astype(float)
    c = Curve(steps, mpl_loss(lr, steps), lr, "x").observed_until(800)
    monkeypatch.setattr(pred_mod, "_ld_basis", lambda *a, **k: np.full(len(a[1]), np.nan))
    with pytest.raises(FloatingPointError, match=r"no finite prediction for 'x': alone gave nan"):
        predict_final_loss(c)
    assert curve_mod._ld_basis is not pred_mod._ld_basis


def test_too_few_points():
    lr = cosine(1000)
    with pytest.raises(NotEnoughDataError, match="2 valid points"):
        predict_final_loss(Curve([10.0, 20.0], [5.0, 4.9], lr))
    with pytest.raises(NotEnoughDataError):
        predict_final_loss(Curve([10.0, 20.0, 30.0], [np.nan, np.nan, np.nan], lr))
    refs = [multipower_curve("cosine_24000")]
    target = multipower_curve("wsdcon_3")
    pred = predict_final_loss(Curve([], [], target.lr), refs)  # only references: wide interval, no crash
    assert pred.mode == "same_size"
    few = predict_final_loss(target.truncated(0.5), refs)
    assert pred.high - pred.low > 3 * (few.high - few.low)
    assert pred.low < target.losses[-1] < pred.high


def test_a_curves_own_burn_in_is_left_out_of_its_fits():
    """Curve.burn_in (metrics.law_burn_in): points before it are not fitted, beyond the 3-warmup rule; a short
    prefix still keeps its later half; the digest (the fit caches' key) sees it; a bad value names itself."""
    from scaling_train.laws.curve import _prepare

    lr = 5e-3 * cosine(1000, warm=10)
    steps = np.arange(12.0, 1001.0, 12.0)
    y = 6.0 * steps**-0.12
    plain, burnt = Curve(steps, y, lr), Curve(steps, y, lr, burn_in=100)
    assert _prepare(plain, max_points=500, n_bins=8).t[0] == 36.0  # 3 x the 11-step warmup end
    assert _prepare(burnt, max_points=500, n_bins=8).t[0] == 108.0
    assert _prepare(burnt.observed_until(120), max_points=500, n_bins=8).t[0] == 60.0  # half of 120
    assert plain.digest() != burnt.digest()
    with pytest.raises(ValueError, match=r"burn_in=-5.0 must be a finite step >= 0"):
        Curve(steps, y, lr, burn_in=-5.0)


def test_curve_validation():
    lr = np.ones(100)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, T=100\]"):
        Curve([0.0, 5.0], [1.0, 1.0], lr)
    with pytest.raises(ValueError, match=r"steps\[1\]=5 must be > steps\[0\]=5"):
        Curve([5.0, 5.0], [1.0, 1.0], lr)
    with pytest.raises(ValueError, match=r"len\(steps\)=2 != len\(losses\)=1"):
        Curve([1.0, 5.0], [1.0], lr)
    with pytest.raises(ValueError, match=r"lr\[3\]=-1.0 must be >= 0"):
        Curve([1.0], [1.0], np.r_[1.0, 1, 1, -1])
    with pytest.raises(TypeError, match="references\\[0\\] must be a Curve"):
        predict_final_loss(Curve([1.0, 2, 3], [3.0, 2.9, 2.8], lr), [np.ones(3)])


def test_schedule_from_samples():
    lr = schedule_from_samples(np.array([100.0, 200.0]), np.array([1.0, 0.5]), total_steps=300)
    assert len(lr) == 300
    assert lr[49] == pytest.approx(0.5)  # step 50 of a linear warmup to step 100
    assert lr[149] == pytest.approx(0.75)
    assert lr[-1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="total_steps=150 must be >= the last logged step 200"):
        schedule_from_samples(np.array([100.0, 200.0]), np.array([1.0, 0.5]), total_steps=150)


def _held_out_gemstone_cases():
    """Gemstone cooldowns of the odd-index runs: the held-out split of benchmarks/calibrate_laws.py
    (the interval constants were fitted on the even-index runs and the multipower reference runs)."""
    cds, hot = gemstone_cooldowns(), gemstone_hot()
    runs = sorted({c.run for c in cds})
    for cd in cds:
        if runs.index(cd.run) % 2 == 1:
            refs = [
                cooldown_curve(c, hot, observed_end=True)
                for c in cds
                if c.run == cd.run and c.end_step < cd.begin_step
            ]
            yield cooldown_curve(cd, hot, observed_end=False), refs[-3:], cd.loss_end


@pytest.mark.parametrize("use_refs", [True, False])
def test_interval_coverage_on_held_out_runs(use_refs):
    inside, inside_3x, inside_eighth = [], [], []
    for target, refs, truth in _held_out_gemstone_cases():
        if use_refs and not refs:
            continue
        p = predict_final_loss(target, refs if use_refs else ())
        inside.append(p.low <= truth <= p.high)
        for k, acc in ((3.0, inside_3x), (1 / 8, inside_eighth)):  # the same interval scaled about loss
            acc.append(p.loss + k * (p.low - p.loss) <= truth <= p.loss + k * (p.high - p.loss))
    cov = np.mean(inside)
    assert len(inside) >= 80
    # nominal 90%. The quantiles are the widest over the calibration settings (benchmarks/calibrate_laws.py),
    # and Gemstone is the easiest of them: its intervals are conservative (~100% here; a fifth of the width
    # still covers ~84% with references: a known miss, see benchmarks/results/prediction.md). The checks:
    # never below 85%, and an interval 8x narrower must fail.
    assert cov >= 0.85, f"held-out coverage {cov:.1%}"
    assert np.mean(inside_3x) > 0.97 and np.mean(inside_eighth) < 0.80  # the band can fail both ways


def test_a_lone_alone_candidate_widens_when_it_does_not_describe_its_own_tail():
    """Without references the alone candidate's interval takes its error on the last third of the target's own
    prefix (refitted on the first two thirds), as every candidate does with references: a curve whose recent
    points leave the multi-power law (here: the last third falls 4% faster than the law, as tiny runs still in
    their early fall do) gets a wider interval than the same law without the departure. Before, a lone alone
    candidate kept its calibrated width whatever its own tail said (cbs-cpu: 34% coverage)."""
    T, warm = 2000, 50
    lr = np.ones(T) * 3e-3
    lr[:warm] = np.arange(1, warm + 1) / warm * 3e-3
    steps = np.arange(10, 601, 10).astype(float)
    clean = mpl_loss(lr, steps)
    bent = clean * (1 - 0.04 * np.clip((steps - 400) / 200, 0, 1))
    p_clean = predict_final_loss(Curve(steps, clean, lr, "clean"))
    p_bent = predict_final_loss(Curve(steps, bent, lr, "bent"))
    assert p_clean.mode == p_bent.mode == "alone"
    assert p_bent.rel_scale > 2 * p_clean.rel_scale, (p_clean.rel_scale, p_bent.rel_scale)
    assert (p_bent.high - p_bent.low) / p_bent.loss > 2 * (p_clean.high - p_clean.low) / p_clean.loss


@pytest.mark.parametrize(
    "field, value",
    [("b_rel", 0.0), ("b_rel_sd", -1.0), ("b_n_ref", float("nan")), ("b_lr_exponent", float("inf")),
     ("b_n_range", (2e8, 3e7)), ("b_lr_range", (0.0, 1e-3)), ("b_rel_unknown_lr", -0.01)],
)  # fmt: skip
def test_multipower_prior_rejects_a_bad_field_by_name(field, value):
    from scaling_train.laws.curve import MultiPowerPrior

    with pytest.raises(ValueError, match=f"MultiPowerPrior.{field}="):
        MultiPowerPrior(**{field: value})
