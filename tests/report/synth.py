"""Synthetic sweep folders in the exact run-folder formats (config.yaml with ``resolved``, metrics.jsonl,
DONE, predictions.json, plan.json, samples.jsonl), drawn from known laws so fits can be checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from scaling_train.train.schedule import OptimConfig, lr_array

# L(N, D) = E + A / N**alpha + B / D**beta: the law the final losses follow
TRUE = {"E": 1.8, "A": 60.0, "B": 120.0, "alpha": 0.34, "beta": 0.30}
B_STAR, ALPHA_B = 2.0e5, 0.5  # B_crit(L) = B_STAR / L**(1/ALPHA_B) (tokens)
TOKENS_PER_STEP = 16 * 64  # = 1,024


def law(N, D):
    t = TRUE
    return t["E"] + t["A"] / np.asarray(N, float) ** t["alpha"] + t["B"] / np.asarray(D, float) ** t["beta"]


def run_name(N: float, D: float) -> str:
    coords = f"N{N:.1e}-D{D:.1e}".replace("+", "").replace("e0", "e")
    return f"{coords}-B16-lr3e-3-s0-{abs(hash((N, D))) % 16**8:08x}"


def write_run(
    sweep: Path,
    N: float,
    D: float,
    *,
    status: str = "done",
    fraction: float = 1.0,
    samples: bool = False,
    evals: bool = False,
    tasks: bool = False,
    log_every: int | None = None,
    seed: int = 0,
) -> Path:
    """One run folder whose loss follows L(N, tokens seen) with a cosine-schedule anneal and noise.
    ``status``: done | partial (rows up to ``fraction``) | diverged (nan from the middle)."""
    rng = np.random.default_rng(seed + int(N) % 1000 + int(D) % 997)
    T = max(int(round(D / TOKENS_PER_STEP)), 20)
    D = T * TOKENS_PER_STEP
    log_every = log_every or max(T // 100, 1)  # ~100 rows per run
    name = run_name(N, D)
    d = sweep / name
    d.mkdir(parents=True, exist_ok=True)
    optim = {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 3, "min_lr_ratio": 0.1}
    fpt = 6 * N + 12 * 4 * 64 * 64  # attention-ish extra, so FLOPs != 6 N D
    cfg = {
        "run_dir": str(d),
        "model": {"size": f"{N:g}", "seq_len": 64},
        "optim": optim,
        "train": {"batch_size": 16, "max_steps": T},
        "config_hash": name[-8:],
        "resolved": {
            "params": {"non_embedding": N, "embedding": 1024 * 64, "total": N + 1024 * 64},
            "flops_per_token": fpt,
            "tokens_per_step": TOKENS_PER_STEP,
            "total_steps": T,
            "total_tokens": D,
            "micro_batch_size": 8,
            "grad_accum": 2,
            "world_size": 1,
        },
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    lr = lr_array(OptimConfig(**optim), T)
    final = float(law(N, D))
    rows = []
    last = T if status == "done" else max(int(T * fraction), 1)
    for s in range(1, last + 1):
        if s % log_every and s != T:
            continue
        tok = s * TOKENS_PER_STEP
        # loss at tokens seen plus an annealing bonus that vanishes at the end (so final == law(N, D))
        loss = float(law(N, tok)) + 0.15 * (lr[s - 1] / lr.max()) * (1 - s / T) + rng.normal(0, 0.004)
        if s == T:
            loss = final
        row = {
            "step": s,
            "tokens": tok,
            "flops": tok * fpt,
            "loss": loss,
            "lr": float(lr[s - 1]),
            "grad_norm": 1.0,
        }
        if s > 1:
            row["gns_b_simple"] = B_STAR / loss ** (1 / ALPHA_B) * float(np.exp(rng.normal(0, 0.05)))
            row["tok_nll_hist"] = list(np.diff(np.exp(-np.linspace(0, 4, 33) / max(loss, 0.1)) * -1))
        if tasks and ((s // log_every) % 10 == 0 or s == T):
            row.update(task_metrics(N, loss, s / T, rng))
        if status == "diverged" and s > last // 2:
            row["loss"] = math.nan
        rows.append(row)
    with open(d / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(
                json.dumps(
                    {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                )
                + "\n"
            )
    if status == "done":
        (d / "DONE").write_text(json.dumps({"steps": T, "tokens": D, "final_loss": final}))
        pred = {
            "run": name,
            "status": "done",
            "loss": final,
            "low": final,
            "high": final,
            "step": T,
            "total_steps": T,
        }
    elif status == "partial":
        pred = {
            "run": name, "status": "running", "loss": final * 1.01, "low": final * 0.98, "high": final * 1.04,
            "step": rows[-1]["step"], "total_steps": T, "n_used": len(rows), "extrapolation": 0.5,
        }  # fmt: skip
        # the fitter's predicted remaining curve with its band (opening from the last observed step)
        cs = [rows[-1]["step"] + (T - rows[-1]["step"]) * k / 7 for k in range(8)]
        cl = [rows[-1]["loss"] + (pred["loss"] - rows[-1]["loss"]) * k / 7 for k in range(8)]
        pred["curve"] = {
            "step": cs, "loss": cl, "low": [v - (pred["loss"] - pred["low"]) * k / 7 for k, v in enumerate(cl)],
            "high": [v + (pred["high"] - pred["loss"]) * k / 7 for k, v in enumerate(cl)],
        }  # fmt: skip
    else:
        pred = {"run": name, "status": "diverged", "loss": None, "low": None, "high": None}
    (d / "predictions.json").write_text(json.dumps(pred))
    if samples:
        with open(d / "samples.jsonl", "w") as f:
            for i in range(200):
                tok = int(rng.integers(20, 64))
                nll = tok * final * float(np.exp(rng.normal(0, 0.2)))
                f.write(
                    json.dumps({"sample": i, "tokens": tok, "nll_sum": nll, "loglik": -nll, "step": T}) + "\n"
                )
    if evals:  # scaling_train/evals format: one line per (step, task); a resumed step written twice
        with open(d / "evals.jsonl", "w") as f:
            for step in (T // 2, T, T):
                cloze = [{"id": f"c{i}", "loglik": -3.0 * final * (1 + 0.1 * i % 3), "tokens": 3, "correct_tokens": 1,
                          "exact_match": False} for i in range(40)]  # fmt: skip
                mc = [{"id": f"m{i}", "answer": i % 4, "loglik": [-final * (k + 1) for k in range(4)],
                       "tokens": [2, 2, 2, 2]} for i in range(30)]  # fmt: skip
                f.write(
                    json.dumps(
                        {"step": step, "task": "cloze_x", "kind": "cloze", "metrics": {}, "records": cloze}
                    )
                    + "\n"
                )
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "task": "mc_y",
                            "kind": "multiple_choice",
                            "metrics": {},
                            "records": mc,
                        }
                    )
                    + "\n"
                )
    return d


# downstream tasks (scaling_train/evals row scalars): accuracy follows 1 - Err(L) with Err(L) = eps - k exp(-gamma L)
TASK_ERR = {"eps": 0.75, "k": 3.0, "gamma": 0.5}
PASS_UNTIL = {"c": 5.1, "alpha": 0.32}  # final pass rate P(N) = exp(-exp(c) N**-alpha)
PASS_ATTEMPTS = 4000


def task_metrics(N: float, loss: float, frac: float, rng) -> dict[str, float]:
    """``task/<name>/<metric>`` scalars of one eval row: ``next_line`` (multiple choice) from the loss,
    ``compiles`` (PassUntil) from N and the fraction of training done (the law's value at the end)."""
    t = TASK_ERR
    acc = 1 - (t["eps"] - t["k"] * math.exp(-t["gamma"] * loss))
    acc = min(max(acc + float(rng.normal(0, 0.005)), 0.0), 1.0)
    p = math.exp(-math.exp(PASS_UNTIL["c"]) * N ** -PASS_UNTIL["alpha"] * (1 + 1.5 * (1 - frac)))
    passes = max(int(round(p * PASS_ATTEMPTS)), 1)
    pr = passes / PASS_ATTEMPTS
    half = 1.96 * math.sqrt(pr * (1 - pr) / PASS_ATTEMPTS)
    return {
        "task/next_line/acc": acc,
        "task/next_line/p_correct": max(acc - 0.05, 0.0),
        "task/next_line/n_items": 100,
        "task/compiles/pass_rate": pr,
        "task/compiles/pass_rate_low": max(pr - half, pr / 5),
        "task/compiles/pass_rate_high": pr + half,
        "task/compiles/passes": passes,
        "task/compiles/attempts": PASS_ATTEMPTS,
        "task/compiles/solved": 1.0,
    }


def fit_tasks(sweep: Path) -> dict:
    """Run the real fitter's task laws (scaling_train/fitter/tasks.py) on the sweep's run folders and merge
    them into ``sweep_law.json["tasks"]``; returns that section."""
    from types import SimpleNamespace

    from scaling_train.fitter.tasks import fit_task_laws

    tails, preds = {}, {}
    for cfg_path in sorted(sweep.glob("*/config.yaml")):
        d = cfg_path.parent
        res = yaml.safe_load(cfg_path.read_text())["resolved"]
        tails[d.name] = SimpleNamespace(
            run_dir=d, n_params=res["params"]["non_embedding"], total_tokens=res["total_tokens"], resolved=res,
            done=(d / "DONE").is_file(), diverged_at=None,
        )  # fmt: skip
        if (d / "predictions.json").is_file():
            preds[d.name] = json.loads((d / "predictions.json").read_text())
    out = fit_task_laws(tails, preds)
    path = sweep / "sweep_law.json"
    law = json.loads(path.read_text()) if path.is_file() else {}
    law["tasks"] = out
    path.write_text(json.dumps(law))
    return out


def isoflop_grid() -> list[tuple[float, float, float]]:
    """(N, D, C) for 3 FLOP budgets x 5 sizes around each budget's optimum (so each parabola has a minimum)."""
    out = []
    for C in (2e11, 6e11, 2e12):
        for N in np.geomspace(2e4, 6e5, 5):
            out.append((float(N), C / (6 * N), C))
    return out


def write_sweep(
    sweep: Path, *, runs: list[dict] | None = None, plan_extra: list[str] = (), tasks: bool = False
) -> Path:
    """A sweep folder with plan.json; ``runs`` are write_run kwargs (default: the full IsoFLOP grid, done).
    ``tasks``: every run logs task metrics and sweep_law.json gets the fitter's task laws."""
    sweep.mkdir(parents=True, exist_ok=True)
    if runs is None:
        runs = [{"N": N, "D": D, "samples": i < 5} for i, (N, D, _) in enumerate(isoflop_grid())]
    plan = []
    for kw in runs:
        d = write_run(sweep, **({"tasks": True} if tasks else {}), **kw)
        res = yaml.safe_load((d / "config.yaml").read_text())["resolved"]
        plan.append(
            {"name": d.name, "n_params": kw["N"], "tokens": res["total_tokens"], "steps": res["total_steps"],
             "flops": 6 * kw["N"] * res["total_tokens"], "run_dir": str(d)}
        )  # fmt: skip
    for name in plan_extra:  # planned, never started
        plan.append({"name": name, "n_params": 1e6, "tokens": 1e6, "steps": 100, "flops": 6e12})
    (sweep / "plan.json").write_text(json.dumps({"sweep": sweep.name, "runs": plan}))
    if tasks:
        fit_tasks(sweep)
    return sweep


def task_sweep(sweep: Path) -> Path:
    """Four sizes on one token budget with task metrics; the two largest still training (predicted)."""
    runs = [
        {"N": 2e4, "D": 1e6}, {"N": 6e4, "D": 1e6},
        {"N": 2e5, "D": 1e6, "status": "partial", "fraction": 0.5},
        {"N": 6e5, "D": 1e6, "status": "partial", "fraction": 0.3},
    ]  # fmt: skip
    return write_sweep(sweep, runs=runs, tasks=True)
