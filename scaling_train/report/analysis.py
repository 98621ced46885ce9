"""The numbers behind the report's figures: sweep points, law refits with intervals, prediction replays.

Pure functions over ``data.SweepData`` / ``data.RunData`` (no plotting, no HTML). Every fit that cannot
be made returns an error string instead of raising, so the report can say why a panel is empty.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaling_train.metrics.config import law_burn_in, memorised_loss_reason
from scaling_train.report.data import RunData, SweepData, lr_schedule

GNS_SKIP = 0.2
"""B_crit(L) points: only rows past this fraction of a run's steps (the fitter's rule: early GNS is noise)."""
REPLAY_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
AT_FRACTION = 0.4
"""How early a prediction is judged: the first screen's accuracy and the loss panel's drawn prediction are the
ones standing at this fraction of each run (``standing_at``)."""
"""Prefixes of each finished run on which its final-loss prediction is replayed."""
CONFIDENCE = 0.9
CACHE_VERSION = 4
"""Part of every cache key: bump when a cached result's content changes (fits, notes, replay rule)."""


@dataclass
class Point:
    run: str
    N: float
    D: float
    loss: float
    source: str  # "observed" | "predicted"
    low: float | None = None
    high: float | None = None
    compute: float | None = None

    @property
    def C(self) -> float:  # noqa: N802 - the usual symbol
        """Training FLOPs: the sweep's planned budget, else the run's FLOPs per token times D, else 6 N D."""
        return self.compute or 6.0 * self.N * self.D


def _compute(r: RunData) -> float | None:
    if r.planned_flops:
        return r.planned_flops
    return r.flops_per_token * r.D if r.flops_per_token and r.D else None


@dataclass
class LawRow:
    """One row of the laws table: a fitted law, its parameters with intervals, its goodness of fit."""

    law: str
    formula: str
    params: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)
    """name -> (value, low, high); low/high None when no interval."""
    fit_quality: dict[str, float] = field(default_factory=dict)
    n_points: int = 0
    error: str | None = None
    note: str = ""


@dataclass
class Analysis:
    points: list[Point]
    chinchilla: Any = None  # laws.ChinchillaFit
    isoflop: Any = None  # laws.IsoFLOPFit
    critical_batch: Any = None  # laws.CriticalBatchFit
    gns_points: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))
    laws: list[LawRow] = field(default_factory=list)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """run name -> [{fraction, step, loss, low, high, source}] (replayed or the fitter's history)."""


def sweep_points(sweep: SweepData) -> list[Point]:
    """(N, D, final loss): observed for finished runs, the fitter's prediction for unfinished ones."""
    pts = []
    for r in sweep.runs:
        if not (r.N and r.D) or r.status in ("diverged", "missing", "broken"):
            continue
        if r.status == "done" and r.final_loss is not None and math.isfinite(r.final_loss):
            pts.append(Point(r.name, r.N, r.D, r.final_loss, "observed", compute=_compute(r)))
        elif r.prediction and _ok(r.prediction.get("loss")):
            p = r.prediction
            lo, hi = (float(p[k]) if _ok(p.get(k)) else None for k in ("low", "high"))
            pts.append(Point(r.name, r.N, r.D, float(p["loss"]), "predicted", lo, hi, _compute(r)))
    return pts


def flops_per_token_fn(points: list[Point]):
    """N -> FLOPs per token, a power law through the runs' own (N, flops_per_token) (6 N when unknown):
    at small N attention and the LM head make it much larger than 6 N, so C = 6 N D would misplace budgets."""
    xs = {(p.N, p.C / p.D) for p in points if p.compute}
    if len({n for n, _ in xs}) < 2:
        k = np.median([f / n for n, f in xs]) if xs else 6.0
        return lambda N: k * np.asarray(N, dtype=np.float64)
    n, f = np.log([x[0] for x in xs]), np.log([x[1] for x in xs])
    slope, icpt = np.polyfit(n, f, 1)
    return lambda N: np.exp(icpt + slope * np.log(np.asarray(N, dtype=np.float64)))


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def gns_points(sweep: SweepData) -> tuple[np.ndarray, np.ndarray]:
    """(loss, B_simple in tokens) pairs of healthy runs, past GNS_SKIP of each run's steps."""
    losses, bs = [], []
    for r in sweep.runs:
        if r.status not in ("done", "stopped", "partial") or not r.total_steps:
            continue
        lo, b, s = r.column("loss"), r.column("gns_b_simple"), r.steps
        ok = (s > GNS_SKIP * r.total_steps) & np.isfinite(lo) & np.isfinite(b) & (lo > 0) & (b > 0)
        losses.extend(lo[ok])
        bs.extend(b[ok])
    return np.asarray(losses), np.asarray(bs)


# ----------------------------------------------------------------------------------- laws
DISTINCT_REL = 0.05  # _n_distinct: values within 5% of each other are one size / one token budget


def _n_distinct(x: np.ndarray) -> int:
    """How many distinct values ``x`` holds, values within ``DISTINCT_REL`` of the previous distinct one being
    the same (the token counts of one budget differ by a step's worth of tokens between batch sizes)."""
    out, last = 0, None
    for v in np.sort(np.asarray(x, float)):
        if last is None or v > last * (1 + DISTINCT_REL):
            out, last = out + 1, v
    return out


def _fit_chinchilla(pts: list[Point], n_bootstrap: int) -> tuple[Any, LawRow]:
    row = LawRow("Chinchilla", "L(N, D) = E + A / N^alpha + B / D^beta", n_points=len(pts))
    if len(pts) < 5:
        row.error = f"{len(pts)} finished or predicted runs; at least 5 are needed for 5 parameters"
        return None, row
    from scaling_train.fitter.adaptive import fit_known_law, known_interval

    N, D, L = (np.array([getattr(p, k) for p in pts]) for k in ("N", "D", "loss"))
    n_sizes, n_budgets = _n_distinct(N), _n_distinct(D)
    if n_sizes < 2 or n_budgets < 2:
        # one of the two terms has nothing to vary against: the fit would return any exponent for it (a batch
        # sweep at one token budget gave beta = -157 and a held-out prediction of nan)
        row.error = (
            f"the runs hold {n_sizes} model size(s) (N {N.min():.3g} to {N.max():.3g}) and {n_budgets} token "
            f"count(s) (D {D.min():.3g} to {D.max():.3g}, within {DISTINCT_REL:.0%} counted as one): L(N, D) needs "
            "at least 2 of each (a batch-size sweep at one budget does not identify the D term)"
        )
        return None, row
    # a predicted final loss counts less the wider its interval against the law's misfit (observed: weight 1)
    known = [(p.N, p.D, p.loss, *known_interval(p.low, p.high)) for p in pts]
    try:
        f = fit_known_law(known, n_bootstrap=n_bootstrap, confidence=CONFIDENCE).fit
    except (ValueError, RuntimeError, FloatingPointError) as e:
        row.error = f"{type(e).__name__}: {e}"
        return None, row
    for k in ("E", "A", "B", "alpha", "beta"):
        lo, hi = f.ci.get(k, (None, None))
        row.params[k] = (getattr(f, k), lo, hi)
    resid = np.log(L) - np.log(f.predict(N, D))
    row.fit_quality = {
        "Huber objective": f.objective,
        "RMSE of log L": float(np.sqrt(np.mean(resid**2))),
        "R² of L": _r2(L, f.predict(N, D)),
    }
    n_pred = sum(p.source == "predicted" for p in pts)
    row.note = f"{n_bootstrap} bootstrap resamples" if n_bootstrap else "no bootstrap"
    if min(f.alpha, f.beta, f.A, f.B) <= 0:
        row.note += (
            f"; alpha={f.alpha:.3g}, beta={f.beta:.3g}: the loss does not fall with both N and D over these runs,"
            " so there is no compute-optimal frontier (runs too short or too few sizes)"
        )
    if n_pred:
        row.note += f"; {n_pred} of {len(pts)} points are predicted final losses"
    return f, row


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss if ss > 0 else math.nan


def _fit_isoflop(pts: list[Point], n_bootstrap: int, seed: int = 0) -> tuple[Any, LawRow]:
    from scaling_train.laws import fit_isoflop

    row = LawRow(
        "IsoFLOP", "N_opt = k_N C^a,  D_opt = k_D C^b  (parabola in log N per budget)", n_points=len(pts)
    )
    if len(pts) < 6:
        row.error = f"{len(pts)} runs; at least 2 FLOP budgets x 3 sizes are needed"
        return None, row
    N, D, L, C = (np.array([getattr(p, k) for p in pts]) for k in ("N", "D", "loss", "C"))
    try:
        f = fit_isoflop(N, D, L, compute=C)
    except (ValueError, RuntimeError, FloatingPointError) as e:
        row.error = f"{type(e).__name__}: {e}"
        return None, row
    # residual bootstrap of the losses around each budget's parabola: intervals for a and b
    draws = []
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        fitted = np.zeros_like(L)
        for par in f.parabolas:
            m = np.abs(np.log(C / par.C)) < np.log1p(0.05) + 1e-9
            x = np.log(N[m])
            fitted[m] = par.c2 * x**2 + par.c1 * x + par.c0
        res = L - fitted
        for _ in range(n_bootstrap):
            try:
                g = fit_isoflop(N, D, fitted + rng.choice(res, size=len(res), replace=True), compute=C)
                draws.append((g.a, g.b))
            except (ValueError, RuntimeError, FloatingPointError):
                continue
    q = (1 - CONFIDENCE) / 2
    ci = np.quantile(np.array(draws), [q, 1 - q], axis=0) if len(draws) >= 10 else None
    for i, k in enumerate(("a", "b")):
        row.params[k] = (
            getattr(f, k),
            *((float(ci[0, i]), float(ci[1, i])) if ci is not None else (None, None)),
        )
    row.params["k_N"] = (f.coef_n, None, None)
    row.params["k_D"] = (f.coef_d, None, None)
    row.fit_quality = {"budgets": float(len(f.parabolas)), "a + b (should be 1)": f.a + f.b}
    row.note = f"{len(draws)} residual-bootstrap fits" if draws else "too few points for a bootstrap interval"
    return f, row


def _fit_bcrit(losses: np.ndarray, bs: np.ndarray) -> tuple[Any, LawRow]:
    from scaling_train.laws import fit_critical_batch

    row = LawRow("Critical batch", "B_crit(L) = B_star / L^(1/alpha_B)", n_points=len(losses))
    if len(losses) < 3:
        row.error = f"{len(losses)} (loss, noise scale) points; need >= 3 (gradient noise scale needs grad accumulation >= 2)"
        return None, row
    try:
        f = fit_critical_batch(losses, bs)
    except (ValueError, RuntimeError, FloatingPointError) as e:
        row.error = f"{type(e).__name__}: {e}"
        return None, row
    # interval of the log-log slope from its standard error (t quantile of the OLS fit)
    x, y = np.log(losses), np.log(bs)
    lo_hi: dict[str, tuple[float | None, float | None]] = {"B_star": (None, None), "alpha_B": (None, None)}
    if len(x) > 3:
        from scipy import stats

        (slope, icpt), cov = np.polyfit(x, y, 1, cov=True)
        t = stats.t.ppf(1 - (1 - CONFIDENCE) / 2, len(x) - 2)
        s_lo, s_hi = slope - t * math.sqrt(cov[0, 0]), slope + t * math.sqrt(cov[0, 0])
        i_lo, i_hi = icpt - t * math.sqrt(cov[1, 1]), icpt + t * math.sqrt(cov[1, 1])
        lo_hi["B_star"] = (math.exp(i_lo), math.exp(i_hi))
        if s_hi < 0:
            lo_hi["alpha_B"] = (-1 / s_lo, -1 / s_hi)
    row.params = {"B_star": (f.B_star, *lo_hi["B_star"]), "alpha_B": (f.alpha_B, *lo_hi["alpha_B"])}
    row.fit_quality = {"RMSE of log B": f.rmse_log}
    row.note = "OLS in log-log; rows of the first 20% of each run skipped; points along runs are correlated"
    return f, row


def _fitter_rows(law: dict[str, Any] | None) -> list[LawRow]:
    """The online fitter's own fits from sweep_law.json (no intervals), for comparison with the refits."""
    rows = []
    ch = (law or {}).get("chinchilla") or {}
    if "alpha" in ch:
        row = LawRow("Chinchilla (online fitter)", "L(N, D) = E + A / N^alpha + B / D^beta, sweep_law.json")
        row.params = {k: (float(ch[k]), None, None) for k in ("E", "A", "B", "alpha", "beta") if k in ch}
        row.fit_quality = {"Huber objective": float(ch.get("objective", math.nan))}
        row.n_points = int(ch.get("n_points") or 0)
        rows.append(row)
    iso = (law or {}).get("isoflop") or {}
    if "a" in iso and "b" in iso:
        row = LawRow("IsoFLOP (online fitter)", "N_opt ∝ C^a, D_opt ∝ C^b, sweep_law.json")
        row.params = {"a": (float(iso["a"]), None, None), "b": (float(iso["b"]), None, None)}
        row.n_points = len(iso.get("optima") or [])
        row.note = "points = FLOP budgets"
        rows.append(row)
    return rows


def _prediction_rows(sweep: SweepData) -> list[LawRow]:
    rows = []
    for r in sweep.runs:
        p = r.prediction
        if r.status not in ("partial", "stopped") or not p:
            continue
        row = LawRow(f"Final loss of {r.name}", "multi-power law L(t) (laws.predict_final_loss)")
        if _ok(p.get("loss")):
            row.params["L(T)"] = (float(p["loss"]), p.get("low"), p.get("high"))
            row.n_points = int(p.get("n_used") or 0)
            if p.get("extrapolation") is not None:
                row.fit_quality["extrapolation log(area)"] = float(p["extrapolation"])
            row.note = f"at step {p.get('step')} of {p.get('total_steps')}"
        else:
            row.error = str(p.get("error") or "no prediction")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- history
def standing_at(history: list[dict[str, Any]], fraction: float = AT_FRACTION) -> dict[str, Any] | None:
    """The prediction standing at ``fraction`` of a run: the record of ``history`` (each with a ``fraction``) made
    last at or before it; None when none was."""
    hist = [h for h in history if h.get("fraction") is not None and h["fraction"] <= fraction + 1e-9]
    return max(hist, key=lambda h: h["fraction"]) if hist else None


def replay_history(run: RunData, fractions: tuple[float, ...] = REPLAY_FRACTIONS) -> list[dict[str, Any]]:
    """Predicted final loss of a finished run from prefixes of its own curve: for each fraction f the
    rows up to step f*T go through ``laws.predict_final_loss`` without references (what a fitter that
    saw only this run would have said then; no information from later in the sweep leaks in)."""
    from scaling_train.laws import Curve, NotEnoughDataError, predict_final_loss

    if run.history:  # the fitter's own record of its predictions
        T = run.total_steps or max(h["step"] for h in run.history)
        return [
            {"fraction": h["step"] / T, "step": h["step"], "loss": h["loss"], "low": h.get("low"),
             "high": h.get("high"), "source": "fitter"}
            for h in run.history if _ok(h.get("loss"))
        ]  # fmt: skip
    lr = lr_schedule(run)
    if lr is None or memorised_loss_reason(run.config) is not None:  # no prediction for a memorised loss
        return []
    T = len(lr)
    steps, losses = run.steps, run.column(run.law_column)
    keep = (steps >= 1) & (steps <= T) & np.isfinite(losses)
    try:
        curve = Curve(steps[keep], losses[keep], lr, run.name, burn_in=law_burn_in(run.config))
    except ValueError:
        return []
    out = []
    for f in fractions:
        part = curve.truncated(f)
        if len(part.steps) < 3:
            continue
        try:
            p = predict_final_loss(part)
        except (NotEnoughDataError, ValueError, RuntimeError, FloatingPointError):
            continue
        out.append(
            {"fraction": float(part.steps[-1] / T), "step": int(part.steps[-1]), "loss": p.loss,
             "low": p.low, "high": p.high, "source": "replay"}
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------- all
def _digest(obj: Any) -> str:
    blob = json.dumps([CACHE_VERSION, obj], sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def _encode_fit(pair: tuple[Any, LawRow]) -> dict[str, Any]:
    fit, row = pair
    return {"fit": asdict(fit) if fit is not None else None, "row": asdict(row)}


def _decode_fit(kind: str, d: dict[str, Any]) -> tuple[Any, LawRow]:
    from scaling_train.laws import ChinchillaFit, IsoFLOPFit, IsoFLOPParabola

    row = LawRow(**{**d["row"], "params": {k: tuple(v) for k, v in d["row"]["params"].items()}})
    f = d["fit"]
    if f is None:
        return None, row
    if kind == "chin":
        ci = {k: tuple(v) for k, v in f["ci"].items()}
        return ChinchillaFit(**{**f, "ci": ci, "draws": tuple(tuple(d) for d in f.get("draws", ()))}), row
    return IsoFLOPFit(**{**f, "parabolas": tuple(IsoFLOPParabola(**p) for p in f["parabolas"])}), row


def analyse(sweep: SweepData, *, n_bootstrap: int = 20, cache: Path | None = None) -> Analysis:
    """All fits of the report. ``cache`` (a JSON file the report writes) keeps the expensive ones
    (Chinchilla bootstrap, IsoFLOP bootstrap, prediction replays) keyed by their inputs, so a refresh in
    which no final loss changed costs a few seconds."""
    store: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            store = json.loads(cache.read_text())
        except (OSError, ValueError):
            store = {}  # a torn or foreign cache is rebuilt
    used: dict[str, Any] = {}

    def cached(key: str, fn, enc=lambda v: v, dec=lambda v: v):
        if key in store:
            try:
                used[key] = store[key]
                return dec(store[key])
            except (KeyError, TypeError, ValueError):
                pass  # written by another version: recompute
        value = fn()
        used[key] = enc(value)
        return value

    pts = sweep_points(sweep)
    a = Analysis(points=pts)
    inputs = [(p.N, p.D, p.loss, p.C, p.low, p.high) for p in pts] + [n_bootstrap]
    # "design check": the fits cached before _fit_chinchilla refused a one-budget design are recomputed
    a.chinchilla, row = cached(
        "chin-" + _digest([*inputs, "design check"]), lambda: _fit_chinchilla(pts, n_bootstrap), _encode_fit,
        lambda d: _decode_fit("chin", d),
    )  # fmt: skip
    a.laws.append(row)
    a.isoflop, row = cached(
        "iso-" + _digest(inputs), lambda: _fit_isoflop(pts, 200 if n_bootstrap else 0), _encode_fit,
        lambda d: _decode_fit("iso", d),
    )  # fmt: skip
    a.laws.append(row)
    a.gns_points = gns_points(sweep)
    a.critical_batch, row = _fit_bcrit(*a.gns_points)
    a.laws.append(row)
    a.laws.extend(_fitter_rows(sweep.law))
    a.laws.extend(_prediction_rows(sweep))
    for r in sweep.runs:
        if r.status == "done":
            key = "hist-" + _digest([r.name, r.rows[-1], len(r.rows), len(r.history)])
            a.history[r.name] = cached(key, lambda r=r: replay_history(r))
    if cache is not None:
        try:
            tmp = cache.with_name(f".{cache.name}.tmp")
            tmp.write_text(json.dumps(used))
            tmp.replace(cache)
        except OSError:
            pass
    return a
