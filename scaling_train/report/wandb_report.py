"""The W&B report of a sweep, as ``wandb-workspaces`` panels: built offline as a plain spec, saved online.

    spec = build_spec("runs/quickstart", entity="me", project="scaling_train")   # dict, no network
    report = to_report(spec)            # wandb_workspaces.reports.v2.Report objects, no network
    url = save_report(spec)             # saves when logged in (`wandb login`); None otherwise

The runs of one sweep are the W&B runs of its group (``metrics.wandb.group``, default the sweep name,
see ``metrics/wandb_sink.py``); each W&B-plottable figure of the HTML report becomes a panel over that
run set, x axes in ``tokens`` or ``flops`` (the sink's step metrics):

| HTML figure                | W&B panels                                                              |
| -------------------------- | ----------------------------------------------------------------------- |
| loss vs tokens / FLOPs     | LinePlot loss vs tokens, flops/loss vs flops (log-log); pred/* vs tokens |
| how early was it right     | LinePlot pred/loss, pred/low, pred/high vs tokens                        |
| IsoFLOP, L(N, D), frontier | ScatterPlot final loss vs FLOPs and vs tokens; fitted laws as a table    |
| noise scale, B_crit(L)     | LinePlot gns_b_simple vs tokens; ScatterPlot gns_b_simple vs loss        |
| per-token / per-sample     | LinePlot tok_nll, tok_acc vs tokens (per-sample records are not logged)  |
| laws table                 | Markdown table with intervals and goodness of fit                        |
| adaptive sweep             | Markdown: policy, stopped runs, compute not spent, both laws (and a replay's summary); LinePlot pred/width and pred/stop vs tokens |

W&B panels cannot draw a fitted function, so fitted curves (parabolas, contours, B_crit(L)) appear as
the numbers of the fit next to the scatter of the points they were fitted to.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scaling_train.report.adaptive import adaptive_markdown
from scaling_train.report.analysis import Analysis, analyse
from scaling_train.report.data import SweepData, load_sweep

LOSS = "loss"


def _panel(kind: str, title: str, **kw: Any) -> dict[str, Any]:
    return {"type": kind, "title": title, **kw}


def _wandb_target(sweep: SweepData, entity: str | None, project: str | None) -> tuple[str | None, str, str]:
    """(entity, project, group) from the arguments, else the first run's ``metrics.wandb`` config."""
    wb: dict[str, Any] = {}
    for r in sweep.runs:
        wb = ((r.config.get("metrics") or {}).get("wandb")) or {}
        if wb:
            break
    group = wb.get("group") or next(
        (r.config.get("sweep") for r in sweep.runs if r.config.get("sweep")), None
    )
    return entity or wb.get("entity"), project or wb.get("project") or "scaling_train", group or sweep.name


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.4g}"


def laws_markdown(an: Analysis) -> str:
    lines = [
        "| law | parameter | value | 90% interval | goodness of fit | points |",
        "|---|---|---|---|---|---|",
    ]
    for law in an.laws:
        q = "; ".join(f"{k} = {_fmt(v)}" for k, v in law.fit_quality.items()) or "–"
        if law.error:
            lines.append(f"| {law.law} | – | not fitted: {law.error} | – | – | {law.n_points} |")
            continue
        for i, (k, (v, lo, hi)) in enumerate(law.params.items()):
            ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else "–"
            lines.append(
                f"| {law.law if i == 0 else ''} | {k} | {_fmt(v)} | {ci} | {q if i == 0 else ''} | "
                f"{law.n_points if i == 0 else ''} |"
            )
    return "\n".join(lines)


def build_spec(
    sweep_dir: str | Path,
    *,
    entity: str | None = None,
    project: str | None = None,
    analysis: Analysis | None = None,
    n_bootstrap: int = 0,
) -> dict[str, Any]:
    """The report as a JSON-serialisable dict (title, run set, sections of panels); reads only the sweep
    folder. ``analysis`` reuses the HTML report's fits; else they are computed (``n_bootstrap``)."""
    sweep = load_sweep(sweep_dir)
    an = analysis or analyse(sweep, n_bootstrap=n_bootstrap)
    entity, project, group = _wandb_target(sweep, entity, project)
    missing = [f"{r.name}: {r.status}" for r in sweep.runs if r.status != "done"]
    status = f"{len(sweep.runs)} runs, {len(sweep.by_status('done'))} finished." + (
        " Not finished or missing: " + "; ".join(missing[:20]) if missing else ""
    )
    tok = {"x": "tokens", "log_x": True}
    sections = [
        {"title": "Loss vs tokens and FLOPs", "panels": [
            _panel("line", "loss vs tokens", y=[LOSS], log_y=True, **tok),
            _panel("line", "loss vs FLOPs", x="flops", y=["flops/loss"], log_x=True, log_y=True),
            _panel("line", "eval loss vs tokens", y=["eval_loss"], log_y=True, **tok),
        ]},
        {"title": "How early was the prediction right", "panels": [
            _panel("line", "predicted final loss (fitter) vs tokens seen", y=["pred/loss", "pred/low", "pred/high"], **tok),
        ]},
        {"title": "IsoFLOP and the compute-optimal frontier", "panels": [
            _panel("scatter", "final loss vs training FLOPs", x="flops", y=LOSS, log_x=True, log_y=True),
            _panel("scatter", "final loss vs training tokens", x="tokens", y=LOSS, log_x=True, log_y=True),
        ]},
        {"title": "Gradient noise scale and B_crit(L)", "panels": [
            _panel("line", "gradient noise scale B_simple (tokens) vs tokens", y=["gns_b_simple"], log_y=True, **tok),
            _panel("scatter", "B_simple vs loss", x=LOSS, y="gns_b_simple", log_x=True, log_y=True),
        ]},
        {"title": "Token statistics", "panels": [
            _panel("line", "token NLL and accuracy vs tokens", y=["tok_nll", "tok_acc"], **tok),
        ]},
    ]  # fmt: skip
    adaptive_md = adaptive_markdown(sweep)
    if adaptive_md:  # an adaptive (or replayed) sweep: the interval the policy stops on, per run
        sections.append(
            {"title": "Adaptive sweep", "markdown": adaptive_md, "panels": [
                _panel("line", "relative width of the predicted final loss's 90% interval vs tokens (a run stops "
                       "once it stays below the policy's tolerance)", y=["pred/width"], log_y=True, **tok),
                _panel("line", "stop decided by the policy (1) vs tokens", y=["pred/stop"], **tok),
            ]}
        )  # fmt: skip
    return {
        "entity": entity,
        "project": project,
        "title": f"Scaling report: {sweep.name}",
        "description": f"Sweep {sweep.name} ({sweep.sweep_dir}); runs of W&B group {group!r}.",
        "runset": {"name": f"sweep {group}", "filters": f"Metric('Group') == '{group}'", "groupby": []},
        "status": status,
        "sections": sections,
        "laws_markdown": laws_markdown(an),
    }


def to_report(spec: dict[str, Any], *, entity: str | None = None):
    """``wandb_workspaces`` Report objects from ``build_spec``'s dict. Constructing needs no network when
    the entity is known (``entity`` or the spec's); saving (``report.save()``) does."""
    import wandb_workspaces.reports.v2 as wr

    entity = entity or spec["entity"]
    if not entity:
        raise ValueError(
            "W&B report spec has no entity: pass entity=... (or --entity), set metrics.wandb.entity in the "
            "runs' config, or log in so the account's default entity is used"
        )
    rs = spec["runset"]

    def runset():
        return wr.Runset(
            entity=entity,
            project=spec["project"],
            name=rs["name"],
            filters=rs["filters"],
            groupby=list(rs["groupby"]),
        )

    def panel(p: dict[str, Any]):
        if p["type"] == "line":
            return wr.LinePlot(
                title=p["title"], x=p["x"], y=list(p["y"]), log_x=p.get("log_x"), log_y=p.get("log_y")
            )
        if p["type"] == "scatter":
            return wr.ScatterPlot(
                title=p["title"], x=p["x"], y=p["y"], log_x=p.get("log_x"), log_y=p.get("log_y")
            )
        raise ValueError(f"unknown panel type {p['type']!r} in the W&B report spec")

    blocks: list[Any] = [wr.P(spec["description"]), wr.P(spec["status"])]
    for sec in spec["sections"]:
        blocks.append(wr.H2(sec["title"]))
        if sec.get("markdown"):
            blocks.append(wr.MarkdownBlock(sec["markdown"]))
        blocks.append(wr.PanelGrid(runsets=[runset()], panels=[panel(p) for p in sec["panels"]]))
    blocks += [wr.H2("Fitted laws"), wr.MarkdownBlock(spec["laws_markdown"])]
    return wr.Report(
        project=spec["project"],
        entity=entity,
        title=spec["title"],
        description=spec["description"],
        blocks=blocks,
    )


def logged_in() -> bool:
    """True when W&B has an API key (``wandb login`` or ``$WANDB_API_KEY``); never prompts."""
    import os

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        wandb.Api()
        return True
    except Exception:  # noqa: BLE001 - any failure means: cannot save
        return False


def save_report(spec: dict[str, Any]) -> str | None:
    """Save the report to W&B when logged in; returns its URL, or None (not logged in: nothing sent)."""
    if not logged_in():
        return None
    import wandb

    report = to_report(spec, entity=spec["entity"] or wandb.Api().default_entity)
    report.save()
    return report.url
