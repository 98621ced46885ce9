"""Task laws of a sweep from the evals' ``task/<name>/<metric>`` scalars in each run's metrics.jsonl.

Per task (``fit_task_laws(tails, predictions)`` -> the ``"tasks"`` section of ``sweep_law.json``):

- **continuous metric** vs model size and compute, over every eval row of every healthy run:
  ``y = a + b log N + c log C`` (N non-embedding parameters, C = training FLOPs at the row; the log N
  term is dropped when the sweep has one size). ``y`` is p(correct) (multiple choice), the answer
  log-likelihood (cloze) or the pass rate (PassUntil): smooth where accuracy is thresholded.
- **PassUntil law** (PassUntil tasks): ``P(N) = exp(-exp(c) N**(-alpha))`` over each run's latest
  (passes, attempts) -- ``laws.fit_pass_until``.
- **Err(L)** (Gadre et al. 2024): ``Err(L) = eps - k exp(-gamma L)`` over (loss, 1 - accuracy) of every
  eval row (loss = the row's eval_loss, else its training loss) -- ``laws.fit_downstream``.

Predictions for every run that is not finished (the larger runs of a sweep still training, and any
planned run with a config): the continuous metric at (N, C_final = flops_per_token * total tokens),
the PassUntil rate at N, and Err at the run's predicted final loss from ``predictions.json``.
A law that cannot be fitted yet gives ``{"error": ...}``; this module never raises into the fitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.run_folder import (
    METRICS,
    TASK_PREFIX,
    has_task_key,
    is_task_key,
    parse_task_key,
    rows_by_step,
    task_key,
)

# the task-row keys are the run folder's (scaling_train.run_folder); the old name stays importable
PREFIX = TASK_PREFIX
CONTINUOUS = {"multiple_choice": "p_correct", "cloze": "loglik", "pass_until": "pass_rate"}
THRESHOLDED = {"multiple_choice": "acc", "cloze": "exact_match", "pass_until": "pass_rate"}
MIN_POINTS = 4


def _task_scalars(row: dict[str, Any]) -> dict[str, float]:
    """What the task laws keep of a task row: its task keys, loss, eval_loss and flops, as numbers."""
    keep = {k: v for k, v in row.items() if is_task_key(k) or k in ("loss", "eval_loss", "flops")}
    return {k: float(v) for k, v in keep.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class _TaskRows:
    """Incremental reader of the task scalars of one run (rows keyed by step; a shrunk file restarts)."""

    offset: int = 0
    size: int = 0
    rows: dict[int, dict[str, float]] = field(default_factory=dict)

    def poll(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size < self.size:
            self.offset, self.rows = 0, {}
        self.size = size
        res = read_jsonl(path, self.offset)
        self.offset = res.offset
        # a resumed run rewrites later steps (run_folder.put_row)
        rows_by_step(res.rows, where=has_task_key, keep=_task_scalars, into=self.rows)


_CACHE: dict[str, _TaskRows] = {}


def task_kinds(rows: list[dict[str, float]]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for r in rows:
        for k in r:
            parsed = parse_task_key(k)
            if parsed is None or "/" in parsed[1]:  # task/<name>/<metric> only
                continue
            name, metric = parsed
            if metric == "pass_rate":
                kinds[name] = "pass_until"
            elif metric == "p_correct":
                kinds[name] = "multiple_choice"
            elif metric == "exact_match":
                kinds.setdefault(name, "cloze")
    return kinds


def _fit_continuous(N: np.ndarray, C: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Least squares ``y = a + b log N + c log C`` (b = 0 with a single N)."""
    ok = np.isfinite(y) & (N > 0) & (C > 0)
    N, C, y = N[ok], C[ok], y[ok]
    if len(y) < MIN_POINTS:
        raise ValueError(f"{len(y)} eval points; at least {MIN_POINTS} are needed")
    one_n = len(np.unique(N)) < 2
    X = np.column_stack([np.ones(len(y)), np.log(C)] if one_n else [np.ones(len(y)), np.log(N), np.log(C)])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    rmse = float(np.sqrt(np.mean((X @ coef - y) ** 2)))
    a, b, c = (coef[0], 0.0, coef[1]) if one_n else coef
    return {"a": float(a), "b_logN": float(b), "c_logC": float(c), "rmse": rmse, "n_points": int(len(y)),
            "law": "y = a + b_logN * log(N) + c_logC * log(C)"}  # fmt: skip


def _safe(fn, *a, **kw) -> dict[str, Any]:
    try:
        return fn(*a, **kw)
    except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError, ZeroDivisionError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def _run_info(t: Any) -> dict[str, Any]:
    """N, the planned final compute ``C_final = flops_per_token * total tokens``, done and diverged of a run."""
    N, fpt = t.n_params, (t.resolved or {}).get("flops_per_token")
    return {"N": N, "C_final": float(fpt) * t.total_tokens if fpt and t.total_tokens else None,
            "done": bool(t.done), "diverged": t.diverged_at is not None}  # fmt: skip


def _poll_task_rows(t: Any) -> dict[int, dict[str, float]]:
    """The run's task rows by step, read incrementally (one ``_TaskRows`` per run folder)."""
    cache = _CACHE.setdefault(str(t.run_dir.resolve()), _TaskRows())
    cache.poll(t.run_dir / METRICS)
    return cache.rows


def _err_of_loss(L: np.ndarray, acc: np.ndarray) -> tuple[dict[str, Any], Any]:
    """``Err(L) = eps - k exp(-gamma L)`` over (loss, 1 - accuracy): (its block, the fit or None)."""
    from scaling_train.laws import fit_downstream

    ok = np.isfinite(L) & (L > 0) & np.isfinite(acc)
    try:
        f = fit_downstream(L[ok], 1.0 - acc[ok])
    except (ValueError, RuntimeError, FloatingPointError) as e:
        return {"error": f"{type(e).__name__}: {e}", "n_points": int(ok.sum())}, None
    return {"eps": f.eps, "k": f.k, "gamma": f.gamma, "rmse": f.rmse, "n_points": int(ok.sum()),
            "law": "Err(L) = eps - k * exp(-gamma * L)"}, f  # fmt: skip


def _pass_until(task: str, per_run: dict[str, dict[int, dict[str, float]]], info: dict[str, dict[str, Any]]):
    """``P(N) = exp(-exp(c) N**(-alpha))`` over each run's latest (passes, attempts): (its block, fit or None)."""
    from scaling_train.laws import fit_pass_until

    latest = []  # (N, passes, attempts) of each run's latest eval
    ak, pk = task_key(task, "attempts"), task_key(task, "passes")
    for n, rows in per_run.items():
        steps = [s for s in rows if ak in rows[s] and pk in rows[s]]
        if steps:
            r = rows[max(steps)]
            latest.append((info[n]["N"], r[pk], r[ak]))
    try:
        a = np.array(latest, dtype=np.float64).reshape(-1, 3)
        f = fit_pass_until(a[:, 0], passes=a[:, 1], attempts=a[:, 2])
    except (ValueError, RuntimeError, FloatingPointError) as e:
        return {"error": f"{type(e).__name__}: {e}", "n_points": len(latest)}, None
    return {"c": f.c, "alpha": f.alpha, "rmse": f.rmse, "n_points": len(latest),
            "law": "P(N) = exp(-exp(c) * N**(-alpha))"}, f  # fmt: skip


def _task_predictions(res: dict[str, Any], info, predictions, err_fit, pu_fit) -> dict[str, Any]:
    """Per unfinished healthy run: the continuous metric at (N, C_final), Err and the thresholded metric at its
    predicted final loss, the PassUntil rate at N (each where its law was fitted)."""
    kind, cm, tm, cont = res["kind"], res["continuous_metric"], res["thresholded_metric"], res["continuous"]
    preds: dict[str, Any] = {}
    for n, d in sorted(info.items()):
        if d["done"] or d["diverged"] or not d["N"]:
            continue
        p: dict[str, Any] = {"N": d["N"], "C_final": d["C_final"]}
        if "error" not in cont and d["C_final"]:
            p[cm] = cont["a"] + cont["b_logN"] * math.log(d["N"]) + cont["c_logC"] * math.log(d["C_final"])
        loss = (predictions.get(n) or {}).get("loss")
        if err_fit is not None and loss is not None and math.isfinite(loss):
            p["loss"] = loss
            p["err"] = float(err_fit.predict(loss))
            p[tm] = 1.0 - p["err"] if kind != "pass_until" else p.get(tm)
        if pu_fit is not None:
            p["pass_rate_law"] = float(pu_fit.predict(d["N"]))
        preds[n] = p
    return preds


def _fit_task(task: str, kind: str, per_run, info, predictions) -> dict[str, Any]:
    """One task's block of ``fit_task_laws``: its metrics, laws and predictions."""
    cm, tm = CONTINUOUS[kind], THRESHOLDED[kind]
    ck, tk = task_key(task, cm), task_key(task, tm)
    pts = [
        (info[n]["N"], r.get("flops", math.nan), r.get("eval_loss", r.get("loss", math.nan)), r.get(ck, math.nan), r.get(tk, math.nan))
        for n, rows in per_run.items() for r in rows.values() if ck in r
    ]  # fmt: skip
    N, C, L, y, acc = np.array(pts, dtype=np.float64).reshape(-1, 5).T
    res: dict[str, Any] = {"kind": kind, "continuous_metric": cm, "thresholded_metric": tm}
    res["n_points"] = len(pts)
    res["continuous"] = _safe(_fit_continuous, N, C, y)
    res["err_of_loss"], err_fit = _err_of_loss(L, acc)
    pu_fit = None
    if kind == "pass_until":
        res["pass_until"], pu_fit = _pass_until(task, per_run, info)
    res["predictions"] = _task_predictions(res, info, predictions, err_fit, pu_fit)
    return res


def fit_task_laws(
    tails: dict[str, Any], predictions: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``tails``: run name -> ``fitter.tail.RunTail`` (run_dir, n_params, total_tokens, resolved, done,
    diverged_at); ``predictions``: run name -> the fitter's per-run prediction (``loss``, ``status``)."""
    per_run: dict[str, dict[int, dict[str, float]]] = {}
    info = {name: _run_info(t) for name, t in tails.items()}
    for name, t in tails.items():
        if t.diverged_at is None and t.n_params and (rows := _poll_task_rows(t)):
            per_run[name] = rows
    kinds = task_kinds([r for rows in per_run.values() for r in rows.values()])
    return {
        task: _fit_task(task, kind, per_run, info, predictions or {}) for task, kind in sorted(kinds.items())
    }
