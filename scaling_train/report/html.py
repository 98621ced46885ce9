"""Assemble the self-contained ``report.html``: figures as base64 PNG, tables, no external resources."""

from __future__ import annotations

import math
import time
import traceback
from typing import Any

from scaling_train.report import figures as figs
from scaling_train.report.adaptive import adaptive_section
from scaling_train.report.analysis import Analysis, LawRow
from scaling_train.report.data import STATUSES, SweepData
from scaling_train.report.fragments import esc as _e
from scaling_train.report.fragments import figure_html, nodata_html
from scaling_train.report.pools import data_pools
from scaling_train.report.repetition import repetition
from scaling_train.report.summary import html_section, safe_first_screen
from scaling_train.report.tasks import tasks_section

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.fig img{max-width:100%;height:auto;border:1px solid #eee}
.caption{color:#444;font-size:13px;margin:4px 0 12px}
.missing{background:#fff5e6;border-left:4px solid #f0a020;padding:8px 12px;font-size:13px}
.nodata{background:#f6f6f6;border-left:4px solid #999;padding:8px 12px;font-size:13px;color:#444}
.st-done{color:#16803c}.st-partial{color:#b36b00}.st-diverged,.st-broken{color:#c0392b}
.st-missing,.st-no-metrics{color:#777}
.err{color:#c0392b}
"""


def _num(v: Any, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(float(v), fmt)


def _status_table(sweep: SweepData) -> str:
    rows = []
    for r in sweep.runs:
        pred = r.prediction or {}
        if r.status == "done":
            final = _num(r.final_loss)
        elif pred.get("loss"):
            final = f"{_num(pred['loss'])} [{_num(pred.get('low'))}, {_num(pred.get('high'))}] (pred.)"
        else:
            final = "–"
        steps = f"{r.last_step} / {r.total_steps or '?'}"
        rows.append(
            f"<tr><td>{_e(r.name)}</td><td class='num'>{_num(r.N, '.3g')}</td><td class='num'>{_num(r.D, '.3g')}</td>"
            f"<td class='num'>{_e(steps)}</td><td class='st-{r.status.replace(' ', '-')}'>{_e(r.status)}</td>"
            f"<td class='num'>{final}</td><td>{_e('; '.join(r.notes))}</td></tr>"
        )
    return (
        "<table id='runs'><tr><th>run</th><th>N (params)</th><th>D (tokens)</th><th>steps</th><th>status</th>"
        "<th>final loss</th><th>notes</th></tr>" + "".join(rows) + "</table>"
    )


def _missing_box(sweep: SweepData) -> str:
    items = list(sweep.problems)
    counts = {s: len(sweep.by_status(s)) for s in STATUSES}
    for s in ("missing", "no metrics", "partial", "stopped", "diverged", "broken"):
        if counts[s]:
            names = ", ".join(r.name for r in sweep.by_status(s)[:8])
            more = f" and {counts[s] - 8} more" if counts[s] > 8 else ""
            items.append(f"{counts[s]} run(s) {s}: {names}{more}")
    if not items:
        return ""
    li = "".join(f"<li>{_e(x)}</li>" for x in items)
    hint = (
        "Rerunning the sweep command runs missing runs and resumes partial ones from their checkpoints; "
        "the figures below use what exists (unfinished runs through their predicted final loss)."
    )
    return (
        f"<div class='missing' id='missing'><b>What is missing or incomplete</b><ul>{li}</ul>"
        f"<span>{_e(hint)}</span></div>"
    )


def _law_table(laws: list[LawRow]) -> str:
    out = [
        "<table id='laws'><tr><th>law</th><th>form</th><th>parameter</th><th>value</th><th>90% interval</th>"
        "<th>goodness of fit</th><th>points</th><th>note</th></tr>"
    ]
    for law in laws:
        quality = "<br>".join(f"{_e(k)} = {_num(v)}" for k, v in law.fit_quality.items()) or "–"
        if law.error:
            out.append(
                f"<tr><td>{_e(law.law)}</td><td>{_e(law.formula)}</td><td colspan='3' class='err'>not fitted: "
                f"{_e(law.error)}</td><td>–</td><td class='num'>{law.n_points}</td><td>{_e(law.note)}</td></tr>"
            )
            continue
        n = max(len(law.params), 1)
        first = True
        for name, (v, lo, hi) in law.params.items():
            ci = f"[{_num(lo)}, {_num(hi)}]" if lo is not None and hi is not None else "–"
            lead = (
                f"<td rowspan='{n}'>{_e(law.law)}</td><td rowspan='{n}'>{_e(law.formula)}</td>"
                if first
                else ""
            )
            tail = (
                f"<td rowspan='{n}'>{quality}</td><td rowspan='{n}' class='num'>{law.n_points}</td>"
                f"<td rowspan='{n}'>{_e(law.note)}</td>"
                if first
                else ""
            )
            out.append(
                f"<tr>{lead}<td>{_e(name)}</td><td class='num'>{_num(v)}</td><td class='num'>{ci}</td>{tail}</tr>"
            )
            first = False
    out.append("</table>")
    return "".join(out)


_TITLES = {
    "loss_curves": ("loss", "Loss vs tokens and FLOPs per model size"),
    "prediction_history": ("history", "How early was the prediction right"),
    "isoflop": ("isoflop", "IsoFLOP curves, L(N, D) contours and the compute-optimal frontier"),
    "noise_scale": ("gns", "Gradient noise scale and the critical batch size"),
    "sample_loglik": ("samples", "Per-sample log-likelihood distributions per model size"),
}


def render(sweep: SweepData, an: Analysis, *, screen: dict[str, Any] | None = None) -> str:
    """The whole page as one string; a figure that fails becomes a note, never an exception. ``screen``: the
    first screen's numbers (``summary.first_screen``; computed when not given)."""
    first = html_section(screen if screen is not None else safe_first_screen(sweep, an))
    sections = []
    for fn in figs.FIGURES:
        key, title = _TITLES[fn.__name__]
        try:
            sections.append(figure_html(fn(sweep, an)))
        except figs.NoData as e:
            sections.append(nodata_html(key, title, str(e)))
            if fn is figs.sample_loglik:
                try:
                    sections.append(figure_html(figs.token_nll_hist(sweep, an)))
                except figs.NoData:
                    pass
        except Exception as e:  # noqa: BLE001 - one broken panel must not lose the report
            tb = traceback.format_exc(limit=3)
            sections.append(nodata_html(key, title, f"figure failed: {type(e).__name__}: {e}\n{tb}"))
    try:  # only for a sweep whose law is the data-constrained one; no section otherwise
        sections.append(figure_html(repetition(sweep, an)))
    except figs.NoData:
        pass
    except Exception as e:  # noqa: BLE001 - one broken panel must not lose the report
        sections.append(nodata_html("repetition", "Repeated data", f"figure failed: {type(e).__name__}: {e}"))
    try:  # only for a sweep whose law is the pool law (runs on data pools); no section otherwise
        sections.append(figure_html(data_pools(sweep, an)))
    except figs.NoData as e:
        if (sweep.law or {}).get("data_pools"):  # runs on pools, but no law to draw: say why
            sections.append(nodata_html("data-pools", "Data pools", str(e)))
    except Exception as e:  # noqa: BLE001 - one broken panel must not lose the report
        sections.append(nodata_html("data-pools", "Data pools", f"figure failed: {type(e).__name__}: {e}"))
    try:
        tasks_html = tasks_section(sweep)
    except Exception as e:  # noqa: BLE001 - the section must not lose the report
        tasks_html = nodata_html("tasks", "Downstream tasks", f"section failed: {type(e).__name__}: {e}")
    try:  # an adaptive sweep, or a replay of one; no section otherwise
        adaptive_html = adaptive_section(sweep)
    except Exception as e:  # noqa: BLE001 - the section must not lose the report
        adaptive_html = nodata_html("adaptive", "Adaptive sweep", f"section failed: {type(e).__name__}: {e}")
    counts = ", ".join(f"{len(sweep.by_status(s))} {s}" for s in STATUSES if sweep.by_status(s))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Scaling report: {_e(sweep.name)}</title>
<style>{CSS}</style></head><body>
<h1>Scaling report: {_e(sweep.name)}</h1>
<p class="meta">{_e(sweep.sweep_dir)} · {len(sweep.runs)} runs ({_e(counts or "none")}) · written {when}</p>
{_missing_box(sweep)}
{first}
{"".join(sections)}
{tasks_html}
{adaptive_html}
<section id="laws-section"><h2>Fitted laws</h2>{_law_table(an.laws)}
<p class="caption">Intervals are 90%: Chinchilla by case-resampling bootstrap, IsoFLOP exponents by residual
bootstrap, B_crit from the OLS standard errors, final-loss predictions from the fitter's calibrated interval.
The laws are refitted here from the runs' final (or predicted) losses; rows marked "online fitter" are
the fitter's own sweep_law.json{"" if sweep.law else " (absent: run <code>scaling-train fit SWEEP_DIR</code>)"}.</p>
</section>
<section id="runs-section"><h2>Runs</h2>{_status_table(sweep)}</section>
</body></html>
"""
