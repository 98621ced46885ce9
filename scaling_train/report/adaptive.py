"""The adaptive-sweep section: which runs were stopped where, the compute saved, and the law with and without
the saved compute.

Two sources, both optional (no section when neither exists):

- the live sweep: ``adaptive.json`` (the policy the fitter applies) and every run stopped early (``STOPPED``):
  its stop step, its predicted final loss and interval (``predictions.json``), and the compute not spent;
  the law over every run (stopped ones at their predicted loss, weighted by their interval) beside the law
  over the finished runs alone;
- a replay (``adaptive_replay.json``, written by ``scaling-train replay SWEEP_DIR --adaptive``) of a finished
  sweep: the same account, where the truth is known, so each stopped run's prediction is scored and the
  adaptive sweep's law is drawn against the full sweep's.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from scaling_train.report.data import SweepData
from scaling_train.report.figures import Figure, NoData, fmt_n, png_bytes, pyplot
from scaling_train.report.fragments import esc as _e
from scaling_train.report.fragments import figure_html

REPLAY_FILE = "adaptive_replay.json"  # sweep/adaptive.py writes it (the report does not import the sweep)


def _law_value(f: dict[str, Any], k: str) -> str:
    """A law parameter, with its 90% bootstrap interval when the replay fitted one (``replay --bootstrap``)."""
    ci = (f.get("ci") or {}).get(k)
    return f"{f[k]:.4g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and None not in ci else "")


def _ci_note(summary: dict[str, Any]) -> str:
    """Which of the replayed adaptive law's parameters fall outside the full sweep's 90% bootstrap interval
    ('' when the replay fitted no intervals)."""
    out = summary.get("outside_full_ci")
    if out is None:
        return ""
    return (
        "Brackets: 90% bootstrap intervals. The adaptive law's parameters outside the full sweep's interval: "
        + (", ".join(out) if out else "none")
        + ". A wide interval is a parameter these runs do not pin: use either law within the sweep's (N, D) range."
    )


def _law_cells(f: dict[str, Any] | None) -> str:
    if not f:
        return "<td colspan='5'>not fitted</td>"
    return "".join(f"<td>{_law_value(f, k)}</td>" for k in ("E", "A", "B", "alpha", "beta"))


def _laws_table(rows: list[tuple[str, dict[str, Any] | None]]) -> str:
    head = "<tr><th>law</th><th>E</th><th>A</th><th>B</th><th>alpha</th><th>beta</th></tr>"
    body = "".join(f"<tr><td>{_e(name)}</td>{_law_cells(f)}</tr>" for name, f in rows)
    return f"<table class='adaptive-laws'>{head}{body}</table>"


def _chinchilla(
    points: list[tuple[float, float, float, float | None, float | None]],
) -> dict[str, float] | None:
    """The law over (N, D, loss, low, high) points (low/high None observed), weighted as the sweep law."""
    from scaling_train.fitter.adaptive import fit_known_law

    if len(points) < 5:
        return None
    try:
        f = fit_known_law(points).fit
    except (ValueError, RuntimeError, FloatingPointError):
        return None
    return {k: getattr(f, k) for k in ("E", "A", "B", "alpha", "beta")}


def live_account(sweep: SweepData) -> dict[str, Any] | None:
    """The live sweep's adaptive account (None when the sweep is not adaptive and nothing was stopped):
    ``policy`` (adaptive.json, or None), ``stops`` (per stopped run: name, N, step, total_steps, loss, low,
    high, why), ``planned`` / ``spent`` FLOPs, and ``laws``: (label, Chinchilla law or None) with the stopped
    runs at their predicted loss (weighted by their interval) and over the finished runs alone."""
    from scaling_train.fitter.adaptive import known_interval

    policy_path = sweep.sweep_dir / "adaptive.json"
    stopped = sweep.by_status("stopped")
    if not policy_path.is_file() and not stopped:
        return None
    try:
        policy = json.loads(policy_path.read_text()) if policy_path.is_file() else None
    except (OSError, ValueError) as e:
        policy = {"error": f"adaptive.json unreadable: {e}"}
    planned = spent = 0.0
    stops = []
    for r in sweep.runs:
        if not (r.N and r.total_steps and r.tokens_per_step):
            continue
        fpt = r.flops_per_token or 6 * r.N
        full = fpt * r.tokens_per_step * r.total_steps
        planned += full
        if r.status != "stopped":
            spent += full
            continue
        at = int((r.stopped or {}).get("steps") or r.last_step)
        spent += fpt * r.tokens_per_step * at
        p = r.prediction or {}
        ok = all(isinstance(p.get(k), (int, float)) for k in ("loss", "low", "high"))
        stops.append(
            {"name": r.name, "N": r.N, "step": at, "total_steps": r.total_steps,
             "loss": p["loss"] if ok else None, "low": p["low"] if ok else None, "high": p["high"] if ok else None,
             "why": ((r.stopped or {}).get("request") or {}).get("reason", "")}
        )  # fmt: skip
    with_stopped, finished = [], []
    for r in sweep.runs:
        if not (r.N and r.D):
            continue
        if r.status == "done" and r.final_loss is not None and math.isfinite(r.final_loss):
            with_stopped.append((r.N, r.D, r.final_loss, None, None))
            finished.append((r.N, r.D, r.final_loss, None, None))
        elif r.status == "stopped" and r.prediction and isinstance(r.prediction.get("loss"), (int, float)):
            p = r.prediction
            with_stopped.append((r.N, r.D, float(p["loss"]), *known_interval(p.get("low"), p.get("high"))))
    laws = [
        (f"stopped runs at their predicted loss ({len(with_stopped)} runs)", _chinchilla(with_stopped)),
        (f"finished runs only ({len(finished)} runs)", _chinchilla(finished)),
    ]
    return {"policy": policy, "stops": stops, "planned": planned, "spent": spent, "laws": laws}


def _pred_text(s: dict[str, Any]) -> str:
    return "-" if s["loss"] is None else f"{s['loss']:.4f} [{s['low']:.4f}, {s['high']:.4f}]"


def live_section(sweep: SweepData) -> str:
    """The live sweep's account as HTML ('' when the sweep is not adaptive and nothing was stopped)."""
    acc = live_account(sweep)
    if acc is None:
        return ""
    policy, stops, planned = acc["policy"], acc["stops"], acc["planned"]
    rows = [
        f"<tr><td>{_e(s['name'])}</td><td>{fmt_n(s['N'])}</td><td>{s['step']} / {s['total_steps']} "
        f"({s['step'] / s['total_steps']:.0%})</td><td>{_e(_pred_text(s))}</td><td>{_e(s['why'])}</td></tr>"
        for s in stops
    ]
    pol = (
        "<p>Policy (<code>adaptive.json</code>): "
        + _e(", ".join(f"{k}={v}" for k, v in policy.items()) if policy else "<p>No policy file")
        + "</p>"
    )
    saved = f"{1 - acc['spent'] / planned:.1%}" if planned else "-"
    table = (
        "<table class='adaptive-stops'><tr><th>run</th><th>N</th><th>stopped at step</th>"
        "<th>predicted final loss [90%]</th><th>why</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>No run has been stopped yet.</p>"
    )
    return (
        f"<h3>This sweep</h3>{pol}<p>{len(stops)} run(s) stopped early; compute not spent so far: {saved} of "
        f"the planned {planned:.3g} FLOPs. Resume them to the end with "
        f"<code>scaling-train sweep SPEC --resume-stopped</code>.</p>{table}{_laws_table(acc['laws'])}"
    )


def _md_law(f: dict[str, Any] | None) -> str:
    return (
        " | ".join(_law_value(f, k) for k in ("E", "A", "B", "alpha", "beta")) if f else "not fitted | | | |"
    )


def _md_laws_table(rows: list[tuple[str, dict[str, Any] | None]]) -> list[str]:
    """``_laws_table`` as Markdown lines (a blank line first)."""
    head = ["", "| law | E | A | B | alpha | beta |", "| --- | --- | --- | --- | --- | --- |"]
    return head + [f"| {label} | {_md_law(f)} |" for label, f in rows]


def adaptive_markdown(sweep: SweepData) -> str:
    """The adaptive account as Markdown for the W&B report ('' when the sweep is neither adaptive nor
    replayed): the policy, every run stopped early (step, predicted final loss and interval, why), the
    compute not spent, both laws; and a replay's summary (``adaptive_replay.json``) when there is one."""
    acc = live_account(sweep)
    out = []
    if acc is not None:
        pol = acc["policy"]
        out.append(
            "Policy (`adaptive.json`): " + (", ".join(f"{k}={v}" for k, v in pol.items()) if pol else "none")
        )
        saved = f"{1 - acc['spent'] / acc['planned']:.1%}" if acc["planned"] else "-"
        out.append(f"\n{len(acc['stops'])} run(s) stopped early; compute not spent so far: {saved} of the planned "
                   f"{acc['planned']:.3g} FLOPs (`scaling-train sweep SPEC --resume-stopped` trains them to the end).")  # fmt: skip
        if acc["stops"]:
            out += [
                "",
                "| run | N | stopped at step | predicted final loss [90%] | why |",
                "| --- | --- | --- | --- | --- |",
            ]
            out += [
                f"| {s['name']} | {s['N']:.3g} | {s['step']} / {s['total_steps']} ({s['step'] / s['total_steps']:.0%}) "
                f"| {_pred_text(s)} | {s['why'].replace('|', '/')} |"
                for s in acc["stops"]
            ]
        out += _md_laws_table(acc["laws"])
    path = sweep.sweep_dir / REPLAY_FILE
    if path.is_file():
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            out.append(f"\n{REPLAY_FILE} unreadable: {e}")
        else:
            cov = s.get("coverage")
            out.append(
                f"\n**Replayed** (`{REPLAY_FILE}`): {s.get('n_stopped')} of {s.get('n_runs')} runs would have stopped, "
                f"spending {s.get('compute_fraction', math.nan):.0%} of the full sweep's compute{_floor_note(s)}; "
                f"{'-' if cov is None else f'{cov:.0%}'} of the stopped runs' intervals hold the truth; the adaptive "
                f"sweep's law is within {s.get('max_law_deviation') or math.nan:.2%} of the full sweep's at every run."
            )
            out += _md_laws_table(
                [("adaptive sweep (replayed)", s.get("law_adaptive")), ("full sweep", s.get("law_full"))]
            )
            note = _ci_note(s)
            if note:
                out.append("\n" + note)
    return "\n".join(out).strip()


def replay_figure(summary: dict[str, Any]) -> Figure:
    runs = summary.get("runs") or {}
    if not runs:
        raise NoData(f"{REPLAY_FILE} lists no runs")
    plt = pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(7.5, 4.2))
    names = list(runs)
    x = np.arange(len(names))
    true = np.array([runs[n]["true_final"] for n in names], dtype=np.float64)
    pred = np.array([runs[n]["predicted"] for n in names], dtype=np.float64)
    lo = np.array([runs[n]["low"] for n in names], dtype=np.float64)
    hi = np.array([runs[n]["high"] for n in names], dtype=np.float64)
    st = np.array([runs[n]["stopped_at"] is not None for n in names])
    ax.plot(x, (true / true - 1) * 100, color="gray", lw=0.8)
    if st.any():
        ax.errorbar(
            x[st], (pred[st] / true[st] - 1) * 100,
            yerr=[(pred[st] - lo[st]) / true[st] * 100, (hi[st] - pred[st]) / true[st] * 100],
            fmt="s", mfc="none", color="C0", capsize=2, label="stopped: predicted final loss, 90% interval",
        )  # fmt: skip
    dev = np.array([runs[n].get("law_deviation") for n in names], dtype=np.float64)
    ok = np.isfinite(dev)
    if ok.any():
        ax.plot(
            x[ok], dev[ok] * 100, "x", color="C3", label="adaptive law / full law - 1 at the run's (N, D)"
        )
    ax.set_xticks(x, names, rotation=70, fontsize=7)
    ax.set_ylabel("relative to the true final loss (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    cov = summary.get("coverage")
    return Figure(
        "adaptive",
        "Adaptive sweep replayed",
        png_bytes(fig),
        f"Replay of this finished sweep under the adaptive policy: {summary.get('n_stopped')} of "
        f"{summary.get('n_runs')} runs would have stopped, spending {summary.get('compute_fraction', math.nan):.0%} "
        f"of the full sweep's compute{_floor_note(summary)}. Squares: the predicted final loss at the stop and its 90% interval, "
        f"relative to the true final loss (0 = exact); "
        f"{'-' if cov is None else f'{cov:.0%}'} of them hold the truth. Crosses: the adaptive sweep's law "
        f"against the full sweep's at each run (at most {summary.get('max_law_deviation') or math.nan:.2%} apart).",
    )


def _floor_note(summary: dict) -> str:
    """' (the policy's floor on these runs: F%)' from a replay summary's ``compute_floor``; '' when it has none
    (a replay written before the floor was recorded)."""
    f = summary.get("compute_floor")
    if not isinstance(f, (int, float)) or not math.isfinite(f):
        return ""
    return f" (the policy's floor on these runs: {f:.0%}, its exempt runs to the end and the others at their earliest stop)"


def adaptive_section(sweep: SweepData) -> str:
    """The section's HTML ('' when the sweep is neither adaptive nor replayed)."""
    live = live_section(sweep)
    path = sweep.sweep_dir / REPLAY_FILE
    replay = ""
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            replay = f"<div class='nodata'>{REPLAY_FILE} unreadable: {_e(e)}</div>"
        else:
            try:
                replay = figure_html(replay_figure(summary))
            except NoData as e:
                replay = f"<div class='nodata'>Not drawn: {_e(e)}</div>"
            replay += _laws_table(
                [
                    ("adaptive sweep (replayed)", summary.get("law_adaptive")),
                    ("full sweep", summary.get("law_full")),
                ]
            )
            note = _ci_note(summary)
            if note:
                replay += f"<p class='caption'>{_e(note)}</p>"
    if not live and not replay:
        return ""
    return f"<section id='adaptive-section'><h2>Adaptive sweep</h2>{live}{replay}</section>"
