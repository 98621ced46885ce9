"""Calibrate the 90% interval of ``scaling_train.laws.predict_final_loss`` on a calibration split of real
curves and measure its coverage on a disjoint held-out split.

Run:  . .venv/bin/activate && PYTHONPATH=. python benchmarks/calibrate_laws.py          # fit, write constants
      . .venv/bin/activate && PYTHONPATH=. python benchmarks/calibrate_laws.py --check  # held-out report only

Splits (a "case" = predict one run's last-step loss from a prefix):

- calibration
  - ``gem_cal``: Gemstone cooldowns of the runs with an EVEN index in the sorted list of run names (10 runs).
    Target = constant-LR curve up to the cooldown start, predict the loss after the cooldown; with references
    = up to 3 earlier cooldowns of the same run (end observed).
  - ``mp_cal``: the three multipower_25m *reference* runs (cosine_24000, constant_24000, wsdcon_9), each
    observed for its first 25% and 50%; with references = the other two reference runs.
- held out (never used for fitting anything below)
  - ``gem_hold``: Gemstone cooldowns of the runs with an ODD index (10 other runs / models).
  - ``mp_hold``: the six multipower_25m target runs at 25% and 50%, references = the three reference runs
    (exactly the benchmark setting of benchmarks/bench_laws.py).

Procedure, separately for the two modes (``no_refs``, ``with_refs``); each group weighs equally:

1. (no_refs only) empirical Bayes for the no-reference prior means of the annealing amplitude B (``b_rel``,
   in units of the loss level) and of log C (how fast the loss responds to an LR drop): minimise the
   group-balanced mean squared relative error of the predictions on the calibration split over
   (log b_rel, log C) (Nelder-Mead). Without references a constant-LR prefix carries no information on the
   annealing term, so these prior means are what set the predicted cooldown gain. (The hand-picked prior
   b_rel = 0.035, C = 2e-3 under-predicted Gemstone cooldown gains: bias +1.5%, 42% coverage.)
2. Gaussian maximum likelihood of the relative errors e = true / predicted - 1 under
   e ~ N(0, u^2), u = few * sqrt(s0^2 + (s1 * extrapolation)^2 + v_fit + (r * g_prior)^2) for s0, s1 and
   (no_refs) r, the relative sd of the prior-driven annealing gain g_prior = B LD(T) / loss.
3. With the final constants, split-conformal quantiles of z = e / u on the calibration split, per group:
   q_lo = the floor(0.05 (n + 1))-th smallest z, q_hi = the ceil(0.95 (n + 1))-th smallest (capped at the
   largest for the 6-case mp_cal group, where the conformal guarantee needs n >= 19); the widest over the
   groups (min q_lo, max q_hi) is stored. Asymmetric: a remaining bias shifts the interval instead of
   being hidden.
4. Held-out coverage of [loss (1 + q_lo u), loss (1 + q_hi u)] on gem_hold and mp_hold (in the report the
   signed error is predicted / true - 1, as in bench_laws.py: positive = over-predicted loss).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "laws"))
from realdata import (  # noqa: E402
    MP_REFERENCES,
    MP_TARGETS,
    cooldown_curve,
    gemstone_cooldowns,
    gemstone_hot,
    multipower_curve,
)

from scaling_train.laws import MultiPowerPrior, predict_final_loss  # noqa: E402
from scaling_train.laws import curve as curve_mod  # noqa: E402

CONST_FILE = ROOT / "scaling_train" / "laws" / "_calibration.py"
MODES = ("no_refs", "with_refs")
FRACTIONS = (0.25, 0.5)


@dataclass(frozen=True)
class Case:
    group: str  # gem_cal, mp_cal, gem_hold, mp_hold
    name: str
    target: object  # Curve
    refs: tuple  # reference Curves (used in with_refs mode)
    truth: float


def build_cases() -> list[Case]:
    cases = []
    cds, hot = gemstone_cooldowns(), gemstone_hot()
    runs = sorted({c.run for c in cds})
    for cd in cds:
        group = "gem_cal" if runs.index(cd.run) % 2 == 0 else "gem_hold"
        refs = [
            cooldown_curve(c, hot, observed_end=True)
            for c in cds
            if c.run == cd.run and c.end_step < cd.begin_step
        ]
        target = cooldown_curve(cd, hot, observed_end=False)
        cases.append(Case(group, target.name, target, tuple(refs[-3:]), cd.loss_end))
    mp_refs = {n: multipower_curve(n) for n in MP_REFERENCES}
    for name, c in mp_refs.items():
        others = tuple(v for k, v in mp_refs.items() if k != name)
        for f in FRACTIONS:
            cases.append(Case("mp_cal", f"{name}@{f:.0%}", c.truncated(f), others, float(c.losses[-1])))
    for name in MP_TARGETS:
        c = multipower_curve(name)
        for f in FRACTIONS:
            cases.append(
                Case(
                    "mp_hold", f"{name}@{f:.0%}", c.truncated(f), tuple(mp_refs.values()), float(c.losses[-1])
                )
            )
    return cases


def usable(case: Case, mode: str) -> bool:
    return mode == "no_refs" or len(case.refs) > 0


def predict(case: Case, mode: str, prior: MultiPowerPrior | None = None):
    return predict_final_loss(case.target, case.refs if mode == "with_refs" else (), prior=prior)


def errors_and_terms(cases, mode, prior=None):
    preds = [predict(c, mode, prior) for c in cases]
    e = np.array([c.truth / p.loss - 1 for c, p in zip(cases, preds)])
    terms = np.array([p.scale_terms for p in preds])  # (n, 4): few, extrap, v_fit, g_prior
    return preds, e, terms


def group_weights(cases) -> np.ndarray:
    groups = [c.group for c in cases]
    return np.array([1.0 / groups.count(g) for g in groups]) / len(set(groups))


def scale(params: dict, terms: np.ndarray, r: float) -> np.ndarray:
    few, x, v, g = terms.T
    return few * np.sqrt(params["s0"] ** 2 + (params["s1"] * x) ** 2 + v + (r * g) ** 2)


def conformal(z: np.ndarray, level: float = 0.90) -> tuple[float, float]:
    """Split-conformal lower/upper quantiles of the scores z (finite-sample corrected)."""
    n = len(z)
    zs = np.sort(z)
    a = (1 - level) / 2
    k_lo = max(math.floor(a * (n + 1)), 1)  # 1-based rank
    k_hi = min(math.ceil((1 - a) * (n + 1)), n)  # capped at the max for small n (then below the guarantee)
    return float(zs[k_lo - 1]), float(zs[k_hi - 1])


def calibrate(cases: list[Case], log) -> dict:
    cal = [c for c in cases if c.group in ("gem_cal", "mp_cal")]
    out = {"interval": {}}
    # 1. empirical-Bayes prior means of B (b_rel) and of log C (no references)
    base = MultiPowerPrior()
    ratio = base.b_rel_sd / base.b_rel
    cal_nr = [c for c in cal if usable(c, "no_refs")]
    w = group_weights(cal_nr)

    def no_ref_prior(x) -> MultiPowerPrior:
        b = math.exp(x[0])
        th = (base.theta[0], float(x[1]), base.theta[2], base.theta[3])
        return MultiPowerPrior(theta=th, b_rel=b, b_rel_sd=ratio * b)

    def loss_b(x):
        _, e, _ = errors_and_terms(cal_nr, "no_refs", no_ref_prior(x))
        return float(np.sum(w * e**2))

    x0 = [math.log(base.b_rel), base.theta[1]]
    res = minimize(loss_b, x0, method="Nelder-Mead", options={"xatol": 0.02, "fatol": 1e-8, "maxiter": 80})
    prior = no_ref_prior(res.x)
    b_rel, log_c = prior.b_rel, float(res.x[1])
    log(
        f"no_refs: empirical-Bayes b_rel = {b_rel:.4f}, prior mean C = {math.exp(log_c):.3g} "
        f"(group-balanced RMS rel err {math.sqrt(res.fun):.4%}, {res.nfev} evaluations)"
    )
    out["b_rel"], out["log_c"] = b_rel, log_c
    for mode in MODES:
        cm = [c for c in cal if usable(c, mode)]
        w = group_weights(cm)
        _, e, terms = errors_and_terms(cm, mode, prior if mode == "no_refs" else None)

        # 2. Gaussian ML for s0, s1 (and r) -- group-balanced log-likelihood
        def nll(th, e=e, terms=terms, w=w, mode=mode):
            s0, s1 = math.exp(th[0]), math.exp(th[1])
            r = math.exp(th[2]) if mode == "no_refs" else 0.0
            u = scale({"s0": s0, "s1": s1}, terms, r)
            return float(np.sum(w * (np.log(u) + 0.5 * (e / u) ** 2)))

        th0 = [math.log(2e-3), math.log(5e-3)] + ([math.log(ratio)] if mode == "no_refs" else [])
        ml = minimize(nll, th0, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-9, "maxiter": 2000})
        s0, s1 = float(math.exp(ml.x[0])), float(math.exp(ml.x[1]))
        out["interval"][mode] = {"s0": s0, "s1": s1}
        if mode == "no_refs":
            r = float(math.exp(ml.x[2]))
            out["interval"][mode]["r"] = r
            log(f"no_refs: ML s0 = {s0:.5f}, s1 = {s1:.5f}, r = {r:.3f}")
        else:
            log(f"with_refs: ML s0 = {s0:.5f}, s1 = {s1:.5f}")
    # 3. conformal quantiles of e / u with the final constants, per group; the widest (min q_lo, max q_hi) wins
    for mode in MODES:
        curve_mod._CAL[mode] = {"r": 0.0, **out["interval"][mode], "q_lo": -1.0, "q_hi": 1.0}  # u: no q
    for mode in MODES:
        cm = [c for c in cal if usable(c, mode)]
        preds, e, _ = errors_and_terms(cm, mode, prior)
        z = e / np.array([p.rel_scale for p in preds])
        groups = np.array([c.group for c in cm])
        per_group = {g: conformal(z[groups == g]) for g in sorted(set(groups))}
        q_lo, q_hi = min(q[0] for q in per_group.values()), max(q[1] for q in per_group.values())
        out["interval"][mode].update(q_lo=q_lo, q_hi=q_hi)
        detail = ", ".join(
            f"{g} (n={np.sum(groups == g)}): [{a:.3f}, {b:.3f}]" for g, (a, b) in per_group.items()
        )
        log(f"{mode}: conformal quantiles per group {detail} -> q_lo = {q_lo:.3f}, q_hi = {q_hi:.3f}")
    return out


def write_constants(c: dict, n_cal: dict) -> None:
    iv = c["interval"]
    lines = [
        '"""Interval-calibration constants of ``predict_final_loss`` -- GENERATED, do not edit by hand.',
        "",
        "Written by ``PYTHONPATH=. python benchmarks/calibrate_laws.py`` (procedure in its docstring) from the",
        "CALIBRATION split only: Gemstone cooldowns of the 10 runs with an even index in the sorted run names",
        "(tests/data/laws/gemstone) and the three multipower_25m reference runs cosine_24000, constant_24000,",
        "wsdcon_9 observed for 25% / 50% (tests/data/laws/multipower_25m). Held-out coverage (Gemstone odd-index",
        "runs, the six multipower_25m target runs) is reported in benchmarks/results/laws.md.",
        "",
        f"Calibration cases: {n_cal}.",
        '"""',
        "",
        "# no-reference prior mean of the annealing amplitude B (fraction of the loss level): empirical Bayes",
        f"NO_REF_B_REL = {c['b_rel']:.6g}",
        "# (its sd keeps the a-priori ratio b_rel_sd / b_rel = 0.02 / 0.035 of the weak prior: it sets how much",
        "# the target's own points can move B, not the interval)",
        "# no-reference prior mean of log C (the annealing-response rate): empirical Bayes",
        f"NO_REF_LOG_C = {c['log_c']:.6g}",
        "# per mode: s0, s1, r (Gaussian ML), q_lo, q_hi (split-conformal 5% / 95% quantiles of e / u)",
        "INTERVAL = {",
    ]
    for mode in MODES:
        d = iv[mode]
        kv = ", ".join(f'"{k}": {d.get(k, 0.0):.6g}' for k in ("s0", "s1", "r", "q_lo", "q_hi"))
        lines.append(f'    "{mode}": {{{kv}}},')
    lines.append("}")
    CONST_FILE.write_text("\n".join(lines) + "\n")


def held_out_report(cases: list[Case] | None = None) -> str:
    """Markdown: coverage and errors per split / mode / observed fraction with the installed constants."""
    cases = cases if cases is not None else build_cases()
    rows = [
        "| mode | split | observed | n | coverage of 90% interval | mean abs rel err | mean rel err (bias) | mean width (rel) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        for group in ("gem_cal", "mp_cal", "gem_hold", "mp_hold"):
            for frac in ("~91%",) if group.startswith("gem") else ("25%", "50%"):
                cs = [
                    c
                    for c in cases
                    if c.group == group
                    and usable(c, mode)
                    and (group.startswith("gem") or c.name.endswith("@" + frac))
                ]
                preds = [predict(c, mode) for c in cs]
                e = np.array([p.loss / c.truth - 1 for c, p in zip(cs, preds)])
                cov = np.mean([p.low <= c.truth <= p.high for c, p in zip(cs, preds)])
                wid = np.mean([(p.high - p.low) / p.loss for p in preds])
                split = ("calibration" if group.endswith("cal") else "**held out**") + f" ({group})"
                rows.append(
                    f"| {mode} | {split} | {frac} | {len(cs)} | {cov:.1%} | {np.abs(e).mean():.3%} | {e.mean():+.3%} | {wid:.2%} |"
                )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--check", action="store_true", help="only print the held-out report with the stored constants"
    )
    args = ap.parse_args()
    cases = build_cases()
    if not args.check:
        c = calibrate(cases, log=lambda s: print(f"- {s}"))
        n_cal = {m: sum(1 for x in cases if x.group in ("gem_cal", "mp_cal") and usable(x, m)) for m in MODES}
        write_constants(c, n_cal)
        print(
            f"- wrote {CONST_FILE.relative_to(ROOT)}; held-out report with the stored constants:\n",
            flush=True,
        )
        # a fresh interpreter imports the written constants (dataclass defaults are bound at import)
        subprocess.run([sys.executable, __file__, "--check"], check=True)
        return
    print(held_out_report(cases))


if __name__ == "__main__":
    main()
