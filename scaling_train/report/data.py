"""Read a sweep folder into typed records for the report; never fails on a missing or broken run.

    sweep = load_sweep(sweep_dir)
    sweep.runs        # RunData per planned or found run, with .status and .notes (what is wrong)
    sweep.law         # sweep_law.json written by the fitter, or None
    sweep.problems    # sweep-level notes (no plan.json, unreadable sweep_law.json, ...)

Sources, all optional: ``plan.json`` (the planned runs: a planned run without a folder is "missing"),
per run ``config.yaml`` (``resolved``: params.non_embedding, tokens_per_step, total_steps,
flops_per_token), ``metrics.jsonl`` (rows step, tokens, flops, loss, lr, gns_b_simple, tok_nll_hist,
``task/<name>/<metric>`` eval scalars in ``task_rows``, ...), ``DONE`` (JSON summary), ``predictions.json`` (fitter: the latest
prediction, with the predicted remaining curve and band), ``predictions.jsonl`` (every prediction the fitter
published, as it was made), ``samples.jsonl`` (per-sample log-likelihood records
the trainer writes at each eval: sample, tokens, nll_sum, loglik, step) and ``evals.jsonl``
(per-item records of scaling_train/evals, see ``eval_samples``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scaling_train.metrics.config import law_column
from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.run_folder import (
    CONFIG,
    DONE,
    EVALS,
    METRICS,
    PREDICTIONS,
    PREDICTIONS_LOG,
    SAMPLES,
    STOPPED,
    find_runs,
    has_task_key,
    parse_run_name,
    rows_by_step,
)

STATUSES = ("done", "stopped", "partial", "diverged", "no metrics", "missing", "broken")
"""done: DONE marker and all steps; stopped: stopped early by the adaptive policy (STOPPED, no DONE;
resumable); partial: rows but not finished (running, or killed);
diverged: a non-finite loss; no metrics: a folder without rows; missing: planned, no folder;
broken: config.yaml unreadable."""


@dataclass
class RunData:
    name: str
    run_dir: Path | None
    status: str = "missing"
    N: float | None = None
    """Non-embedding parameters."""
    D: float | None = None
    """Planned training tokens (total_steps * tokens_per_step)."""
    flops_per_token: float | None = None
    planned_flops: float | None = None
    """The sweep's FLOP budget of the run (plan.json ``flops``; the IsoFLOP grouping key)."""
    tokens_per_step: float | None = None
    total_steps: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl rows with a step and a loss, sorted by step, one per step (the last one wins)."""
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    task_rows: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl rows with ``task/<name>/<metric>`` scalars (scaling_train/evals), sorted by step."""
    done: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    """STOPPED's record (the trainer's, after the adaptive policy's stop request) when stopped early."""
    prediction: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    malformed: int = 0
    diverged_at: int | None = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ views
    def column(self, key: str) -> np.ndarray:
        """(n,) float values of ``key`` over the rows (nan where absent)."""
        return np.array([as_float(r.get(key)) for r in self.rows], dtype=np.float64)

    @property
    def steps(self) -> np.ndarray:
        return self.column("step")

    @property
    def tokens(self) -> np.ndarray:
        """Tokens seen at each row: the logged value, else step * tokens_per_step."""
        t = self.column("tokens")
        if self.tokens_per_step:
            miss = ~np.isfinite(t)
            t[miss] = self.steps[miss] * self.tokens_per_step
        return t

    @property
    def flops(self) -> np.ndarray:
        f = self.column("flops")
        if self.flops_per_token:
            miss = ~np.isfinite(f)
            f[miss] = self.tokens[miss] * self.flops_per_token
        return f

    @property
    def last_step(self) -> int:
        return int(self.rows[-1]["step"]) if self.rows else 0

    @property
    def fraction_done(self) -> float | None:
        return self.last_step / self.total_steps if self.total_steps else None

    @property
    def law_column(self) -> str:
        """The metrics column of this run's loss (``metrics.config.law_column``)."""
        return law_column(self.config)

    @property
    def final_loss(self) -> float | None:
        """Observed loss (``law_column``) at the last step of a finished run that has one."""
        if self.status != "done" or not self.rows:
            return None
        return next((as_float(r[self.law_column]) for r in reversed(self.rows) if self.law_column in r), None)

    @property
    def label(self) -> str:
        return f"N={self.N:.3g}" if self.N else self.name


@dataclass
class SweepData:
    sweep_dir: Path
    name: str
    runs: list[RunData]
    law: dict[str, Any] | None
    problems: list[str]

    def by_status(self, *statuses: str) -> list[RunData]:
        return [r for r in self.runs if r.status in statuses]

    @property
    def sizes(self) -> list[float]:
        """Distinct model sizes N of the runs that have one, ascending."""
        return sorted({r.N for r in self.runs if r.N})


def as_float(v: Any) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError) as e:
        notes.append(f"{path.name} unreadable ({type(e).__name__}: {e})")
        return None


def _sizes_from_plan(run: RunData, planned: dict[str, Any]) -> None:
    """N, D, total steps and the FLOP budget the sweep planned (``plan.json``); the run folder may refine them."""
    run.N = as_float(planned.get("n_params")) if planned.get("n_params") else None
    run.D = as_float(planned.get("tokens")) if planned.get("tokens") else None
    run.total_steps = int(planned["steps"]) if planned.get("steps") else None
    run.planned_flops = as_float(planned.get("flops")) if planned.get("flops") else None


def _read_config(run: RunData, run_dir: Path) -> None:
    """``config.yaml`` into ``run.config`` (unreadable: status broken, with a note)."""
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        run.notes.append(f"no {CONFIG} (sizes taken from plan.json or the run name)")
        return
    try:
        run.config = yaml.safe_load(cfg_path.read_text()) or {}
        if not isinstance(run.config, dict):
            raise ValueError(f"top level is {type(run.config).__name__}, not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as e:
        run.status = "broken"
        run.notes.append(f"{CONFIG} unreadable ({type(e).__name__}: {str(e)[:200]})")
        run.config = {}


def _sizes_from_config(run: RunData) -> None:
    """N, D, FLOPs per token, tokens per step and total steps from the config's ``resolved`` block; what is
    still missing of N and D from the run name."""
    res = run.config.get("resolved") or {}
    params = res.get("params") or {}
    if params.get("non_embedding"):
        run.N = as_float(params["non_embedding"])
    for key, attr in (("flops_per_token", "flops_per_token"), ("tokens_per_step", "tokens_per_step")):
        if res.get(key):
            setattr(run, attr, as_float(res[key]))
    if res.get("total_steps"):
        run.total_steps = int(res["total_steps"])
    if res.get("total_tokens"):
        run.D = as_float(res["total_tokens"])
    elif run.total_steps and run.tokens_per_step:
        run.D = run.total_steps * run.tokens_per_step
    if run.N is None or run.D is None:
        try:
            p = parse_run_name(run.name)
            run.N = run.N or p["N"]
            run.D = run.D or p["D"]
        except ValueError:
            pass


def _read_metrics(run: RunData, run_dir: Path) -> None:
    """``metrics.jsonl`` into the loss, eval and task rows by step (``run_folder.rows_by_step``: a resumed
    run's rewritten steps replace the earlier ones), the first diverged step and notes on skipped lines."""
    res_rows = read_jsonl(run_dir / METRICS)
    run.malformed = res_rows.malformed
    if res_rows.malformed:
        run.notes.append(f"{METRICS}: {res_rows.malformed} malformed line(s) skipped")
    if res_rows.torn_tail:
        run.notes.append(f"{METRICS}: torn last line skipped (crash or still writing)")
    run.rows = list(rows_by_step(res_rows.rows, where=lambda r: "loss" in r).values())
    run.eval_rows = list(rows_by_step(res_rows.rows, where=lambda r: "eval_loss" in r).values())
    run.task_rows = list(rows_by_step(res_rows.rows, where=has_task_key).values())
    for r in run.rows:
        if not math.isfinite(as_float(r.get("loss"))):
            run.diverged_at = int(r["step"])
            break


def _read_records(run: RunData, run_dir: Path) -> None:
    """DONE, STOPPED (without DONE), the fitter's latest prediction and its record, and the per-sample
    log-likelihoods of ``samples.jsonl`` and ``evals.jsonl``."""
    run.done = _read_json(run_dir / DONE, run.notes)
    if (run_dir / DONE).is_file() and run.done is None:
        run.done = {}
    run.prediction = _read_json(run_dir / PREDICTIONS, run.notes)
    if not isinstance(run.prediction, dict):
        run.prediction = None
    hist = read_jsonl(run_dir / PREDICTIONS_LOG)
    run.history = [h for h in hist.rows if "step" in h and "loss" in h]
    run.samples = [
        {"task": "samples", **s}
        for s in read_jsonl(run_dir / SAMPLES).rows
        if "loglik" in s or "nll_sum" in s
    ]
    run.samples += eval_samples(run_dir / EVALS)
    if (run_dir / STOPPED).is_file() and run.done is None:
        run.stopped = _read_json(run_dir / STOPPED, run.notes) or {}


def _set_status(run: RunData) -> None:
    """diverged | no metrics | done | stopped | partial (a broken run stays broken), with a note saying why."""
    if run.status == "broken":
        return
    if run.diverged_at is not None:
        run.status = "diverged"
        run.notes.append(f"diverged: non-finite loss at step {run.diverged_at}")
    elif not run.rows:
        run.status = "no metrics"
        run.notes.append(f"no metrics rows yet ({METRICS} absent or empty)")
    elif run.done is not None:
        run.status = "done"
        if run.total_steps and run.last_step < run.total_steps:
            run.notes.append(f"DONE, but the last logged step is {run.last_step} of {run.total_steps}")
    elif run.stopped is not None:
        run.status = "stopped"
        at = run.stopped.get("steps", run.last_step)
        run.notes.append(
            f"stopped early by the adaptive policy at step {at} of {run.total_steps or '?'} "
            "(final loss predicted; `scaling-train sweep SPEC --resume-stopped` trains it to the end)"
        )
    else:
        run.status = "partial"
        frac = f" ({run.fraction_done:.0%})" if run.fraction_done is not None else ""
        run.notes.append(f"not finished: step {run.last_step} of {run.total_steps or '?'}{frac}")


def load_run(run_dir: Path, planned: dict[str, Any] | None = None) -> RunData:
    """One run folder (or a planned run whose folder is absent) -> RunData; problems go to ``notes``."""
    run = RunData(name=run_dir.name, run_dir=run_dir if run_dir.is_dir() else None)
    _sizes_from_plan(run, planned or {})
    if run.run_dir is None:
        run.status = "missing"
        run.notes.append("planned but its folder does not exist (not started)")
        return run
    _read_config(run, run_dir)
    _sizes_from_config(run)
    _read_metrics(run, run_dir)
    _read_records(run, run_dir)
    _set_status(run)
    return run


def eval_samples(path: Path) -> list[dict[str, Any]]:
    """Per-item records of ``RUN/evals.jsonl`` (scaling_train/evals: one line per (step, task) with
    ``records``) as samples {task, sample, step, loglik, tokens}: a cloze item's answer log-likelihood,
    a multiple-choice item's log-likelihood of the right choice. A step written twice (resume): last wins."""
    latest: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for line in read_jsonl(path).rows:
        if isinstance(line.get("records"), list) and "step" in line:
            latest[(int(line["step"]), str(line.get("task", "eval")))] = line["records"]
    out = []
    for (step, task), recs in sorted(latest.items()):
        for rec in recs:
            ll, tok = rec.get("loglik"), rec.get("tokens")
            if isinstance(ll, list):  # multiple choice: the answer's entry
                a = rec.get("answer")
                if not isinstance(a, int) or not 0 <= a < len(ll):
                    continue
                ll, tok = ll[a], tok[a] if isinstance(tok, list) and a < len(tok) else None
            if isinstance(ll, (int, float)):
                out.append(
                    {"task": task, "sample": rec.get("id"), "step": step, "loglik": float(ll), "tokens": tok}
                )
    return out


def load_sweep(sweep_dir: str | Path) -> SweepData:
    """Every planned and every found run of ``sweep_dir`` (see the module docstring for the sources)."""
    sweep_dir = Path(sweep_dir)
    problems: list[str] = []
    plan = _read_json(sweep_dir / "plan.json", problems)
    planned: dict[str, dict[str, Any]] = {}
    name = sweep_dir.name
    if isinstance(plan, dict):
        name = str(plan.get("sweep") or name)
        for r in plan.get("runs") or []:
            if isinstance(r, dict) and r.get("name"):
                planned[str(r["name"])] = r
    else:
        problems.append("no plan.json: missing runs cannot be detected, only the run folders found are shown")
    # a folder with only metrics.jsonl is shown too (its config may be broken); the sweep folder itself when it
    # is a single run folder
    found = {p.name: p for p in find_runs(sweep_dir, markers=(CONFIG, METRICS))}
    runs = []
    for run_name in list(planned) + sorted(n for n in found if n not in planned):
        path = found.get(run_name) or Path(planned[run_name].get("run_dir") or sweep_dir / run_name)
        if not path.is_dir():
            path = sweep_dir / run_name
        runs.append(load_run(path, planned.get(run_name)))
    law = _read_json(sweep_dir / "sweep_law.json", problems)  # absent is fine: the report refits the laws
    if not runs:
        problems.append("no runs found (no plan.json and no folder with config.yaml or metrics.jsonl)")
    runs.sort(key=lambda r: (r.N or math.inf, r.D or math.inf, r.name))
    return SweepData(sweep_dir, name, runs, law if isinstance(law, dict) else None, problems)


def lr_schedule(run: RunData) -> np.ndarray | None:
    """The run's full per-step LR schedule (length total_steps): ``lr_schedule.json`` (trainer,
    integrations), else (a run folder from before the trainer wrote it) the ``optim`` section of config.yaml
    through ``scaling_train.schedule`` (pure numpy, no training code), else interpolated from the logged
    ``lr`` column."""
    from scaling_train.schedule import read_lr_schedule

    T = run.total_steps
    if not T or run.run_dir is None:
        return None
    try:
        lr = read_lr_schedule(run.run_dir)
        if lr is not None and len(lr) == T:
            return lr
    except ValueError:
        pass
    if "optim" in run.config:
        try:
            from scaling_train.config import from_dict
            from scaling_train.schedule import OptimConfig, lr_array

            return np.asarray(lr_array(from_dict(OptimConfig, run.config["optim"], source=CONFIG), T))
        except Exception:  # noqa: BLE001 - an odd optim section: fall back to the logged LRs
            pass
    lr, steps = run.column("lr"), run.steps
    ok = np.isfinite(lr) & (steps >= 1) & (steps <= T)
    if ok.sum() >= 2:
        from scaling_train.laws import schedule_from_samples

        return schedule_from_samples(steps[ok], lr[ok], total_steps=T)
    return None
