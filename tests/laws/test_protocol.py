"""The prediction protocol (tests/fixtures/protocol.py): the split, references that only help, the sweep-level
model before a run starts, the remaining curve. Figures for every group: benchmarks/results/prediction.md."""

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from scaling_train.laws import Curve, NotEnoughDataError, _calibration, fit_sweep, predict_final_loss
from scaling_train.laws import predict as pred_mod
from tests.fixtures.laws import mpl_loss
from tests.fixtures.protocol import (
    PRIOR_ONLY,
    REPORT_ONLY,
    all_cases,
    gemstone_cases,
    is_held_out,
    lr_schedule_cases,
    multipower_cases,
)


@pytest.fixture(scope="module")
def lrs_val():
    return lr_schedule_cases(("val",))


def test_no_constant_was_fitted_on_a_held_out_group():
    cal = set(_calibration.CALIBRATION_GROUPS)
    cases = all_cases()
    groups = {c.group for c in cases}
    held = {g for g in groups if is_held_out(g)}
    assert not cal & held, f"constants fitted on held-out groups: {sorted(cal & held)}"
    # the constants come from exactly the protocol's calibration groups (report-only settings never fit
    # anything; prior-only ones, the quickstart's, only the range of the alone prior's LR law and, with the
    # other calibration cases of 1-9 points, FEW_SLOPE): regenerate
    # them when it changes
    assert cal == {c.group for c in cases if c.setting not in REPORT_ONLY} - held
    # sparse@25 shares the groups of alone@25 (the same runs, thinned) and, being report-only, fits nothing
    fitted = {c.group for c in cases if c.setting not in REPORT_ONLY}
    assert not cal & ({c.group for c in cases if c.setting in REPORT_ONLY} - fitted)
    # the quickstart's two smaller sizes are calibration groups (of the prior only), its two larger held out
    assert {g for g in cal if g.startswith("qs/")} == {"qs/0.027M", "qs/0.056M"}
    assert not set(REPORT_ONLY) & set(PRIOR_ONLY)
    # every kind of held-out group is represented: sizes, a data set, a schedule family, other models
    for needle in ("/53M/", "/360M/", "slimpajama_chunk1", "-sqrt/", "gem/odd/", "mp/target", "qs/0.222M"):
        assert any(needle in g for g in held), needle


def test_split_is_by_group_not_by_case(lrs_val):
    by_run = defaultdict(set)
    for c in lrs_val:
        by_run[c.name].add(is_held_out(c.group))
    assert all(len(v) == 1 for v in by_run.values())  # a run is never on both sides
    with pytest.raises(ValueError, match="unknown group"):
        is_held_out("other/x")


def _err(case, refs) -> float:
    p = predict_final_loss(case.target, refs)
    return p.loss / case.truth - 1


@pytest.mark.slow  # 17-46 s on the loaded 2-core machine
def test_references_do_not_make_held_out_predictions_worse(lrs_val):
    """On held-out groups, per setting: mean |error| with references <= without them (same targets), on the
    validation loss, Gemstone and multipower. Not asserted on the lr_schedules training loss, where it does not
    hold: held out, cool_refs +0.13% (se 0.07%), far@25 +0.18% (se 0.27%), same@25 +0.01% (se 0.15%) worse with
    references (benchmarks/results/prediction.md, "References against the target alone")."""
    cases = [c for c in lrs_val if c.setting in ("same@25", "cool_refs", "sweep@25") and is_held_out(c.group)]
    cases += [c for c in gemstone_cases() if c.setting == "gem_cool_refs" and is_held_out(c.group)][::3]
    cases += [c for c in multipower_cases() if c.setting.startswith("mp_refs") and is_held_out(c.group)]
    by = defaultdict(lambda: ([], []))
    for c in cases:
        with_refs, alone = by[c.setting.split("@")[0]]
        with_refs.append(abs(_err(c, c.refs)))
        alone.append(abs(_err(c, ())))
    assert set(by) == {"same", "cool_refs", "sweep", "gem_cool_refs", "mp_refs"}
    for setting, (w, a) in by.items():
        assert np.mean(w) <= np.mean(a), f"{setting}: with refs {np.mean(w):.3%} > alone {np.mean(a):.3%}"


def test_before_start_from_smaller_runs_real_ladder(lrs_val):
    """124M-360M ladder runs (val loss) predicted before they start from the finished 33M-93M runs."""
    cases = [c for c in lrs_val if c.setting == "before"]
    assert len(cases) >= 30
    preds = [predict_final_loss(c.target, c.refs) for c in cases]
    assert all(p.mode == "sweep" and p.n_used == 0 for p in preds)
    e = np.array([p.loss / c.truth - 1 for c, p in zip(cases, preds)])
    cov = np.mean([p.low <= c.truth <= p.high for c, p in zip(cases, preds)])
    assert np.abs(e).mean() < 0.02, f"mean abs error {np.abs(e).mean():.3%}"  # the target: <= 2%
    assert cov >= 0.75, f"coverage {cov:.0%}"  # 81% at the time of writing: the 360M runs miss high


def _sweep_law(n, tps, lr, steps, E=1.9, K=1.1, a=0.3, A=0.5, alpha=0.35, **shape):
    """Exact sweep-level law (predict.py docstring), delta = 0: the multi-power law of one run with
    L0 = E + K (n / 1e8)^-a and the data term in 1e9 tokens, A (tps S1 / 1e9)^-alpha, the schedule seen as
    lr ** LR_POWER as every candidate sees it."""
    L0 = E + K * (n / 1e8) ** -a
    lr = np.asarray(lr, float) ** _calibration.LR_POWER
    return mpl_loss(lr, steps, L0=L0, A=A * (tps / 1e9) ** -alpha, alpha=alpha, **shape)


def _cosine(T, warm=100):
    t = np.arange(1, T + 1)
    lr = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.clip((t - warm) / (T - warm), 0, 1)))
    lr[:warm] = t[:warm] / warm
    return lr


def _synthetic_sweep(rng) -> tuple[float, list[Curve]]:
    """Three sizes x two horizons of the exact sweep law with 0.4% noise: (tokens per step, runs)."""
    tps = 65536.0
    runs = []
    for n in (1e7, 4e7, 1.6e8):  # a 16x range of sizes: enough to pin the N exponent against its prior
        for T in (2000, 4000):
            lr = _cosine(T)
            s = np.arange(100, T + 1, 50).astype(float)
            runs.append(Curve(s, _sweep_law(n, tps, lr, s) + rng.normal(0, 0.004, len(s)), lr, f"N{n:g}-T{T}",
                              n_params=n, tokens_per_step=tps))  # fmt: skip
    return tps, runs


def test_sweep_model_recovers_a_synthetic_sweep():
    rng = np.random.default_rng(0)
    tps, runs = _synthetic_sweep(rng)
    fit = fit_sweep(runs)
    assert fit.a == pytest.approx(0.3, abs=0.1) and fit.alpha == pytest.approx(0.35, abs=0.1)
    # a larger, longer run before it starts, then from 25% of itself
    n, T = 3e8, 6000
    lr = _cosine(T)
    s = np.arange(100, T + 1, 50).astype(float)
    y = _sweep_law(n, tps, lr, s)
    target = Curve(s, y + rng.normal(0, 0.004, len(s)), lr, "big", n_params=n, tokens_per_step=tps)
    before = predict_final_loss(target.observed_until(0), runs)
    early = predict_final_loss(target.truncated(0.25), runs)
    assert before.mode == "sweep" and abs(before.loss / y[-1] - 1) < 0.01
    # from 25% the sweep candidate is within 0.3%; the blend also weighs the target-alone fit, whose annealing
    # prior (fitted on real runs) is off for this synthetic law: its normalised peak 1.0 reads as a real LR
    # (clipped to the calibrated 9.4e-3) of a 300M model, a prior amplitude twice the law's B; the blend lands
    # between the two, within 2.5% (2.2% since the prior's sd was fitted, 0.2x its mean against 0.57x, which
    # holds the alone fit nearer that amplitude: -7.2%; 1.8% before; within 1% before the prior grew with the
    # size, 2026-12-05)
    assert abs(early.candidates["sweep"] / y[-1] - 1) < 0.003 and abs(early.loss / y[-1] - 1) < 0.025
    assert abs(early.loss / y[-1] - 1) < abs(early.candidates["alone"] / y[-1] - 1)
    assert before.low <= y[-1] <= before.high and early.low <= y[-1] <= early.high
    with pytest.raises(ValueError, match="n_params=None"):
        fit_sweep([Curve(s, y, lr)])
    with pytest.raises(NotEnoughDataError, match="no usable references"):  # one other size: N not identified
        predict_final_loss(target.observed_until(0), [r for r in runs if r.n_params == 1e7])


def test_references_of_one_other_size_serve_a_started_target():
    """A sweep's first run of a new size beside the finished runs of one smaller size: the references cannot
    identify N, but the target's own points set its level, so the sweep candidate takes the references' shape
    (it was left out, and the target predicted alone); before the target starts they still predict nothing."""
    rng = np.random.default_rng(3)
    tps, runs = _synthetic_sweep(rng)
    refs = [r for r in runs if r.n_params == 1e7]  # two horizons of one size
    for n, T in ((4e7, 4000), (3e8, 6000)):
        lr = _cosine(T)
        s = np.arange(100, T + 1, 50).astype(float)
        y = _sweep_law(n, tps, lr, s)
        at = Curve(s, y + rng.normal(0, 0.004, len(s)), lr, "new-size", n_params=n, tokens_per_step=tps)
        at = at.truncated(0.25)
        p, alone = predict_final_loss(at, refs), predict_final_loss(at, [])
        assert "sweep" in p.mode, p.mode
        # the synthetic law's annealing is not the real runs' prior (test_sweep_model_recovers_a_synthetic_sweep):
        # alone is 4-7% low here, the sweep candidate within 0.2% when written
        assert abs(p.candidates["sweep"] / y[-1] - 1) < 0.005, p.candidates
        assert abs(p.loss / y[-1] - 1) < abs(alone.loss / y[-1] - 1)
        assert p.low <= y[-1] <= p.high
    # the references' own size: the same_size candidate's case, not the sweep model's
    same = predict_final_loss(runs[1].truncated(0.25), [runs[0]])
    assert "sweep" not in same.mode and "same_size" in same.mode


def test_sweep_candidate_follows_a_target_whose_data_term_differs(monkeypatch):
    """A run of another shape than the sweep's (its data-term coefficient 1.3x the law's, as Gemstone's depths
    and widths differ): from 40% of itself, the sweep candidate with the target's own data-term coefficient
    under a loose prior lands much nearer its end than with an offset alone; the shipped (tighter) prior moves
    it part of the way, never further off; the coefficient's posterior widens the candidate's scale."""
    from scaling_train.laws import predict as P

    rng = np.random.default_rng(1)
    tps, runs = _synthetic_sweep(rng)
    n, T = 8e7, 6000
    lr = _cosine(T)
    s = np.arange(100, T + 1, 50).astype(float)
    y = _sweep_law(n, tps, lr, s, A=0.65)  # the law's A is 0.5
    target = Curve(s, y + rng.normal(0, 0.004, len(s)), lr, "other-shape", n_params=n, tokens_per_step=tps)
    at = target.truncated(0.4)

    def sweep_candidate(sigma_slope):
        monkeypatch.setattr(_calibration, "SIGMA_SLOPE", sigma_slope)
        P._FIT_CACHE.clear()
        return next(c for c, _ in P._candidates(at, runs, P.NO_REF_PRIOR, 64, 48, False) if c.name == "sweep")

    shipped = abs(sweep_candidate(_calibration.SIGMA_SLOPE).final / y[-1] - 1)
    loose = sweep_candidate(0.02)
    offset_only = sweep_candidate(0.0)
    e_loose, e_off = abs(loose.final / y[-1] - 1), abs(offset_only.final / y[-1] - 1)
    assert loose.fit.slope > 0 and offset_only.fit.slope == 0.0
    assert e_off > 0.02 and e_loose < min(0.01, e_off / 3), (e_loose, e_off)  # 0.5% against 3.1% when written
    assert shipped <= e_off, (shipped, e_off)
    # v_fit: the coefficient's posterior adds to the offset's (the same fit, with and without it)
    prep = P._prep(at, 64, 48, [float(T)])
    area_T = float(prep.area[-1])
    args = (loose.fit, prep, at, len(prep.t), loose.final, _calibration.SIGMA_DELTA)
    v_off = P._own_terms_variance(*args, 0.0, area_T)
    assert P._own_terms_variance(*args, 0.02, area_T) > 1.5 * v_off
    with pytest.raises(ValueError, match="target_area_T=None"):
        P._fit_sweep([*runs, at], [P._prep(c, 64, 48) for c in [*runs, at]], sigma_rel=0.003,
                     theta0=P._sw_prior(), target_sigma_rel=0.02, target_slope_rel=0.0015)  # fmt: skip


def test_the_sweep_models_data_term_may_change_with_the_size(monkeypatch):
    """Larger models gain more per token (their data-term coefficient grows with N: the quickstart's tiny models,
    where the sweep candidate without it put the largest size's final loss 4-7% too high from 40% of its run).
    On a synthetic sweep whose A grows as N^0.15, the fit finds A_N > 0 and predicts a 2x larger run before it
    starts and from 25% of itself much nearer its end than the law with one A for every size; on a sweep
    with one A it finds A_N ~ 0 and predicts as before."""
    from scaling_train.laws import predict as P

    rng = np.random.default_rng(2)
    tps = 65536.0
    n_big, T = 3.2e8, 6000

    def runs_of(growth):
        def law(n, lr, s):
            return _sweep_law(n, tps, lr, s, A=0.5 * (n / 4e7) ** growth)

        runs = []
        for n in (1e7, 4e7, 1.6e8):
            for h in (2000, 4000):
                lr = _cosine(h)
                s = np.arange(100, h + 1, 50).astype(float)
                runs.append(Curve(s, law(n, lr, s) + rng.normal(0, 0.002, len(s)), lr, f"N{n:g}-T{h}",
                                  n_params=n, tokens_per_step=tps))  # fmt: skip
        lr = _cosine(T)
        s = np.arange(100, T + 1, 50).astype(float)
        y = law(n_big, lr, s)
        big = Curve(s, y + rng.normal(0, 0.002, len(s)), lr, "big", n_params=n_big, tokens_per_step=tps)
        return runs, big, y[-1]

    def sweep_errors(runs, big, truth, sd):
        monkeypatch.setattr(_calibration, "SIGMA_SIZE_SLOPE", sd)
        P._FIT_CACHE.clear()
        out = []
        for at in (big.observed_until(0), big.truncated(0.25)):
            c = next(
                c for c, _ in P._candidates(at, runs, P.NO_REF_PRIOR, 64, 48, False) if c.name == "sweep"
            )
            out.append((c.final / truth - 1, c.fit.A_N))
        return out

    runs, big, truth = runs_of(0.15)
    with_an = sweep_errors(runs, big, truth, _calibration.SIGMA_SIZE_SLOPE)
    one_a = sweep_errors(runs, big, truth, 0.0)
    assert all(an > 0 for _, an in with_an) and all(an == 0.0 for _, an in one_a)
    for (e, _), (e0, _) in zip(with_an, one_a):
        assert abs(e) < 0.5 * abs(e0) and abs(e) < 0.01, (with_an, one_a)
    runs, big, truth = runs_of(0.0)
    for (e, an), (e0, _) in zip(sweep_errors(runs, big, truth, _calibration.SIGMA_SIZE_SLOPE),
                                sweep_errors(runs, big, truth, 0.0)):  # fmt: skip
        assert abs(e) < 0.01 and abs(e) < abs(e0) + 0.003, (e, e0, an)


def test_remaining_curve_and_band_hold_the_real_tail():
    """cosine_72000 (held out) from 50% with the three reference runs: the predicted remaining curve."""
    c = next(x for x in multipower_cases() if x.setting == "mp_refs@50%" and x.name == "cosine_72000")
    p = predict_final_loss(c.target, c.refs, curve_points=40)
    assert len(p.curve_steps) == 40 and p.curve_steps[-1] == c.target.total_steps
    assert p.curve[-1] == pytest.approx(p.loss) and p.curve_low[-1] == pytest.approx(p.low)
    assert np.all(p.curve_low <= p.curve) and np.all(p.curve <= p.curve_high)
    widths = p.curve_high - p.curve_low
    assert widths[0] < 0.2 * widths[-1]  # the band opens with the extrapolation
    # the real remaining curve (raw points: noisy) inside the band for most steps
    from tests.fixtures.realdata import multipower_curve

    real = multipower_curve("cosine_72000")
    tail = real.steps > c.target.steps[-1]
    lo = np.interp(real.steps[tail], p.curve_steps, p.curve_low)
    hi = np.interp(real.steps[tail], p.curve_steps, p.curve_high)
    inside = np.mean((real.losses[tail] >= lo - 0.01) & (real.losses[tail] <= hi + 0.01))  # 0.01: point noise
    assert inside > 0.85, f"{inside:.0%} of the real tail inside the band"


def test_curve_size_fields_are_validated():
    lr = np.ones(10)
    with pytest.raises(ValueError, match=r"n_params=-1 must be a finite number > 0 or None \(curve 'x'\)"):
        Curve([1.0], [1.0], lr, "x", n_params=-1)
    with pytest.raises(ValueError, match="tokens_per_step=nan"):
        Curve([1.0], [1.0], lr, tokens_per_step=float("nan"))
    c = Curve([1.0, 2.0], [2.0, 1.0], lr, n_params=1e6, tokens_per_step=512)
    assert c.truncated(0.1).n_params == 1e6 and c.observed_until(0).tokens_per_step == 512
    with pytest.raises(ValueError, match="curve_points=-1"):
        predict_final_loss(c, curve_points=-1)


def test_a_target_still_in_its_warmup_counts_as_not_started():
    """Points before the LR peak are the early transient: with < 2 points past the warmup the prediction comes
    from the references alone (the live quickstart's 4%-of-a-run prediction was -29% off with 2 such points)."""
    tps = 65536.0
    runs = []
    for n in (1e7, 4e7, 1.6e8):
        lr = _cosine(2000)
        s = np.arange(100, 2001, 50).astype(float)
        runs.append(Curve(s, _sweep_law(n, tps, lr, s), lr, f"N{n:g}", n_params=n, tokens_per_step=tps))
    lr = _cosine(4000, warm=400)
    s = np.arange(100, 4001, 50).astype(float)
    y = _sweep_law(8e7, tps, lr, s)
    # steps 100..400: one point at the peak (step 400), the rest in the warmup
    early = Curve(s[:7], y[:7] + 0.5, lr, "t", n_params=8e7, tokens_per_step=tps)
    p = predict_final_loss(early, runs)
    assert p.mode == "sweep" and p.loss == pytest.approx(
        predict_final_loss(early.observed_until(0), runs).loss
    )
    with pytest.raises(NotEnoughDataError):
        predict_final_loss(early)  # nothing but the transient and no references
    later = Curve(s[:9], y[:9], lr, "t", n_params=8e7, tokens_per_step=tps)  # 400, 450, 500: past the warmup
    assert "sweep" in predict_final_loss(later, runs).mode


def test_alone_annealing_prior_follows_the_peak_lr():
    """The alone prior's B mean grows with the peak LR (calibrated exponent > 0, clipped to the fitted LR range);
    a normalised schedule (lr_absolute=False) takes the unknown-LR mean; the real held-out WSD/cosine runs are
    predicted without the over-prediction the LR-blind prior had (bias +1.2% on validation loss)."""
    from scaling_train.laws.curve import NO_REF_PRIOR

    lr = np.ones(100)
    lo, hi = _calibration.NO_REF_B_LR_RANGE
    b = [NO_REF_PRIOR.for_curve(Curve([], [], lr * p)).b_rel for p in (lo / 10, lo, 1e-3, hi, hi * 10)]
    assert _calibration.NO_REF_B_LR_EXPONENT > 0
    assert b[0] == b[1] < b[2] < b[3] == b[4]  # monotone, clipped outside the calibrated range
    assert b[2] == pytest.approx(_calibration.NO_REF_B_REL)
    unknown = NO_REF_PRIOR.for_curve(Curve([], [], lr, lr_absolute=False))
    assert unknown.b_rel == pytest.approx(_calibration.NO_REF_B_REL_UNKNOWN_LR)
    assert unknown.b_rel_sd / unknown.b_rel == pytest.approx(NO_REF_PRIOR.b_rel_sd / NO_REF_PRIOR.b_rel)
    assert NO_REF_PRIOR.for_curve(Curve([], [], lr * 1e-3)).for_curve(Curve([], [], lr * 3e-3)).b_rel == b[2]
    c = Curve([1.0], [1.0], lr, lr_absolute=False)
    assert not c.observed_until(0).lr_absolute and c.digest() != Curve([1.0], [1.0], lr).digest()


def test_alone_is_unbiased_on_held_out_annealing_runs(lrs_val):
    """Cooldowns of held-out groups predicted from their constant-LR prefix alone. Measured: bias +0.82%, mean
    abs 0.82% (every case too high: the predicted gain of the drop too small); +0.65% / 0.67% before the
    schedule power (LR_POWER 0.7, docs/laws.md), which cut the other settings' errors."""
    cases = [c for c in lrs_val if c.setting == "cool" and is_held_out(c.group)]
    e = np.array([_err(c, ()) for c in cases])
    assert len(e) >= 25
    assert abs(e.mean()) < 0.009 and np.mean(np.abs(e)) < 0.01, (e.mean(), np.mean(np.abs(e)))


def test_long_runs_from_the_sweeps_short_budgets_are_not_predicted_low(lrs_val):
    """The issue's headline failure: runs 3x-10x longer than their finished same-size references were predicted
    4-8% too low with 0% coverage. On the real validation curves (far@25: references of <= 1/3 the horizon)
    the blend's bias is a fraction of that, it is about as good as the target alone, and its interval mostly
    covers (measured: bias +0.38%, mean |error| 0.91% vs 1.46% alone, coverage 82%, when written; since the alone
    prior's sd was fitted, 2026-12-05, the alone prediction is as good: 0.39% vs 0.36%, the references' short
    horizons no longer help here -- docs/laws.md, session 26)."""
    cases = [c for c in lrs_val if c.setting == "far@25"]
    assert len(cases) >= 20
    p = [predict_final_loss(c.target, c.refs) for c in cases]
    e = np.array([q.loss / c.truth - 1 for q, c in zip(p, cases)])
    alone = np.array([_err(c, ()) for c in cases])
    cover = np.mean([q.low <= c.truth <= q.high for q, c in zip(p, cases)])
    assert abs(e.mean()) < 0.01 and np.mean(np.abs(e)) < 0.012, (e.mean(), np.mean(np.abs(e)))
    assert np.mean(np.abs(e)) < 1.15 * np.mean(np.abs(alone)) and cover >= 0.75, cover


def test_running_references_are_left_out():
    """predict_final_loss uses only finished references: on the live@ settings (the sweep as the live fitter
    sees it) the running ones made held-out predictions worse than the target alone."""
    from scaling_train.laws.predict import is_running

    c = next(x for x in lr_schedule_cases(("val",)) if x.setting == "live@30" and x.refs)
    running = [is_running(r) for r in c.refs]
    assert any(running) and not all(running)  # short runs have finished by then, long ones have not
    assert is_running(c.target.observed_until(0))  # no point yet
    p = predict_final_loss(c.target, c.refs)
    fin = [r for r, run in zip(c.refs, running) if not run]
    q = predict_final_loss(c.target, fin)
    assert p.ignored == tuple(r.name for r, run in zip(c.refs, running) if run) and q.ignored == ()
    assert (p.loss, p.low, p.high, p.mode) == (q.loss, q.low, q.high, q.mode)
    # a finished run logged every 200 steps that ends 200 steps before T is finished, not running
    r = c.refs[running.index(False)]
    assert not is_running(r.observed_until(r.total_steps - 1))


def test_a_prefix_of_few_points_widens_the_sweep_candidate_too():
    """Under 10 own points the target's offset from the sweep law rests on too few of them: the sweep
    candidate takes the same few-points factor on its scale as the alone and same-size candidates (the
    quickstart's 16 evaluations per run give 4-6 points at 40%): 1 with 15 points, > 2 with these 5 points of a
    prefix still falling steeply (``predict.few_factor``)."""
    rng = np.random.default_rng(0)
    tps, runs = _synthetic_sweep(rng)
    n, T = 3e8, 6000
    lr = 3e-3 * _cosine(T)  # a real peak LR, inside the alone prior's range (its amplitude depends on it)
    width = {}
    for every in (100, 300):  # 15 and 5 points in the first 25%
        s = np.arange(100, 0.25 * T + 1, every).astype(float)
        t = Curve(s, _sweep_law(n, tps, lr, s) + rng.normal(0, 0.004, len(s)), lr, "big", n_params=n,
                  tokens_per_step=tps)  # fmt: skip
        p = predict_final_loss(t, runs)
        few = p.scale_terms[0]
        # the sweep candidate carries a large share of the blend (0.57 / 0.47; the largest before the alone
        # prior's sd was fitted, 2026-12-05: the alone scale is narrower since)
        assert p.weights["sweep"] > 0.4, p.weights
        assert few == 1.0 if every == 100 else few > 2.0, few
        width[every] = (p.high - p.low) / p.loss
    # measured x1.56 (few factor 2.4; x2 and more with the flat 3 before)
    assert width[300] > 1.3 * width[100]


def test_the_few_points_factor_follows_how_steeply_the_prefix_still_falls(lrs_val, monkeypatch):
    """Under 10 own points every candidate's scale takes ``few_factor``: the prefix's steepness (its last 3
    points' log-log slope) over ``FEW_SLOPE``, between 1 and 3 (a flat 3, set by hand, before). The held-out
    ``sparse@25`` runs (lr_schedules validation curves thinned to 6 points at 25% of the run, past their early
    fall; report-only, so nothing was fitted on them) take much less than 3 and their intervals still hold
    >= 90% of the truths, narrower than under the flat factor; the quickstart's 40% prefixes (tiny models
    still falling fast) keep most of it. Measured (FEW_SLOPE 0.03): median factor 1.95 (held-out sparse@25) / 3
    (the 12 quickstart prefixes); sparse@25 held out 99% inside at 7.1% wide, against 99% at 10.8% under the flat
    3 (at FEW_SLOPE 0.04, before the sweep model's size-dependent data term: 1.46, 97%, 5.6%)."""
    import math

    from scaling_train.laws.predict import FEW_FACTOR, few_factor, steepness
    from tests.fixtures.protocol import quickstart_cases

    assert few_factor(0.0) == 1.0 and few_factor(math.inf) == FEW_FACTOR
    f = [few_factor(x) for x in np.linspace(0.0, 0.5, 51)]
    assert all(1.0 <= a <= b <= FEW_FACTOR for a, b in zip(f, f[1:])) and f[-1] == FEW_FACTOR
    cases = [c for c in lrs_val if c.setting == "sparse@25" and is_held_out(c.group)]
    assert len(cases) >= 50

    def run(cs):
        p = [predict_final_loss(c.target, c.refs) for c in cs]
        cover = np.mean([q.low <= c.truth <= q.high for q, c in zip(p, cs)])
        return p, cover, np.mean([(q.high - q.low) / q.loss for q in p])

    p, cover, width = run(cases)
    fac = np.array([q.scale_terms[0] for q in p])
    assert all(q.scale_terms[0] == few_factor(q.scale_terms[4]) for q in p)
    qs = [few_factor(steepness(pred_mod._prep(c.target, 64, 48))) for c in quickstart_cases()]
    assert np.median(fac) < 2.2 and np.median(fac) < np.median(qs) - 0.5 and cover >= 0.9, (fac, qs, cover)
    monkeypatch.setattr(_calibration, "FEW_SLOPE", 1e-9)  # the flat factor
    _, cover_flat, width_flat = run(cases)
    assert width < 0.75 * width_flat and cover_flat >= cover, (width, width_flat)


def test_the_sweep_candidates_size_extrapolation_is_checked_on_the_sweeps_own_sizes(monkeypatch):
    """A target larger than every reference: the references of the largest size are predicted from the smaller
    ones (``_size_backtest``) and the sweep candidate's rms error there, scaled to the target's extrapolation,
    widens the interval by the candidate's share of the blend; the point prediction does not move. Where the
    law holds across sizes it adds almost nothing; where the larger sizes break from it, the interval takes
    it; nothing for a target within the references' sizes or with fewer than 3 finished sizes. On the real
    quickstart (qs@40) the largest size's sweep candidate, 6.8% high until the sweep model's data term could
    change with the size, is now within 1%."""
    from scaling_train.laws.predict import _size_backtest
    from tests.fixtures.protocol import quickstart_cases

    rng = np.random.default_rng(0)
    tps, runs = _synthetic_sweep(rng)
    n, T = 3e8, 6000
    lr = _cosine(T)
    s = np.arange(100, T + 1, 50).astype(float)
    y = _sweep_law(n, tps, lr, s)
    big = Curve(s, y + rng.normal(0, 0.004, len(s)), lr, "big", n_params=n, tokens_per_step=tps)
    assert _size_backtest(big.truncated(0.25), runs, 64, 48) < 0.005  # the law holds: about its noise
    assert _size_backtest(runs[0].truncated(0.25), runs, 64, 48) == 0.0  # within the references' sizes
    assert _size_backtest(big.truncated(0.25), [r for r in runs if r.n_params < 1.6e8], 64, 48) == 0.0

    def broken(n_params):  # above 4e7 the loss falls 8% per 4x in size more than the law says
        return 1 - 0.08 * max(0.0, np.log(n_params / 4e7)) / np.log(4)

    kinked = [
        Curve(r.steps, _sweep_law(r.n_params, tps, r.lr, r.steps) * broken(r.n_params)
              + rng.normal(0, 0.004, len(r.steps)), r.lr, r.name, n_params=r.n_params, tokens_per_step=tps)
        for r in runs
    ]  # fmt: skip
    yk = y[-1] * broken(n)
    before = Curve(s[:0], y[:0], lr, "big", n_params=n, tokens_per_step=tps)
    err = _size_backtest(before, kinked, 64, 48)
    assert err > 0.015
    with_check = predict_final_loss(before, kinked)
    without = predict_final_loss(before, kinked, backtest=False)
    assert with_check.loss == pytest.approx(without.loss, rel=1e-9)
    # one candidate, key "sweep" (quantiles +-1.645): the error enters u as it is
    assert with_check.rel_scale == pytest.approx(np.hypot(without.rel_scale, err), rel=1e-4)
    assert with_check.low < without.low and with_check.high > without.high
    assert with_check.low <= yk <= with_check.high
    # the live quickstart's largest size (0.22M) at 40%, from the 0.027M-0.107M runs finished by then
    (case,) = [c for c in quickstart_cases() if c.target.n_params > 2e5]
    got = predict_final_loss(case.target, case.refs)
    # within 1% since the sweep model's data term changes with the size (A_N); +6.8% before, with one A
    assert abs(got.candidates["sweep"] / case.truth - 1) < 0.01
    import scaling_train.laws.predict as pm

    monkeypatch.setattr(pm, "_size_backtest", lambda *a: 0.0)
    bare = predict_final_loss(case.target, case.refs)
    assert bare.loss == pytest.approx(got.loss, rel=1e-9)
    # the check only ever widens; the interval holds the truth (the blend +3.0%: the alone candidate is +7.5%)
    assert got.low <= bare.low and got.high >= bare.high and got.low <= case.truth <= got.high


def test_alone_annealing_prior_follows_the_model_size():
    """With a known LR and size the alone prior's B mean also scales as (N / 1e8) ** k (calibrated k > 0, N
    clipped to the empirical-Bayes runs' sizes); a curve of unknown LR scale or size takes no size factor. On
    the held-out lr_schedules cosine validation runs the size-blind prior left the larger models' alone
    predictions from 25% too high (152M / 360M: +0.79% / +0.72%) and the smaller ones' too low (53M: -1.64%)."""
    from scaling_train.laws.curve import NO_REF_PRIOR

    lr = np.full(100, 1e-3)
    lo, hi = _calibration.NO_REF_B_N_RANGE
    k = _calibration.NO_REF_B_N_EXPONENT
    assert k > 0 and lo < 1e8 < hi

    def b(n, lr_absolute=True):
        return NO_REF_PRIOR.for_curve(Curve([], [], lr, n_params=n, lr_absolute=lr_absolute)).b_rel

    got = [b(n) for n in (lo / 10, lo, 1e8, hi, hi * 10)]
    assert got[0] == got[1] < got[2] < got[3] == got[4]
    assert got[2] == pytest.approx(_calibration.NO_REF_B_REL) == b(None)
    assert got[3] / got[2] == pytest.approx((hi / 1e8) ** k)
    assert b(hi, lr_absolute=False) == pytest.approx(_calibration.NO_REF_B_REL_UNKNOWN_LR) == b(None, False)
    resolved = NO_REF_PRIOR.for_curve(Curve([], [], lr, n_params=hi))
    assert resolved.for_curve(Curve([], [], lr, n_params=lo)).b_rel == got[3]  # resolved once

    bias = defaultdict(list)
    for c in lr_schedule_cases(("val",)):
        size = c.group.split("/")[1]
        if c.setting == "alone@25" and "/slimpajama/cos/" in c.group and size in ("53M", "152M", "360M"):
            assert is_held_out(c.group)
            p = predict_final_loss(c.target, backtest=False)
            bias["small" if size == "53M" else "large"].append(p.candidates["alone"] / c.truth - 1)
    large, small = float(np.mean(bias["large"])), float(np.mean(bias["small"]))
    assert len(bias["large"]) == 6 and len(bias["small"]) == 3
    assert abs(large) < 0.005 and abs(small) < 0.015, (large, small)  # measured +0.31% / -1.36%


def test_a_cosine_prefix_does_not_talk_the_alone_prior_out_of_its_annealing_gain():
    """The alone prior's sd is a calibrated fraction of its mean (empirical Bayes; 0.57 by hand before): looser,
    the early part of a cosine decay in the prefix pulled B down, and the larger held-out cosine runs were
    predicted too high from 35% of their steps (where the adaptive policy stops them: +0.93% on 152M / 360M,
    validation loss)."""
    from scaling_train.laws.curve import NO_REF_PRIOR

    assert NO_REF_PRIOR.b_rel_sd == pytest.approx(_calibration.NO_REF_B_REL * _calibration.NO_REF_B_SD_FACTOR)
    assert 0 < _calibration.NO_REF_B_SD_FACTOR < 0.5
    errs = []
    for c in lr_schedule_cases(("val",)):
        size = c.group.split("/")[1]
        if c.setting == "live@90" and "/slimpajama/cos/" in c.group and size in ("152M", "360M"):
            assert is_held_out(c.group)
            at = c.target.observed_until(0.35 * c.target.total_steps)
            errs.append(predict_final_loss(at, backtest=False).candidates["alone"] / c.truth - 1)
    assert len(errs) == 6
    assert abs(float(np.mean(errs))) < 0.006, np.mean(errs)  # measured +0.42% (+0.91% with the sd at 0.57)


def test_the_alone_priors_lr_law_is_used_up_to_the_quickstarts_calibration_peaks():
    """The prior amplitude's LR power law is clipped to the peaks of the calibration runs, the PRIOR_ONLY
    quickstart sizes included (their 6.6e-3 and 9.4e-3 are the highest): a run at 9e-3 takes (9 / 5) ** k of
    a 5e-3 run's amplitude (clipped at 5e-3 it took the same), one above the range that of its top."""
    from scaling_train.laws.curve import NO_REF_PRIOR

    qs = [c for c in all_cases() if c.setting in PRIOR_ONLY and not is_held_out(c.group)]
    top = max(float(c.target.lr.max()) for c in qs)
    assert _calibration.NO_REF_B_LR_RANGE[1] == pytest.approx(top, rel=1e-3) and top > 9e-3

    def b(peak):
        s = np.arange(1.0, 101.0)
        return NO_REF_PRIOR.for_curve(Curve(s, 3.0 + 0 * s, np.full(100, peak), "c")).b_rel

    k = _calibration.NO_REF_B_LR_EXPONENT
    assert b(9e-3) / b(5e-3) == pytest.approx((9 / 5) ** k, rel=1e-6)
    assert b(2e-2) == pytest.approx(b(_calibration.NO_REF_B_LR_RANGE[1]), rel=1e-9)


def test_quickstart_cases_are_the_live_sweep_at_40_percent():
    """qs@40: each quickstart run cut at 40% of its steps, its references the runs finished by then (never
    itself, never a longer run of its own size), truth = its final evaluation; its calibration sizes set
    only the range of peak LRs of the alone prior's LR law and, among the few-point cases, FEW_SLOPE
    (PRIOR_ONLY)."""
    from tests.fixtures.protocol import quickstart_cases
    from tests.fixtures.realdata import quickstart_runs

    runs = quickstart_runs()
    cases = quickstart_cases()
    assert len(cases) == len(runs) == 12 and "qs@40" in PRIOR_ONLY
    for c in cases:
        full = runs[c.name].curve
        assert (
            c.target.total_steps == full.total_steps and np.nanmax(c.target.steps) <= 0.4 * full.total_steps
        )
        assert c.truth == pytest.approx(full.losses[-1]) and full.steps[-1] == full.total_steps
        for r in c.refs:
            assert r.name != c.name
            if r.n_params == full.n_params:
                assert r.total_steps < full.total_steps  # order=budget: only shorter same-size runs finished
    # the smallest budget ran first: its runs had no finished reference at 40%
    assert sum(not c.refs for c in cases) >= 2


def test_training_truth_is_the_curve_at_the_window_mean_step():
    """Where the curve bends over the truth window (a cooldown's end), its plain mean lies above its value at
    the mean step; the quadratic read does not, and its standard error covers the noise."""
    from tests.fixtures.protocol import train_truth

    s = np.arange(1.0, 201.0) * 50
    curve = 3.0 + 2e-7 * (s - 8200.0) ** 2  # bends inside the last 40 points (steps 8050-10000)
    T, y, sd = train_truth(s, curve)
    assert T == round(s[-40:].mean()) and y == pytest.approx(3.0 + 2e-7 * (T - 8200.0) ** 2, rel=1e-9)
    assert curve[-40:].mean() > y * 1.002 and sd < 1e-9  # the old read: biased by the bend
    noisy = curve + np.random.default_rng(1).normal(0.0, 0.02, len(s))
    errs = [
        train_truth(s, curve + np.random.default_rng(k).normal(0.0, 0.02, len(s)))[1] - y for k in range(200)
    ]
    assert abs(np.mean(errs)) < 0.002 and 0.5 < np.std(errs) / train_truth(s, noisy)[2] < 1.5


def test_read_noise_is_the_window_reads_error_and_widens_the_interval():
    """``read_noise``: a window read's error from the curve's own per-point noise (the truth's standard error
    on real training losses, ~0 on smooth curves); the interval holds it, the model's scale does not."""
    from scaling_train.laws.predict import read_noise
    from tests.fixtures.protocol import TRUTH_WINDOW, train_truth

    rng = np.random.default_rng(3)
    s = np.arange(1.0, 2001.0) * 5
    smooth = 3.0 + 4.0 * (s / 100.0) ** -0.4
    # the estimate against the spread of the reads it stands for, on the same noise (2% per point)
    reads = [train_truth(s, smooth * (1 + rng.normal(0.0, 0.02, len(s))))[1] for _ in range(300)]
    spread = float(np.std(reads)) / smooth[-TRUTH_WINDOW:].mean()
    lr = np.full(10000, 1e-3)
    noisy = Curve(s.astype(int), smooth * (1 + rng.normal(0.0, 0.02, len(s))), lr, name="noisy")
    clean = Curve(s.astype(int), smooth, lr, name="clean")
    assert 0.8 < read_noise(noisy) / spread < 1.25, (read_noise(noisy), spread)
    assert read_noise(clean) < 1e-4 * read_noise(noisy)
    # before the target has points of its own: the references' noise
    empty = noisy.observed_until(0)
    assert read_noise(empty, [noisy]) == pytest.approx(read_noise(noisy)) and read_noise(empty) == 0.0
    p_noisy = predict_final_loss(noisy.observed_until(2500), backtest=False)
    p_clean = predict_final_loss(clean.observed_until(2500), backtest=False)
    assert p_noisy.read_noise == pytest.approx(read_noise(noisy.observed_until(2500)))
    assert p_clean.read_noise < 1e-4 and p_noisy.rel_scale > p_noisy.read_noise > 0.005
    target = noisy.observed_until(2500)
    lo_q, hi_q = pred_mod.interval_quantiles("alone", pred_mod.interval_regime(target, p_noisy.read_noise))
    assert p_noisy.high - p_noisy.low >= (hi_q - lo_q) * p_noisy.read_noise * p_noisy.loss * 0.999
    # on the real training losses: the estimate from a 25% prefix against the truth's own standard error
    cases = [c for c in lr_schedule_cases(("train",)) if c.setting == "alone@25"]
    ratio = [read_noise(c.target) / (c.truth_sd / c.truth) for c in cases]
    assert 0.75 < float(np.median(ratio)) < 1.3, np.median(ratio)


def test_early_prefixes_past_the_calibrated_extrapolation_keep_their_coverage():
    """A prefix of 5-10% of a run extrapolates further (e^2-e^3 of its LR area) than any case the scales were fitted
    on (e^1.7): there the linear growth of the scale under-covered the training loss (held out: 54% at 5%, 66% at
    10%). Past EXTRAP_CALIBRATED the own-prefix candidates' sd takes BEYOND_FACTOR, fitted on the early@ cases of
    the calibration groups only; on the held-out groups the intervals hold again (measured 90% at both)."""
    cases = [
        c
        for c in lr_schedule_cases(("train",))
        if c.setting in ("early@5", "early@10") and is_held_out(c.group)
    ]
    assert len(cases) >= 100
    got = []
    for c in cases:
        try:
            got.append((predict_final_loss(c.target), c.truth))
        except NotEnoughDataError:
            continue
    assert len(got) >= 0.95 * len(cases)
    beyond = [(p, t) for p, t in got if p.extrapolation > _calibration.EXTRAP_CALIBRATED]
    assert len(beyond) >= 0.8 * len(got)
    cover = np.mean([p.low <= t <= p.high for p, t in beyond])
    assert cover >= 0.85, cover
    assert all(1.0 <= f < 5.0 for f in _calibration.BEYOND_FACTOR.values())
    assert _calibration.EXTRAP_CALIBRATED < _calibration.EXTRAP_MAX


def test_a_prefix_too_early_for_any_calibrated_prediction_is_refused_with_its_reason():
    """Past EXTRAP_MAX (the earliest calibrated prefix) no own-prefix prediction is made: without references a
    clear NotEnoughDataError that says how far the prefix would be extrapolated; with references of two sizes the
    run is predicted as if it had not started (the sweep model's calibrated before-start prediction)."""
    tps = 65536.0
    lr = np.ones(20000)
    s = np.arange(20, 201, 20).astype(float)  # 10 points in the first 1% of a constant-LR run: e^4.6 to go
    early = Curve(s, _sweep_law(8e7, tps, lr, s), lr, "t", n_params=8e7, tokens_per_step=tps)
    with pytest.raises(NotEnoughDataError, match=r"extrapolated 4\.61 e-folds .* past the \d\.\d\d"):
        predict_final_loss(early)
    refs = []
    for n in (1e7, 4e7):
        lr_r = np.ones(4000)
        sr = np.arange(50, 4001, 50).astype(float)
        refs.append(Curve(sr, _sweep_law(n, tps, lr_r, sr), lr_r, f"N{n:g}", n_params=n, tokens_per_step=tps))
    p = predict_final_loss(early, refs)
    assert p.mode == "sweep"
    assert p.loss == pytest.approx(predict_final_loss(early.observed_until(0), refs).loss)
    # a little later (5% of the run: e^3.0) the run's own points are used again
    later = Curve(
        np.arange(50, 1001, 50).astype(float), _sweep_law(8e7, tps, lr, np.arange(50, 1001, 50.0)), lr, "t"
    )
    assert predict_final_loss(later).mode == "alone"


def test_the_calibration_step_past_the_extrapolation_reads_only_calibration_groups(monkeypatch, lrs_val):
    """benchmarks/calibrate_laws.py step 5 (``beyond``) on controlled candidates: a read regime's factor is the
    weighted 92% quantile of what the early@ cases past EXTRAP_CALIBRATED need (sd x factor x q >= |error|), per
    setting and loss kind, the largest of the regime's units (every fake case here has the same validation-loss
    target: one smooth regime, whose training-labelled unit sets it; the noisy regime has no case: 1); a held-out
    group's case, however badly missed, changes nothing; EXTRAP_MAX is the largest extrapolation seen and the
    module's values are restored afterwards (BEYOND_FACTOR set to 1 while the cases are measured)."""
    import benchmarks.calibrate_laws as cl

    cases, fake = [], {}
    for i in range(40):
        kind = "train" if i % 2 else "val"
        g = f"lrs/{'33M' if i < 36 else '53M'}/slimpajama/g{i}/{kind}"  # 53M: a held-out size
        c = replace(lrs_val[0], group=g, setting="early@5", name=f"r{i}", truth=1.0)
        cases.append(c)
        # needed factor: (i + 1) / 10 on the training loss, 1 on the validation loss; held out: 100
        need = 100.0 if i >= 36 else ((i + 1) / 10 if kind == "train" else 0.5)
        x = 2.0 + 0.01 * i
        fake[c.name] = {"alone": (1.0 / (1.0 + need * 0.01 * 2.0), (1.0, x, 0.0, 0.0, 0.0), 0.0)}
    out = {
        "interval": {"alone": {"s0": 0.01, "s1": 0.0, "r": 0.0, "q_lo": -2.0, "q_hi": 2.0}},
        "few_slope": 0.04,
    }
    before = _calibration.EXTRAP_MAX, _calibration.BEYOND_FACTOR
    seen = []
    monkeypatch.setattr(
        cl,
        "candidates",
        lambda cs, prior: seen.append(dict(_calibration.BEYOND_FACTOR)) or [fake[c.name] for c in cs],
    )
    cl.beyond(cases, [{"alone": (1.0, (1.0, 1.5, 0.0, 0.0, 0.0), 0.0)}], None, out, log=lambda s: None)
    assert (_calibration.EXTRAP_MAX, _calibration.BEYOND_FACTOR) == before
    # the cases' backtest errors unscaled by the factor in force
    assert seen == [{"noisy": 1.0, "smooth": 1.0}]
    assert out["extrap_calibrated"] == 1.5
    assert out["extrap_max"] == pytest.approx(2.0 + 0.01 * 35)  # the held-out cases' x (2.36..2.39) unseen
    train_need = np.array([(i + 1) / 10 for i in range(1, 36, 2)])
    # equal weights within the 18 training-loss groups: the 92% quantile of their needs, never below 1
    assert out["beyond_factor"]["smooth"] == pytest.approx(
        np.sort(np.maximum(train_need, 1.0))[int(np.ceil(0.92 * 18)) - 1]
    )
    assert out["beyond_factor"]["noisy"] == 1.0


def test_interval_regimes_are_read_off_the_target_and_each_has_its_quantiles():
    """``predict.interval_regime``: before / from 60% of the run, a smooth / noisy read. On the real curves the
    lr_schedules training losses read noisy and their validation losses smooth at every prefix; the blend has
    quantiles in every regime, holding the Gaussian 90% at least, inside its widest (other keys: one set)."""
    train = [c for c in lr_schedule_cases(("train",)) if c.setting in ("alone@25", "live@90")][::5]
    val = [c for c in lr_schedule_cases(("val",)) if c.setting in ("alone@25", "live@90")][::5]
    for cases, noise in ((train, "noisy"), (val, "smooth")):
        for c in cases:
            rn = pred_mod.read_noise(c.target, [r for r in c.refs if not pred_mod.is_running(r)])
            when = "late" if c.setting == "live@90" else "mid"
            assert pred_mod.interval_regime(c.target, rn) == f"{when}/{noise}", (c.group, c.name, rn)
    assert pred_mod.interval_regime(train[0].target.observed_until(0), 0.0) == "mid/smooth"  # not started
    assert pred_mod.REGIME_KEYS == ("blend",) and set(_calibration.QUANTILES) == {"blend"}
    for key in (*pred_mod.CANDIDATES, "blend"):
        wide = _calibration.INTERVAL[key]
        for regime in pred_mod.REGIMES:
            lo, hi = pred_mod.interval_quantiles(key, regime)
            assert wide["q_lo"] <= lo <= -1.6448 and 1.6448 <= hi <= wide["q_hi"], (key, regime, lo, hi)
            if key != "blend":
                assert (lo, hi) == (wide["q_lo"], wide["q_hi"])


@pytest.mark.slow  # ~40 s: 300 held-out predictions
def test_held_out_coverage_holds_in_every_regime():
    """The blend's quantiles per regime (calibrate_laws.py step 4) narrowed the intervals where one set covered
    96-100% of the held-out cases (training-loss predictions, mid-run blends); on the held-out groups each
    regime's intervals still hold >= 80% of the truths in each setting that reaches it, and are not wider than
    needed everywhere: the same intervals at 2/3 of their width fall below 85% somewhere."""
    cases = [
        c for c in lr_schedule_cases()
        if is_held_out(c.group) and c.setting in ("alone@25", "same@25", "live@30", "live@70", "cool")
    ]  # fmt: skip
    by = defaultdict(lambda: ([], []))
    for c in cases:
        p = predict_final_loss(c.target, c.refs)
        rn = pred_mod.read_noise(c.target, [r for r in c.refs if not pred_mod.is_running(r)])
        inside, narrow = by[(c.setting, pred_mod.interval_regime(c.target, rn))]
        inside.append(p.low <= c.truth <= p.high)
        k = 2 / 3
        narrow.append(p.loss + k * (p.low - p.loss) <= c.truth <= p.loss + k * (p.high - p.loss))
    cells = {k: v for k, v in by.items() if len(v[0]) >= 10}
    assert {r for _, r in cells} >= {"mid/noisy", "mid/smooth", "late/noisy", "late/smooth"}
    for cell, (inside, _) in cells.items():
        assert np.mean(inside) >= 0.80, f"{cell}: coverage {np.mean(inside):.0%} of {len(inside)}"
    assert min(np.mean(n) for _, n in cells.values()) < 0.85


def test_the_calibration_step_for_the_few_points_slope_keeps_the_full_factor_when_every_value_loses(
    monkeypatch, lrs_val
):
    """benchmarks/calibrate_laws.py step 5a (``few_slope``) on controlled cases: each case's interval half-width
    is 1% x its few-points factor and it needs ``need``; FEW_SLOPE is the last grid value before the first that
    covers less than the full factor does. When even the grid's first value loses coverage the step keeps the
    full factor (what the scales were fitted with), not the least widening of the grid; the module's FEW_SLOPE is
    restored afterwards."""
    import benchmarks.calibrate_laws as cl

    steep = [0.03 + 0.005 * i for i in range(10)]  # 0.03-0.075
    cases = [
        replace(
            lrs_val[0],
            group=f"lrs/33M/slimpajama/g{i}/val",
            setting="alone@25",
            target=replace(lrs_val[0].target, name=f"r{i}"),
            truth=1.0,
        )
        for i in range(10)
    ]
    res = [{"alone": (1.0, (1.0, 0.1, 0.0, 0.0, s), 0.0)} for s in steep]  # terms[4]: the steepness
    monkeypatch.setattr(cl, "candidates", lambda cs, prior: [])

    def few_slope(need: list[float]) -> float:
        by_name = {c.target.name: (s, n) for c, s, n in zip(cases, steep, need)}

        def fake_predict(target, refs, prior=None):
            s, n = by_name[target.name]
            half = 0.01 * pred_mod.few_factor(s)
            inside = half >= n - 1e-12
            return type("P", (), {"low": 0.5 if inside else 2.0, "high": 1.5})()  # truth 1.0 inside or not

        monkeypatch.setattr(cl, "predict_final_loss", fake_predict)
        out = {"interval": _calibration.INTERVAL, "quantiles": _calibration.QUANTILES}
        kept = _calibration.FEW_SLOPE
        cl.few_slope(cases, res, [], None, out, log=lambda s: None)
        assert _calibration.FEW_SLOPE == kept
        return out["few_slope"]

    # a case holds its truth while its factor steep / FEW_SLOPE >= need / 1%: every case up to FEW_SLOPE = 0.05
    assert few_slope([0.01 * s / 0.05 for s in steep]) == pytest.approx(0.05)
    # every case needs the full factor: even the grid's first value loses (0.02: factor 1.5 at steepness 0.03)
    full = few_slope([0.01 * pred_mod.FEW_FACTOR for _ in steep])
    assert full == cl.FEW_SLOPE_FULL
    assert all(pred_mod.few_factor(s, slope=full) == pred_mod.FEW_FACTOR for s in steep)
