"""The adaptive-sweep policy: when a run's predicted final loss is known well enough to stop training it.

A run is stopped (cleanly, with a checkpoint, resumable to the end later) once

- it has trained at least ``min_fraction`` of its planned steps,
- the 90% interval of its predicted final loss was narrower than ``tolerance`` (relative to the predicted
  loss, or in loss units with ``relative: false``) at each of the last ``stable_updates`` fitter updates
  spaced at least ``spacing`` of the run apart, and those predictions agree within ``tolerance / 2``,
- and it is not exempt: with ``keep_full_per_size`` the shortest-budget run of every size runs to the end
  (a finished reference per size), with ``keep_largest`` every run of the largest size does.

With ``law_tolerance`` a run that meets all of that but the width (its predictions steady, its interval still
wider than ``tolerance``) is also stopped once the sweep's law does not need the rest of it: with this run and
the runs already stopped at their intervals instead of finished, the linearised law's loss moves by at most
``law_tolerance`` (90%, relative) over the planned runs' (N, D) (``law_excess``).

With ``launch_order: uncertainty`` the next planned run to start (on a backend with a limited number of
slots: ``launch.concurrency`` of the local backend, the replay's ``slots``) is the one that most reduces the
uncertainty of the law's loss at ``target_compute`` x the sweep's largest planned run (compute-optimal
allocation, 6 N D), per FLOP (``launch_ranking``; the design in ``laws/design.py``); with fewer than
``MIN_LAW_POINTS`` known points, or no law with a finite optimum, the planned order.

The same rule drives the live fitter (``SweepFitter`` writes ``RUN/STOP``, the trainer checkpoints and
exits) and the replay on recorded curves (``scaling_train.sweep.adaptive.simulate``). A stopped run enters
the sweep's laws with its predicted final loss, weighted by its interval (``prediction_weight``); that
interval is the union of the intervals of the updates the stop rests on (``stop_interval``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

Z90 = 1.6448536269514722
LAUNCH_ORDERS = ("plan", "uncertainty")
LAUNCH_ORDER_FILE = "launch_order.json"
"""SWEEP_DIR/launch_order.json, written by the fitter under ``launch_order: uncertainty`` (``launch_ranking``:
``{"updated", "why", "order": [{"name", "N", "D", "reduction", "per_flop"}], "target_compute", "N_opt", "D_opt",
"L_opt", "sd_now"}``), read by the local backend when a slot frees: the first ready pending run in that order
starts; absent or empty: the planned order."""
MIN_LAW_POINTS = 5  # known (N, D, loss) points before the launch order follows the law (5 parameters)
FINAL_LOSS_NOISE = 0.005
"""Relative noise of an observed final loss (seed to seed, about 0.5% at these scales): the sd a finished
run's point carries in a law fit, against which a predicted point's interval is weighed."""


@dataclass(frozen=True)
class AdaptivePolicy:
    """When to stop a run early (module docstring). ``source`` names where the values came from in errors."""

    tolerance: float = 0.04
    relative: bool = True
    stable_updates: int = 3
    spacing: float = 0.05
    min_fraction: float = 0.25
    keep_full_per_size: bool = True
    keep_largest: bool = False
    launch_order: str = "plan"
    target_compute: float = 10.0
    law_tolerance: float | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self, source: str = "adaptive policy") -> None:
        def bad(name: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"{source}: {name}={value!r} must be {allowed}")

        if not (
            isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance) and self.tolerance > 0
        ):
            raise bad("tolerance", self.tolerance, "a finite number > 0")
        if self.relative and self.tolerance >= 1:
            raise bad("tolerance", self.tolerance, "< 1 (a fraction of the loss) when relative is true")
        if (
            not isinstance(self.stable_updates, int)
            or isinstance(self.stable_updates, bool)
            or not (1 <= self.stable_updates <= 100)
        ):
            raise bad("stable_updates", self.stable_updates, "an integer in [1, 100]")
        if not (isinstance(self.spacing, (int, float)) and 0 <= self.spacing < 1):
            raise bad("spacing", self.spacing, "in [0, 1) (a fraction of the run)")
        if not (isinstance(self.min_fraction, (int, float)) and 0 <= self.min_fraction <= 1):
            raise bad("min_fraction", self.min_fraction, "in [0, 1]")
        for name in ("relative", "keep_full_per_size", "keep_largest"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "true or false")
        if self.law_tolerance is not None and not (
            isinstance(self.law_tolerance, (int, float))
            and not isinstance(self.law_tolerance, bool)
            and math.isfinite(self.law_tolerance)
            and 0 < self.law_tolerance < 1
        ):
            raise bad("law_tolerance", self.law_tolerance, "null or in (0, 1) (a fraction of the law's loss)")
        if self.launch_order not in LAUNCH_ORDERS:
            raise bad("launch_order", self.launch_order, f"one of {list(LAUNCH_ORDERS)}")
        if not (
            isinstance(self.target_compute, (int, float))
            and not isinstance(self.target_compute, bool)
            and math.isfinite(self.target_compute)
            and 1.0 <= self.target_compute <= 1e6
        ):
            raise bad(
                "target_compute",
                self.target_compute,
                "in [1, 1e6] (a multiple of the largest planned run's compute)",
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "adaptive") -> AdaptivePolicy:
        """Build from a spec block; unknown keys and bad values raise ``ValueError`` naming ``source``."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(str(e).replace("adaptive policy", source, 1)) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ the rule
    def width(self, loss: float, low: float, high: float, read_share: float = 0.0) -> float:
        """The interval's width in the policy's unit, without the part training further cannot narrow:
        ``read_share`` = ``LossPrediction.read_noise / rel_scale``, the share of the interval's scale that is the
        noise of reading a noisy (training-loss) curve's final value, which a finished run has too; the width is
        scaled by sqrt(1 - read_share^2). Without it no run of a training-loss ladder stops at 3% (each read
        carries ~0.9% of noise on the lr_schedules runs: intervals ~6% wide whatever the prefix)."""
        w = (high - low) * math.sqrt(max(0.0, 1.0 - min(max(read_share, 0.0), 1.0) ** 2))
        return w / loss if self.relative else w

    @staticmethod
    def read_share(h: Mapping[str, Any]) -> float:
        """``read_noise / rel_scale`` of a published prediction row; 0 when it carries neither."""
        rn, u = h.get("read_noise"), h.get("rel_scale")
        if rn is None or u is None or not (math.isfinite(rn) and math.isfinite(u)) or u <= 0:
            return 0.0
        return float(rn) / float(u)

    def _picked(self, history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The last ``stable_updates`` valid predictions at least ``spacing`` of the run apart, newest first."""
        rows = [
            h for h in history
            if h.get("loss") is not None and h.get("low") is not None and h.get("high") is not None
            and h.get("fraction") is not None and math.isfinite(h["loss"]) and h["loss"] > 0
        ]  # fmt: skip
        if not rows:
            return []
        picked = [rows[-1]]
        for h in reversed(rows[:-1]):
            if len(picked) == self.stable_updates:
                break
            if picked[-1]["fraction"] - h["fraction"] >= self.spacing - 1e-9:
                picked.append(h)
        return picked

    def stop_interval(self, history: Sequence[Mapping[str, Any]]) -> tuple[float, float, float]:
        """(loss, low, high) a stopped run carries: the last prediction, with the union of the 90% intervals of
        the updates the stop rests on. The stop is decided the first time those intervals are narrow, which
        picks moments where an interval is narrower than it should be; the union holds the truth more often
        (replayed on the cosine ladder's training loss: 89% -> 100% of the stopped runs, 20% wider)."""
        picked = self._picked(history)
        if not picked:
            raise ValueError("no valid prediction in the history: nothing to stop on")
        return (
            float(picked[0]["loss"]),
            float(min(h["low"] for h in picked)),
            float(max(h["high"] for h in picked)),
        )

    def decide(
        self,
        history: Sequence[Mapping[str, Any]],
        law_excess: Callable[[], tuple[float | None, str]] | None = None,
    ) -> tuple[bool, str]:
        """Whether to stop, from the run's published predictions (oldest first; each with ``fraction``,
        ``loss``, ``low``, ``high``). Returns (stop, reason): the reason says what is still missing.

        With ``law_tolerance``, a run whose interval is still wider than ``tolerance`` stops when the sweep's
        law does not need it: ``law_excess()`` (called only then; the caller binds the sweep's points, see
        ``law_excess``) returns how far the law may move at worst, relative to its loss, with this run and
        the runs already stopped at their intervals instead of finished; <= ``law_tolerance`` stops it."""
        picked = self._picked(history)
        if not picked:
            return False, "no prediction yet"
        last = picked[0]
        if last["fraction"] < self.min_fraction:
            return False, f"at {last['fraction']:.0%} of the run, before min_fraction {self.min_fraction:.0%}"
        if len(picked) < self.stable_updates:
            return False, f"{len(picked)} of {self.stable_updates} spaced updates so far"
        losses = [h["loss"] for h in picked]
        spread = (max(losses) - min(losses)) / (last["loss"] if self.relative else 1.0)
        if spread > self.tolerance / 2:
            return (
                False,
                f"predictions moved by {spread:.4g} > tolerance / 2 over the last {len(picked)} updates",
            )
        widths = [self.width(h["loss"], h["low"], h["high"], self.read_share(h)) for h in picked]
        span = f"over {len(picked)} updates from {picked[-1]['fraction']:.0%} to {last['fraction']:.0%} of the run"
        if max(widths) <= self.tolerance:
            unit = "" if not self.relative else " (relative)"
            return True, f"interval width {max(widths):.4g} <= {self.tolerance:g}{unit} {span}"
        why = f"interval width {max(widths):.4g} > tolerance {self.tolerance:g}"
        if self.law_tolerance is None or law_excess is None:
            return False, why
        excess, detail = law_excess()
        if excess is None:
            return False, f"{why}; {detail}"
        if excess > self.law_tolerance:
            return False, f"{why}; the law needs it: {detail} > law_tolerance {self.law_tolerance:g}"
        return (
            True,
            f"the law does not need the rest of it: {detail} <= law_tolerance {self.law_tolerance:g} {span}",
        )

    def exempt(self, runs: Sequence[tuple[str, float, float]]) -> dict[str, str]:
        """Runs that always train to the end, with the reason, from (name, n_params, total tokens) of every
        planned run of the sweep."""
        out: dict[str, str] = {}
        if not runs:
            return out
        if self.keep_full_per_size:
            by_size: dict[float, tuple[str, float]] = {}
            for name, n, d in runs:
                if n not in by_size or d < by_size[n][1]:
                    by_size[n] = (name, d)
            for name, _ in by_size.values():
                out[name] = "the shortest budget of its size runs to the end (keep_full_per_size)"
        if self.keep_largest:
            top = max(n for _, n, _ in runs)
            for name, n, _ in runs:
                if n == top:
                    out.setdefault(name, "a run of the largest size (keep_largest)")
        return out


def interval_sd(low: float, high: float) -> float:
    """The sd (in the loss's units) behind a 90% interval [low, high]."""
    return max(high - low, 0.0) / (2 * Z90)


def prediction_weight(loss: float, low: float, high: float, *, noise: float = FINAL_LOSS_NOISE) -> float:
    """Weight of a predicted final loss in a law fit: ``noise**2 / (noise**2 + sd**2)`` with ``sd`` the
    relative sd behind its 90% interval; 1 for an observed (zero-width) loss."""
    if not (loss > 0 and math.isfinite(low) and math.isfinite(high)):
        return 1.0
    sd = interval_sd(low, high) / loss
    return noise**2 / (noise**2 + sd**2)


def known_interval(low: Any, high: Any) -> tuple[float | None, float | None]:
    """A final-loss point's (low, high) as the sweep law's fits take it: the 90% interval of a prediction, or
    (None, None) for a point that counts as observed (no interval, a non-finite one, or one of zero width)."""
    ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (low, high)) and high > low
    return (float(low), float(high)) if ok else (None, None)


def point_sd(loss: float, low: float | None, high: float | None, *, noise: float = FINAL_LOSS_NOISE) -> float:
    """The sd (nats) a final-loss point carries: ``noise`` x loss for an observed one (no interval), else the
    sd behind its 90% interval, never below that noise."""
    floor = noise * loss
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return floor
    return max(floor, interval_sd(low, high))


def launch_ranking(
    policy: AdaptivePolicy,
    points: Sequence[tuple[float, float, float, float | None, float | None]],
    pending: Sequence[tuple[str, float, float]],
    planned_compute: float,
    *,
    fit=None,
):
    """The pending runs (name, N, D) ranked by ``laws.rank_by_information`` at ``policy.target_compute`` x
    ``planned_compute`` (the largest planned run's 6 N D), from the known ``points`` (N, D, loss, low, high;
    low/high None for an observed loss) and the Chinchilla law ``fit`` to them (the live fitter passes its
    sweep law, fitted to the same points with the same weights); without one it is fitted here, weighted as
    the sweep law (``prediction_weight``). Returns (``LaunchRanking`` or None, why): None with fewer than
    ``MIN_LAW_POINTS`` points or two sizes, or when the law cannot be fitted or has no finite optimum."""
    n_sizes = len({p[0] for p in points})
    if len(points) < MIN_LAW_POINTS or n_sizes < 2:
        return None, (
            f"{len(points)} known points of {n_sizes} sizes: the planned order until {MIN_LAW_POINTS} points of "
            "2 sizes"
        )
    if not pending:
        return None, "no planned run left to launch"
    import numpy as np

    from scaling_train.laws import rank_by_information

    try:
        if fit is None:
            fit, noise, _ = fit_known_law(points)
        else:
            noise = law_noise(fit, points)
        known = [(p[0], p[1], point_sd(p[2], p[3], p[4], noise=noise)) for p in points]
        ranking = rank_by_information(
            fit, known, list(pending), target_compute=policy.target_compute * planned_compute,
            noise=noise,
        )  # fmt: skip
    except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError) as e:
        return None, f"no law to rank by ({type(e).__name__}: {e}): the planned order"
    return ranking, f"ranked by the law over {len(points)} points"


def law_noise(fit, points: Sequence[tuple[float, float, float, float | None, float | None]]) -> float:
    """The relative sd of an observed final loss about the law ``fit``: ``FINAL_LOSS_NOISE`` (seed noise) or,
    when the observed points (low/high None) scatter more about it, their rms log residual with the law's 5
    parameters taken off the degrees of freedom (its misfit: a law that does not describe the sweep exactly).
    Against it a predicted point's interval is weighed: where the law misses finished runs by 2%, a prediction
    good to 1% is nearly as informative as a finished run."""
    import numpy as np

    obs = [p for p in points if p[3] is None or p[4] is None]
    if len(obs) < MIN_LAW_POINTS + 3:  # too few observed points to say the law misses them
        return FINAL_LOSS_NOISE
    N, D, L = (np.array([p[i] for p in obs], dtype=np.float64) for i in range(3))
    r = np.log(L) - np.log(fit.predict(N, D))
    if not np.all(np.isfinite(r)):
        return FINAL_LOSS_NOISE
    n_pts = len(points)
    s = float(np.sqrt(np.sum(r**2) / len(r) * n_pts / max(n_pts - 5, 1)))
    return max(FINAL_LOSS_NOISE, s)


class KnownLaw(NamedTuple):
    """The sweep's Chinchilla law fitted to its known points (``fit_known_law``)."""

    fit: Any  # laws.ChinchillaFit
    noise: float  # the relative sd an observed point carries about it (``law_noise``)
    weights: tuple[float, ...]  # each point's weight in the fit, in the points' order


def fit_known_law(
    points: Sequence[tuple[float, float, float, float | None, float | None]], **fit_kwargs: Any
) -> KnownLaw:
    """The Chinchilla law fitted to known points (N, D, loss, low, high; low/high None for an observed loss),
    each predicted point weighted by ``prediction_weight``: first against ``FINAL_LOSS_NOISE``, then, when the
    observed points scatter more about that fit (``law_noise``), refitted against their scatter. This is how
    the sweep law is weighted wherever it is fitted (the live fitter, the replay, the report). ``fit_kwargs``
    go to ``fit_chinchilla`` (bootstrap, confidence) for the final fit. Raises what ``fit_chinchilla``
    raises.

    When the first fit diverges (a term the heavily weighted points do not identify: a replayed Gemstone sweep
    had every finished run at one budget, the stopped ones at ~0.15 weight each at the two others, and its D term
    ran off to beta 67), the law's misfit is read off the unweighted fit instead, and the refit against it kept;
    a refit that diverges again leaves the unweighted fit (weights 1)."""
    import numpy as np

    from scaling_train.laws import fit_chinchilla

    N, D, L = (np.array([p[i] for p in points], dtype=np.float64) for i in range(3))

    def weights(noise: float) -> np.ndarray:
        return np.array(
            [
                1.0 if p[3] is None or p[4] is None else prediction_weight(p[2], p[3], p[4], noise=noise)
                for p in points
            ]
        )

    w = weights(FINAL_LOSS_NOISE)
    predicted = bool(np.any(w < 1.0))
    diverged = False
    try:
        fit = fit_chinchilla(N, D, L, weights=w)
    except FloatingPointError:
        if not predicted:
            raise
        diverged, w = True, np.ones(len(points))
        fit = fit_chinchilla(N, D, L)  # raises when even the points at full weight do not identify the law
    noise = law_noise(fit, points)
    # predicted points weigh more against a law that misses (and after a divergence, against the unweighted law's)
    if predicted and (diverged or noise > FINAL_LOSS_NOISE):
        try:
            wn = weights(noise)
            fit, w = fit_chinchilla(N, D, L, weights=wn, **fit_kwargs), wn
        except FloatingPointError:
            if not diverged:
                raise
            if fit_kwargs:  # the refit diverged too: the unweighted law stays
                fit = fit_chinchilla(N, D, L, **fit_kwargs)
    elif fit_kwargs:
        fit = fit_chinchilla(N, D, L, weights=w, **fit_kwargs)
    return KnownLaw(fit, noise, tuple(float(x) for x in w))


def law_excess(
    stopped: Sequence[tuple[float, float, float, float, float]],
    finishing: Sequence[tuple[float, float]],
    *,
    fit,
    noise: float = FINAL_LOSS_NOISE,
) -> tuple[float | None, str]:
    """How far the sweep's law may move, at worst over the planned runs' (N, D) (where issue 19's target reads
    it: every run's final loss and the largest run's), because the ``stopped`` runs (N, D, loss, low, high: the
    candidate among them) enter it at their predictions instead of their true final losses: ``Z90`` x the sd
    of the difference between the two laws there, relative to the loss. Linearised Chinchilla law at ``fit``
    (``laws.design``), fitted by weighted least squares, every point carrying ``noise`` (the seed noise, or the
    law's misfit: ``law_noise``), a stopped one weighted by ``prediction_weight`` and a ``finishing`` one (N, D:
    every other planned run, finished, running or not started) by 1. The difference has two parts: the stopped
    runs' prediction errors (the sd behind each interval) passed through the fit, and the change of weights
    acting on every point's scatter about the law. Returns (excess or None, what it was measured on)."""
    import numpy as np

    from scaling_train.laws.design import PRIOR_SD, law_jacobian

    if fit is None:
        return None, "no sweep law yet"
    pts = [(p[0], p[1]) for p in stopped] + [tuple(f) for f in finishing]
    if len({p[0] for p in pts}) < 2 or len(pts) < MIN_LAW_POINTS:
        return None, f"{len(pts)} planned points: too few for the law to say what it needs"
    N = np.array([p[0] for p in pts], dtype=np.float64)
    D = np.array([p[1] for p in pts], dtype=np.float64)
    try:
        J = law_jacobian(fit, N, D)
        L = fit.predict(N, D)
        sd_p = np.zeros(len(pts))  # a stopped point's prediction error sd (nats) against its true final loss
        w = np.ones(len(pts))  # its weight in the law fit (prediction_weight), 1 for a finished one
        for i, (_, _, loss, low, high) in enumerate(stopped):
            sd_p[i] = interval_sd(low, high)
            w[i] = prediction_weight(loss, low, high, noise=noise)
        prior = np.diag(1.0 / np.square(PRIOR_SD))
        s2 = (noise * L) ** 2  # what each point carries besides: seed noise and the law's misfit

        def hat(wt: np.ndarray) -> np.ndarray:  # theta's linear response to the points' losses, (5, n)
            Jw = J * (wt / s2)[:, None]
            return np.linalg.solve(prior + Jw.T @ J, Jw.T)

        H_s, H_f = hat(w), hat(np.ones(len(pts)))
        # law_stopped - law_full = H_s (prediction errors) + (H_s - H_f) (the points' misfit about the law)
        G_e, G_m = J @ H_s * sd_p[None, :], J @ (H_s - H_f) * np.sqrt(s2)[None, :]
        ex = np.sum(G_e**2, axis=1) + np.sum(G_m**2, axis=1)
        rel = Z90 * np.sqrt(ex) / L
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as e:
        return None, f"no law to weigh it ({type(e).__name__}: {e})"
    if not np.all(np.isfinite(rel)):
        return None, "the law's sensitivity is not finite"
    k = int(np.argmax(rel))
    return float(rel[k]), (
        f"law moves <= {rel[k]:.4g} (at N={N[k]:.3g}, D={D[k]:.3g}; {len(stopped)} stopped of {len(pts)} runs)"
    )
