"""Trainer callback: run the evals every k steps, add task scalars to the flushed metrics row.

    Trainer(cfg, callbacks=[EvalCallback(tasks, every=100)])   # or RunConfig.evals (wired in the trainer)

At a flush at or after each multiple of ``every`` (and at the last step) rank 0 scores every task with
``trainer.raw_model`` under the backend's autocast (with sharded parameters -- FSDP, ZeRO-3 -- every
rank does, in lockstep, sampling from rank 0's draws) and adds ``task/<name>/<metric>`` scalars to the row
(the row is then written to ``metrics.jsonl`` and the other sinks by the trainer). Per-item records
(log-likelihood of every choice, attempts and passes) go to ``RUN_DIR/evals.jsonl``, one line per
(step, task); after a resume a step may appear twice there, the later line wins.
"""

from __future__ import annotations

import time
from typing import Any

from scaling_train.callbacks import TrainerCallback
from scaling_train.evals.config import EvalsConfig
from scaling_train.evals.harness import TaskResult, evaluate_task
from scaling_train.evals.tasks import Task
from scaling_train.run_folder import EVAL_TIME_KEY, EVALS, TASK_PREFIX, parse_task_key, task_key

# the row keys are the run folder's (``scaling_train.run_folder``); the old names stay importable from here
ROW_PREFIX, row_key, parse_row_key = TASK_PREFIX, task_key, parse_task_key


def _from_rank0(t: Any) -> Any:
    import torch.distributed as dist

    dist.broadcast(t, src=0)
    return t


class EvalCallback(TrainerCallback):
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
        self.collective = False

    # ------------------------------------------------------------------ trainer hooks
    def on_train_begin(self, trainer: Any) -> None:
        from tokenizers import Tokenizer

        b = trainer.backend
        # sharded parameters (FSDP, ZeRO-3): every rank runs the evals in lockstep (the forward gathers
        # the shards), sampling follows rank 0's draws, and rank 0 keeps the results
        self.collective = b.world_size > 1 and (
            b.name == "fsdp" or (b.name == "deepspeed" and getattr(b, "zero_stage", None) == 3)
        )
        if not (b.is_main or self.collective):
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
        self.tasks = self._fit_context(
            self.tasks, trainer.cfg.model.seq_len, trainer.log if b.is_main else None
        )
        if self.cfg.records and self.tasks and b.is_main:
            from scaling_train.metrics.jsonl import JsonlWriter, rollback_jsonl

            # resumed from a checkpoint: records of steps after it are recomputed, drop the old ones
            rollback_jsonl(trainer.run_dir / EVALS, getattr(trainer, "start_step", 0))
            self._writer = JsonlWriter(trainer.run_dir / EVALS)
        if not b.is_main:
            return
        trainer.log(
            f"[evals] {len(self.tasks)} task(s){' on every rank (sharded parameters)' if self.collective else ''}: "
            + ", ".join(f"{t.name} ({len(t)} items)" for t in self.tasks)
        )

    def _fit_context(self, tasks: list[Task], T: int, log: Any) -> list[Task]:
        """Items whose scored continuation (a choice, a cloze answer) is longer than the model's context
        cannot be scored: drop them (and tasks left empty) with a message, rather than failing the run
        at its first eval."""
        out = []
        for task in tasks:
            if task.kind == "pass_until":
                out.append(task)  # prompts keep their last tokens; samples are cut to the context
                continue
            keep = [
                it for it in task.items
                if all(len(self._encode(c)) <= T for c in (it.choices if task.kind == "multiple_choice" else (it.answer,)))
            ]  # fmt: skip
            dropped = len(task.items) - len(keep)
            if dropped and log is not None:
                log(
                    f"[evals] {task.name}: {dropped} of {len(task.items)} items dropped: a continuation is "
                    f"longer than model.seq_len={T} tokens"
                )
            if keep:
                out.append(Task(task.name, task.kind, keep))
        return out

    def _due(self, step: int, total: int, log_every: int) -> bool:
        prev = self._prev_step if self._prev_step is not None else step - log_every
        self._prev_step = step
        if step >= total:
            return True
        return self.every > 0 and step // self.every > max(prev, 0) // self.every

    def on_flush(self, trainer: Any, row: dict[str, Any]) -> None:
        step = int(row["step"])
        due = self._due(step, trainer.total_steps, trainer.cfg.train.log_every)
        main = trainer.backend.is_main
        if not (due and self.enabled and (main or self.collective) and self.tasks):
            return
        sync = _from_rank0 if self.collective else None
        out = self.evaluate(trainer.raw_model, autocast=trainer.backend.autocast, step=step, sync=sync)
        if main:
            row.update(out)

    def on_train_end(self, trainer: Any) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, model: Any, *, autocast: Any = None, step: int = 0, sync: Any = None
    ) -> dict[str, float]:
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
                seed=c.seed + step, sync=sync,
            )  # fmt: skip
            self.results[task.name] = res
            for k, v in res.metrics.items():
                out[task_key(task.name, k)] = v
            out[task_key(task.name, "time_s")] = time.perf_counter() - t1
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
        out[EVAL_TIME_KEY] = time.perf_counter() - t0
        return out
