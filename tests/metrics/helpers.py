"""Tiny, CPU-sized runs of our trainer shared by the metrics / fitter tests (data cached after the first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scaling_train import config as config_mod
from scaling_train.train import RunConfig, Trainer

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "model.size=0.2M", "model.seq_len=64", "data.max_bytes=2000000", "data.vocab_size=1024",
    "data.val_fraction=0.1", "threads=1", "train.batch_size=8", "train.micro_batch_size=4",
    "train.log_every=4", "train.eval_every=12", "train.eval_batches=2", "train.progress=false",
    "optim.warmup_steps=4",
]  # fmt: skip


def overrides(run_dir: Path, *, max_steps: int, sweep: str | None = None, **kw: object) -> list[str]:
    out = TINY + [
        f"run_dir={run_dir}",
        f"train.max_steps={max_steps}",
        f"train.ckpt_every={kw.pop('ckpt_every', 0)}",
    ]
    if sweep:
        out.append(f"sweep={sweep}")
    out += [f"{k}={v}" for k, v in kw.items()]
    return out


def run_config(run_dir: Path, *, max_steps: int, sweep: str | None = None, **kw: object) -> RunConfig:
    return config_mod.load(RunConfig, None, overrides(run_dir, max_steps=max_steps, sweep=sweep, **kw))


def train(cfg: RunConfig, **kw):
    return Trainer(cfg, log=lambda s: None, **kw).run()


def cli(*args: str, **popen_kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "scaling_train.cli", *args], cwd=REPO, env=env, **popen_kw)


def fresh_offline_wandb(monkeypatch, wandb_dir: Path) -> None:
    """W&B offline, writing under ``wandb_dir``. W&B reads its settings (WANDB_DIR included) once per
    process, so an earlier test's setup is torn down first; without this the run lands in the cwd."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()


def wandb_history(wandb_file: Path) -> list[dict]:
    """The history rows of an offline W&B run file (read with wandb's own protobuf records)."""
    import json

    from scaling_train.metrics.wandb_sink import read_wandb_records

    rows = []
    for r in read_wandb_records(wandb_file):
        if r.WhichOneof("record_type") == "history":
            rows.append(
                {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in r.history.item}
            )
    return rows
