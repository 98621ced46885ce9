"""The report's "Downstream tasks" section: task metrics of the evals and the fitter's task laws.

Sources: each run's ``task/<name>/<metric>`` scalars in metrics.jsonl (``RunData.task_rows``, written by
scaling_train/evals) and ``sweep_law.json["tasks"]`` (scaling_train/fitter/tasks.py): per task the
continuous law ``y = a + b log N + c log C``, ``Err(L) = eps - k exp(-gamma L)``, for PassUntil tasks
``P(N) = exp(-exp(c) N**-alpha)``, and predictions for unfinished runs; a failed law is ``{"error": ...}``.

Per task one figure (metric vs FLOPs per model size with the law and the predictions; thresholded metric
vs loss with Err(L); PassUntil rate with its interval vs N with the PassUntil law) and a table of the laws
and predictions. Without task metrics the section is one line saying how to enable the evals.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scaling_train.fitter.tasks import CONTINUOUS, THRESHOLDED
from scaling_train.fitter.tasks import task_kinds as row_task_kinds
from scaling_train.report import figures as figs
from scaling_train.report.data import RunData, SweepData, as_float
from scaling_train.report.fragments import esc as _e
from scaling_train.report.fragments import figure_html, nodata_html
from scaling_train.run_folder import task_key

NO_EVALS = "no downstream evals: enable with evals.tasks=[next_line,identifier,compiles]"
LAWS = (
    ("continuous", "continuous metric vs log N, log C"),
    ("err_of_loss", "Err(L) from loss"),
    ("pass_until", "PassUntil"),
)


def _num(v: Any, fmt: str = ".4g") -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    return format(float(v), fmt)


# ----------------------------------------------------------------------------------- data
def task_kinds(sweep: SweepData) -> dict[str, str]:
    """Task name -> kind (multiple_choice | cloze | pass_until | unknown) from the rows and sweep_law.json."""
    kinds = row_task_kinds([row for r in sweep.runs for row in r.task_rows])  # the fitter's rule
    for name, res in fitted_tasks(sweep).items():
        if isinstance(res, dict) and res.get("kind") in CONTINUOUS:
            kinds[name] = res["kind"]
        else:
            kinds.setdefault(name, "unknown")
    return dict(sorted(kinds.items()))


def fitted_tasks(sweep: SweepData) -> dict[str, Any]:
    t = (sweep.law or {}).get("tasks")
    return t if isinstance(t, dict) else {}


def _run_flops(run: RunData, row: dict[str, Any]) -> float:
    f = as_float(row.get("flops"))
    if not math.isfinite(f):
        tok = as_float(row.get("tokens"))
        if not math.isfinite(tok) and run.tokens_per_step:
            tok = as_float(row.get("step")) * run.tokens_per_step
        f = tok * (run.flops_per_token or 6 * (run.N or math.nan))
    return f


def series(run: RunData, task: str, metric: str) -> dict[str, np.ndarray]:
    """The run's eval rows of one metric: flops, loss (eval loss, else training loss), y, low, high."""
    key = task_key(task, metric)
    rows = [r for r in run.task_rows if key in r]
    return {
        "flops": np.array([_run_flops(run, r) for r in rows], dtype=np.float64),
        "loss": np.array([as_float(r.get("eval_loss", r.get("loss"))) for r in rows], dtype=np.float64),
        "y": np.array([as_float(r.get(key)) for r in rows], dtype=np.float64),
        "low": np.array([as_float(r.get(f"{key}_low")) for r in rows], dtype=np.float64),
        "high": np.array([as_float(r.get(f"{key}_high")) for r in rows], dtype=np.float64),
    }


def _law(res: dict[str, Any], name: str) -> dict[str, Any] | None:
    law = res.get(name)
    return law if isinstance(law, dict) and "error" not in law else None


def _interval(p: dict[str, Any], metric: str) -> tuple[float, float] | None:
    lo, hi = p.get(f"{metric}_low"), p.get(f"{metric}_high")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return float(lo), float(hi)
    return None


# ----------------------------------------------------------------------------------- figure
@dataclass
class _TaskPlot:
    """What the panels of one task's figure share."""

    task: str
    kind: str
    res: dict[str, Any]
    """The task's block of ``sweep_law.json["tasks"]`` ({} without one)."""
    cm: str | None
    tm: str | None
    runs: list[RunData]
    data: dict[str, tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]]
    """Run name -> (series of the continuous metric, series of the thresholded metric)."""
    preds: dict[str, Any]
    col: dict[Any, Any]
    by_name: dict[str, RunData]
    notes: list[str] = field(default_factory=list)


def _continuous_panel(ax, figs, tp: _TaskPlot) -> int:
    """(1) the continuous metric vs training FLOPs, one curve per run, the law's line per size and the fitter's
    predictions at the planned final compute; returns the number of predictions drawn."""
    cm, seen, cmin, cmax = tp.cm, set(), math.inf, 0.0
    for r in tp.runs:
        s = tp.data[r.name][0]
        ok = np.isfinite(s["flops"]) & (s["flops"] > 0) & np.isfinite(s["y"])
        if not ok.any():
            continue
        c = tp.col.get(r.N, "gray")
        lab = figs.fmt_n(r.N) if r.N and r.N not in seen else None
        seen.add(r.N)
        x, y = s["flops"][ok], s["y"][ok]
        ax.plot(x, y, "o-", color=c, lw=1.2, ms=3, label=lab)
        band = ok & np.isfinite(s["low"]) & np.isfinite(s["high"])
        if band.any():
            ax.fill_between(s["flops"][band], s["low"][band], s["high"][band], color=c, alpha=0.15, lw=0)
        cmin, cmax = min(cmin, x.min()), max(cmax, x.max())
    n_pred = 0
    for name, p in tp.preds.items():
        if not isinstance(p, dict) or not isinstance(p.get(cm), (int, float)) or not p.get("C_final"):
            continue
        N = p.get("N") or (tp.by_name[name].N if name in tp.by_name else None)
        iv = _interval(p, cm)
        yerr = [[p[cm] - iv[0]], [iv[1] - p[cm]]] if iv else None
        ax.errorbar(
            [p["C_final"]], [p[cm]], yerr=yerr, fmt="D", color=tp.col.get(N, "black"), mfc="white", ms=7,
            capsize=4, lw=1.5,
        )  # fmt: skip
        cmax = max(cmax, float(p["C_final"]))
        n_pred += 1
    _continuous_law_lines(ax, tp, cmin, cmax)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(cm)
    ax.set_title(f"{tp.task}: {cm} vs compute")
    if seen:
        ax.legend(title="non-embedding N", fontsize=8)
    return n_pred


def _continuous_law_lines(ax, tp: _TaskPlot, cmin: float, cmax: float) -> None:
    """The fitted ``a + b log N + c log C`` over [cmin, cmax] for every size with runs or predictions."""
    cont = _law(tp.res, "continuous")
    if cont and cmax > 0 and math.isfinite(cmin):
        xs = np.geomspace(cmin, cmax, 50)
        sizes = sorted(
            {r.N for r in tp.runs if r.N}
            | {p.get("N") for p in tp.preds.values() if isinstance(p, dict) and p.get("N")}
        )
        for N in sizes:
            yl = cont["a"] + cont.get("b_logN", 0.0) * math.log(N) + cont["c_logC"] * np.log(xs)
            ax.plot(xs, yl, "--", color=tp.col.get(N, "black"), lw=1, alpha=0.8)
    elif "error" in (tp.res.get("continuous") or {}):
        tp.notes.append(f"continuous law not fitted: {tp.res['continuous']['error']}")


def _loss_panel(ax, tp: _TaskPlot) -> None:
    """(2) the thresholded metric vs loss (eval loss, else training loss) with 1 - Err(L)."""
    tm, lmin, lmax = tp.tm, math.inf, 0.0
    for r in tp.runs:
        s = tp.data[r.name][1]
        if s is None:
            continue
        ok = np.isfinite(s["loss"]) & (s["loss"] > 0) & np.isfinite(s["y"])
        if not ok.any():
            continue
        c = tp.col.get(r.N, "gray")
        ax.plot(s["loss"][ok], s["y"][ok], ".", color=c, ms=4, alpha=0.6)
        ax.plot(s["loss"][ok][-1], s["y"][ok][-1], "o", color=c, ms=6)
        lmin, lmax = min(lmin, s["loss"][ok].min()), max(lmax, s["loss"][ok].max())
    for p in tp.preds.values():
        if (
            isinstance(p, dict)
            and isinstance(p.get("loss"), (int, float))
            and isinstance(p.get("err"), (int, float))
        ):
            y = p[tm] if isinstance(p.get(tm), (int, float)) else 1.0 - p["err"]
            ax.plot([p["loss"]], [y], "D", color=tp.col.get(p.get("N"), "black"), mfc="white", ms=7)
            lmin, lmax = min(lmin, p["loss"]), max(lmax, p["loss"])
    err = _law(tp.res, "err_of_loss")
    if err and math.isfinite(lmin) and lmax > 0:
        xs = np.linspace(lmin * 0.97, lmax * 1.03, 60)
        yl = 1.0 - (err["eps"] - err["k"] * np.exp(-err["gamma"] * xs))
        ax.plot(xs, yl, "k--", lw=1.2, label="1 - Err(L) fit")
        ax.legend(fontsize=8)
    elif "error" in (tp.res.get("err_of_loss") or {}):
        tp.notes.append(f"Err(L) not fitted: {tp.res['err_of_loss']['error']}")
    ax.set_xlabel("loss (eval loss, else training loss; ◇ predicted final loss)")
    ax.set_ylabel(tm or "thresholded metric")
    ax.set_title(f"{tp.task}: {tm} vs loss")


def _pass_until_panel(ax, tp: _TaskPlot) -> None:
    """(3) PassUntil: each run's latest pass rate with its interval vs N, the law and its predictions."""
    Ns, ys = [], []
    for r in tp.runs:
        s = tp.data[r.name][0]
        ok = np.isfinite(s["y"])
        if not ok.any() or not r.N:
            continue
        i = int(np.flatnonzero(ok)[-1])
        y, lo, hi = s["y"][i], s["low"][i], s["high"][i]
        yerr = [[y - lo], [hi - y]] if math.isfinite(lo) and math.isfinite(hi) else None
        ax.errorbar([r.N], [y], yerr=yerr, fmt="o", color=tp.col.get(r.N, "gray"), capsize=4, ms=6)
        Ns.append(r.N)
        ys.append(y)
    for p in tp.preds.values():
        if isinstance(p, dict) and isinstance(p.get("pass_rate_law"), (int, float)) and p.get("N"):
            ax.plot([p["N"]], [p["pass_rate_law"]], "D", color=tp.col.get(p["N"], "black"), mfc="white", ms=7)
            Ns.append(p["N"])
            ys.append(p["pass_rate_law"])
    pu = _law(tp.res, "pass_until")
    if pu and Ns:
        xs = np.geomspace(min(Ns) / 1.5, max(Ns) * 1.5, 60)
        ax.plot(xs, np.exp(-np.exp(pu["c"]) * xs ** (-pu["alpha"])), "k--", lw=1.2, label="PassUntil law")
        ax.legend(fontsize=8)
    elif "error" in (tp.res.get("pass_until") or {}):
        tp.notes.append(f"PassUntil law not fitted: {tp.res['pass_until']['error']}")
    ax.set_xscale("log")
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("pass rate (95% interval)")
    ax.set_title(f"{tp.task}: PassUntil rate vs N")


def _task_caption(tp: _TaskPlot, n_pred: int) -> str:
    return (
        f"{tp.task} ({tp.kind}). Left: {tp.cm} at every eval step of each run against training FLOPs, coloured by "
        f"model size (shaded: interval where logged); dashed: the fitted law a + b log N + c log C per size; "
        f"◇: the fitter's prediction at the planned final compute of {n_pred} unfinished run(s). "
        f"Middle: {tp.tm} against loss (● each run's last eval) with 1 - Err(L)."
        + (" Right: each run's latest pass rate with its 95% interval against N, the PassUntil law and ◇ "
           "its predictions." if tp.kind == "pass_until" else "")
        + (" " + "; ".join(tp.notes) if tp.notes else "")
    )  # fmt: skip


def task_figure(sweep: SweepData, task: str, kind: str):
    """The figure of one task (``figures.Figure``); ``figures.NoData`` when no run has its metrics."""
    res = fitted_tasks(sweep).get(task)
    res = res if isinstance(res, dict) else {}
    cm = res.get("continuous_metric") or CONTINUOUS.get(kind)
    tm = res.get("thresholded_metric") or THRESHOLDED.get(kind)
    runs = [r for r in sweep.runs if r.task_rows and r.status != "diverged"]
    data = {r.name: (series(r, task, cm) if cm else None, series(r, task, tm) if tm else None) for r in runs}
    if not any(d[0] is not None and np.isfinite(d[0]["y"]).any() for d in data.values()):
        raise figs.NoData(f"no run has {task_key(task, cm)} rows")
    preds = res.get("predictions") if isinstance(res.get("predictions"), dict) else {}
    plt = figs.pyplot()
    by_name = {r.name: r for r in sweep.runs}
    tp = _TaskPlot(task, kind, res, cm, tm, runs, data, preds, figs.size_colors(sweep.sizes), by_name)
    n_panels = 3 if kind == "pass_until" else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4.4))
    n_pred = _continuous_panel(axes[0], figs, tp)
    _loss_panel(axes[1], tp)
    if kind == "pass_until":
        _pass_until_panel(axes[2], tp)
    if not res:
        tp.notes.append("no task laws in sweep_law.json (run scaling-train fit SWEEP_DIR)")
    return figs.Figure(f"task_{_slug(task)}", f"Task {task}", figs.png_bytes(fig), _task_caption(tp, n_pred))


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in s)


# ----------------------------------------------------------------------------------- html
def _law_rows(task: str, res: dict[str, Any], kind: str) -> list[str]:
    out = []
    names = [n for n, _ in LAWS if n != "pass_until" or kind == "pass_until" or n in res]
    for key in names:
        label = dict(LAWS)[key]
        law = res.get(key)
        if not isinstance(law, dict):
            continue
        if "error" in law:
            out.append(
                f"<tr><td>{_e(task)}</td><td>{_e(label)}</td><td colspan='2' class='err'>not fitted: "
                f"{_e(law['error'])}</td><td>–</td><td class='num'>{_num(law.get('n_points'), '.0f')}</td></tr>"
            )
            continue
        params = {
            k: v
            for k, v in law.items()
            if k not in ("law", "rmse", "n_points") and isinstance(v, (int, float))
        }
        ptxt = "<br>".join(f"{_e(k)} = {_num(v)}" for k, v in params.items()) or "–"
        out.append(
            f"<tr><td>{_e(task)}</td><td>{_e(label)}</td><td>{_e(law.get('law', ''))}</td><td>{ptxt}</td>"
            f"<td class='num'>RMSE = {_num(law.get('rmse'))}</td><td class='num'>{_num(law.get('n_points'), '.0f')}</td></tr>"
        )
    return out


def _pred_rows(task: str, res: dict[str, Any]) -> list[str]:
    preds = res.get("predictions")
    if not isinstance(preds, dict):
        return []
    out = []
    cm, tm = res.get("continuous_metric", "metric"), res.get("thresholded_metric", "acc")
    for name, p in preds.items():
        if not isinstance(p, dict):
            continue
        iv = _interval(p, cm)
        cval = _num(p.get(cm)) + (f" [{_num(iv[0])}, {_num(iv[1])}]" if iv else "")
        out.append(
            f"<tr><td>{_e(task)}</td><td>{_e(name)}</td><td class='num'>{_num(p.get('N'), '.3g')}</td>"
            f"<td class='num'>{_num(p.get('C_final'), '.3g')}</td><td class='num'>{_e(cm)} = {cval}</td>"
            f"<td class='num'>{_num(p.get('loss'))}</td><td class='num'>{_num(p.get('err'))}</td>"
            f"<td class='num'>{_e(tm)} = {_num(p.get(tm))}</td><td class='num'>{_num(p.get('pass_rate_law'))}</td></tr>"
        )
    return out


def tasks_section(sweep: SweepData) -> str:
    """The whole "Downstream tasks" section; never raises (a failing figure becomes a note)."""
    head = "<section id='tasks-section'><h2>Downstream tasks</h2>"
    kinds = task_kinds(sweep)
    if not kinds:
        return f"{head}<div class='nodata' id='tasks-none'>{_e(NO_EVALS)}</div></section>"
    fitted = fitted_tasks(sweep)
    parts = [head]
    if not fitted:
        parts.append(
            "<div class='nodata'>No task laws in sweep_law.json yet: run <code>scaling-train fit SWEEP_DIR</code>"
            " (the figures show the observed task metrics only).</div>"
        )
    for task, kind in kinds.items():
        try:
            parts.append(figure_html(task_figure(sweep, task, kind)))
        except figs.NoData as e:
            parts.append(nodata_html(f"task_{_slug(task)}", f"Task {task}", str(e)))
        except Exception as e:  # noqa: BLE001 - one broken panel must not lose the report
            tb = traceback.format_exc(limit=3)
            parts.append(nodata_html(f"task_{_slug(task)}", f"Task {task}", f"figure failed: {type(e).__name__}: {e}\n{tb}"))  # fmt: skip
    law_rows, pred_rows = [], []
    for task, kind in kinds.items():
        res = fitted.get(task)
        if isinstance(res, dict) and "error" in res and len(res) <= 2:
            law_rows.append(f"<tr><td>{_e(task)}</td><td>all</td><td colspan='4' class='err'>not fitted: {_e(res['error'])}</td></tr>")  # fmt: skip
        elif isinstance(res, dict):
            law_rows += _law_rows(task, res, kind)
            pred_rows += _pred_rows(task, res)
        else:
            law_rows.append(f"<tr><td>{_e(task)}</td><td colspan='5'>not in sweep_law.json</td></tr>")
    parts.append(
        "<h3>Task laws</h3><table id='task-laws'><tr><th>task</th><th>law</th><th>form</th><th>parameters</th>"
        "<th>goodness of fit</th><th>points</th></tr>" + "".join(law_rows) + "</table>"
    )
    if pred_rows:
        parts.append(
            "<h3>Task predictions for unfinished runs</h3><table id='task-predictions'><tr><th>task</th><th>run</th>"
            "<th>N</th><th>final FLOPs</th><th>continuous metric (law)</th><th>predicted loss</th><th>Err(L)</th>"
            "<th>thresholded metric</th><th>PassUntil law</th></tr>" + "".join(pred_rows) + "</table>"
        )
    parts.append(
        "<p class='caption'>Task laws of the online fitter (sweep_law.json, scaling_train/fitter/tasks.py): the "
        "continuous metric y = a + b log N + c log C over every eval row, Err(L) = eps - k exp(-gamma L) "
        "over (loss, 1 - accuracy), and for PassUntil tasks P(N) = exp(-exp(c) N^-alpha) over each run's latest "
        "(passes, attempts). Predictions are for the runs not finished yet.</p></section>"
    )
    return "".join(parts)


__all__ = ["NO_EVALS", "task_figure", "task_kinds", "tasks_section"]
