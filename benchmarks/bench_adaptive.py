"""Adaptive sweeps replayed on real ladders (issue 19): compute spent, law deviation, interval coverage.

    PYTHONPATH=. python benchmarks/bench_adaptive.py [--quick] [--tol 0.01,0.02,0.03]

Ladders (every run replayed with ``scaling_train.sweep.adaptive.simulate``, all runs of a ladder at once on
the sweep's clock, the fitter's view: each run's own prefix plus every other run as far as it has trained):

- ``lrs-cos``: the lr_schedules scaling ladder on SlimPajama, 33M-360M, cosine, 3-6 horizons per size
  (27 runs), validation loss; ``lrs-cos-train`` the same on the training loss (truth: mean of the last 40
  logged points);
- ``lrs-wsd``: the same sizes with WSD (20% linear cooldown), 2-5 horizons per size (19 runs), validation loss;
- ``gemstone``: 10 Gemstone models (every second one by size, 48M-2B) with their cooldowns at about 20B,
  50B and 100B tokens as three budgets (30 runs); the LR is a normalised shape (``lr_absolute=False``).

Writes ``benchmarks/results/adaptive.md`` (the table is copied into BENCHMARKS.md by make_benchmarks_md.py).
The policy's default tolerance (0.04) was chosen on the two ``lrs-cos`` ladders (validation and training loss):
of 0.02 / 0.03 / 0.04 / 0.05, those whose law deviation stays under 1% with stop-time coverage near 90% on both
(0.02-0.04 since the blend's quantiles per regime, 2026-12-05: at 0.05 the training-loss law is 1.14% off;
0.03-0.05 before), the largest that still saves compute on the validation ladder without coming within 0.05% of
the 1% bound; ``lrs-wsd`` and ``gemstone`` are read only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scaling_train.fitter.adaptive import AdaptivePolicy  # noqa: E402
from scaling_train.sweep.adaptive import RecordedRun, SimulationResult, known_at, simulate  # noqa: E402
from tests.fixtures.realdata import (  # noqa: E402
    cooldown_curve,
    gemstone_cooldowns,
    gemstone_hot,
    ladder_runs,
    lr_full_curve,
    lr_schedule_runs,
)

OUT = ROOT / "benchmarks" / "results" / "adaptive.md"
LAW_BOOTSTRAP = 100  # bootstrap refits of both laws at the default tolerance (the parameters' 90% intervals)


def lrs_ladder(family: str, kind: str = "val") -> list[RecordedRun]:
    runs = lr_schedule_runs()
    lad = [r for r in ladder_runs(runs) if r.family == family]
    out = []
    for r in sorted(lad, key=lambda r: (r.params, r.iterations)):
        s, y = lr_full_curve(r, runs, kind)
        keep = s <= r.iterations
        s, y = s[keep], y[keep]
        final = float(y[-1]) if kind == "val" else float(y[-40:].mean())
        out.append(RecordedRun(r.name, r.params, r.tokens_per_step, s, y, r.lr[: r.iterations], final))
    return out


def gemstone_ladder(n_models: int = 10, budgets: tuple[int, ...] = (1, 4, 9)) -> list[RecordedRun]:
    """Every second Gemstone model by size; its cooldowns number ``budgets`` (0-based, of 10) as budgets."""
    cds, hot = gemstone_cooldowns(), gemstone_hot()
    by_run: dict[str, list] = {}
    for c in cds:
        by_run.setdefault(c.run, []).append(c)
    models = sorted(by_run, key=lambda n: by_run[n][0].N)[::2][:n_models]
    out = []
    for m in models:
        cs = sorted(by_run[m], key=lambda c: c.end_step)
        for b in budgets:
            if b >= len(cs):
                continue
            cd = cs[b]
            c = cooldown_curve(cd, hot, observed_end=True)
            tps = cd.tokens_end / cd.end_step
            out.append(
                RecordedRun(c.name, cd.N, tps, c.steps, c.losses, c.lr, cd.loss_end, lr_absolute=False)
            )
    return out


def ladders(quick: bool) -> dict[str, list[RecordedRun]]:
    lad = {
        "lrs-cos": lrs_ladder("cos", "val"),
        "lrs-wsd": lrs_ladder("wsd", "val"),
        "lrs-cos-train": lrs_ladder("cos", "train"),
        "gemstone": gemstone_ladder(),
    }
    if quick:
        lad = {"lrs-cos": [r for r in lad["lrs-cos"] if r.n_params < 1.3e8]}
    return lad


def row(name: str, tol: float, res: SimulationResult, secs: float) -> str:
    st = res.stopped
    errs = [res.predicted[n].loss / res.true_final[n] - 1 for n in st]
    worst = max(res.law_deviation, key=lambda n: abs(res.law_deviation[n])) if res.law_deviation else "-"
    lt = res.policy.law_tolerance
    by_law = sum(res.runs[n].reason.startswith("the law does not need") for n in st)
    return (
        f"| {name} | {tol:g} | {'-' if lt is None else f'{lt:g}'} | {len(res.runs)} | {len(st)} ({by_law}) | "
        f"{res.compute_fraction:.0%} | {res.compute_floor:.0%} | "
        f"{np.mean(np.abs(errs)) if errs else float('nan'):.2%} | {np.mean(errs) if errs else float('nan'):+.2%} | "
        f"{res.coverage:.0%} | {res.max_law_deviation:.2%} ({worst}) | {res.at_largest:+.2%} | {secs:.0f} s |"
    )


def param_rows(name: str, res: SimulationResult) -> list[str]:
    """Both laws' parameters with their 90% bootstrap intervals, and which of the adaptive law's lie outside
    the full law's."""
    out = []
    for label, f in (("adaptive", res.law_adaptive), ("full", res.law_full)):
        if f is None:
            continue
        cells = [
            f"{getattr(f, k):.3g} [{f.ci[k][0]:.3g}, {f.ci[k][1]:.3g}]" if f.ci else f"{getattr(f, k):.3g}"
            for k in ("E", "alpha", "beta")
        ]
        extra = ", ".join(res.outside_full_ci or []) or "none" if label == "adaptive" else ""
        out.append(f"| {name} | {label} | {' | '.join(cells)} | {extra} |")
    return out


def anytime(runs: list[RecordedRun], res: SimulationResult, fractions=(0.25, 0.5, 0.75)) -> list[tuple]:
    """At each fraction of the sweep's wall time (the replay's last run end): the law fitted to what was known
    then (``launch_ranking``'s fit), its L_opt at target_compute x the largest run against the full sweep's
    law's there, and its own sd there (``LaunchRanking.sd_now``): (fraction, points, error, sd)."""
    from scaling_train.fitter.adaptive import launch_ranking

    if res.law_full is None:  # no law pair (res.law_error says why): nothing to compare against
        return [(f, 0, float("nan"), float("nan")) for f in fractions]
    wall = max(rp.end for rp in res.runs.values())
    planned = max(r.compute for r in runs)
    full = float(res.law_full.optimal(res.policy.target_compute * planned)[2])
    probe = [("probe", runs[0].n_params, runs[0].tokens)]
    out = []
    for f in fractions:
        pts = known_at(runs, res.runs, res.policy, f * wall)
        rk, _ = launch_ranking(res.policy, pts, probe, planned)
        if rk is None:
            out.append((f, len(pts), float("nan"), float("nan")))
        else:
            out.append((f, len(pts), rk.L_opt / full - 1, rk.sd_now / full))
    return out


def order_rows(name: str, runs: list[RecordedRun], slots: int) -> list[str]:
    """The same ladder on ``slots`` slots in three launch orders: as listed (sizes ascending), longest first
    (the local backend's default), and ``launch_order: uncertainty``. Per order: compute, wall time against
    the listed order's, and the error of the law known at 25/50/75% of that wall time in L_opt at 10x the
    largest run, against the full sweep's law."""
    orders = {
        "listed (size, then budget)": (runs, "plan"),
        "longest first": (sorted(runs, key=lambda r: -r.compute), "plan"),
        "uncertainty": (runs, "uncertainty"),
    }
    out, wall0, t_ref = [], None, None
    for label, (rs, lo) in orders.items():
        t0 = time.time()
        res = simulate(rs, AdaptivePolicy(launch_order=lo), slots=slots)
        wall = max(rp.end for rp in res.runs.values())
        wall0 = wall0 or wall
        t_ref = t_ref or [f * wall0 for f in (0.25, 0.5, 0.75)]
        errs = anytime(rs, res, [t / wall for t in t_ref])
        cells = " | ".join(f"{e[2]:+.2%} ({e[1]})" if np.isfinite(e[2]) else f"- ({e[1]})" for e in errs)
        out.append(
            f"| {name} | {label} | {res.compute_fraction:.0%} | {wall / wall0:.2f} | {cells} | "
            f"{res.max_law_deviation:.2%} | {time.time() - t0:.0f} s |"
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the lrs-cos ladder below 130M only, not written")
    ap.add_argument("--tol", default="0.02,0.03,0.04,0.05", help="comma-separated tolerances to replay")
    ap.add_argument(
        "--law-tol",
        default="0.005,0.01,0.02",
        help="comma-separated law tolerances, at the default tolerance",
    )
    ap.add_argument("--only", default="", help="comma-separated ladder names")
    ap.add_argument("--slots", type=int, default=4, help="slots of the launch-order comparison (0: skip it)")
    args = ap.parse_args()
    default = AdaptivePolicy()
    policies = [AdaptivePolicy(tolerance=float(x)) for x in args.tol.split(",") if x]
    policies += [AdaptivePolicy(law_tolerance=float(x)) for x in args.law_tol.split(",") if x]
    lad = ladders(args.quick)
    if args.only:
        lad = {k: v for k, v in lad.items() if k in args.only.split(",")}
    lines = [
        "| ladder | tolerance | law tolerance | runs | stopped (by the law) | compute | floor | stopped: mean abs err | "
        "bias | coverage | max law deviation (run) | at largest (N, D) | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    misses = []
    stops = []
    verdict = []
    params: list[str] = []
    for name, runs in lad.items():
        for pol in policies:
            tol, lt = pol.tolerance, "-" if pol.law_tolerance is None else f"{pol.law_tolerance:g}"
            t0 = time.time()
            res = simulate(runs, pol, law_bootstrap=LAW_BOOTSTRAP if pol == default else 0)
            lines.append(row(name, tol, res, time.time() - t0))
            if pol == default:
                params += param_rows(name, res)
            print(lines[-1], flush=True)
            for n in res.misses:
                p = res.predicted[n]
                misses.append(
                    f"| {name} | {tol:g} | {lt} | {n} | {res.stopped[n]}/{res.runs[n].total_steps} | "
                    f"{p.loss:.4f} [{p.low:.4f}, {p.high:.4f}] | {res.true_final[n]:.4f} | "
                    f"{p.loss / res.true_final[n] - 1:+.2%} |"
                )
            if pol == default or pol == AdaptivePolicy(law_tolerance=0.01):
                ok = {
                    "compute <= 50%": res.compute_fraction <= 0.5,
                    "law within 1%": res.max_law_deviation <= 0.01,
                    "coverage >= 90%": res.coverage >= 0.9,
                }
                verdict.append(
                    f"- {name}, law tolerance {lt}: "
                    + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in ok.items())
                    + f" (compute {res.compute_fraction:.0%}, floor {res.compute_floor:.0%}, "
                    f"law {res.max_law_deviation:.2%}, "
                    f"coverage {res.coverage:.0%} of {len(res.stopped)} stopped)"
                )
                for n, rp in res.runs.items():
                    if rp.stopped_at is not None:
                        stops.append(
                            f"| {name} | {lt} | {n} | {rp.stopped_at}/{rp.total_steps} | {rp.reason} |"
                        )
    orders = []
    if args.slots:
        for name, runs in lad.items():
            orders += order_rows(name, runs, args.slots)
    if args.quick:
        return
    doc = [
        "# Adaptive sweeps replayed on real ladders",
        "",
        "Command: `PYTHONPATH=. python benchmarks/bench_adaptive.py` (module docstring: ladders, truth, split).",
        "Policy: `AdaptivePolicy(tolerance=...)` with its other defaults (3 updates 5% of the run apart, from 25%",
        "of the run, the shortest budget of every size runs to the end). compute = compute spent / the full",
        "sweep's; stopped: the prediction at the stop against the true final loss; coverage: share of stopped",
        "runs whose truth lies in the 90% interval; law deviation: the adaptive sweep's Chinchilla law (stopped",
        "runs at their predicted loss, weighted by their interval) / the full sweep's, at every run's (N, D)",
        "and at the largest (N, D). Targets (issue 19): compute <= 50% (goal 40%), law deviation <= 1%,",
        "coverage >= 90%. floor: the least compute the policy can spend on the ladder whatever the predictions",
        "(`SimulationResult.compute_floor`: the shortest budget of each size to its end, every other run stopped at",
        "the earliest step the rule allows, 35% of it); where it lies above 50% (lrs-wsd: a third of its compute is",
        "in the sizes' shortest runs) no interval, however narrow, meets the target under these defaults.",
        "",
        *lines,
        "",
        f"At the default tolerance ({default.tolerance:g}), without and with a law tolerance of 0.01, against the issue's "
        "targets:",
        "",
        *verdict,
        "",
        "The compute saved is bounded by the predictor's intervals: 90% intervals are 3-6% wide at 25-50% of a",
        "run (BENCHMARKS.md, prediction protocol), so a run is stopped once its interval has narrowed, mostly",
        "past half of it. A looser tolerance saves more and moves the law further from the full sweep's.",
        "",
        "The sweep law weighs a stopped run's predicted loss against the law's misfit (`fitter.adaptive.law_noise`:",
        "the finished runs' rms log residual about the law, never below the 0.5% seed noise). Gemstone's law misses",
        "its finished runs by 1.6-1.9% (mixed depths and widths); against 0.5% every stopped run weighed ~0.04 and",
        "the law lost the long budgets' information: at the default tolerance its deviation was 1.37% (0.04:",
        "2.16%), now 0.28% (0.54%). The lrs ladders' laws fit to 0.2-0.7%: their weights barely move.",
        "",
        "`law_tolerance` (rows with a law tolerance; stopped (by the law): how many of the stops it made) also",
        "stops a steady run whose interval is still wide once the stopped sweep's law would move from the full",
        "sweep's by at most that much (`fitter.adaptive.law_excess`: the linearised weighted fit, the stopped runs'",
        "prediction errors through it plus their lower weights acting on the points' misfit). At 0.01 (2026-12-05)",
        "it saves nothing on the lrs validation ladders (their runs stop at 35%, the earliest the default",
        "min_fraction and 3 spaced updates allow, on the interval rule alone: lrs-cos is at its floor), nothing on",
        "the training-loss ladder (69%, law 0.97% off) and 8 points on Gemstone (70% -> 62%, law 0.78%); at 0.02",
        "the training-loss ladder spends 49% (law 0.97%, coverage 89%) and Gemstone 52% (law 1.32%). Gemstone's",
        "D term is barely identified (3 budgets over 5x; beta 0.74 in the full fit): weighed against the 0.5% seed",
        "noise, the stopped long runs could leave it unidentified and the adaptive law diverged (beta 67: no law,",
        "`nan` in this table before); `fit_known_law` then reads the misfit off the unweighted fit and refits",
        "against it. Earlier states: before the misfit weights and the direct deviation bound (2026-12-02):",
        "lrs-cos 58% (law 0.86%), lrs-wsd 55% (0.81%), lrs-cos-train 67% (1.49%), Gemstone 62% (2.61%). It stays",
        "off by default: its savings are small where the interval rule already stops runs early, and at 0.02 the",
        "law leaves the 1% bound on Gemstone.",
        "",
        f"## The laws' parameters against the full sweep's own uncertainty (default tolerance, {LAW_BOOTSTRAP} "
        "bootstrap refits)",
        "",
        "The law deviation above compares the two laws' losses at the sweep's (N, D). Their parameters are another",
        "matter: on these ladders the full sweep's own law does not pin E (its 90% case-resampling interval",
        "reaches 0), and alpha trades off with E along the valley, so an adaptive law at E ~ 0 can lie within",
        "what the full sweep's runs, resampled, give. Last column: the adaptive law's parameters (of E, A, B,",
        "alpha, beta) outside the full law's interval. Neither law is for extrapolating far beyond the sweep.",
        "",
        "| ladder | law | E [90%] | alpha [90%] | beta [90%] | adaptive outside the full law's interval |",
        "| --- | --- | --- | --- | --- | --- |",
        *params,
        "",
        f"## Launch order on {args.slots} slots (default tolerance)",
        "",
        "The same replay with the runs started k at a time: as listed (sizes ascending, then budgets), longest",
        "first (the local backend's default order), and `launch_order: uncertainty` (the run that most reduces",
        "the variance of the law's loss at 10x the largest run per FLOP starts next; `laws/design.py`). Wall: the",
        "sweep's end on the replay clock against the listed order's. Law at t: the Chinchilla law fitted to",
        "what was known at 25/50/75% of the listed order's wall time (finished runs, stopped and running ones at",
        "their predictions), its loss at the compute-optimum of 10x the largest run against the full sweep's",
        "law's there (in brackets: the points known). A law fitted to 20-30 points extrapolated 10x in compute",
        "moves by percents: compare orders within a ladder.",
        "",
        "| ladder | order | compute | wall | law at 25% | law at 50% | law at 75% | max law deviation | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *orders,
        "",
        f"## Stopped runs whose truth fell outside the interval: {len(misses)}",
        "",
        "| ladder | tolerance | law tolerance | run | stopped at step | predicted [90%] | true | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *misses,
        "",
        f"## Where each run was stopped (the default tolerance, {default.tolerance:g}, without and with law tolerance 0.01)",
        "",
        "| ladder | law tolerance | run | step | why |",
        "| --- | --- | --- | --- | --- |",
        *stops,
        "",
    ]
    OUT.write_text("\n".join(doc))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
