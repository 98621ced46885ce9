"""The prediction protocol: real curves turned into prediction cases, each in a named group, and the fixed
split of groups into CALIBRATION and HELD-OUT (shared by benchmarks/calibrate_laws.py and the tests).

A case = predict one run's final loss from what a sweep would know at that moment. Settings:

- ``alone@25``: the run's first 25% of steps, no references.
- ``same@25``: the same, with the finished runs of the same size, peak LR and data of a shorter horizon
  (up to 3, longest first) as references: the short runs of a sweep finish first.
- ``far@25``: those of the ``same@25`` references whose horizon is at most a third of the target's (a 3x-10x
  longer run predicted from the sweep's short budgets, where a model sharing the references' asymptote
  predicts too low). Calibrated on like every setting: its intervals must hold where a sweep uses them.
- ``cool`` / ``cool_refs``: a cooldown branch predicted from its constant-LR parent up to the branch step;
  with references = the parent's earlier cooldown branches that ended by then (up to 3).
- ``before``: ladder runs of 124M-360M before they start, from the finished ladder runs of 33M-93M.
- ``sweep@25``: a ladder run from 25% with every finished ladder run of a smaller size, and of its own size
  with a shorter horizon, as references.
- ``live@30`` / ``live@50``: a ladder run at 30% / 50% with every other run of its family's ladder as far as
  it has trained by then, the sweep launched at once (what the live fitter sees: many references still
  running; ``predict_final_loss`` uses only the finished ones, ``is_running``).
- Gemstone ``gem_cool`` / ``gem_cool_refs`` and multipower ``mp@25`` / ``mp@50`` (alone / refs) as before.

Truth: validation loss = the last logged point (T' = its step); training loss (noisy: one batch per point)
= the mean of the last 40 logged points against the prediction at their mean step. Every prediction is
made for step T' with the schedule cut there.

Groups: ``lrs/<size>/<dataset>/<family>[-sqrt]/<val|train>``, ``gem/<run>``, ``mp/<ref|target>``.
HELD OUT (never used to fit any constant): lr_schedules sizes 53M, 93M, 152M, 360M, the
``slimpajama_chunk1`` data set and every sqrt-cooldown family; Gemstone runs with an odd index in the sorted
run names; the six multipower_25m target runs. Everything else is CALIBRATION.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from scaling_train.laws import Curve
from tests.laws.realdata import (
    MP_REFERENCES,
    MP_TARGETS,
    cooldown_curve,
    gemstone_cooldowns,
    gemstone_hot,
    ladder_runs,
    lr_full_curve,
    lr_schedule_runs,
    multipower_curve,
)

HELD_OUT_SIZES = ("53M", "93M", "152M", "360M")
REPORT_ONLY: tuple[str, ...] = ()  # settings reported but never used to fit a constant (none at present)
LADDER_SMALL = ("33M", "53M", "60M", "93M")
LIVE_FRACTIONS = (0.3, 0.5)


@dataclass(frozen=True)
class Case:
    group: str
    setting: str
    name: str
    target: Curve
    refs: tuple[Curve, ...]
    truth: float
    truth_sd: float = 0.0  # standard error of the truth itself (training-loss window mean)


def is_held_out(group: str) -> bool:
    """The fixed split (module docstring)."""
    parts = group.split("/")
    if parts[0] == "lrs":
        return parts[1] in HELD_OUT_SIZES or parts[2] != "slimpajama" or parts[3].endswith("-sqrt")
    if parts[0] == "gem":
        return parts[1] == "odd"
    if parts[0] == "mp":
        return parts[1] == "target"
    raise ValueError(f"unknown group {group!r}")


def _cut(c: Curve, T: int) -> Curve:
    """``c`` with its schedule ending at step T (points after T dropped)."""
    keep = c.steps <= T
    return replace(c, steps=c.steps[keep], losses=c.losses[keep], lr=c.lr[:T])


def lr_schedule_cases(kinds: tuple[str, ...] = ("val", "train")) -> list[Case]:
    runs = lr_schedule_runs()
    cases: list[Case] = []
    for kind in kinds:

        def full(r, _kind=kind) -> Curve:
            s, y = lr_full_curve(r, runs, _kind)
            return Curve(s, y, r.lr, r.name, n_params=r.params, tokens_per_step=r.tokens_per_step)

        def truth(r, _kind=kind) -> tuple[int, float, float]:
            s, y = lr_full_curve(r, runs, _kind)
            if _kind == "val":
                return int(s[-1]), float(y[-1]), 0.0
            n = 40
            return int(round(s[-n:].mean())), float(y[-n:].mean()), float(y[-n:].std() / np.sqrt(n))

        def group(r, _kind=kind) -> str:
            fam = r.family + ("-sqrt" if r.decay == "sqrt" else "")
            return f"lrs/{r.params / 1e6:.0f}M/{r.dataset}/{fam}/{_kind}"

        usable = [r for r in runs.values() if r.start == 0 or r.parent]
        curves = {r.name: full(r) for r in usable}
        ladder = ladder_runs(runs)
        for r in usable:
            T, y, sd = truth(r)
            tgt = _cut(curves[r.name], T)
            g = group(r)
            cases.append(Case(g, "alone@25", r.name, tgt.observed_until(0.25 * r.iterations), (), y, sd))
            shorter = sorted(
                (q for q in usable if q.params == r.params and q.peak == r.peak and q.dataset == r.dataset
                 and q.iterations < r.iterations and q.tokens_per_step == r.tokens_per_step),
                key=lambda q: -q.iterations,
            )  # fmt: skip
            same = shorter[:3]
            if same and r.start == 0:
                refs = tuple(curves[q.name] for q in same)
                cases.append(Case(g, "same@25", r.name, tgt.observed_until(0.25 * r.iterations), refs, y, sd))
            # the sweep's short budgets only
            far = [q for q in shorter if 3 * q.iterations <= r.iterations][:3]
            if far and r.start == 0:
                refs = tuple(curves[q.name] for q in far)
                cases.append(Case(g, "far@25", r.name, tgt.observed_until(0.25 * r.iterations), refs, y, sd))
            if r.start > 0:
                cases.append(Case(g, "cool", r.name, tgt.observed_until(r.start), (), y, sd))
                early = sorted(
                    (q for q in usable if q.parent == r.parent and q.iterations <= r.start),
                    key=lambda q: -q.iterations,
                )[:3]
                if early:
                    refs = tuple(curves[q.name] for q in early)
                    cases.append(Case(g, "cool_refs", r.name, tgt.observed_until(r.start), refs, y, sd))
        small = [q for q in ladder if f"{q.params / 1e6:.0f}M" in LADDER_SMALL]
        for r in ladder:
            T, y, sd = truth(r)
            tgt = _cut(curves[r.name], T)
            g = group(r)
            if f"{r.params / 1e6:.0f}M" not in LADDER_SMALL:
                refs = tuple(curves[q.name] for q in small)
                cases.append(Case(g, "before", r.name, tgt.observed_until(0), refs, y, sd))
            refs = tuple(
                curves[q.name]
                for q in ladder
                if q.params < r.params or (q.params == r.params and q.iterations < r.iterations)
            )
            if refs:
                cases.append(
                    Case(g, "sweep@25", r.name, tgt.observed_until(0.25 * r.iterations), refs, y, sd)
                )
        cases += _live_cases(ladder, curves, truth, group)
    return cases


def _live_cases(ladder, curves, truth, group) -> list[Case]:
    """``live@30`` / ``live@50``: a ladder run at 30% / 50% of its steps with every other run of its family's
    ladder (one sweep) as far as it has trained by then: all runs started together, each step costing
    N x tokens per step (the live fitter's view of a sweep launched at once: short small runs have finished,
    long large ones are still running)."""
    out = []
    for fam in sorted({q.family for q in ladder}):
        lad = [q for q in ladder if q.family == fam]
        cost = {q.name: q.params * q.tokens_per_step for q in lad}
        for r in lad:
            T, y, sd = truth(r)
            tgt = _cut(curves[r.name], T)
            for f in LIVE_FRACTIONS:
                clock = f * r.iterations * cost[r.name]
                refs = []
                for q in lad:
                    if q is r:
                        continue
                    c = curves[q.name].observed_until(min(q.iterations, int(clock / cost[q.name])))
                    if np.sum(np.isfinite(c.losses)) >= 3:
                        refs.append(c)
                if refs:
                    at = tgt.observed_until(f * r.iterations)
                    out.append(Case(group(r), f"live@{round(100 * f)}", r.name, at, tuple(refs), y, sd))
    return out


def gemstone_cases() -> list[Case]:
    cds, hot = gemstone_cooldowns(), gemstone_hot()
    names = sorted({c.run for c in cds})
    cases = []
    for cd in cds:
        g = "gem/" + ("even" if names.index(cd.run) % 2 == 0 else "odd") + "/" + cd.run
        target = cooldown_curve(cd, hot, observed_end=False)
        refs = tuple(
            cooldown_curve(c, hot, observed_end=True)
            for c in cds
            if c.run == cd.run and c.end_step < cd.begin_step
        )[-3:]
        cases.append(Case(g, "gem_cool", target.name, target, (), cd.loss_end))
        if refs:
            cases.append(Case(g, "gem_cool_refs", target.name, target, refs, cd.loss_end))
    return cases


def multipower_cases() -> list[Case]:
    refs = {n: multipower_curve(n) for n in MP_REFERENCES}
    cases = []
    for name in (*MP_REFERENCES, *MP_TARGETS):
        c = refs.get(name) or multipower_curve(name)
        g = "mp/ref" if name in refs else "mp/target"
        others = tuple(v for k, v in refs.items() if k != name)
        for f in (0.25, 0.5):
            tgt = c.truncated(f)
            cases.append(Case(g, f"mp@{f:.0%}", name, tgt, (), float(c.losses[-1])))
            cases.append(Case(g, f"mp_refs@{f:.0%}", name, tgt, others, float(c.losses[-1])))
    return cases


def all_cases() -> list[Case]:
    return lr_schedule_cases() + gemstone_cases() + multipower_cases()
