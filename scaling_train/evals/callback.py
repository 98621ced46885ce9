"""Trainer callback: run the evals every k steps, add task scalars to the flushed metrics row.

    Trainer(cfg, callbacks=[EvalCallback(tasks, every=100)])   # or RunConfig.evals (wired in the trainer)

At a flush at or after each multiple of ``every`` (and at the last step) rank 0 scores every task with
``trainer.raw_model`` under the backend's autocast and adds ``task/<name>/<metric>`` scalars to the row
(the row is then written to ``metrics.jsonl`` and the other sinks by the trainer). Per-item records
(log-likelihood of every choice, attempts and passes) go to ``RUN_DIR/evals.jsonl``, one line per
(step, task); after a resume a step may appear twice there, the later line wins.
"""

from __future__ import annotations

import time
from typing import Any

from scaling_train.evals.config import EvalsConfig
from scaling_train.evals.harness import TaskResult, evaluate_task
from scaling_train.evals.tasks import Task

ROW_PREFIX = "task/"


def row_key(task: str, metric: str) -> str:
    return f"{ROW_PREFIX}{task}/{metric}"


def parse_row_key(key: str) -> tuple[str, str] | None:
    """``task/<name>/<metric>`` -> (name, metric); None for other keys."""
    if not key.startswith(ROW_PREFIX):
        return None
    rest = key[len(ROW_PREFIX) :]
    if "/" not in rest:
        return None
    name, metric = rest.split("/", 1)
    return name, metric


class EvalCallback:
    """Evaluates ``tasks`` (or the tasks named by ``cfg.tasks``, built at train begin) every ``every`` steps."""

    def __init__(
        self, tasks: list[Task] | None = None, every: int | None = None, *, cfg: EvalsConfig | None = None
    ) -> None:
        self.cfg = cfg or EvalsConfig()
        self.tasks = tasks
        self.every = self.cfg.every if every is None else every
        if self.every < 0:
            raise ValueError(f"every={self.every} must be >= 0 (0 = only at the last step)")
        self._prev_step: int | None = None
        self._writer = None
        self.results: dict[str, TaskResult] = {}
        self.enabled = True

    # ------------------------------------------------------------------ trainer hooks
    def on_train_begin(self, trainer: Any) -> None:
        from tokenizers import Tokenizer

        if not trainer.backend.is_main:
            return
        if trainer.backend.world_size > 1 and getattr(trainer.backend, "name", "") in ("fsdp", "deepspeed"):
            trainer.log(
                f"[evals] off: parameters are sharded by {trainer.backend.name}; evals need whole weights on rank 0"
            )
            self.enabled = False
            return
        data = trainer.data
        tok = Tokenizer.from_file(str(data.tokenizer_path))
        self._encode = lambda s: tok.encode(s).ids
        self._decode = lambda ids: tok.decode(ids, skip_special_tokens=False)
        self._eos = int(data.eos_id)
        if self.tasks is None:
            from scaling_train.evals.builtin import build_tasks

            c, d = self.cfg, trainer.cfg.data
            self.tasks = build_tasks(
                list(c.tasks), n_items=c.n_items, pass_until_items=c.pass_until_items, seed=c.seed,
                corpus=d.corpus, val_fraction=d.val_fraction,
            )  # fmt: skip
        if self.cfg.records and self.tasks:
            from scaling_train.metrics.jsonl import JsonlWriter, rollback_jsonl

            # resumed from a checkpoint: records of steps after it are recomputed, drop the old ones
            rollback_jsonl(trainer.run_dir / "evals.jsonl", getattr(trainer, "start_step", 0))
            self._writer = JsonlWriter(trainer.run_dir / "evals.jsonl")
        trainer.log(
            f"[evals] {len(self.tasks)} task(s): "
            + ", ".join(f"{t.name} ({len(t)} items)" for t in self.tasks)
        )

    def _due(self, step: int, total: int, log_every: int) -> bool:
        prev = self._prev_step if self._prev_step is not None else step - log_every
        self._prev_step = step
        if step >= total:
            return True
        return self.every > 0 and step // self.every > max(prev, 0) // self.every

    def on_flush(self, trainer: Any, row: dict[str, Any]) -> None:
        step = int(row["step"])
        due = self._due(step, trainer.total_steps, trainer.cfg.train.log_every)
        if not (due and self.enabled and trainer.backend.is_main and self.tasks):
            return
        row.update(self.evaluate(trainer.raw_model, autocast=trainer.backend.autocast, step=step))

    def on_train_end(self, trainer: Any) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: Any, *, autocast: Any = None, step: int = 0) -> dict[str, float]:
        """Score every task once; returns the row scalars and writes the per-item records."""
        c = self.cfg
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        for task in self.tasks or []:
            t1 = time.perf_counter()
            res = evaluate_task(
                model, task, self._encode, self._decode, bos_id=self._eos, eos_id=self._eos,
                batch_size=c.batch_size, autocast=autocast, max_attempts=c.max_attempts,
                target_passes=c.target_passes, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                seed=c.seed + step,
            )  # fmt: skip
            self.results[task.name] = res
            for k, v in res.metrics.items():
                out[row_key(task.name, k)] = v
            out[row_key(task.name, "time_s")] = time.perf_counter() - t1
            if self._writer is not None:
                recs = [{k: v for k, v in r.items() if k != "first_pass"} for r in res.records]
                self._writer.write(
                    {
                        "step": step,
                        "task": task.name,
                        "kind": task.kind,
                        "metrics": res.metrics,
                        "records": recs,
                    }
                )
        if self._writer is not None:
            self._writer.flush()
        out["task/time_s"] = time.perf_counter() - t0
        return out
