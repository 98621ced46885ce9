"""The first screen: the answer to the user's question, at the top of the report and printed when a sweep ends.

* the fitted law with its 90% bootstrap intervals;
* the compute-optimal N, D and loss at 10x and 100x the largest run's compute (real FLOPs: the runs' own FLOPs
  per token, head and attention included, ``ChinchillaFit.optimal_under``), with 90% intervals over the law's
  bootstrap draws (``ChinchillaFit.optimal_interval``);
* the predicted critical batch there: the fitter's calibrated ``cbs_predicted`` curve (``sweep_law.json``),
  which is linear in log loss / log batch, continued to the loss of the compute-optimal run;
* the law's frontier against the sweep's own IsoFLOP optima (N_opt per budget from both);
* the held-out check: the law refitted without the largest size, asked for that size's final losses;
* how accurate this sweep's own mid-run predictions were: for every finished run, the prediction standing at
  40% of its steps (the fitter's live record ``predictions.jsonl``, or a replay) against its final loss.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from scaling_train.report.analysis import AT_FRACTION, Analysis, flops_per_token_fn, standing_at
from scaling_train.report.data import SweepData

FACTORS = (10.0, 100.0)
WITHIN = 0.02


def _cbs_at(law: dict[str, Any] | None, loss: float) -> dict[str, Any]:
    """The calibrated critical batch (tokens) at ``loss``: a log-log line through the fitter's curve (value,
    low, high), which is exact for its law forms; ``error`` when the sweep has no calibration."""
    pred = (law or {}).get("cbs_predicted") or {}
    curve = pred.get("curve") or {}
    xs = np.asarray(curve.get("loss") or [], dtype=float)
    if len(xs) < 2:
        cal = (law or {}).get("cbs_calibration") or {}
        return {
            "error": cal.get("error")
            or "no cbs_predicted curve in sweep_law.json (no measured critical batch)"
        }
    out: dict[str, Any] = {"source": pred.get("source"), "extrapolated": not (xs.min() <= loss <= xs.max())}
    for k in ("value", "low", "high"):
        ys = np.asarray(curve[k], dtype=float)
        ok = np.isfinite(ys) & (ys > 0)
        if ok.sum() < 2:
            return {"error": f"cbs_predicted curve has no usable {k}"}
        slope, icpt = np.polyfit(np.log(xs[ok]), np.log(ys[ok]), 1)
        out[k] = float(np.exp(icpt + slope * math.log(loss)))
    return out


def prediction_accuracy(sweep: SweepData, an: Analysis) -> dict[str, Any]:
    """Per finished run: the last prediction made at or before ``AT_FRACTION`` of its steps vs its final loss."""
    rows = []
    for r in sweep.runs:
        final = r.final_loss if r.status == "done" else None
        h = standing_at(an.history.get(r.name, []), AT_FRACTION)
        if final is None or not math.isfinite(final) or h is None:
            continue
        lo, hi = h.get("low"), h.get("high")
        err = h["loss"] / final - 1
        inside = lo is not None and hi is not None and lo <= final <= hi
        rows.append({"run": r.name, "fraction": h["fraction"], "error": err, "inside": inside,
                     "source": h.get("source", "")})  # fmt: skip
    good = sum(abs(x["error"]) <= WITHIN and x["inside"] for x in rows)
    return {"runs": rows, "n": len(rows), "good": good, "at": AT_FRACTION, "within": WITHIN}


def heldout_largest(an: Analysis) -> dict[str, Any]:
    """The law's own out-of-sample check: Chinchilla fitted on the finished runs of every size but the largest,
    then asked for the largest size's final losses. ``runs``: [{run, D, observed, predicted, error}] (error =
    predicted / observed - 1); ``error`` (a string) when it cannot be done."""
    from scaling_train.laws import fit_chinchilla

    pts = [p for p in an.points if p.source == "observed"]
    sizes = sorted({p.N for p in pts})
    if len(sizes) < 3:
        return {"error": f"{len(sizes)} sizes with finished runs; holding one out needs at least 3"}
    big = sizes[-1]
    fit_pts = [p for p in pts if p.N != big]
    if len(fit_pts) < 5:
        return {"error": f"{len(fit_pts)} finished runs below the largest size; at least 5 are needed"}
    try:
        f = fit_chinchilla(*(np.array([getattr(p, k) for p in fit_pts]) for k in ("N", "D", "loss")))
    except (ValueError, RuntimeError, FloatingPointError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    runs = []
    for p in sorted((p for p in pts if p.N == big), key=lambda p: p.D):
        with np.errstate(over="ignore", invalid="ignore"):  # a degenerate fit: checked below, not warned
            pred = float(f.predict(p.N, p.D))
        runs.append(
            {"run": p.run, "D": p.D, "observed": p.loss, "predicted": pred, "error": pred / p.loss - 1}
        )
    bad = [r for r in runs if not math.isfinite(r["predicted"])]
    if bad:
        return {"error": f"the law fitted below N={big:.3g} gives {bad[0]['predicted']} at D={bad[0]['D']:.3g} "
                f"(alpha={f.alpha:.3g}, beta={f.beta:.3g}): no held-out check"}  # fmt: skip
    return {"N": big, "n_fit": len(fit_pts), "runs": runs, "within": WITHIN,
            "max_abs_error": max(abs(r["error"]) for r in runs)}  # fmt: skip


def first_screen(sweep: SweepData, an: Analysis) -> dict[str, Any]:
    """The numbers of the first screen (module docstring); each part has ``error`` when it cannot be given."""
    out: dict[str, Any] = {"sweep": sweep.name, "accuracy": prediction_accuracy(sweep, an)}
    f = an.chinchilla
    if f is None:
        row = next((x for x in an.laws if x.law == "Chinchilla"), None)
        out["law"] = {"error": (row.error if row else None) or "no Chinchilla fit"}
        return out
    out["law"] = {k: (getattr(f, k), *f.ci.get(k, (None, None))) for k in ("E", "A", "B", "alpha", "beta")}
    out["heldout"] = heldout_largest(an)
    if not an.points:
        return out
    c_max = max(p.C for p in an.points)
    out["largest_compute"] = c_max
    fpt = flops_per_token_fn(an.points)  # C is real FLOPs (head and attention too), not 6 N D
    if an.isoflop is not None:  # does the law's frontier go through the sweep's own IsoFLOP optima?
        front = []
        for par in an.isoflop.parabolas:
            try:
                n_law = float(f.optimal_under(par.C, fpt)[0])
            except ValueError:
                n_law = None
            front.append({"C": par.C, "N_isoflop": par.N_opt, "N_law": n_law,
                          "ratio": n_law / par.N_opt if n_law else None})  # fmt: skip
        out["frontier"] = front
    outlook = []
    for k in FACTORS:
        C = k * c_max
        row: dict[str, Any] = {"factor": k, "C": C}
        try:
            n, d, lo = (float(v) for v in f.optimal_under(C, fpt))
            row.update(N=n, D=d, L=lo)
            if f.draws:
                row["interval"] = f.optimal_interval(C, fpt)
            row["cbs"] = _cbs_at(sweep.law, lo)
        except ValueError as e:
            row["error"] = str(e)
        outlook.append(row)
    out["outlook"] = outlook
    return out


def safe_first_screen(sweep: SweepData, an: Analysis) -> dict[str, Any]:
    """``first_screen``, or ``{"sweep", "error"}`` when it fails: the first screen never loses the report."""
    try:
        return first_screen(sweep, an)
    except Exception as e:  # noqa: BLE001 - a summary, never the reason a report is not written
        return {"sweep": sweep.name, "error": f"{type(e).__name__}: {e}"}


def _iv(v: tuple[float, float] | None, fmt: str) -> str:
    return f" [{v[0]:{fmt}}, {v[1]:{fmt}}]" if v and None not in v else ""


def lines(s: dict[str, Any]) -> list[str]:
    """The first screen as plain text lines (printed at the end of ``scaling-train sweep``)."""
    out = [f"== {s['sweep']}: what this sweep says"]
    if "error" in s:
        return [*out, f"first screen failed: {s['error']}"]
    law = s.get("law", {})
    if "error" in law:
        out.append(f"law: not fitted ({law['error']})")
    else:
        terms = ", ".join(f"{k}={v[0]:.3g}" + _iv(v[1:], ".3g") for k, v in law.items())
        out.append(f"law L(N, D) = E + A/N^alpha + B/D^beta (90% bootstrap intervals): {terms}")
    for r in s.get("outlook", []):
        head = f"at {r['factor']:g}x the largest run's compute (C={r['C']:.3g} FLOPs): "
        if "error" in r:
            out.append(head + f"no compute-optimum ({r['error']})")
            continue
        iv = r.get("interval", {})
        cb = r.get("cbs", {})
        cbs = (
            f"critical batch {cb['value']:.3g} tokens{_iv((cb['low'], cb['high']), '.3g')}"
            + (" (extrapolated in loss)" if cb.get("extrapolated") else "")
            if "value" in cb
            else f"critical batch: n/a ({cb.get('error')})"
        )
        out.append(
            head
            + f"N_opt={r['N']:.3g}{_iv(iv.get('N'), '.3g')}, D_opt={r['D']:.3g}{_iv(iv.get('D'), '.3g')}, "
            f"loss {r['L']:.4g}{_iv(iv.get('L'), '.4g')}; {cbs}"
        )
    front = s.get("frontier") or []
    if front:
        out.append(
            "law frontier vs IsoFLOP optima: "
            + "; ".join(
                f"C={x['C']:.2g}: N_opt {x['N_isoflop']:.3g} (IsoFLOP) vs "
                + (f"{x['N_law']:.3g} (law, x{x['ratio']:.2f})" if x.get("N_law") else "none (law)")
                for x in front
            )
        )
    h = s.get("heldout")
    if h and "error" in h:
        out.append(f"held-out check: not done ({h['error']})")
    elif h:
        errs = ", ".join(f"{r['error']:+.1%} at D={r['D']:.3g}" for r in h["runs"])
        ok = "within" if h["max_abs_error"] <= h["within"] else "NOT within"
        out.append(
            f"held-out check: the law fitted on the {h['n_fit']} finished runs below N={h['N']:.3g} predicts that "
            f"size's final loss {ok} {h['within']:.0%} ({errs})"
        )
    a = s["accuracy"]
    if a["n"]:
        sources = sorted({x["source"] for x in a["runs"] if x["source"]})
        out.append(
            f"mid-run predictions: at {a['at']:.0%} of each run, {a['good']} of {a['n']} finished runs were within "
            f"{a['within']:.0%} of their final loss and inside their 90% interval"
            + (f" (source: {', '.join(sources)})" if sources else "")
        )
    else:
        out.append("mid-run predictions: no finished run with a prediction made by 40% of its steps")
    return out


def html_section(s: dict[str, Any]) -> str:
    """The first screen as the report's top section."""
    items = "".join(f"<li>{html.escape(x)}</li>" for x in lines(s)[1:])
    return f'<section id="first-screen"><h2>What this sweep says</h2><ul>{items}</ul></section>'
