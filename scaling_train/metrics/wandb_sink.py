"""W&B sink of the ``MetricsStream`` (offline or online).

* ``define_metric``: every metric is plotted against ``tokens``; ``flops/*`` copies of the losses against
  ``flops`` (W&B allows one x-axis per metric, so the FLOPs view gets its own keys).
* group = the sweep name, name = the run folder's name.
* The W&B run id is stored in ``RUN_DIR/wandb_run.json``; a resumed run reopens the same W&B run
  (``resume="allow"``) and skips rows up to the last step it had already logged, so a rollback to a
  checkpoint does not plot the same steps twice.
* The final-loss prediction the fitter writes to ``RUN_DIR/predictions.json`` is logged (``pred/*``)
  whenever it changes.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from scaling_train._io import atomic_write
from scaling_train.metrics.config import WandbConfig
from scaling_train.run_folder import PREDICTIONS, WANDB_RUN

ID_FILE = WANDB_RUN  # RUN/wandb_run.json
FLOPS_KEYS = ("loss", "eval_loss")


class WandbSink:
    def __init__(
        self, run_dir: str | Path, cfg: WandbConfig, *, sweep: str | None = None, config: dict | None = None,
        name: str | None = None,
    ) -> None:  # fmt: skip
        import wandb

        self.run_dir = Path(run_dir)
        id_path = self.run_dir / ID_FILE
        saved = json.loads(id_path.read_text()) if id_path.is_file() else {}
        run_id = saved.get("id") or secrets.token_hex(4)  # 8 hex chars, a valid W&B id
        self.skip_until = int(saved.get("logged_step", 0))
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group or sweep, name=name or self.run_dir.name,
            id=run_id, resume="allow", mode=cfg.mode, dir=str(self.run_dir), config=config, tags=list(cfg.tags),
            reinit="create_new",
        )  # fmt: skip
        self._save_id(run_id, self.skip_until)
        self.run_id = run_id
        self.run.define_metric("tokens")
        self.run.define_metric("flops")
        self.run.define_metric("*", step_metric="tokens")
        self.run.define_metric("flops/*", step_metric="flops")
        self._pred_mtime = 0.0

    def _save_id(self, run_id: str, logged_step: int) -> None:
        p = self.run_dir / ID_FILE
        atomic_write(p, json.dumps({"id": run_id, "logged_step": logged_step}))

    def _payload(self, row: dict[str, Any]) -> dict[str, Any]:
        out = row_payload(row)
        for k in FLOPS_KEYS:
            if k in out:
                out[f"flops/{k}"] = out[k]
        return out

    def log(self, rows: list[dict[str, Any]]) -> None:
        last = self.skip_until
        for row in rows:
            step = int(row.get("step", 0))
            if step <= self.skip_until:
                continue  # already logged before a rollback/resume
            self.run.log(self._payload(row))
            last = max(last, step)
        self._log_prediction()
        if last > self.skip_until:
            self.skip_until = last
            self._save_id(self.run_id, last)

    def _log_prediction(self) -> None:
        vals, self._pred_mtime = new_prediction(self.run_dir, self._pred_mtime)
        if vals and self.run.summary.get("tokens") is not None:
            self.run.log({**vals, "tokens": self.run.summary.get("tokens")})

    def rollback(self, *, kept_step: int, logged_step: int) -> None:
        self.skip_until = max(self.skip_until, logged_step)

    def close(self) -> None:
        self.run.finish()


def row_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a metrics row as W&B keys: lists become ``tok_nll_pos/<i>``; the NLL histogram stays
    in metrics.jsonl (a W&B histogram per flush is heavy)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "tok_nll_by_pos" and isinstance(v, list):
            out.update({f"tok_nll_pos/{i}": x for i, x in enumerate(v) if x is not None})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out


def new_prediction(run_dir: Path, last_mtime: float) -> tuple[dict[str, float], float]:
    """``pred/{loss,low,high}`` of ``RUN_DIR/predictions.json`` if it changed since ``last_mtime``, with
    ``pred/width`` ((high - low) / loss) and, in an adaptive sweep, ``pred/stop`` (1 once the policy stops it)."""
    p = run_dir / PREDICTIONS
    try:
        m = p.stat().st_mtime
        if m == last_mtime:
            return {}, last_mtime
        pred = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}, last_mtime
    if not isinstance(pred.get("step"), int):
        return {}, m
    out = {f"pred/{k}": pred[k] for k in ("loss", "low", "high") if isinstance(pred.get(k), (int, float))}
    if len(out) == 3 and out["pred/loss"] > 0:  # what an adaptive policy stops on (its tolerance is relative)
        out["pred/width"] = (out["pred/high"] - out["pred/low"]) / out["pred/loss"]
    decision = pred.get("adaptive")
    if isinstance(decision, dict) and isinstance(decision.get("stop"), bool):
        out["pred/stop"] = 1.0 if decision["stop"] else 0.0
    return out, m


class WandbMirror:
    """Sink onto a W&B run that another logger opened (transformers' ``WandbCallback``): each row under
    ``prefix`` with ``step_key`` set to the row's step, so it shares that run's x-axis (``step_key=None``:
    W&B's own step = the row's step, as accelerate's W&B tracker logs); the prediction as
    ``<prefix>pred/*``. The run is not ours: ``close`` leaves it open."""

    def __init__(
        self,
        run: Any,
        run_dir: str | Path,
        *,
        prefix: str = "scaling/",
        step_key: str | None = "train/global_step",
    ) -> None:
        self.run, self.run_dir, self.prefix, self.step_key = run, Path(run_dir), prefix, step_key
        self._pred_mtime = 0.0

    def log(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if "step" not in row:
                continue
            data = {self.prefix + k: v for k, v in row_payload(row).items() if k != "step"}
            vals, self._pred_mtime = new_prediction(self.run_dir, self._pred_mtime)
            data.update({self.prefix + k: v for k, v in vals.items()})
            if self.step_key is None:
                self.run.log(data, step=int(row["step"]))
            else:
                self.run.log({**data, self.step_key: row["step"]})

    def rollback(self, *, kept_step: int, logged_step: int) -> None:
        pass  # resumed: the steps after the checkpoint are logged again, as the other logger does

    def close(self) -> None:
        pass


def active_wandb_run() -> Any:
    """The W&B run another logger opened in this process, or None (W&B is not imported for this)."""
    import sys

    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def read_wandb_records(path: str | Path) -> list[Any]:
    """Decode a W&B transaction log (``run-<id>.wandb``) into ``wandb.proto.wandb_internal_pb2.Record``s.

    The file is a LevelDB-style log (7-byte header ``:W&B`` + magic + version, then 32 KiB blocks of
    records with a 7-byte header: crc32c, length u16, type FULL/FIRST/MIDDLE/LAST); the payloads are
    W&B's own protobuf records. wandb >= 0.2x keeps its reader in the Go core, so this is the Python side.
    A file still being written (read while W&B's core flushes it) ends in a partial record: the records before
    it are returned, never a half-read one (a truncated payload failed to parse: "Wire format was corrupt").
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:4]!r})")
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if pos + 7 + length > len(data):  # the writer is still appending this record: stop before it
            break
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind in (1, 2):  # FULL, FIRST
            buf = payload
        else:  # MIDDLE, LAST
            buf += payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out
