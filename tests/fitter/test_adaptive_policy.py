"""The adaptive-sweep policy (fitter/adaptive.py): the stop rule, exemptions, validation, the weight of a
predicted point; the live fitter requesting stops; the weighted Chinchilla fit."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from scaling_train.fitter.adaptive import AdaptivePolicy, prediction_weight
from scaling_train.fitter.core import SweepFitter
from scaling_train.laws import fit_chinchilla
from scaling_train.metrics.jsonl import read_jsonl


def _h(fraction, loss, half):
    return {"fraction": fraction, "loss": loss, "low": loss - half, "high": loss + half}


def test_decide_needs_min_fraction_k_spaced_narrow_and_agreeing_updates():
    pol = AdaptivePolicy(tolerance=0.02, stable_updates=3, spacing=0.05, min_fraction=0.25)
    narrow = [_h(f, 3.0, 0.02) for f in (0.10, 0.15, 0.20)]  # width 0.04 / 3 = 1.3% < 2%
    assert pol.decide(narrow) == (False, "at 20% of the run, before min_fraction 25%")
    ok, why = pol.decide(narrow + [_h(0.25, 3.0, 0.02)])
    assert ok and "over 3 updates from 15% to 25%" in why
    # updates closer than `spacing` do not count as separate ones
    dense = [_h(f, 3.0, 0.02) for f in (0.25, 0.26, 0.27, 0.28)]
    assert pol.decide(dense) == (False, "1 of 3 spaced updates so far")
    # one wide interval among the last k
    wide = [_h(0.15, 3.0, 0.02), _h(0.20, 3.0, 0.05), _h(0.25, 3.0, 0.02)]
    stop, why = pol.decide(wide)
    assert not stop and why.startswith("interval width 0.0333")
    # narrow but moving: 3.00 -> 3.05 is 1.6% > tolerance / 2
    moving = [_h(0.15, 3.0, 0.01), _h(0.20, 3.03, 0.01), _h(0.25, 3.05, 0.01)]
    stop, why = pol.decide(moving)
    assert not stop and why.startswith("predictions moved by")
    # absolute tolerance in loss units
    pol_abs = AdaptivePolicy(tolerance=0.05, relative=False, stable_updates=1, min_fraction=0)
    assert pol_abs.decide([_h(0.5, 3.0, 0.02)])[0] and not pol_abs.decide([_h(0.5, 3.0, 0.03)])[0]
    # failed predictions (no loss) are skipped; none at all says so
    assert pol.decide([{"fraction": 0.5, "loss": None, "low": None, "high": None}]) == (
        False,
        "no prediction yet",
    )


def test_the_width_leaves_out_the_final_reads_noise():
    """A training-loss prediction's interval holds the noise of reading the final value (``read_noise``), which
    a finished run carries too: the stop rule reads the width without it."""
    pol = AdaptivePolicy(tolerance=0.03, stable_updates=1, min_fraction=0)
    row = {**_h(0.5, 3.0, 0.06), "rel_scale": 0.01, "read_noise": 0.008}  # 4% wide, 3/5 of it the model's
    assert pol.width(3.0, 2.94, 3.06, pol.read_share(row)) == pytest.approx(0.04 * 0.6)
    assert pol.decide([row])[0]
    assert not pol.decide([_h(0.5, 3.0, 0.06)])[0]  # a row without the fields: the whole width
    assert (
        pol.read_share({**row, "rel_scale": 0.0}) == 0.0
        and pol.read_share({**row, "read_noise": None}) == 0.0
    )
    # the interval's scale all read noise: nothing left to narrow, width 0
    assert pol.width(3.0, 2.9, 3.1, 1.5) == 0.0


def test_decide_asks_the_law_only_for_a_stable_run_whose_interval_is_wide():
    pol = AdaptivePolicy(
        tolerance=0.02, stable_updates=3, spacing=0.05, min_fraction=0.25, law_tolerance=0.01
    )
    wide = [_h(f, 3.0, 0.06) for f in (0.15, 0.20, 0.25)]  # width 4% > 2%, predictions steady
    calls = []

    def law(value, detail="law moves <= x"):
        def f():
            calls.append(value)
            return value, detail

        return f

    stop, why = pol.decide(wide, law(0.004))
    assert stop and why.startswith(
        "the law does not need the rest of it: law moves <= x <= law_tolerance 0.01"
    )
    stop, why = pol.decide(wide, law(0.02))
    assert not stop and "the law needs it: law moves <= x > law_tolerance 0.01" in why
    stop, why = pol.decide(wide, law(None, "no sweep law yet"))
    assert not stop and why == "interval width 0.04 > tolerance 0.02; no sweep law yet"
    assert calls == [0.004, 0.02, None]
    # never asked: before min_fraction, while predictions move, when the interval alone stops it, or without
    # law_tolerance
    assert not pol.decide(wide[:2], law(0.0))[0]
    moving = [_h(0.15, 3.0, 0.06), _h(0.20, 3.05, 0.06), _h(0.25, 3.1, 0.06)]
    assert pol.decide(moving, law(0.0))[1].startswith("predictions moved by")
    assert pol.decide([_h(f, 3.0, 0.02) for f in (0.15, 0.20, 0.25)], law(1.0))[0]
    assert not AdaptivePolicy(tolerance=0.02).decide(wide, law(0.0))[0]
    assert calls == [0.004, 0.02, None]


def _grid_law():
    from scaling_train.laws.chinchilla import ChinchillaFit

    fit = ChinchillaFit(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28, objective=0.0, n_points=0, n_starts=0)
    runs = [(n, d) for n in (2e7, 6e7, 2e8) for d in (4e8, 1.2e9, 3.6e9)]
    return fit, runs


def _stopped(fit, nd, half):
    loss = float(fit.predict(*nd))
    return (nd[0], nd[1], loss, loss * (1 - half), loss * (1 + half))


def test_law_excess_grows_with_the_stopped_intervals_and_their_number():
    """How far the law may move from the full sweep's because runs stop at their intervals (linearised law,
    ``law_excess``): 0 for a stop at an exact prediction, more the wider the interval, more with each further
    stop, more for an isolated corner run than for one whose (N, D) other runs also cover, and more against a
    law that misses the sweep's points (the stop's lower weight then moves it too)."""
    from scaling_train.fitter.adaptive import FINAL_LOSS_NOISE, law_excess

    fit, runs = _grid_law()
    big = runs[-1]

    def ex(stopped_nds, half, extra=()):
        st = [_stopped(fit, nd, half) for nd in stopped_nds]
        rest = [nd for nd in list(runs) + list(extra) if nd not in stopped_nds]
        value, detail = law_excess(st, rest, fit=fit)
        assert value is not None and "stopped of" in detail
        return value

    assert ex([big], 0.0) == pytest.approx(0.0, abs=1e-12)  # an exact prediction: weight 1, no error
    widths = [ex([big], h) for h in (0.01, 0.02, 0.04)]
    assert 0 < widths[0] < widths[1] < widths[2]
    # an interval as narrow as a finished run's noise: a small excess (its error), less than Z90 x that noise
    assert 0 < ex([big], FINAL_LOSS_NOISE * 1.6449) < 1.6449 * FINAL_LOSS_NOISE
    # against a law that misses its points by 2%, the same stop: larger (down-weighting moves a misfit law)
    st = [_stopped(fit, big, 0.02)]
    assert law_excess(st, runs[:-1], fit=fit, noise=0.02)[0] > ex([big], 0.02)
    assert ex([big, runs[-2]], 0.02) > ex([big], 0.02)
    # the same stop with three more finished runs next to it: its point matters less
    near = [(big[0] * 0.9, big[1] * 1.1), (big[0] * 1.1, big[1] * 0.9), (big[0], big[1] * 1.05)]
    assert ex([big], 0.02, extra=near) < 0.8 * ex([big], 0.02)
    # nothing to weigh it on: no law, too few points or one size
    assert law_excess([_stopped(fit, big, 0.02)], runs[:2], fit=fit)[0] is None
    assert law_excess([_stopped(fit, big, 0.02)], runs, fit=None) == (None, "no sweep law yet")
    one_size = [(2e8, d) for d in (1e8, 2e8, 4e8, 8e8, 1.6e9)]
    assert law_excess([_stopped(fit, one_size[0], 0.02)], one_size[1:], fit=fit)[0] is None


def test_law_noise_and_the_sweep_law_weights_follow_the_laws_misfit():
    """``law_noise`` is the seed noise for points on the law and their scatter (dof-corrected) otherwise;
    ``fit_known_law`` weighs a predicted point against it: a 2%-wide interval counts little next to points
    the law fits to 0.1%, and nearly as much as an observed one next to points it misses by 3%."""
    from scaling_train.fitter.adaptive import FINAL_LOSS_NOISE, fit_known_law, law_noise

    fit, _ = _grid_law()
    runs = [(n, d) for n in (2e7, 5e7, 1.2e8, 3e8, 8e8) for d in (4e8, 1e9, 2.5e9, 6e9)]
    exact = [(n, d, float(fit.predict(n, d)), None, None) for n, d in runs]
    assert law_noise(fit, exact) == FINAL_LOSS_NOISE
    assert law_noise(fit, exact[:7]) == FINAL_LOSS_NOISE  # too few observed points to read a misfit off
    rng = np.random.default_rng(0)
    eps = rng.normal(0.0, 0.03, len(runs))
    eps -= eps.mean()
    scattered = [(n, d, loss * np.exp(e), None, None) for (n, d, loss, _, _), e in zip(exact, eps)]
    want = float(np.sqrt(np.mean(eps**2) * len(runs) / (len(runs) - 5)))
    assert law_noise(fit, scattered) == pytest.approx(want, rel=1e-9)
    big = runs[-1]
    pred = _stopped(fit, big, 0.02)
    tight = [
        (n, d, loss * (1 + 0.001 * (-1) ** i), None, None) for i, (n, d, loss, _, _) in enumerate(exact[:-1])
    ]
    k_tight = fit_known_law([*tight, pred])
    assert k_tight.noise == FINAL_LOSS_NOISE and k_tight.weights[:-1] == (1.0,) * (len(runs) - 1)
    k_loose = fit_known_law([*scattered[:-1], pred])
    assert k_loose.noise > 0.02
    assert k_tight.weights[-1] < 0.3 < 0.7 < k_loose.weights[-1] < 1.0


def test_a_sweep_law_whose_weighted_fit_diverges_reads_its_misfit_off_the_unweighted_fit(monkeypatch):
    """When the first, seed-noise-weighted fit runs off (``FloatingPointError``: a term the heavily weighted
    points do not identify), ``fit_known_law`` fits every point at weight 1, reads the misfit off that law and
    refits against it; when that refit diverges too, the unweighted law stays. Only a fit that diverges at
    weight 1 everywhere raises."""
    import scaling_train.laws as laws_mod
    from scaling_train.fitter.adaptive import FINAL_LOSS_NOISE, fit_known_law, prediction_weight

    fit, _ = _grid_law()
    runs = [(n, d) for n in (2e7, 5e7, 1.2e8, 3e8, 8e8) for d in (4e8, 1e9, 2.5e9, 6e9)]
    rng = np.random.default_rng(1)
    pts = [(n, d, float(fit.predict(n, d)) * np.exp(rng.normal(0.0, 0.02)), None, None) for n, d in runs[:-4]]
    pts += [_stopped(fit, r, 0.02) for r in runs[-4:]]
    real = laws_mod.fit_chinchilla
    calls = []

    def flaky(N, D, L, weights=None, **kw):  # diverges whenever a point weighs less than 1, `limit` times
        calls.append(None if weights is None else tuple(np.round(weights, 6)))
        if weights is not None and np.any(np.asarray(weights) < 1.0) and len(calls) <= limit:
            raise FloatingPointError("diverged")
        return real(N, D, L, weights=weights, **kw)

    monkeypatch.setattr(laws_mod, "fit_chinchilla", flaky)
    limit = 1  # the first fit runs off, the refit against the misfit does not
    k = fit_known_law(pts)
    assert calls[1] is None and k.noise > FINAL_LOSS_NOISE
    assert (
        k.weights[-1] == pytest.approx(prediction_weight(*pts[-1][2:], noise=k.noise)) and k.weights[-1] < 1.0
    )
    calls.clear()
    limit = 3  # the refit diverges too: the unweighted law, all weights 1
    k = fit_known_law(pts)
    assert k.weights == (1.0,) * len(pts) and np.isfinite(k.fit.predict(8e8, 6e9))
    observed = [(n, d, y, None, None) for n, d, y, _, _ in pts]
    monkeypatch.setattr(
        laws_mod, "fit_chinchilla", lambda *a, **kw: (_ for _ in ()).throw(FloatingPointError("x"))
    )
    with pytest.raises(FloatingPointError):  # all observed: nothing to reweigh
        fit_known_law(observed)


def test_known_interval_counts_a_point_without_a_usable_interval_as_observed():
    from scaling_train.fitter.adaptive import known_interval

    assert known_interval(2.9, 3.1) == (2.9, 3.1)
    for lo, hi in (
        (None, 3.1),
        (2.9, None),
        (3.0, 3.0),
        (3.1, 2.9),
        (float("nan"), 3.1),
        (2.9, float("inf")),
    ):
        assert known_interval(lo, hi) == (None, None)


def test_stop_interval_is_the_union_of_the_updates_the_stop_rests_on():
    pol = AdaptivePolicy(tolerance=0.05, stable_updates=3, spacing=0.05, min_fraction=0.25)
    hist = [
        _h(0.10, 3.2, 0.2),
        _h(0.15, 3.01, 0.03),
        _h(0.18, 3.0, 0.01),
        _h(0.20, 2.99, 0.02),
        _h(0.25, 3.0, 0.02),
    ]
    assert pol.decide(hist)[0]
    # picked: 0.25, 0.20, 0.15 (0.18 is closer than `spacing` to 0.20; 0.10 is older than k updates)
    assert pol.stop_interval(hist) == (3.0, pytest.approx(2.97), pytest.approx(3.04))
    with pytest.raises(ValueError, match="no valid prediction"):
        pol.stop_interval([{"fraction": 0.5, "loss": None, "low": None, "high": None}])


def test_exempt_runs():
    runs = [("a", 1e6, 1e8), ("b", 1e6, 4e8), ("c", 4e6, 2e8), ("d", 4e6, 8e8)]
    assert AdaptivePolicy().exempt(runs).keys() == {"a", "c"}
    assert AdaptivePolicy(keep_full_per_size=False).exempt(runs) == {}
    ex = AdaptivePolicy(keep_full_per_size=False, keep_largest=True).exempt(runs)
    assert ex.keys() == {"c", "d"} and "largest" in ex["d"]


@pytest.mark.parametrize(
    "block, match",
    [
        ({"tolerance": 0}, r"spec.yaml: adaptive: tolerance=0 must be a finite number > 0"),
        ({"tolerance": 1.5}, r"tolerance=1.5 must be < 1 \(a fraction of the loss\) when relative is true"),
        ({"stable_updates": 0}, r"stable_updates=0 must be an integer in \[1, 100\]"),
        ({"stable_updates": 2.5}, r"stable_updates=2.5 must be an integer"),
        ({"min_fraction": 1.2}, r"min_fraction=1.2 must be in \[0, 1\]"),
        ({"spacing": -0.1}, r"spacing=-0.1 must be in \[0, 1\)"),
        ({"keep_largest": "yes"}, r"keep_largest='yes' must be true or false"),
        ({"tolerence": 0.1}, r"unknown key\(s\) \['tolerence'\]; allowed: "),
        ({"launch_order": "fastest"}, r"launch_order='fastest' must be one of \['plan', 'uncertainty'\]"),
        ({"target_compute": 0.5}, r"target_compute=0.5 must be in \[1, 1e6\] \(a multiple of the largest"),
        (
            {"law_tolerance": 0},
            r"law_tolerance=0 must be null or in \(0, 1\) \(a fraction of the law's loss\)",
        ),
        ({"law_tolerance": 1.5}, r"law_tolerance=1.5 must be null or in \(0, 1\)"),
        ({"law_tolerance": True}, r"law_tolerance=True must be null or in \(0, 1\)"),
    ],
)
def test_policy_validation_names_value_range_and_source(block, match):
    with pytest.raises(ValueError, match=match):
        AdaptivePolicy.from_dict(block, source="spec.yaml: adaptive")


def test_prediction_weight():
    assert prediction_weight(3.0, 3.0, 3.0) == 1.0
    w1 = prediction_weight(3.0, 2.97, 3.03)  # +-1%: sd 0.61% vs noise 0.5%
    w2 = prediction_weight(3.0, 2.90, 3.10)
    assert 0 < w2 < w1 < 1 and w1 == pytest.approx(0.005**2 / (0.005**2 + (0.06 / 3.29 / 3.0) ** 2), rel=1e-3)


@pytest.mark.slow  # ~6 s on a loaded 2-core machine (fast-tier budget, issue 16)
def test_weighted_chinchilla_fit_discounts_a_bad_low_weight_point():
    rng = np.random.default_rng(0)
    N = np.repeat([1e7, 3e7, 1e8, 3e8], 3)
    D = np.tile([2e8, 6e8, 2e9], 4)
    true = 1.8 + 400 / N**0.34 + 410 / D**0.28
    L = true * (1 + 0.002 * rng.standard_normal(len(N)))
    bad = L.copy()
    bad[-3:] *= 1.05  # the largest size's three points predicted 5% too high (Huber cannot drop them all)
    w = np.ones(len(N))
    w[-3:] = 1e-3
    f_plain = fit_chinchilla(N, D, bad)
    f_w = fit_chinchilla(N, D, bad, weights=w)
    err = lambda f: np.max(np.abs(f.predict(N, D) / true - 1))  # noqa: E731
    assert err(f_w) < 0.01 < err(f_plain)
    f1 = fit_chinchilla(N, D, L, weights=np.ones(len(N)))
    assert (f1.E, f1.alpha, f1.beta) == (
        fit_chinchilla(N, D, L).E,
        fit_chinchilla(N, D, L).alpha,
        fit_chinchilla(N, D, L).beta,
    )
    with pytest.raises(ValueError, match=r"weights\[2\]=0.0 must be > 0"):
        fit_chinchilla(N, D, L, weights=np.r_[1, 1, 0, np.ones(9)])
    with pytest.raises(ValueError, match=r"len\(weights\)=3 != len\(loss\)=12"):
        fit_chinchilla(N, D, L, weights=np.ones(3))


def _growing(sw, src, name):
    """A running copy of run ``src`` without DONE and without metrics rows; returns (dir, rows)."""
    part = sw / name
    shutil.copytree(sw / src, part)
    (part / "DONE").unlink()
    rows = read_jsonl(part / "metrics.jsonl").rows
    (part / "metrics.jsonl").write_text("")
    return part, rows


def _append(part, row):
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def test_fitter_requests_a_stop_only_in_an_adaptive_sweep(sweep, tmp_path):
    sw = tmp_path / "sw"
    shutil.copytree(sweep, sw)
    part, rows = _growing(sw, "lr3e-3", "partial")
    f = SweepFitter(sw, log=lambda s: None)
    for r in rows[:-1]:
        _append(part, r)
        f.step()
    assert len(read_jsonl(part / "predictions.jsonl").rows) >= 3
    assert not (part / "STOP").exists()  # no adaptive.json: never stopped
    assert "adaptive" not in json.loads((part / "predictions.json").read_text())
    # the same growth under a loose policy: a stop is requested once, with the prediction it rests on
    sw2 = tmp_path / "sw2"
    shutil.copytree(sweep, sw2)
    part, rows = _growing(sw2, "lr3e-3", "partial")
    pol = AdaptivePolicy(
        tolerance=0.9, stable_updates=2, spacing=0.0, min_fraction=0.0, keep_full_per_size=False
    )
    (sw2 / "adaptive.json").write_text(json.dumps(pol.to_dict()))
    logs = []
    f = SweepFitter(sw2, log=logs.append)
    n = 0
    while not (part / "STOP").exists() and n < len(rows) - 1:
        _append(part, rows[n])
        f.step()
        n += 1
    req = json.loads((part / "STOP").read_text())
    hist = read_jsonl(part / "predictions.jsonl").rows
    assert pol.decide(hist)[0] and not pol.decide(hist[:-1])[0]  # at the first update the rule allows
    assert (req["loss"], req["low"], req["high"]) == pytest.approx(pol.stop_interval(hist))
    assert req["low"] <= hist[-1]["low"] and req["high"] >= hist[-1]["high"]
    assert req["step"] == hist[-1]["step"] and req["loss"] == pytest.approx(hist[-1]["loss"])
    assert req["low"] <= req["loss"] <= req["high"] and "over 2 updates" in req["reason"]
    assert any("stop requested" in s for s in logs)
    pred = json.loads((part / "predictions.json").read_text())
    assert pred["adaptive"]["stop"] is True
    # the trainer stops: STOPPED; the run is then "stopped", predicted on, and weighted in the law
    (part / "STOPPED").write_text(json.dumps({"steps": req["step"], "request": req}))
    f.step()
    pred = json.loads((part / "predictions.json").read_text())
    assert pred["status"] == "stopped" and pred["low"] < pred["loss"] < pred["high"]
    # it keeps at least the interval its stop rested on
    assert (
        pred["low"] <= req["low"]
        and pred["high"] >= req["high"]
        and pred["stop_request"]["step"] == req["step"]
    )
    law = json.loads((sw2 / "sweep_law.json").read_text())
    pt = {q["run"]: q for q in law["points"]}
    assert pt["partial"]["source"] == "stopped" and 0 < pt["partial"]["weight"] < 1
    assert pt["lr1e-3"]["source"] == "observed" and pt["lr1e-3"]["weight"] == 1.0
    assert f.all_done  # stopped counts as finished for --until-done
    # resumed on purpose (STOP removed, STOPPED archived): the policy never stops it again
    (part / "STOP").unlink()
    (part / "STOPPED").rename(part / "STOPPED.1.json")
    _append(part, rows[n])
    f.step()
    pred = json.loads((part / "predictions.json").read_text())
    assert pred["status"] == "running" and not (part / "STOP").exists()
    assert pred["adaptive"] == {"stop": False, "reason": "resumed after an early stop (--resume-stopped)"}


def test_fitter_exempt_run_and_bad_policy_file(sweep, tmp_path):
    sw = tmp_path / "sw"
    shutil.copytree(sweep, sw)
    part, rows = _growing(sw, "lr3e-3", "partial")
    # the default policy keeps the shortest budget of each size: all three runs have one size and one budget,
    # so the exemption picks one of them; make `partial` the shortest by planning it smaller
    plan = {"runs": [{"name": "partial", "n_params": 1, "tokens": 1}, {"name": "lr1e-3", "n_params": 1, "tokens": 5},
                     {"name": "lr3e-3", "n_params": 1, "tokens": 5}]}  # fmt: skip
    (sw / "plan.json").write_text(json.dumps(plan))
    pol = AdaptivePolicy(tolerance=0.9, stable_updates=1, spacing=0.0, min_fraction=0.0)
    (sw / "adaptive.json").write_text(json.dumps(pol.to_dict()))
    f = SweepFitter(sw, log=lambda s: None)
    for r in rows[:4]:
        _append(part, r)
        f.step()
    assert not (part / "STOP").exists()
    assert "keep_full_per_size" in json.loads((part / "predictions.json").read_text())["adaptive"]["reason"]
    # a broken policy file is reported and ignored (no run is stopped), not a crash
    (sw / "adaptive.json").write_text(json.dumps({"tolerance": -1}))
    (sw / "plan.json").unlink()
    logs = []
    f = SweepFitter(sw, log=logs.append)
    _append(part, rows[4])
    f.step()
    assert not (part / "STOP").exists()
    assert any("adaptive policy ignored" in s and "tolerance=-1" in s for s in logs)


def test_fitter_asks_the_law_under_law_tolerance(sweep, tmp_path):
    """The live fitter hands the policy its sweep's points: a steady run whose interval is still too wide for
    ``tolerance`` is weighed against the law (here three runs of one size: too few for it to say, so that
    update does not stop it)."""
    sw = tmp_path / "sw"
    shutil.copytree(sweep, sw)
    part, rows = _growing(sw, "lr3e-3", "partial")
    pol = AdaptivePolicy(
        tolerance=0.1,
        stable_updates=2,
        spacing=0.0,
        min_fraction=0.0,
        keep_full_per_size=False,
        law_tolerance=0.5,
    )
    (sw / "adaptive.json").write_text(json.dumps(pol.to_dict()))
    f = SweepFitter(sw, log=lambda s: None)
    reasons = []
    for r in rows[:-1]:
        _append(part, r)
        f.step()
        reasons.append(
            json.loads((part / "predictions.json").read_text()).get("adaptive", {}).get("reason", "")
        )
        if (part / "STOP").exists():
            break
    asked = [x for x in reasons if x.startswith("interval width") and "; " in x]
    assert asked, reasons
    assert all(x.endswith(("no sweep law yet", "too few for the law to say what it needs")) for x in asked), (
        asked
    )
    assert not any(x.startswith("the law does not need") for x in reasons)
    # with a law and a plan of 3 sizes: the run asking is counted at its stop interval, a run with a STOP at its
    # prediction's interval, every other planned run as finishing
    from scaling_train.fitter.adaptive import law_excess
    from scaling_train.laws.chinchilla import ChinchillaFit

    nd = {"partial": (1e6, 1e7), "lr1e-3": (1e6, 2e7), "lr3e-3": (1e6, 4e7)}
    nd.update(
        {f"p{k}": (n, d) for k, (n, d) in enumerate((n, d) for n in (3e6, 1e7) for d in (1e7, 2e7, 4e7))}
    )
    plan = {"runs": [{"name": k, "n_params": v[0], "tokens": v[1]} for k, v in nd.items()]}
    (sw / "plan.json").write_text(json.dumps(plan))
    f._chinchilla = ChinchillaFit(
        E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28, objective=0, n_points=0, n_starts=0
    )
    hist = read_jsonl(part / "predictions.jsonl").rows
    (sw / "lr3e-3" / "STOP").write_text("{}")
    q = f.predictions["lr3e-3"]
    q.update(low=q["loss"] * 0.98, high=q["loss"] * 1.02)
    got = f._law_excess(pol, "partial", hist)
    want = law_excess(
        [(*nd["partial"], *pol.stop_interval(hist)), (*nd["lr3e-3"], q["loss"], q["low"], q["high"])],
        [v for k, v in nd.items() if k not in ("partial", "lr3e-3")],
        fit=f._chinchilla,
    )
    assert got == want and got[0] > 0 and "2 stopped of 9 runs" in got[1]


@pytest.mark.slow  # ~15-25 s: a real run stopped by the real fitter process
def test_live_fitter_stops_a_real_run_which_resumes_to_the_end(sweep, tmp_path):
    """The whole loop: the fitter (`scaling-train fit --follow`) predicts a training run from its prefix and the
    finished references, the policy says stop, the fitter writes STOP, the trainer checkpoints and writes
    STOPPED; the fitter then marks it stopped; rerun without STOP, it trains to the end."""
    import subprocess

    from tests.fixtures.training import cli, overrides

    sw = tmp_path / "sw"
    shutil.copytree(sweep, sw)
    pol = AdaptivePolicy(
        tolerance=0.9, stable_updates=2, spacing=0.02, min_fraction=0.1, keep_full_per_size=False
    )
    (sw / "adaptive.json").write_text(json.dumps(pol.to_dict()))
    run_dir = sw / "run"
    args = overrides(run_dir, max_steps=400, ckpt_every=100, **{"optim.lr": "3e-3"})
    tr = cli("train", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fitter = None
    try:
        t0 = time.time()
        while not (run_dir / "config.yaml").exists() and time.time() - t0 < 120:
            time.sleep(0.05)  # --until-done would exit at once on the two finished references alone
        fitter = cli(
            "fit", str(sw), "--follow", "--interval", "0.2", "--until-done", stdout=subprocess.PIPE, text=True
        )
        out, _ = tr.communicate(timeout=300)
        assert tr.returncode == 0, out
        fit_out, _ = fitter.communicate(timeout=60)  # --until-done: a stopped run counts as finished
    finally:
        for p in (tr, fitter):
            if p is not None and p.poll() is None:
                p.kill()
    assert "stopped on request (RUN/STOP)" in out and "stop requested" in fit_out
    rec = json.loads((run_dir / "STOPPED").read_text())
    req = json.loads((run_dir / "STOP").read_text())
    assert not (run_dir / "DONE").exists() and rec["request"] == req and rec["steps"] < 400
    assert rec["steps"] >= req["step"] and (run_dir / "checkpoints" / f"step-{rec['steps']:08d}.pt").is_file()
    rows = read_jsonl(run_dir / "metrics.jsonl").rows
    assert rows[-1]["step"] == rec["steps"]
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    assert json.loads((run_dir / "predictions.json").read_text())["status"] == "stopped"
    # resumed to the end: STOPPED archived, DONE written, steps continue from the stop
    (run_dir / "STOP").unlink()
    tr = cli("train", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = tr.communicate(timeout=300)
    assert tr.returncode == 0, out
    assert (run_dir / "DONE").exists() and (run_dir / "STOPPED.1.json").exists()
    assert read_jsonl(run_dir / "metrics.jsonl").rows[-1]["step"] == 400


def test_fitter_ranks_the_runs_not_started_under_launch_order_uncertainty(tmp_path):
    """9 finished runs of an IsoFLOP grid and 6 planned but not started: the fitter ranks the 6 by the law's
    information per FLOP at 10x the largest run (SWEEP/launch_order.json, what the local backend reads);
    with 4 points it keeps the planned order; without the policy it writes nothing."""
    from scaling_train.fitter.adaptive import LAUNCH_ORDER_FILE, launch_ranking
    from tests.fixtures import synth

    grid = synth.isoflop_grid()
    sw = synth.write_sweep(tmp_path / "s", runs=[{"N": N, "D": D} for N, D, _ in grid[:9]])
    plan = json.loads((sw / "plan.json").read_text())
    todo = [(f"todo{i}", N, D) for i, (N, D, _) in enumerate(grid[9:])]
    plan["runs"] += [
        {"name": n, "n_params": N, "tokens": D, "steps": 10, "flops": 6 * N * D} for n, N, D in todo
    ]
    (sw / "plan.json").write_text(json.dumps(plan))
    SweepFitter(sw, log=lambda s: None).step()
    assert not (sw / LAUNCH_ORDER_FILE).exists()  # no adaptive policy
    pol = AdaptivePolicy(launch_order="uncertainty")
    (sw / "adaptive.json").write_text(json.dumps(pol.to_dict()))
    logs = []
    SweepFitter(sw, log=logs.append).step()
    rec = json.loads((sw / LAUNCH_ORDER_FILE).read_text())
    assert rec["why"] == "ranked by the law over 9 points"
    assert f"[fit] launch order: {rec['order'][0]['name']} next (ranked by the law over 9 points)" in logs
    order = [o["name"] for o in rec["order"]]
    assert sorted(order) == sorted(n for n, _, _ in todo)
    per_flop = [o["per_flop"] for o in rec["order"]]
    assert per_flop == sorted(per_flop, reverse=True) and all(p > 0 for p in per_flop)
    big = max(6 * N * D for _, N, D in todo)  # the planned runs' largest 6ND (written runs round D to steps)
    assert rec["target_compute"] == pytest.approx(10 * big, rel=1e-3) and rec["sd_now"] > 0
    # the same ranking from the finished runs' points, outside the fitter
    law = json.loads((sw / "sweep_law.json").read_text())
    pts = [(p["N"], p["D"], p["loss"], None, None) for p in law["points"]]
    ranking, _ = launch_ranking(pol, pts, todo, big)
    assert ranking.order == order
    assert law["launch_order"]["order"][0]["name"] == order[0]
    # too few points: the planned order, said so
    sw2 = synth.write_sweep(tmp_path / "s2", runs=[{"N": N, "D": D} for N, D, _ in grid[:4]])
    (sw2 / "adaptive.json").write_text(json.dumps(pol.to_dict()))
    plan2 = json.loads((sw2 / "plan.json").read_text())
    plan2["runs"] += plan["runs"][9:]
    (sw2 / "plan.json").write_text(json.dumps(plan2))
    SweepFitter(sw2, log=lambda s: None).step()
    rec2 = json.loads((sw2 / LAUNCH_ORDER_FILE).read_text())
    assert rec2["order"] == [] and "the planned order until 5 points" in rec2["why"]
