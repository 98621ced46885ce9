"""The fitter's own W&B run: every run's predicted final loss (with its interval) and the sweep's laws,
logged each time a refit changes them.

One W&B run per sweep, ``job_type="fitter"``, in the sweep's group (the runs' ``metrics.wandb.group`` or
the sweep name), so the W&B sweep view shows the training runs and their predictions side by side. Keys:

* ``pred/<run>/loss``, ``pred/<run>/low``, ``pred/<run>/high``, ``pred/<run>/progress`` (steps seen /
  total steps), ``pred/<run>/observed`` (1 once the run is DONE and its final loss is observed);
* ``law/chinchilla/{E,A,B,alpha,beta}``, ``law/isoflop/{a,b}``, ``law/critical_batch/{B_star,alpha_B}``
  and ``law/n_points`` (fits that failed are left out of that row);
* x-axis ``fit/hours``: hours since the fitter first logged to this W&B run.

The W&B run id and its start time live in ``SWEEP_DIR/wandb_fitter.json``, so a restarted fitter (or the
sweep's last one-pass ``scaling-train fit``) continues the same W&B run.

The W&B settings come from the runs' own ``config.yaml`` (``metrics.wandb``, the first run that has W&B
on), unless ``scaling-train fit --wandb MODE`` says otherwise.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from scaling_train._io import atomic_write
from scaling_train.metrics.config import WandbConfig
from scaling_train.metrics.jsonl import finite_number

ID_FILE = "wandb_fitter.json"
LAW_KEYS = {
    "chinchilla": ("E", "A", "B", "alpha", "beta"),
    "isoflop": ("a", "b"),
    "critical_batch": ("B_star", "alpha_B"),
}


def settings_from_runs(configs: list[dict]) -> tuple[WandbConfig, str | None] | None:
    """The W&B settings and sweep name of the first run config (a parsed ``config.yaml``, as the fitter's
    tails hold it) that turns W&B on, else None."""
    for cfg in configs:
        w = ((cfg.get("metrics") or {}).get("wandb")) or {}
        if w.get("mode") in ("offline", "online"):
            known = {k: w[k] for k in ("mode", "project", "entity", "group", "tags") if k in w}
            return WandbConfig(**known), cfg.get("sweep")
    return None


class FitterWandb:
    def __init__(self, sweep_dir: str | Path, cfg: WandbConfig, *, sweep_name: str | None = None) -> None:
        import wandb

        self.sweep_dir = Path(sweep_dir)
        id_path = self.sweep_dir / ID_FILE
        try:
            saved = json.loads(id_path.read_text())
        except (OSError, ValueError):
            saved = {}
        self.run_id = saved.get("id") or secrets.token_hex(4)
        self.t0 = float(saved.get("t0") or time.time())
        atomic_write(id_path, json.dumps({"id": self.run_id, "t0": self.t0}))
        name = sweep_name or self.sweep_dir.name
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group or name, name=f"{name}-fitter",
            job_type="fitter", id=self.run_id, resume="allow", mode=cfg.mode, dir=str(self.sweep_dir),
            tags=[*cfg.tags, "fitter"], reinit="create_new",
        )  # fmt: skip
        self.run.define_metric("fit/hours")
        self.run.define_metric("*", step_metric="fit/hours")

    def payload(self, refit: set[str], predictions: dict[str, dict], law: dict | None) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in sorted(refit):
            p = predictions.get(name) or {}
            for k in ("loss", "low", "high"):
                v = finite_number(p.get(k))
                if v is not None:
                    out[f"pred/{name}/{k}"] = v
            step, total = finite_number(p.get("step")), finite_number(p.get("total_steps"))
            if step is not None and total:
                out[f"pred/{name}/progress"] = step / total
            out[f"pred/{name}/observed"] = 1.0 if p.get("status") == "done" else 0.0
        for law_name, keys in LAW_KEYS.items():
            fit = (law or {}).get(law_name) or {}
            if "error" in fit:
                continue
            for k in keys:
                v = finite_number(fit.get(k))
                if v is not None:
                    out[f"law/{law_name}/{k}"] = v
        if law is not None:
            out["law/n_points"] = float(len(law.get("points", [])))
        return out

    def log(self, refit: set[str], predictions: dict[str, dict], law: dict | None) -> None:
        data = self.payload(refit, predictions, law)
        if data:
            data["fit/hours"] = (time.time() - self.t0) / 3600
            self.run.log(data)

    def close(self) -> None:
        self.run.finish()
