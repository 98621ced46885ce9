"""Incremental readers of run folders: each poll reads only the bytes appended since the last one.

A ``RunTail`` remembers its byte offset and a signature of the last line it read; if the file shrank
or the bytes before the offset changed (a resumed run rolled ``metrics.jsonl`` back and wrote past the
old offset again), it starts that file over. Rows are keyed by step, so a re-read never duplicates.
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
    METRICS,
    STOPPED,
    find_runs,  # noqa: F401 - re-exported: sweep.adaptive, older callers
    rows_by_step,
)

SIG_BYTES = 64
"""Bytes before the offset remembered to detect a rewritten file (the tail of the last line read)."""

KEEP = ("tokens", "loss", "eval_loss", "gns_b_simple", "gns_g2", "gns_trace_sigma", "lr")
"""Row fields the fitter keeps (compact: rows of a long run stay small in memory and in the state file)."""
KEEP_PREFIX = ("epochs/",)
"""Row fields kept by prefix: ``epochs/<pool>`` of a run on data pools (the pool law's epochs per pool)."""


@dataclass
class RunTail:
    run_dir: Path
    offset: int = 0
    sig: str = ""
    rows: dict[int, dict[str, float]] = field(default_factory=dict)
    malformed: int = 0
    diverged_at: int | None = None
    config: dict[str, Any] | None = None
    done: bool = False
    stopped: bool = False
    """Stopped early by the adaptive policy (``STOPPED`` present, no ``DONE``): resumable, not finished."""
    version: int = 0
    """Bumped whenever the rows change."""
    law_version: int = 0
    """Bumped whenever what a prediction reads changes: a new point of ``law_column``, the config, ``DONE``,
    ``STOPPED``, a roll-back or the divergence step. A run whose law loss is the validation loss (16 points per
    run) appends training rows far more often than points; the fitter refits only on this one, so its poll
    can be frequent and each prediction is made as soon as a point lands."""

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def path(self) -> Path:
        return self.run_dir / METRICS

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "sig": self.sig,
            "malformed": self.malformed,
            "rows": [[s, r] for s, r in sorted(self.rows.items())],
        }

    def load_state(self, d: dict[str, Any]) -> None:
        self.offset, self.sig, self.malformed = int(d["offset"]), str(d["sig"]), int(d.get("malformed", 0))
        self.rows = {int(s): {k: x for k, v in r.items() if (x := _num(v)) is not None} for s, r in d["rows"]}
        self._update_diverged()
        self.version += 1
        self.law_version += 1

    # ------------------------------------------------------------ polling
    def _signature_ok(self) -> bool:
        if self.offset == 0:
            return True
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                if size < self.offset:
                    return False
                n = min(SIG_BYTES, self.offset)
                f.seek(self.offset - n)
                return f.read(n).hex() == self.sig
        except FileNotFoundError:
            return False

    def poll(self) -> bool:
        """Read what was appended; returns True when the rows changed."""
        changed = False
        if self.config is None and (self.run_dir / CONFIG).is_file():
            try:
                self.config = yaml.safe_load((self.run_dir / CONFIG).read_text()) or {}
                changed = True
            except (OSError, yaml.YAMLError):
                self.config = None  # being written; next poll
        if not self.done and (self.run_dir / DONE).is_file():
            self.done, changed = True, True
        stopped = not self.done and (self.run_dir / STOPPED).is_file()
        if stopped != self.stopped:  # stopped, or resumed to the end (STOPPED archived)
            self.stopped, changed = stopped, True
            self.version += 1
            self.law_version += 1
        if not self.path.is_file():
            return changed
        if not self._signature_ok():  # rolled back: start over
            self.offset, self.sig, self.rows, self.malformed = 0, "", {}, 0
            changed = True
        res = read_jsonl(self.path, self.offset)
        self.malformed += res.malformed
        if res.offset != self.offset:
            with open(self.path, "rb") as f:
                n = min(SIG_BYTES, res.offset)
                f.seek(res.offset - n)
                self.sig = f.read(n).hex()
            self.offset = res.offset
        new = [r for r in res.rows if "step" in r and "loss" in r]
        # a rolled-back run rewrites steps it had written: later rows replace earlier ones (run_folder.put_row)
        rows_by_step(new, keep=_compact, into=self.rows)
        law_changed = changed or any(self.law_column in r for r in new)
        changed = changed or bool(new)
        if changed:
            diverged = self.diverged_at
            self._update_diverged()
            self.version += 1
            if law_changed or self.diverged_at != diverged:
                self.law_version += 1
        return changed

    def _update_diverged(self) -> None:
        self.diverged_at = None
        for s, r in sorted(self.rows.items()):
            if not math.isfinite(r.get("loss", math.nan)):
                self.diverged_at = s
                break

    # ------------------------------------------------------------ views
    @property
    def resolved(self) -> dict[str, Any]:
        return (self.config or {}).get("resolved") or {}

    @property
    def total_steps(self) -> int | None:
        t = self.resolved.get("total_steps")
        return int(t) if t else None

    @property
    def n_params(self) -> float | None:
        p = self.resolved.get("params") or {}
        return float(p["non_embedding"]) if "non_embedding" in p else None

    @property
    def total_tokens(self) -> float | None:
        t = self.resolved.get("total_tokens")
        return float(t) if t else None

    @property
    def batch_tokens(self) -> float | None:
        t = self.resolved.get("tokens_per_step")
        return float(t) if t else None

    @property
    def unique_tokens(self) -> float | None:
        """Tokens of one epoch of the training split (written by the trainer; None for older runs). None for a
        run on data pools too: its pools repeat at their own rates (``resolved.pools``), so one U would mislead
        the data-constrained law (the pools' law is ``laws.fit_data_pools``)."""
        if self.resolved.get("pools"):
            return None
        u = self.resolved.get("unique_tokens")
        return float(u) if u else None

    def planned_lr(self) -> np.ndarray | None:
        """The run's planned LR per step: ``RUN/lr_schedule.json`` (written by the trainer and the
        integrations); a run folder from before the trainer wrote it is rebuilt from ``config.yaml``'s ``optim``
        (``scaling_train.schedule``, pure numpy: no training code is imported). None when neither gives one
        of ``total_steps`` entries."""
        from scaling_train.config import from_dict
        from scaling_train.schedule import OptimConfig, lr_array, read_lr_schedule

        cfg, T = self.config or {}, self.total_steps
        if not T:
            return None
        lr = read_lr_schedule(self.run_dir)
        if lr is not None:
            return lr if len(lr) == T else None
        if "optim" not in cfg:
            return None
        return lr_array(from_dict(OptimConfig, cfg["optim"], source=str(self.run_dir / CONFIG)), T)

    @property
    def law_column(self) -> str:
        """The metrics column of this run's loss (``metrics.config.law_column``)."""
        return law_column(self.config)

    def loss_points(self, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps, losses in ``law_column``) of the rows within the schedule's ``total_steps`` that have one,
        ascending: a ``laws.Curve``'s points (NaN where a row's loss is not a finite number)."""
        col = self.law_column
        steps = np.array(
            sorted(s for s in self.rows if 1 <= s <= total_steps and col in self.rows[s]), dtype=np.float64
        )
        return steps, np.array([self.rows[int(s)].get(col, math.nan) for s in steps])

    def last_law_loss(self) -> float | None:
        """The newest value of ``law_column`` (the final loss of a finished run), or None."""
        col = self.law_column
        return next((self.rows[s][col] for s in sorted(self.rows, reverse=True) if col in self.rows[s]), None)

    @property
    def last_step(self) -> int:
        return max(self.rows) if self.rows else 0


def _compact(row: dict[str, Any]) -> dict[str, float]:
    """The fields of a metrics row the fitter keeps (``KEEP``, ``KEEP_PREFIX``), as numbers."""
    return {
        k: x
        for k, v in row.items()
        if (k in KEEP or k.startswith(KEEP_PREFIX)) and (x := _num(v)) is not None
    }


def _num(v: Any) -> float | None:
    """A number of a row, or None. JSON holds NaN / inf as the strings "nan", "inf", "-inf" (metrics.jsonl and
    the fitter's own state file): those are numbers too (a restarted fitter crashed on a "nan" noise scale)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("nan", "inf", "-inf"):
        return float(v)
    return None


_PLAN_CACHE: dict[Path, tuple[tuple[int, int], list[dict[str, Any]]]] = {}  # path -> ((mtime_ns, size), runs)


def plan_runs(sweep_dir: Path | None) -> list[dict[str, Any]]:
    """``SWEEP_DIR/plan.json``'s runs as written by the sweep; [] without a readable plan (a sweep run by hand
    has none). The one reader of the plan for the fitter's modules; the file is parsed again only when its
    mtime or size changed (the fitter asks several times per poll). The run dicts are shared: read only."""
    if sweep_dir is None:
        return []
    path = Path(sweep_dir) / "plan.json"
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        hit = _PLAN_CACHE.get(path)
        if hit is not None and hit[0] == stamp:
            return list(hit[1])
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    runs = [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
    _PLAN_CACHE[path] = (stamp, runs)
    return list(runs)
