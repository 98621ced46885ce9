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

from scaling_train.metrics.jsonl import put_row, read_jsonl

PREFIX = "task/"
CONTINUOUS = {"multiple_choice": "p_correct", "cloze": "loglik", "pass_until": "pass_rate"}
THRESHOLDED = {"multiple_choice": "acc", "cloze": "exact_match", "pass_until": "pass_rate"}
MIN_POINTS = 4


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
        for r in res.rows:
            if "step" not in r or not any(k.startswith(PREFIX) for k in r):
                continue
            step = int(r["step"])
            keep = {k: v for k, v in r.items() if k.startswith(PREFIX) or k in ("loss", "eval_loss", "flops")}
            put_row(  # a resumed run rewrites later steps
                self.rows, step,
                {k: float(v) for k, v in keep.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            )  # fmt: skip


_CACHE: dict[str, _TaskRows] = {}


def task_kinds(rows: list[dict[str, float]]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for r in rows:
        for k in r:
            if not k.startswith(PREFIX) or k.count("/") != 2:
                continue
            _, name, metric = k.split("/")
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


def fit_task_laws(
    tails: dict[str, Any], predictions: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``tails``: run name -> ``fitter.tail.RunTail`` (run_dir, n_params, total_tokens, resolved, done,
    diverged_at); ``predictions``: run name -> the fitter's per-run prediction (``loss``, ``status``)."""
    from scaling_train.laws import fit_downstream, fit_pass_until

    predictions = predictions or {}
    per_run: dict[str, dict[int, dict[str, float]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, t in tails.items():
        N = t.n_params
        fpt = (t.resolved or {}).get("flops_per_token")
        info[name] = {"N": N, "C_final": float(fpt) * t.total_tokens if fpt and t.total_tokens else None,
                      "done": bool(t.done), "diverged": t.diverged_at is not None}  # fmt: skip
        if t.diverged_at is not None or not N:
            continue
        cache = _CACHE.setdefault(str(t.run_dir.resolve()), _TaskRows())
        cache.poll(t.run_dir / "metrics.jsonl")
        if cache.rows:
            per_run[name] = cache.rows
    kinds = task_kinds([r for rows in per_run.values() for r in rows.values()])
    out: dict[str, Any] = {}
    for task, kind in sorted(kinds.items()):
        cm, tm = CONTINUOUS[kind], THRESHOLDED[kind]
        ck, tk = f"{PREFIX}{task}/{cm}", f"{PREFIX}{task}/{tm}"
        pts = [
            (info[n]["N"], r.get("flops", math.nan), r.get("eval_loss", r.get("loss", math.nan)), r.get(ck, math.nan), r.get(tk, math.nan))
            for n, rows in per_run.items() for r in rows.values() if ck in r
        ]  # fmt: skip
        arr = np.array(pts, dtype=np.float64).reshape(-1, 5)
        N, C, L, y, acc = arr.T
        res: dict[str, Any] = {
            "kind": kind,
            "continuous_metric": cm,
            "thresholded_metric": tm,
            "n_points": len(pts),
        }
        res["continuous"] = _safe(_fit_continuous, N, C, y)
        ok = np.isfinite(L) & (L > 0) & np.isfinite(acc)
        err_fit = None
        try:
            err_fit = fit_downstream(L[ok], 1.0 - acc[ok])
            res["err_of_loss"] = {"eps": err_fit.eps, "k": err_fit.k, "gamma": err_fit.gamma, "rmse": err_fit.rmse,
                                  "n_points": int(ok.sum()), "law": "Err(L) = eps - k * exp(-gamma * L)"}  # fmt: skip
        except (ValueError, RuntimeError, FloatingPointError) as e:
            res["err_of_loss"] = {"error": f"{type(e).__name__}: {e}", "n_points": int(ok.sum())}
        pu_fit = None
        if kind == "pass_until":
            latest = []  # (N, passes, attempts) of each run's latest eval
            ak, pk = f"{PREFIX}{task}/attempts", f"{PREFIX}{task}/passes"
            for n, rows in per_run.items():
                steps = [s for s in rows if ak in rows[s] and pk in rows[s]]
                if steps:
                    r = rows[max(steps)]
                    latest.append((info[n]["N"], r[pk], r[ak]))
            try:
                a = np.array(latest, dtype=np.float64).reshape(-1, 3)
                pu_fit = fit_pass_until(a[:, 0], passes=a[:, 1], attempts=a[:, 2])
                res["pass_until"] = {"c": pu_fit.c, "alpha": pu_fit.alpha, "rmse": pu_fit.rmse, "n_points": len(latest),
                                     "law": "P(N) = exp(-exp(c) * N**(-alpha))"}  # fmt: skip
            except (ValueError, RuntimeError, FloatingPointError) as e:
                res["pass_until"] = {"error": f"{type(e).__name__}: {e}", "n_points": len(latest)}
        preds: dict[str, Any] = {}
        cont = res["continuous"]
        for n, d in sorted(info.items()):
            if d["done"] or d["diverged"] or not d["N"]:
                continue
            p: dict[str, Any] = {"N": d["N"], "C_final": d["C_final"]}
            if "error" not in cont and d["C_final"]:
                p[cm] = (
                    cont["a"] + cont["b_logN"] * math.log(d["N"]) + cont["c_logC"] * math.log(d["C_final"])
                )
            loss = (predictions.get(n) or {}).get("loss")
            if err_fit is not None and loss is not None and math.isfinite(loss):
                p["loss"] = loss
                p["err"] = float(err_fit.predict(loss))
                p[tm] = 1.0 - p["err"] if kind != "pass_until" else p.get(tm)
            if pu_fit is not None:
                p["pass_rate_law"] = float(pu_fit.predict(d["N"]))
            preds[n] = p
        res["predictions"] = preds
        out[task] = res
    return out
