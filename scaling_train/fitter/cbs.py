"""The critical batch in the fitter: measured, calibrated, predicted (issue 14; docs/cbs.md).

Every number says what it is:

* ``gns_b_simple``: the simple noise scale ``tr(Sigma) / |G|^2`` the runs log (tokens; at a measurement,
  pooled over the rows around it: ``pooled_b_simple``); its Kaplan law
  ``B_simple(L)`` is ``sweep_law.json: critical_batch`` (``of: gns_b_simple``);
* ``cbs_measured``: critical batches measured directly, ``source: batch_sweep`` (runs of one size at
  >= 3 batch sizes: ``laws.batch_sweeps_from_curves`` + ``fit_batch_sweep``, B_crit = B_noise at
  several target losses) or ``source: branches`` (``RUN/cbs/cbs.json`` of ``scaling-train cbs``);
* ``cbs_predicted``: ``laws.fit_cbs_calibration`` of measured / B_simple(L) over every bounded measurement
  (along and across runs), times ``B_simple(L)`` at each run's predicted final loss, with a 90% interval;
  ``B_simple(L)`` is ``gns_b_simple_law``, Kaplan's law over pooled windows of rows (``pooled_gns_law``);
* ``cbs_scaling``: a second ``cbs_predicted``, across sizes from the batch sweeps alone
  (``laws.fit_cbs_scaling``: a power law of B_crit in loss, tokens or parameters chosen by
  leave-one-size-out error), at every run of the sweep and planned by it (``cbs_scaling_block``). Both
  are kept; each entry's ``source`` says which it is.

All batches here are in tokens (sequences x seq_len); ``*_sequences`` fields give sequences.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scaling_train.fitter.tail import RunTail, plan_runs
from scaling_train.run_folder import CBS, CBS_RESULTS

Z90 = 1.6448536269514722  # a 90% interval spans +-Z90 sd in log: its own log-sd = log(high / low) / (2 Z90)


def _seq_len(t: RunTail) -> int | None:
    v = ((t.config or {}).get("model") or {}).get("seq_len")
    return int(v) if v else None


def _batch(t: RunTail) -> int | None:
    v = ((t.config or {}).get("train") or {}).get("batch_size")
    return int(v) if v else None


def pooled_b_simple(rows: list[Mapping[str, Any]]) -> float | None:
    """``B_simple`` of a set of metrics rows: the mean of their ``gns_trace_sigma`` over the mean of their
    ``gns_g2`` (a ratio of means; each row's own ratio is heavy-tailed, often negative or nan at small
    batches, where |G|^2 is estimated from a few sequences); the median of the positive ``gns_b_simple``
    when the components are absent; None when nothing usable (or the pooled |G|^2 is not positive)."""

    def num(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    tr = [num(r.get("gns_trace_sigma")) for r in rows]
    g2 = [num(r.get("gns_g2")) for r in rows]
    ok = [(a, b) for a, b in zip(tr, g2) if math.isfinite(a) and math.isfinite(b)]
    if ok:
        s_tr, s_g2 = sum(a for a, _ in ok), sum(b for _, b in ok)
        return s_tr / s_g2 if s_g2 > 0 and s_tr > 0 else None
    bs = [num(r.get("gns_b_simple")) for r in rows]
    bs = [b for b in bs if math.isfinite(b) and b > 0]
    return float(np.median(bs)) if bs else None


def _rows_near(t: RunTail, step: float, spread: float = 1.25) -> list[dict[str, float]]:
    """The run's rows within a factor ``spread`` of ``step``."""
    return [r for s, r in t.rows.items() if step / spread <= s <= step * spread]


LR_BATCH_RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
"""How a batch sweep's peak LR may follow its batch B: lr / B**p the same for every run (``rules.lr_batch``)."""


def _lr_batch_groups(runs: list[RunTail]) -> list[tuple[str, list[RunTail]]]:
    """The runs of one (N, seed, seq_len) split into batch sweeps: runs whose peak LR follows their batch by
    one rule of ``LR_BATCH_RULES`` (lr / B**p equal within 2%, the LRs being rounded to 3 digits), each with
    >= 3 batch sizes; a rule is tried in that order and a run joins one sweep at most."""
    left, out = list(runs), []
    for rule, p in LR_BATCH_RULES.items():
        lrs = [(((t.config or {}).get("optim") or {}).get("lr"), t) for t in left]
        keyed = sorted(
            ((math.log(float(lr)) - p * math.log(_batch(t)), t) for lr, t in lrs
             if isinstance(lr, (int, float)) and lr > 0),
            key=lambda kt: kt[0],
        )  # fmt: skip
        cluster: list[tuple[float, RunTail]] = []
        for item in [*keyed, (math.inf, None)]:
            if cluster and item[0] - cluster[0][0] > 0.02:
                if len({_batch(t) for _, t in cluster}) >= 3:
                    out.append((rule, [t for _, t in cluster]))
                    left = [t for t in left if all(t is not u for _, u in cluster)]
                cluster = []
            if item[1] is not None:
                cluster.append(item)
    return out


def batch_sweep_measurements(tails: Mapping[str, RunTail]) -> tuple[list[dict[str, Any]], list[str]]:
    """``cbs_measured`` of ``source: batch_sweep`` from the finished runs that differ only in batch size (same
    N, seed and seq_len; the peak LR the same, or following the batch by the square root or linearly:
    ``lr_batch``); (measurements, notes on groups that could not be measured)."""
    from scaling_train.laws import batch_sweeps_from_curves, fit_batch_sweep

    groups: dict[tuple, list[RunTail]] = {}
    for t in tails.values():
        if not t.done or t.diverged_at is not None or not t.n_params or not _batch(t) or not _seq_len(t):
            continue
        groups.setdefault((t.n_params, (t.config or {}).get("seed"), _seq_len(t)), []).append(t)
    out, notes = [], []
    sweeps_of = [
        (key, rule, runs)
        for key, same in sorted(groups.items(), key=lambda kv: kv[0][0])
        for rule, runs in _lr_batch_groups(same)
    ]
    for (n, _seed, seq), rule, runs in sweeps_of:
        by_b = {_batch(t): t for t in runs}
        if len(by_b) < 3:
            continue
        curves = {
            b: (
                np.array(sorted(t.rows), dtype=np.float64),
                np.array([t.rows[s]["loss"] for s in sorted(t.rows)]),
            )
            for b, t in by_b.items()
        }
        try:
            sweeps = batch_sweeps_from_curves(curves, n_params=n, seq_len=seq)
        except ValueError as e:
            notes.append(f"N={n:.3g}: {e}")
            continue
        for sw in sweeps:
            try:
                f = fit_batch_sweep(sw)
            except ValueError as e:
                notes.append(f"N={n:.3g} L={sw.target_loss:.4g}: {e}")
                continue
            # B_simple at the target: pooled over every batch size's rows around its crossing (the noise
            # scale is a property of the loss landscape there, not of the batch that measures it)
            near = [r for b, s in zip(sw.batch_sizes, sw.steps) for r in _rows_near(by_b[int(b)], s)]
            gns = pooled_b_simple(near)
            out.append(
                {"source": "batch_sweep", "n_params": n, "loss": sw.target_loss,
                 "value": f.B_crit * seq, "low": f.B_crit_low * seq, "high": f.B_crit_high * seq,
                 "value_sequences": f.B_crit, "bounded": bool(f.bounded), "S_min": f.S_min, "E_min": f.E_min,
                 "B_20_sequences": f.B_20, "batch_sizes": list(sw.batch_sizes), "steps": list(sw.steps),
                 "gns_b_simple": gns, "seq_len": seq, "lr_batch": rule,
                 "runs": sorted(by_b[int(b)].name for b in sw.batch_sizes)}
            )  # fmt: skip
    return out, notes


def branch_measurements(tails: Mapping[str, RunTail]) -> list[dict[str, Any]]:
    """``cbs_measured`` of ``source: branches`` from each run's ``cbs/cbs.json`` (the run folder contract)."""
    out = []
    for name, t in sorted(tails.items()):
        path = t.run_dir / CBS / CBS_RESULTS
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for m in res.get("measurements", []):
            c = m.get("cbs_measured")
            if not c or m.get("loss") is None:
                continue
            out.append(
                {"source": "branches", "run": name, "n_params": t.n_params, "step": m["step"],
                 "loss": m["loss"], "value": float(c["tokens"]), "low": float(c["low_tokens"]),
                 "high": float(c["high_tokens"]), "value_sequences": float(c["value"]),
                 # a lower bound that is only the smallest batch measured is an assumption: such a measurement is
                 # an upper bound, and the calibration (bounded measurements, sd from the bracket) leaves it out
                 "bounded": float(c["low"]) > 0 and math.isfinite(float(c["high"]))
                 and not c.get("low_is_reference", False),
                 "low_is_reference": bool(c.get("low_is_reference", False)),
                 "gns_b_simple": m.get("gns_b_simple"), "lr_rule": m.get("lr_rule"),
                 "branch_tokens": m.get("tokens"), "cost": m.get("cost")}
            )  # fmt: skip
    return out


CHUNK_ROWS = 8  # rows pooled per point of the noise-scale law (ratio of means: pooled_b_simple)


def pooled_gns_law(tails: Mapping[str, RunTail], *, skip: float = 0.2):
    """Kaplan's ``B_simple(L) = B_star / L**(1/alpha_B)`` over pooled windows: each healthy run's rows past
    ``skip`` of its steps, in consecutive chunks of ``CHUNK_ROWS``, each chunk one (mean loss,
    ``pooled_b_simple``) point. Row-by-row fits drop the rows whose estimate is negative or nan and keep
    the heavy right tail, which biases the law upward at small batches; pooled chunks do neither.
    (fit or None, JSON summary)."""
    from scaling_train.laws import fit_critical_batch

    L, b = [], []
    for t in tails.values():
        if t.diverged_at is not None or not t.total_steps:
            continue
        rows = [t.rows[s] for s in sorted(t.rows) if s > skip * t.total_steps]
        for i in range(0, len(rows) - CHUNK_ROWS // 2, CHUNK_ROWS):
            chunk = rows[i : i + CHUNK_ROWS]
            g = pooled_b_simple(chunk)
            lo = float(np.mean([r["loss"] for r in chunk]))
            if g is not None and g > 0 and math.isfinite(lo) and lo > 0:
                L.append(lo)
                b.append(g)
    try:
        f = fit_critical_batch(np.array(L), np.array(b))
    except ValueError as e:
        return None, {"error": str(e), "n_points": len(L), "of": "gns_b_simple, pooled windows"}
    x = np.log(L)
    return f, {
        "B_star": f.B_star, "alpha_B": f.alpha_B, "rmse_log": f.rmse_log, "n_points": len(L),
        "log_loss_mean": float(x.mean()), "log_loss_sxx": float(np.sum((x - x.mean()) ** 2)),
        "chunk_rows": CHUNK_ROWS, "of": "gns_b_simple, pooled windows",
    }  # fmt: skip


def law_sd_log(info: Mapping[str, Any], loss: float) -> float:
    """Standard error of log B_simple(L) on the law's line at ``loss`` (not the scatter of single windows
    about it, ``rmse_log``: the calibration is against the line, so only the line's own uncertainty adds):
    ``rmse sqrt(1/n + (log L - mean)^2 / Sxx)``; the rmse itself when the summary lacks the moments."""
    if not info.get("log_loss_sxx"):
        return float(info.get("rmse_log", 0.0))
    d = math.log(loss) - info["log_loss_mean"]
    return float(info["rmse_log"] * math.sqrt(1.0 / info["n_points"] + d * d / info["log_loss_sxx"]))


def critical_batch_block(
    tails: Mapping[str, RunTail],
    predictions: Mapping[str, dict[str, Any]],
    gns_law: dict[str, Any] | None,
    *,
    sweep_dir: Path | None = None,
    chinchilla: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``sweep_law.json``'s ``gns_b_simple_law``, ``cbs_measured``, ``cbs_calibration``,
    ``cbs_predicted`` and ``cbs_scaling`` (see the module; ``sweep_dir`` holds ``plan.json``, whose runs
    without a folder get their ``cbs_scaling`` at the ``chinchilla`` law's loss). The calibration and
    the prediction use one noise-scale estimate,
    the pooled law ``B_simple(L)`` (``pooled_gns_law``; the rows' law ``gns_law`` when it cannot be
    fitted): calibrated against the law at each measurement's loss, multiplied by the law at the loss
    asked for, so an estimator's bias cancels instead of entering twice."""
    from scaling_train.laws import CriticalBatchFit

    sweep_m, notes = batch_sweep_measurements(tails)
    measured = sweep_m + branch_measurements(tails)
    law, info = pooled_gns_law(tails)
    out: dict[str, Any] = {"cbs_measured": measured, "cbs_notes": notes, "gns_b_simple_law": info}
    targets = scaling_targets(tails, predictions, sweep_dir=sweep_dir, chinchilla=chinchilla)
    out["cbs_scaling"] = _scaling_block(sweep_m, targets)
    if law is None and gns_law and "B_star" in gns_law:
        law = CriticalBatchFit(gns_law["B_star"], gns_law["alpha_B"], gns_law["rmse_log"])
        info["fallback"] = "critical_batch (the rows' law)"
    out["cbs_calibration"], cal = _calibration(measured, law, info)
    if cal is None:
        return out
    out["cbs_predicted"] = _predicted(cal, law, info, measured, predictions)
    _compare(out["cbs_scaling"], out["cbs_predicted"]["runs"])
    return out


def _scaling_block(sweep_m: list[dict[str, Any]], targets: list[dict[str, Any]]) -> dict[str, Any]:
    """``cbs_scaling_block`` of the batch sweeps' measurements, or its error as the block (the fitter never
    dies on this block)."""
    try:
        return cbs_scaling_block(sweep_m, targets)
    except Exception as e:  # noqa: BLE001  (the fitter never dies on this block: the error goes into it)
        return {"error": f"{type(e).__name__}: {e}", "of": "cbs_predicted", "source": SCALING_SOURCE}


def _calibration(measured: list[dict[str, Any]], law, info: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """(the ``cbs_calibration`` block, the fitted ``fit_cbs_calibration`` or None): None, with the reason in
    the block, when no measurement is bounded, there is no noise-scale law, or the fit fails."""
    from scaling_train.laws import fit_cbs_calibration

    use = [m for m in measured if m["bounded"] and m["value"] > 0]
    if not use or law is None:
        return {
            "error": f"{len(measured)} measured critical batches, {len(use)} bounded"
            + ("" if law is not None else f", and no noise-scale law B_simple(L) ({info.get('error')})")
            + "; measure with scaling-train cbs or a spec cbs block (branches), or grid.batch_sizes (batch sweeps)"
        }, None
    sd = [math.log(m["high"] / m["low"]) / (2 * Z90) for m in use]
    try:
        cal = fit_cbs_calibration(
            [m["loss"] for m in use], [m["value"] for m in use], [float(law.predict(m["loss"])) for m in use],
            measured_sd_log=sd, sources=[m["source"] for m in use],
        )  # fmt: skip
    except ValueError as e:
        return {"error": str(e), "n_points": len(use)}, None
    block = {
        "law": "log(cbs_measured / B_simple(L)) = c0 + c1 log(L / l_ref)" if cal.form == "loss"
        else "log(cbs_measured / B_simple(L)) = c0",
        "against": "gns_b_simple_law" if "fallback" not in info else "critical_batch",
        "form": cal.form, "coef": list(cal.coef), "l_ref": cal.l_ref, "sigma_log": cal.sigma_log,
        "loo_rmse": cal.loo_rmse, "n_points": cal.n_points, "sources": list(cal.sources), "level": cal.level,
    }  # fmt: skip
    return block, cal


def _predicted(
    cal,
    law,
    info: Mapping[str, Any],
    measured: list[dict[str, Any]],
    predictions: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """The ``cbs_predicted`` block: the calibrated critical batch at each run's (predicted) final loss and
    along a grid of losses spanning the measurements and the runs."""

    def at(loss: float) -> dict[str, Any]:
        p = cal.predict(loss=loss, b_simple=float(law.predict(loss)), b_simple_sd_log=law_sd_log(info, loss))
        return {"loss": loss, "value": p.value, "low": p.low, "high": p.high, "ratio": p.ratio,
                "gns_b_simple": p.b_simple, "level": p.level, "source": p.source, "unit": "tokens"}  # fmt: skip

    runs = {}
    for name, p in predictions.items():
        lo = p.get("loss")
        if lo is not None and math.isfinite(lo) and lo > 0:
            runs[name] = {
                **at(float(lo)),
                "at": "final loss" if p.get("status") == "done" else "predicted final loss",
            }
    losses = [m["loss"] for m in measured] + [r["loss"] for r in runs.values()]
    grid = np.geomspace(min(losses) * 0.97, max(losses) * 1.03, 40) if losses else np.zeros(0)
    curve = [at(float(x)) for x in grid]
    return {
        "source": curve[0]["source"] if curve else None, "runs": runs,
        "curve": {k: [c[k] for c in curve] for k in ("loss", "value", "low", "high")},
        "across_sizes": "cbs_scaling (the batch sweeps' own law; kept beside this one, not merged)",
    }  # fmt: skip


SCALING_SOURCE = "batch-sweep law"  # cbs_scaling's predictions: laws.fit_cbs_scaling, across sizes
_VARIABLES = {
    "loss": "L, the target loss",
    "tokens": "D_min, the fewest tokens reaching L at size N (E_min x seq_len)",
    "params": "N, non-embedding parameters",
}


def _planned_runs(sweep_dir: Path | None) -> list[dict[str, Any]]:
    """``plan.json``'s runs (name, n_params, tokens, batch_size); [] without a readable plan."""
    try:
        return [{"name": str(r["name"]), "N": float(r["n_params"]), "D": float(r["tokens"]),
                 "batch_size": r.get("batch_size")} for r in plan_runs(sweep_dir)]  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return []


def scaling_targets(
    tails: Mapping[str, RunTail],
    predictions: Mapping[str, dict[str, Any]],
    *,
    sweep_dir: Path | None = None,
    chinchilla: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every run of the sweep (a folder, or planned in ``plan.json``) with the loss its critical batch is
    predicted at: its final loss when done, its predicted final loss while running or stopped, and for a
    planned run without a prediction the sweep's Chinchilla law at its (N, D); ``error`` when none."""
    runs: dict[str, dict[str, Any]] = {r["name"]: r for r in _planned_runs(sweep_dir)}
    for name, t in tails.items():
        if t.n_params and t.total_tokens:
            runs[name] = {"name": name, "N": t.n_params, "D": t.total_tokens, "batch_size": _batch(t)}
    ch = chinchilla or {}
    out = []
    for name, r in sorted(runs.items()):
        e: dict[str, Any] = {"run": name, "N": r["N"], "D": r["D"], "batch_size": r["batch_size"]}
        p = predictions.get(name) or {}
        lo = p.get("loss")
        if name in tails and tails[name].diverged_at is not None:
            e["error"] = f"diverged at step {tails[name].diverged_at}"
        elif lo is not None and math.isfinite(lo) and lo > 0:
            e.update(loss=float(lo), at="final loss" if p.get("status") == "done" else "predicted final loss")
        elif all(k in ch for k in ("E", "A", "B", "alpha", "beta")) and not (
            ch["alpha"] > 0 and ch["beta"] > 0
        ):
            e["error"] = (
                f"no loss to predict at: the run has no prediction yet and sweep_law.json's chinchilla law "
                f"has alpha={ch['alpha']:.3g}, beta={ch['beta']:.3g} (the loss must fall with N and D: both > 0)"
            )
        elif all(k in ch for k in ("E", "A", "B", "alpha", "beta")):
            e.update(
                loss=float(ch["E"] + ch["A"] / r["N"] ** ch["alpha"] + ch["B"] / r["D"] ** ch["beta"]),
                at="chinchilla law at (N, D): no prediction of the run yet",
            )
        else:
            e["error"] = (
                "no loss to predict at: the run has no (predicted) final loss yet and sweep_law.json's "
                f"chinchilla law is not fitted ({ch.get('error', 'absent')})"
            )
        out.append(e)
    return out


@functools.lru_cache(maxsize=8)  # a live sweep refits on every poll: the law only when its sweeps change
def _fit_scaling(key: tuple):
    """``fit_cbs_scaling`` over the ``BatchSweep`` cells ``key`` = ((N, target, batches, steps, seq_len), ...)."""
    from scaling_train.laws import BatchSweep, fit_cbs_scaling

    return fit_cbs_scaling([BatchSweep(n, lo, b, s, q) for n, lo, b, s, q in key])


def cbs_scaling_block(measured: list[dict[str, Any]], targets: list[dict[str, Any]]) -> dict[str, Any]:
    """``sweep_law.json: cbs_scaling``: ``laws.fit_cbs_scaling`` over the batch-sweep cells of
    ``measured`` (``batch_sweep_measurements``), the chosen power law (``form``, exponents, the held-out
    error behind the choice) and its prediction with a 90% interval at every target of ``scaling_targets``
    and at the largest (N, then D) of them; ``error`` (the block's or a target's) where it cannot."""
    base: dict[str, Any] = {"of": "cbs_predicted", "source": SCALING_SOURCE, "unit": "tokens"}
    sw = [m for m in measured if m.get("source") == "batch_sweep"]
    sizes = sorted({float(m["n_params"]) for m in sw})
    if not sw:
        return {**base, "error": "no batch sweep measured: the law needs runs that differ only in batch size "
                "(grid.batch_sizes, >= 3 batches per size, finished) at >= 2 sizes"}  # fmt: skip
    key = tuple(
        sorted((float(m["n_params"]), float(m["loss"]), tuple(m["batch_sizes"]), tuple(m["steps"]), int(m["seq_len"]))
               for m in sw)
    )  # fmt: skip
    try:
        fit = _fit_scaling(key)
    except (ValueError, TypeError, np.linalg.LinAlgError) as e:
        return {**base, "error": str(e), "n_sweeps": len(sw), "sizes": sizes}
    used = sorted({p.sweep.n_params for p in fit.points if p.bounded})
    sym = {"loss": "L", "tokens": "D", "params": "N"}
    law = "B_crit = exp(c0)" + "".join(f" {sym[f]}**c{i + 1}" for i, f in enumerate(fit.features))
    block = {
        **base, "law": law, "form": fit.form, "variables": {f: _VARIABLES[f] for f in fit.features},
        "c0": fit.coef[0], "exponents": dict(zip(fit.features, fit.coef[1:])),
        "held_out_rmse_log": fit.loso_rmse[fit.form], "loso_rmse": fit.loso_rmse,
        "choice": "the form with the lowest leave-one-size-out rmse of log B_crit (ties: fewer variables); "
        "a held-out size's D_min from the fold's own L(N, D_min) law, as it is predicted",
        "tokens_known": fit.tokens_known,
        "sigma_log": fit.sigma_log, "dof": fit.dof, "n_sizes": fit.n_sizes, "level": fit.level, "seq_len": fit.seq_len,
        "n_sweeps": len(fit.points), "n_excluded": fit.n_excluded, "sizes": used,
    }  # fmt: skip
    runs = {}
    for t in targets:
        e = {k: t[k] for k in ("N", "D", "batch_size", "loss", "at", "error") if k in t}
        if "error" not in e:
            try:
                p = fit.predict(n_params=t["N"], loss=t["loss"])
                e.update(
                    value=p.tokens, low=p.low_tokens, high=p.high_tokens, value_sequences=p.value,
                    low_sequences=p.low, high_sequences=p.high, level=p.level,
                    extrapolated=not (used[0] <= t["N"] <= used[-1]),
                )  # fmt: skip
            except (ValueError, FloatingPointError) as err:
                e["error"] = str(err)
        runs[t["run"]] = {**e, "of": "cbs_predicted", "source": SCALING_SOURCE, "unit": "tokens"}
    block["runs"] = runs
    if targets:
        big = max(targets, key=lambda t: (t["N"], t["D"]))
        block["largest"] = {"run": big["run"], **runs[big["run"]]}
    return block


def _compare(block: dict[str, Any], calibrated: Mapping[str, dict[str, Any]]) -> None:
    """Beside each ``cbs_scaling`` prediction, the noise-scale calibration's ``cbs_predicted`` of the same
    run (both kept, each with its ``source``) and their ratio."""
    for name, e in [
        *(block.get("runs") or {}).items(),
        *([("", block["largest"])] if "largest" in block else []),
    ]:
        c = calibrated.get(e.get("run", name))
        if c is None or "value" not in e:
            continue
        e["cbs_predicted_calibrated"] = {k: c[k] for k in ("loss", "value", "low", "high", "source")}
        e["ratio_to_calibrated"] = e["value"] / c["value"] if c["value"] > 0 else None


def run_fields(name: str, t: RunTail, block: dict[str, Any]) -> dict[str, Any]:
    """The critical-batch fields of one run's ``predictions.json``: ``gns_b_simple``, ``cbs_measured``,
    ``cbs_predicted`` (the calibrated noise scale's) and ``cbs_scaling`` (the batch-sweep law's, across
    sizes); an error string where a prediction is missing."""
    last = [t.rows[s]["gns_b_simple"] for s in sorted(t.rows) if "gns_b_simple" in t.rows[s]]
    out: dict[str, Any] = {
        "gns_b_simple": last[-1] if last else None,
        "cbs_measured": [
            m for m in block.get("cbs_measured", []) if m.get("run") == name or name in m.get("runs", [])
        ],
    }
    pred = (block.get("cbs_predicted") or {}).get("runs", {}).get(name)
    out["cbs_predicted"] = (
        pred
        if pred is not None
        else (block.get("cbs_predicted") or block.get("cbs_calibration") or {}).get("error")
    )
    scaling = block.get("cbs_scaling") or {}  # the across-size law's, at this run's size and loss
    out["cbs_scaling"] = (scaling.get("runs") or {}).get(name) or scaling.get(
        "error", "no cbs_scaling prediction for this run"
    )
    return out
