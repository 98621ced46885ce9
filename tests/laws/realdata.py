"""Loaders for the real curves in tests/data/laws (shared by tests/laws and benchmarks/bench_laws.py)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling_train.laws import Curve, schedule_from_samples

DATA = Path(__file__).resolve().parents[1] / "data" / "laws"
MP_REFERENCES = ("cosine_24000", "constant_24000", "wsdcon_9")
MP_TARGETS = (
    "constant_72000",
    "cosine_72000",
    "wsd_20000_24000",
    "wsdld_20000_24000",
    "wsdcon_3",
    "wsdcon_18",
)


def multipower_curve(name: str) -> Curve:
    """One multipower_25m run as a Curve. T = the last logged step; the per-step schedule is the logged
    LR interpolated linearly between rows, with a linear warmup from 0 before the first row."""
    a = np.loadtxt(DATA / "multipower_25m" / f"{name}.csv", delimiter=",", skiprows=1)  # (rows, 3)
    total = int(a[-1, 0])
    return Curve(a[:, 0], a[:, 2], schedule_from_samples(a[:, 0], a[:, 1], total_steps=total), name)


@dataclass(frozen=True)
class Cooldown:
    run: str
    N: float
    tokens_end: float
    begin_step: int
    end_step: int
    loss_begin: float
    loss_end: float


def gemstone_cooldowns() -> list[Cooldown]:
    begin = [json.loads(x) for x in (DATA / "gemstone" / "wandb_df_for_fitting_cool_begin.jsonl").open()]
    end = [json.loads(x) for x in (DATA / "gemstone" / "wandb_df_for_fitting_cool_end.jsonl").open()]
    out = []
    for b, e in zip(begin, end):
        assert b["run_name"] == e["run_name"] and e["step"] > b["step"]
        out.append(
            Cooldown(b["run_name"], float(b["params_active_precise"]), float(e["tokens"]), int(b["step"]),
                     int(e["step"]), float(b["final_loss"]), float(e["final_loss"]))
        )  # fmt: skip
    return out


def gemstone_hot() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """run -> (steps, losses) of the constant-LR curve (every second logged point)."""
    acc: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with (DATA / "gemstone" / "hot_every2.csv").open() as f:
        for row in csv.DictReader(f):
            acc[row["run_name"]].append((int(row["step"]), float(row["final_loss"])))
    return {k: (np.array([s for s, _ in v], float), np.array([y for _, y in v])) for k, v in acc.items()}


def cooldown_curve(
    cd: Cooldown, hot: dict[str, tuple[np.ndarray, np.ndarray]], *, observed_end: bool
) -> Curve:
    """The run's constant-LR curve up to the cooldown start, then a linear decay to 0 at the end step
    (assumed cooldown shape: Gemstone cools down linearly over the last ~10% of steps). ``observed_end``
    appends the measured end loss (a finished reference) instead of leaving the cooldown unobserved."""
    s, y = hot[cd.run]
    keep = s < cd.begin_step
    steps = np.r_[s[keep], cd.begin_step]
    losses = np.r_[y[keep], cd.loss_begin]
    if observed_end:
        steps, losses = np.r_[steps, cd.end_step], np.r_[losses, cd.loss_end]
    lr = np.ones(cd.end_step)
    n_cool = cd.end_step - cd.begin_step
    lr[cd.begin_step :] = 1.0 - np.arange(1, n_cool + 1) / n_cool  # ends at 0 at step T
    lr[-1] = max(lr[-1], 1e-3)  # keep the last step's LR positive
    # Gemstone's LR is not in the data: a normalised schedule
    return Curve(steps, losses, lr, f"{cd.run}@{cd.end_step}", lr_absolute=False)


# --------------------------------------------------------------------------------------------------
# lr_schedules: 214 WSD / cosine / constant runs, 33M-360M (Schaipp, Haegele et al. 2025)

LRS = DATA / "lr_schedules"


@dataclass(frozen=True, eq=False)
class LRRun:
    """One run of tests/data/laws/lr_schedules. ``start`` > 0 for a cooldown branch (its rows begin at the
    branch step; ``parent`` names the constant-LR run it branched from, '' if none was found). ``lr`` is the
    full planned per-step schedule (length ``iterations``): linear warmup to the peak, the peak held up to
    the first logged LR, then the logged LRs (every 50 steps) interpolated."""

    name: str
    params: float
    dataset: str
    family: str  # const | wsd | cos | twostage
    decay: str  # linear | sqrt | '' (the code's default: linear)
    fract: float  # cooldown fraction (wsd)
    peak: float
    iterations: int
    tokens_per_step: int  # 50 sequences x acc x world x 512 tokens
    start: int
    lr: np.ndarray
    train: tuple[np.ndarray, np.ndarray]  # (steps, losses)
    val: tuple[np.ndarray, np.ndarray]
    parent: str = ""

    @property
    def group(self) -> str:
        return f"{self.params / 1e6:.0f}M/{self.dataset}/{self.family}"


def _lr_family(row: dict) -> str:
    if row["scheduler"] == "wsd_twostage":
        return "twostage"
    if row["scheduler"] == "cos":
        return "cos"
    return "const" if float(row["wsd_fract_decay"] or 0) == 0 else "wsd"


def _dedup(a: np.ndarray) -> np.ndarray:
    """Rows of (step, value) with a repeated step (a few logs repeat one) keep the last value."""
    _, last = np.unique(a[::-1, 0], return_index=True)
    return a[::-1][last]


def lr_schedule_runs() -> dict[str, LRRun]:
    """Every lr_schedules run by name (run000..run213), parents of cooldown branches resolved."""
    runs: dict[str, LRRun] = {}
    with (LRS / "index.csv").open() as f:
        index = list(csv.DictReader(f))
    for row in index:
        cols: dict[str, list[tuple[int, float]]] = {"lr": [], "train_loss": [], "val_loss": []}
        with (LRS / "runs" / f"{row['run']}.csv").open() as f:
            for r in csv.DictReader(f):
                for k in cols:
                    if r[k] != "" and int(r["step"]) >= 1:
                        cols[k].append((int(r["step"]), float(r[k])))
        T, peak, warm = int(row["iterations"]), float(row["lr"]), int(row["warmup_steps"])
        ls = np.array([s for s, _ in cols["lr"]], float)
        lv = np.array([v for _, v in cols["lr"]])
        t = np.arange(1, T + 1, dtype=np.float64)
        lr = np.interp(t, ls, lv)
        pre = t < ls[0]
        lr[pre] = peak * np.minimum(t[pre] / warm, 1.0)  # warmup, then the peak up to the first logged LR
        lr = np.maximum(lr, 1e-6 * peak)  # the last step's LR is 0: keep it positive
        tr = np.array(cols["train_loss"]).reshape(-1, 2)
        va = np.array(cols["val_loss"]).reshape(-1, 2)
        tr, va = _dedup(tr[tr[:, 0] <= T]), _dedup(va[va[:, 0] <= T])
        runs[row["run"]] = LRRun(
            row["run"], float(row["params"]), row["dataset"], _lr_family(row), row["decay_type"],
            float(row["wsd_fract_decay"] or 0), peak, T,
            int(row["batch_size"]) * int(row["acc_steps"]) * int(row["world_size"]) * int(row["seq_len"]),
            int(ls[0]) - 50 if ls[0] > 100 else 0, lr, (tr[:, 0], tr[:, 1]), (va[:, 0], va[:, 1]),
        )  # fmt: skip
    # parents: a run from step 0 of the same size, peak, data and batch whose LR is still at the peak at the
    # branch step (a constant run, or a longer-horizon WSD run); the longest-horizon one when several
    for name, r in list(runs.items()):
        if r.start == 0:
            continue
        cands = [
            p for p in runs.values()
            if p.start == 0 and p.params == r.params and p.peak == r.peak and p.dataset == r.dataset
            and p.tokens_per_step == r.tokens_per_step and p.iterations >= r.start
            and np.all(p.lr[r.start // 2 : r.start] >= 0.999 * p.peak)
        ]  # fmt: skip
        if cands:
            best = max(cands, key=lambda p: (p.family == "const", p.iterations))
            runs[name] = LRRun(**{**r.__dict__, "parent": best.name})
    return runs


def ladder_runs(runs: dict[str, LRRun]) -> list[LRRun]:
    """The scaling ladder of lr_schedules: SlimPajama runs of the index's default decay (33M-360M, several
    horizons per size, cosine / WSD / constant), from step 0 or branched from a known parent."""
    return [
        r for r in runs.values()
        if r.decay == "" and r.dataset == "slimpajama" and (r.start == 0 or r.parent)
    ]  # fmt: skip


def lr_full_curve(run: LRRun, runs: dict[str, LRRun], kind: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of ``run`` from step 1: a branch's rows after its parent's rows before the branch."""
    s, y = getattr(run, kind)
    if run.start == 0:
        return s, y
    if not run.parent:
        raise ValueError(f"branch {run.name} has no parent run")
    ps, py = getattr(runs[run.parent], kind)
    keep = ps < s[0]
    return np.r_[ps[keep], s], np.r_[py[keep], y]
