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
    return Curve(steps, losses, lr, f"{cd.run}@{cd.end_step}")
