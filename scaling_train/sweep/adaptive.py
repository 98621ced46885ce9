"""Replay a sweep as if it had run under an adaptive policy (``fitter.adaptive.AdaptivePolicy``).

    result = simulate(runs, AdaptivePolicy(tolerance=0.02))
    result.compute_fraction        # compute spent / the full sweep's
    result.predicted["run7"]       # LossPrediction of run7's final loss when it was stopped (or its truth)
    result.law_adaptive, result.law_full   # Chinchilla fits of the adaptive and of the full sweep

The replay keeps the sweep's clock: every run trains at one FLOP per unit of time on its own slot
(``slots=None``: all runs at once, as a Slurm array; ``slots=k``: k at a time in the given order, as the
local backend, where a stopped run frees its slot for the next planned run). A run's step costs
``6 * n_params * tokens_per_step``. At every ``policy.spacing`` of a run past ``policy.min_fraction`` the
fitter predicts its final loss from its own prefix and every other run as far as it has trained by then
(finished, stopped or running, as the live fitter passes them; the predictor uses the finished ones), and
the policy decides whether to stop it.
Nothing of a run past the step it was stopped at is ever read.
"""

from __future__ import annotations

import heapq
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scaling_train.fitter.adaptive import (
    FINAL_LOSS_NOISE,
    LAUNCH_ORDERS,
    AdaptivePolicy,
    fit_known_law,
    known_interval,
)

if TYPE_CHECKING:  # the laws (scipy) load when a replay runs, not with the command line
    from scaling_train.laws import ChinchillaFit, Curve, LossPrediction


@dataclass(frozen=True, eq=False)
class RecordedRun:
    """One finished run: ``losses`` at ``steps`` (1-based) and ``lr`` the full planned per-step schedule
    (length = total steps, as in ``Curve``). ``final_loss`` is the truth the replay scores against (default:
    the last loss; pass a window mean for a noisy training loss)."""

    name: str
    n_params: float
    tokens_per_step: float
    steps: np.ndarray
    losses: np.ndarray
    lr: np.ndarray
    final_loss: float | None = None
    lr_absolute: bool = True  # False: ``lr`` is a normalised shape (as in ``Curve``)
    # points before this step are not fitted (``Curve.burn_in``, ``metrics.law_burn_in``)
    burn_in: float = 0.0

    def __post_init__(self) -> None:
        c = self.curve()  # validates steps, losses, lr
        if not (self.n_params > 0 and self.tokens_per_step > 0):
            raise ValueError(
                f"run {self.name!r}: n_params={self.n_params} and tokens_per_step={self.tokens_per_step} must be > 0"
            )
        if len(c.steps) < 3:
            raise ValueError(f"run {self.name!r} has {len(c.steps)} logged points; at least 3 are needed")
        if self.final_loss is not None and not (math.isfinite(self.final_loss) and self.final_loss > 0):
            raise ValueError(f"run {self.name!r}: final_loss={self.final_loss} must be finite and > 0")

    @property
    def total_steps(self) -> int:
        return len(self.lr)

    @property
    def tokens(self) -> float:
        return self.total_steps * self.tokens_per_step

    @property
    def compute(self) -> float:
        return 6.0 * self.n_params * self.tokens

    @property
    def truth(self) -> float:
        if self.final_loss is not None:
            return float(self.final_loss)
        y = np.asarray(self.losses, dtype=np.float64)
        return float(y[np.isfinite(y)][-1])

    def curve(self, until: float | None = None) -> Curve:
        from scaling_train.laws import Curve

        c = Curve(
            np.asarray(self.steps, dtype=np.float64), np.asarray(self.losses, dtype=np.float64),
            np.asarray(self.lr, dtype=np.float64), self.name,
            n_params=float(self.n_params), tokens_per_step=float(self.tokens_per_step),
            lr_absolute=self.lr_absolute, burn_in=self.burn_in,
        )  # fmt: skip
        return c if until is None else c.observed_until(until)


@dataclass
class RunReplay:
    """What happened to one run: ``stopped_at`` (step; None = ran to the end), the reason, every prediction
    made for it (fraction, step, loss, low, high), and when it started and ended on the sweep's clock."""

    name: str
    total_steps: int
    stopped_at: int | None = None
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    start: float | None = None
    """When it started and ended on the replay's clock (FLOPs of one slot: a step costs 6 N tokens_per_step)."""
    end: float | None = None


@dataclass
class SimulationResult:
    """``compute_fraction``: compute spent / the full sweep's. ``predicted``: run name -> the prediction
    of its final loss when it was stopped, or its true final loss as a zero-width prediction when it ran
    to the end. ``true_final``: run name -> true final loss. ``law_adaptive`` / ``law_full``: Chinchilla
    fits over the adaptive sweep's final losses (stopped runs weighted by their interval) and over the
    true ones. ``law_deviation``: per run, law_adaptive / law_full - 1 at its (N, D), and ``at_largest``
    at the sweep's largest (N, D). ``coverage``: share of stopped runs whose truth lies in the interval."""

    compute_fraction: float
    predicted: dict[str, LossPrediction]
    true_final: dict[str, float]
    law_adaptive: ChinchillaFit | None
    law_full: ChinchillaFit | None
    law_deviation: dict[str, float]
    at_largest: float
    runs: dict[str, RunReplay]
    policy: AdaptivePolicy
    law_error: str = ""
    launched: list[str] = field(default_factory=list)
    """Run names in the order they started (``launch_order`` decides it when slots are limited)."""
    rankings: list[dict[str, Any]] = field(default_factory=list)
    """Under ``launch_order: uncertainty``, each pick: time, picked run, why, the queued runs, the law's ranking of
    them (None: the planned order) and the sd of the target loss then."""
    compute_floor: float = float("nan")
    """The least compute (/ the full sweep's) this policy can spend on these runs: the exempt runs to the end, every
    other one stopped at its ``stable_updates``-th prediction of the replay (``_decision_steps``), the earliest
    step the rule could stop it. A replay at its floor saves no more with tighter predictions, only with another
    policy."""

    @property
    def stopped(self) -> dict[str, int]:
        return {n: r.stopped_at for n, r in self.runs.items() if r.stopped_at is not None}

    @property
    def coverage(self) -> float:
        st = self.stopped
        if not st:
            return float("nan")
        inside = sum(self.predicted[n].low <= self.true_final[n] <= self.predicted[n].high for n in st)
        return inside / len(st)

    @property
    def misses(self) -> list[str]:
        return [
            n for n in self.stopped
            if not (self.predicted[n].low <= self.true_final[n] <= self.predicted[n].high)
        ]  # fmt: skip

    @property
    def outside_full_ci(self) -> list[str] | None:
        """The adaptive law's parameters (E, A, B, alpha, beta) that lie outside the full sweep's law's 90%
        bootstrap interval; None without intervals (``simulate(..., law_bootstrap=k)``). A parameter the full
        sweep itself does not pin has a wide interval: an adaptive law far from the full one there is within
        what the same runs, resampled, give."""
        if self.law_adaptive is None or self.law_full is None or not self.law_full.ci:
            return None
        out = []
        for k, (lo, hi) in self.law_full.ci.items():
            v = getattr(self.law_adaptive, k)
            tol = 1e-9 + 1e-9 * abs(v)  # E = 5e-13 against a bound of 8e-12: both the fit's floor, i.e. 0
            if not lo - tol <= v <= hi + tol:
                out.append(k)
        return out

    @property
    def max_law_deviation(self) -> float:
        vals = [abs(v) for v in self.law_deviation.values()] + [abs(self.at_largest)]
        return max(vals) if vals and all(math.isfinite(v) for v in vals) else float("nan")

    def summary(self) -> dict[str, Any]:
        """A JSON-able account: what was stopped where, compute saved, both laws side by side."""

        def law(f: ChinchillaFit | None) -> dict[str, Any] | None:
            if f is None:
                return None
            out: dict[str, Any] = {k: getattr(f, k) for k in ("E", "A", "B", "alpha", "beta")}
            if f.ci:  # 90% bootstrap intervals (simulate's law_bootstrap)
                out["ci"] = {k: list(v) for k, v in f.ci.items()}
            return out

        return {
            "policy": self.policy.to_dict(),
            "compute_fraction": self.compute_fraction,
            "compute_floor": self.compute_floor,
            "n_runs": len(self.runs),
            "n_stopped": len(self.stopped),
            "coverage": self.coverage,
            "misses": self.misses,
            "max_law_deviation": self.max_law_deviation,
            "at_largest": self.at_largest,
            "law_adaptive": law(self.law_adaptive),
            "law_full": law(self.law_full),
            "outside_full_ci": self.outside_full_ci,
            "law_error": self.law_error,
            "launched": self.launched,
            "runs": {
                n: {
                    "total_steps": r.total_steps,
                    "stopped_at": r.stopped_at,
                    "reason": r.reason,
                    "true_final": self.true_final[n],
                    "predicted": self.predicted[n].loss,
                    "low": self.predicted[n].low,
                    "high": self.predicted[n].high,
                    "law_deviation": self.law_deviation.get(n),
                }
                for n, r in self.runs.items()
            },  # fmt: skip
        }


def _exact(loss: float) -> LossPrediction:
    from scaling_train.laws import LossPrediction

    return LossPrediction(loss, loss, loss, 0, 0, 0, 0.0, mode="observed")


def simulate(
    runs: Sequence[RecordedRun],
    policy: AdaptivePolicy | None = None,
    *,
    slots: int | None = None,
    max_points: int = 64,
    law_bootstrap: int = 0,
) -> SimulationResult:
    """Replay ``runs`` (in planned order) under ``policy`` (default ``AdaptivePolicy()``); module docstring.
    ``law_bootstrap`` > 0 fits both laws with that many case-resampling bootstrap refits: 90% intervals of their
    parameters in ``ChinchillaFit.ci`` (``SimulationResult.outside_full_ci``)."""
    policy = policy or AdaptivePolicy()
    runs = _checked(runs, slots)
    if not (isinstance(law_bootstrap, int) and law_bootstrap >= 0):
        raise ValueError(
            f"law_bootstrap={law_bootstrap!r} must be an integer >= 0 (0: no parameter intervals)"
        )
    clock = _SweepClock(runs, policy, slots)
    clock.play(max_points)
    res = _result(runs, policy, clock.replay, clock.cost, law_bootstrap)
    res.launched, res.rankings = clock.launched, clock.rankings
    res.compute_floor = clock.floor()
    return res


def _decision_steps(policy: AdaptivePolicy, total_steps: int) -> list[int]:
    """The steps (before the end) at which the replay predicts a run's final loss and asks the policy: from
    ``min_fraction`` of the run, every ``spacing`` of it (at least 1%)."""
    T = total_steps
    fracs = np.arange(policy.min_fraction, 1.0 - 1e-9, max(policy.spacing, 0.01))
    return sorted({int(math.ceil(f * T)) for f in fracs if f * T >= 1} - {T})


def _checked(runs: Sequence[RecordedRun], slots: int | None) -> list[RecordedRun]:
    """``runs`` as a list, once they are known to be uniquely named RecordedRuns and ``slots`` to be valid."""
    runs = list(runs)
    if not runs:
        raise ValueError("simulate needs at least one RecordedRun, got none")
    for i, r in enumerate(runs):
        if not isinstance(r, RecordedRun):
            raise TypeError(f"runs[{i}] must be a RecordedRun, got {type(r).__name__}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run names must be unique; repeated: {dup}")
    if slots is not None and (not isinstance(slots, int) or slots < 1):
        raise ValueError(f"slots={slots!r} must be a positive integer or None (all runs at once)")
    return runs


class _SweepClock:
    """The replay's clock: a heap of events (a run's prediction points and its end) on ``slots`` run slots,
    one FLOP per unit of time per run; ``replay`` holds what happened to each run."""

    def __init__(self, runs: list[RecordedRun], policy: AdaptivePolicy, slots: int | None) -> None:
        self.policy = policy
        self.names = [r.name for r in runs]
        self.by_name = {r.name: r for r in runs}
        self.exempt = policy.exempt([(r.name, r.n_params, r.tokens) for r in runs])
        self.replay = {r.name: RunReplay(r.name, r.total_steps) for r in runs}
        self.cost = {r.name: 6.0 * r.n_params * r.tokens_per_step for r in runs}  # per step
        self.heap: list[
            tuple[float, int, str, int]
        ] = []  # (time, order, run, step); step == T: the run's end
        self.order = 0
        self.queue = list(self.names)
        self.free = len(runs) if slots is None else slots
        self.launched: list[str] = []
        self.rankings: list[dict[str, Any]] = []  # launch_order uncertainty: each pick and why
        self.planned_compute = max(r.compute for r in runs)
        self._law_key: int | None = None  # law_excess: the law and how many runs had ended when it was fitted
        self._law = None
        self._law_noise = FINAL_LOSS_NOISE

    def pick(self, now: float) -> str:
        """The queued run to start next: the first in planned order, or under ``launch_order: uncertainty``
        the one the law ranks first (``fitter.adaptive.launch_ranking``) from what is known at ``now``."""
        if self.policy.launch_order != "uncertainty" or len(self.queue) == 1:
            return self.queue.pop(0)
        from scaling_train.fitter.adaptive import launch_ranking

        pending = [(n, self.by_name[n].n_params, self.by_name[n].tokens) for n in self.queue]
        ranking, why = launch_ranking(self.policy, self.known(now), pending, self.planned_compute)
        n = self.queue[0] if ranking is None else ranking.order[0]
        self.rankings.append(
            {"time": now, "picked": n, "why": why, "queued": list(self.queue),
             "order": None if ranking is None else ranking.order,
             "sd_now": None if ranking is None else ranking.sd_now}
        )  # fmt: skip
        self.queue.remove(n)
        return n

    def floor(self) -> float:
        """``SimulationResult.compute_floor``: exempt runs to the end, the others to their ``stable_updates``-th
        decision step (the rule needs that many predictions; the run's end when it has fewer)."""
        k = self.policy.stable_updates
        least = 0.0
        for n in self.names:
            T = self.by_name[n].total_steps
            steps = _decision_steps(self.policy, T)
            least += self.cost[n] * (T if n in self.exempt or len(steps) < k else steps[k - 1])
        return least / sum(self.cost[n] * self.by_name[n].total_steps for n in self.names)

    def known(self, now: float) -> list[tuple[float, float, float, float | None, float | None]]:
        """``known_at`` the clock's ``now``."""
        return known_at([self.by_name[n] for n in self.names], self.replay, self.policy, now)

    def launch(self, now: float) -> None:
        """Returns nothing: starts queued runs on the free slots at ``now`` and schedules their events."""
        policy = self.policy
        while self.free > 0 and self.queue:
            n = self.pick(now)
            self.launched.append(n)
            self.free -= 1
            self.replay[n].start = now
            T = self.by_name[n].total_steps
            for s in _decision_steps(policy, T):
                heapq.heappush(self.heap, (now + s * self.cost[n], self.order, n, s))
                self.order += 1
            heapq.heappush(self.heap, (now + T * self.cost[n], self.order, n, T))
            self.order += 1

    def progress(self, n: str, now: float) -> int:
        """Steps run ``n`` has trained by ``now`` (0 before it starts; never past its stop or end)."""
        rp = self.replay[n]
        if rp.start is None:
            return 0
        done = rp.stopped_at if rp.stopped_at is not None else rp.total_steps
        return min(done, int((now - rp.start) / self.cost[n] + 1e-9))

    def references(self, n: str, now: float) -> list[Curve]:
        """Every other run's curve as far as it has trained by ``now`` (those with >= 3 logged points)."""
        refs = []
        for m in self.names:
            if m == n:
                continue
            k = self.progress(m, now)
            if k > 0:
                c = self.by_name[m].curve(until=k)
                if len(c.steps) >= 3:
                    refs.append(c)
        return refs

    def end_run(self, n: str, now: float) -> None:
        """Returns nothing: ends run ``n`` at ``now`` and hands its slot to the next queued run."""
        self.replay[n].end = now
        self.free += 1
        self.launch(now)

    def play(self, max_points: int) -> None:
        """Returns nothing: runs the events in time order until every run has ended or been stopped."""
        self.launch(0.0)
        while self.heap:
            now, _, n, s = heapq.heappop(self.heap)
            rp = self.replay[n]
            if rp.end is not None:
                continue  # stopped earlier: its later events are void
            if s >= rp.total_steps:
                self.end_run(n, now)
                continue
            if self.decide(n, s, now, max_points):
                rp.stopped_at = s
                self.end_run(n, now)

    def decide(self, n: str, s: int, now: float, max_points: int) -> bool:
        """Whether the policy stops run ``n`` at step ``s``, after predicting its final loss (in its history)."""
        from scaling_train.laws import NotEnoughDataError, predict_final_loss

        rp = self.replay[n]
        refs = self.references(n, now)
        target = self.by_name[n].curve(until=s)
        try:
            p = predict_final_loss(target, refs, max_points=max_points)
        except (NotEnoughDataError, ValueError, RuntimeError, FloatingPointError) as e:
            rp.history.append({"step": s, "fraction": s / rp.total_steps, "error": str(e)})
            return False
        rp.history.append(
            {"step": s, "fraction": s / rp.total_steps, "loss": p.loss, "low": p.low, "high": p.high,
             "rel_scale": p.rel_scale, "read_noise": p.read_noise,
             "mode": p.mode, "references": len(refs), "prediction": p}
        )  # fmt: skip
        if n in self.exempt:
            rp.reason = self.exempt[n]
            return False
        stop, why = self.policy.decide(rp.history, lambda: self.law_excess(n, now))
        rp.reason = why
        return stop

    def law_excess(self, n: str, now: float) -> tuple[float | None, str]:
        """``fitter.adaptive.law_excess`` for stopping run ``n`` at ``now``: the runs stopped so far and ``n`` at
        their stop intervals, every other run finishing, on the Chinchilla law fitted to what is known then
        (weighted as the sweep law; refitted when a run has ended or stopped since the last fit)."""
        from scaling_train.fitter.adaptive import MIN_LAW_POINTS, law_excess

        ended = sum(rp.end is not None for rp in self.replay.values())
        if self._law_key != ended:
            pts = self.known(now)
            self._law_key, self._law, self._law_noise = ended, None, FINAL_LOSS_NOISE
            if len(pts) >= MIN_LAW_POINTS and len({p[0] for p in pts}) >= 2:
                try:
                    self._law, self._law_noise, _ = fit_known_law(pts)
                except (ValueError, RuntimeError, FloatingPointError):
                    self._law = None
        stopped, finishing = [], []
        for m in self.names:
            r, rp = self.by_name[m], self.replay[m]
            if m == n or rp.stopped_at is not None:
                stopped.append((r.n_params, r.tokens, *self.policy.stop_interval(rp.history)))
            else:
                finishing.append((r.n_params, r.tokens))
        return law_excess(stopped, finishing, fit=self._law, noise=self._law_noise)


def known_at(
    runs: Sequence[RecordedRun], replay: dict[str, RunReplay], policy: AdaptivePolicy, t: float
) -> list[tuple[float, float, float, float | None, float | None]]:
    """(N, D, loss, low, high) of every run known at time ``t`` of a replay's clock: an ended run at its truth
    (low/high None) or, stopped, at the prediction and interval it stopped on (``policy.stop_interval``); a
    running one at its latest prediction made by then; nothing for a run not started or not yet predicted.
    The replay's own launch ranking reads it, and so can anyone reading a ``SimulationResult`` afterwards."""
    out = []
    for r in runs:
        rp = replay[r.name]
        if rp.start is None or rp.start > t:
            continue
        if rp.end is not None and rp.end <= t:
            last = (r.truth, None, None) if rp.stopped_at is None else policy.stop_interval(rp.history)
            out.append((r.n_params, r.tokens, *last))
            continue
        step = (t - rp.start) / (6.0 * r.n_params * r.tokens_per_step) + 1e-6  # a step's own event time
        h = [h for h in rp.history if "loss" in h and h["step"] <= step]
        if h:
            out.append((r.n_params, r.tokens, h[-1]["loss"], h[-1]["low"], h[-1]["high"]))
    return out


def _result(
    runs: list[RecordedRun],
    policy: AdaptivePolicy,
    replay: dict[str, RunReplay],
    cost: dict[str, float],
    law_bootstrap: int = 0,
) -> SimulationResult:
    """The SimulationResult of a played replay: compute spent, final predictions and both laws."""
    names = [r.name for r in runs]
    by_name = {r.name: r for r in runs}
    spent = sum(cost[n] * (replay[n].stopped_at or replay[n].total_steps) for n in names)
    full = sum(cost[n] * replay[n].total_steps for n in names)
    true_final = {n: by_name[n].truth for n in names}
    predicted: dict[str, LossPrediction] = {}
    for n in names:
        rp = replay[n]
        if rp.stopped_at is None:
            predicted[n] = _exact(true_final[n])
        else:  # the last prediction with the union of the intervals the stop rests on (as the live fitter)
            _, lo, hi = policy.stop_interval(rp.history)
            predicted[n] = replace(rp.history[-1]["prediction"], low=lo, high=hi)
    law_a, law_f, dev, at_big, err = _laws(runs, predicted, true_final, law_bootstrap)
    return SimulationResult(
        compute_fraction=spent / full, predicted=predicted, true_final=true_final, law_adaptive=law_a,
        law_full=law_f, law_deviation=dev, at_largest=at_big, runs=replay, policy=policy, law_error=err,
    )  # fmt: skip


def _laws(
    runs: Sequence[RecordedRun],
    predicted: dict[str, LossPrediction],
    true_final: dict[str, float],
    n_bootstrap: int = 0,
) -> tuple[ChinchillaFit | None, ChinchillaFit | None, dict[str, float], float, str]:
    from scaling_train.laws import fit_chinchilla

    N = np.array([r.n_params for r in runs])
    D = np.array([r.tokens for r in runs])
    if len(runs) < 5:
        return None, None, {}, float("nan"), f"{len(runs)} runs: a Chinchilla law needs at least 5"
    y_full = np.array([true_final[r.name] for r in runs])
    pts = []
    for r in runs:
        p = predicted[r.name]
        pts.append((r.n_params, r.tokens, p.loss, *known_interval(p.low, p.high)))
    try:
        boot = {"n_bootstrap": n_bootstrap} if n_bootstrap else {}
        law_f = fit_chinchilla(N, D, y_full, **boot)
        law_a = fit_known_law(pts, **boot).fit
    except (ValueError, RuntimeError, FloatingPointError) as e:
        return None, None, {}, float("nan"), f"{type(e).__name__}: {e}"
    dev = {
        r.name: float(law_a.predict(r.n_params, r.tokens) / law_f.predict(r.n_params, r.tokens) - 1)
        for r in runs
    }
    big = max(runs, key=lambda r: (r.n_params, r.tokens))
    at_big = float(law_a.predict(big.n_params, big.tokens) / law_f.predict(big.n_params, big.tokens) - 1)
    return law_a, law_f, dev, at_big, ""


# --------------------------------------------------------------------------------------------------
# a finished sweep folder as recorded runs (``scaling-train replay``)


def recorded_runs(sweep_dir: str | Path) -> list[RecordedRun]:
    """Every finished run of ``sweep_dir`` as a ``RecordedRun``: its training-loss rows, the LR schedule the
    fitter uses, non-embedding N and tokens per step from its config; in the sweep's planned order."""
    from scaling_train.fitter.tail import RunTail, find_runs
    from scaling_train.metrics.config import law_burn_in

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    order: dict[str, int] = {}
    plan = sweep_dir / "plan.json"
    if plan.is_file():
        try:
            order = {r["name"]: i for i, r in enumerate(json.loads(plan.read_text())["runs"])}
        except (ValueError, KeyError, TypeError):
            order = {}
    out: list[RecordedRun] = []
    for run_dir in find_runs(sweep_dir):
        t = RunTail(run_dir)
        t.poll()
        if not t.done or t.diverged_at is not None or not t.total_steps:
            continue
        lr = t.planned_lr()
        if lr is None or not (t.n_params and t.batch_tokens):
            continue
        steps, losses = t.loss_points(len(lr))
        if len(steps) < 3:
            continue
        out.append(
            RecordedRun(
                t.name,
                float(t.n_params),
                float(t.batch_tokens),
                steps,
                losses,
                lr,
                burn_in=law_burn_in(t.config),
            )
        )
    if not out:
        raise ValueError(f"{sweep_dir} holds no finished run with a loss curve and an LR schedule to replay")
    return sorted(out, key=lambda r: (order.get(r.name, len(order)), r.compute))


# --------------------------------------------------------------------------------------------------
# scaling-train replay SWEEP_DIR --adaptive [policy options]

REPLAY_FILE = "adaptive_replay.json"


def format_summary(res: SimulationResult) -> str:
    """The replay as text: compute saved, each run's stop, both laws side by side."""
    s = res.summary()
    lines = [
        f"[replay] {s['n_runs']} runs, {s['n_stopped']} stopped early; compute {s['compute_fraction']:.1%} of "
        f"the full sweep (saved {1 - s['compute_fraction']:.1%}; this policy's floor on these runs: "
        f"{s['compute_floor']:.1%}, the exempt runs to the end and every other one at its earliest stop)",
    ]
    for n, r in s["runs"].items():
        where = f"stopped at {r['stopped_at']}/{r['total_steps']}" if r["stopped_at"] else "ran to the end"
        lines.append(
            f"  {n}: {where}; final loss {r['predicted']:.4f} [{r['low']:.4f}, {r['high']:.4f}], "
            f"true {r['true_final']:.4f}"
        )
    cov = s["coverage"]
    lines.append(
        f"[replay] stopped runs inside their 90% interval: "
        f"{'-' if cov != cov else f'{cov:.0%}'} ({len(s['misses'])} outside: {', '.join(s['misses']) or 'none'})"
    )
    la, lf = s["law_adaptive"], s["law_full"]
    if la and lf:
        lines.append("[replay] law          E        A         B         alpha   beta")
        for name, f in (("adaptive", la), ("full", lf)):
            lines.append(
                f"  {name:10s} {f['E']:8.4f} {f['A']:9.4g} {f['B']:9.4g} {f['alpha']:7.4f} {f['beta']:7.4f}"
            )
            if f.get("ci"):
                lines.append("  " + " " * 10 + " 90%: " + ", ".join(
                    f"{k} [{f['ci'][k][0]:.4g}, {f['ci'][k][1]:.4g}]" for k in ("E", "A", "B", "alpha", "beta")
                ))  # fmt: skip
        out = s.get("outside_full_ci")
        if out is not None:
            lines.append(
                "[replay] adaptive law's parameters outside the full sweep's 90% bootstrap interval: "
                + (", ".join(out) if out else "none")
                + " (a parameter whose interval is wide is not pinned by these runs: do not extrapolate with it)"
            )
        lines.append(
            f"[replay] adaptive law / full law - 1: at most {s['max_law_deviation']:.2%} over the runs' (N, D); "
            f"{s['at_largest']:+.2%} at the largest (N, D)"
        )
    else:
        lines.append(f"[replay] no law: {s['law_error']}")
    return "\n".join(lines)


def _cmd_replay(args: Any) -> int:
    from scaling_train._io import atomic_write
    from scaling_train.fitter.core import ADAPTIVE_FILE

    if args.launch_order == "uncertainty" and args.slots is None:
        print(
            "error: --launch-order uncertainty needs --slots k (with every run at once there is no order)",
            file=sys.stderr,
        )
        return 2
    if args.bootstrap < 0:
        print(f"error: --bootstrap {args.bootstrap} must be >= 0 (bootstrap refits of each law; 0: none)",
              file=sys.stderr)  # fmt: skip
        return 2
    if not args.adaptive:
        print("error: replay needs --adaptive (the only replay there is so far)", file=sys.stderr)
        return 2
    sweep_dir = Path(args.sweep_dir)
    block: dict[str, Any] = {}
    src = "the defaults"
    if args.policy:
        src = args.policy
        try:
            import yaml

            block = yaml.safe_load(Path(args.policy).read_text()) or {}
        except (OSError, ValueError) as e:
            print(f"error: cannot read --policy {args.policy}: {e}", file=sys.stderr)
            return 2
        if isinstance(block, dict) and "adaptive" in block:  # a sweep spec
            block = block["adaptive"] or {}
    elif (sweep_dir / ADAPTIVE_FILE).is_file():
        src = str(sweep_dir / ADAPTIVE_FILE)
        block = json.loads((sweep_dir / ADAPTIVE_FILE).read_text())
    for key in (
        "tolerance", "stable_updates", "spacing", "min_fraction", "launch_order", "target_compute", "law_tolerance"
    ):  # fmt: skip
        v = getattr(args, key)
        if v is not None:
            block[key] = v
    for key in ("relative", "keep_full_per_size", "keep_largest"):
        v = getattr(args, key)
        if v is not None:
            block[key] = v
    try:
        if not isinstance(block, dict):
            raise ValueError(f"{src}: the adaptive policy must be a mapping, got {type(block).__name__}")
        policy = AdaptivePolicy.from_dict(block, source=f"{src} and the command line")
        runs = recorded_runs(sweep_dir)
        res = simulate(runs, policy, slots=args.slots, law_bootstrap=args.bootstrap)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(res))
    out = Path(args.out) if args.out else sweep_dir / REPLAY_FILE
    atomic_write(out, json.dumps(_json_safe(res.summary()), indent=1))
    print(f"[replay] wrote {out}")
    return 0


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a finished sweep as if it had run under an adaptive policy (compute saved, laws)",
        description=(
            "Replay the finished runs of SWEEP_DIR as if the sweep had stopped each run once its predicted final "
            "loss was known well enough (the adaptive policy; docs/sweep.md, Adaptive sweeps). Prints the compute saved, where "
            "each run would have stopped and both laws side by side; writes SWEEP_DIR/adaptive_replay.json (the "
            "report shows it). The policy: --policy FILE (an adaptive block, or a sweep spec holding one), else "
            "SWEEP_DIR/adaptive.json, else the defaults; the options below override single keys."
        ),
    )
    p.add_argument(
        "sweep_dir", help="folder of a finished sweep (run folders with config.yaml, metrics.jsonl)"
    )
    p.add_argument("--adaptive", action="store_true", help="replay under the adaptive policy (required)")
    p.add_argument(
        "--policy", help="YAML/JSON file with the adaptive block (or a sweep spec with `adaptive:`)"
    )
    p.add_argument(
        "--tolerance", type=float, help="interval width that allows a stop (relative unless --absolute)"
    )
    p.add_argument(
        "--absolute", dest="relative", action="store_const", const=False, help="tolerance in loss units"
    )
    p.add_argument(
        "--stable-updates", dest="stable_updates", type=int, help="updates the interval must stay narrow"
    )
    p.add_argument("--spacing", type=float, help="least fraction of a run between two counted updates")
    p.add_argument("--min-fraction", dest="min_fraction", type=float, help="never stop before this fraction")
    p.add_argument(
        "--keep-largest",
        dest="keep_largest",
        action="store_const",
        const=True,
        help="never stop the largest size",
    )
    p.add_argument(
        "--no-keep-full-per-size", dest="keep_full_per_size", action="store_const", const=False,
        help="allow stopping the shortest budget of a size too",
    )  # fmt: skip
    p.add_argument(
        "--slots", type=int, help="runs at a time, in --launch-order (default: all at once, no order)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=0, metavar="K",
        help="fit both laws with K bootstrap refits and print their parameters' 90%% intervals (default 0: none; "
        "100-200 shows which parameters the runs pin)",
    )  # fmt: skip
    p.add_argument(
        "--launch-order", dest="launch_order", choices=list(LAUNCH_ORDERS),
        help="with --slots: which run starts next, the planned one or the one that most reduces the law's "
        "uncertainty at --target-compute per FLOP",
    )  # fmt: skip
    p.add_argument(
        "--target-compute", dest="target_compute", type=float,
        help="launch_order uncertainty: the target compute, a multiple of the largest run's 6ND (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--law-tolerance", dest="law_tolerance", type=float,
        help="also stop a steady run whose interval is wider than --tolerance once the sweep's law would move by at "
        "most this much (relative) with it stopped (docs/sweep.md)",
    )  # fmt: skip
    p.add_argument("--out", help=f"where to write the JSON summary (default SWEEP_DIR/{REPLAY_FILE})")
    p.set_defaults(func=_cmd_replay, relative=None, keep_largest=None, keep_full_per_size=None)
