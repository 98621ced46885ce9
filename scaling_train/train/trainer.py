"""The training loop: one run, resumable exactly, metrics flushed every k steps.

Launch (single process, CPU or one GPU):

    scaling-train train configs/train/tiny.yaml                     # run folder from the config
    scaling-train train configs/train/tiny.yaml optim.lr=1e-3 run_dir=runs/lr1e-3

A killed run restarted with the same command resumes from its newest good checkpoint; the batch
order is a pure function of (seed, step), so its losses equal an uninterrupted run's (bitwise on CPU).

Stop on request (the adaptive sweep's fitter, or a user): write ``RUN_DIR/STOP`` (a JSON object, written
atomically). At its next metrics flush the run writes that step's row, checkpoints at that step (even between
``ckpt_every``), writes ``RUN_DIR/STOPPED`` instead of ``DONE`` and returns a ``RunResult`` with
``stopped=True``. STOP is the request, STOPPED the record:

    STOPPED  {"steps", "total_steps", "tokens", "loss", "eval_loss", "request": STOP's content or {}, "time"}

Relaunched while both are there, the run does nothing (still stopped). Remove STOP to resume it to the end
(``scaling_train.sweep.state.resume_stopped``, or ``--resume-stopped`` of the sweep): STOPPED is then archived
as ``STOPPED.<n>.json`` (``archive_stopped``) and training continues from the stop's checkpoint, with the
losses of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from scaling_train._io import atomic_write
from scaling_train.callbacks import TrainerCallback, as_callback
from scaling_train.config import to_dict
from scaling_train.data import Batch, PooledStream, PreparedData, epochs_seen, prepare
from scaling_train.metrics.jsonl import JsonlWriter, rollback_jsonl
from scaling_train.models import GPT
from scaling_train.run_folder import CHECKPOINTS, CONFIG, DONE, SAMPLES, STOP, STOPPED, stopped_archive
from scaling_train.train import checkpoint
from scaling_train.train.backend import make_backend
from scaling_train.train.config import RunConfig, config_hash, semantic_dict
from scaling_train.train.metrics_stream import SinkFactory, open_trainer_stream
from scaling_train.train.schedule import LR_SCHEDULE_FILE, OptimConfig, lr_at


def make_optimizer(model: GPT, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (decay on matrices; muP per-group LR scales)."""
    return torch.optim.AdamW(
        model.param_groups(optim.lr, optim.weight_decay),
        lr=optim.lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        foreach=True,
    )


class ConfigMismatchError(RuntimeError):
    pass


# STOP (the stop request, written by the fitter or a user) and STOPPED (the trainer's record of a stop; module
# docstring) are run-folder names of scaling_train.run_folder, re-exported here for their old importers.


def read_stop_request(run_dir: str | Path) -> dict[str, Any]:
    """The content of ``RUN_DIR/STOP``; {} when it is missing, unreadable or not a JSON object."""
    try:
        req = json.loads((Path(run_dir) / STOP).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return req if isinstance(req, dict) else {}


def archive_stopped(run_dir: str | Path) -> Path | None:
    """Rename ``RUN_DIR/STOPPED`` to the first free ``STOPPED.<n>.json`` (n = 1, 2, ...), so a resumed run
    keeps the record of every stop; returns the new path, None when there was no STOPPED."""
    src = Path(run_dir) / STOPPED
    if not src.is_file():
        return None
    n = 1
    while (dst := src.with_name(stopped_archive(n))).exists():
        n += 1
    try:
        os.replace(src, dst)
    except FileNotFoundError:  # archived by another process meanwhile
        return None
    return dst


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    tokens: int
    final_loss: float
    final_eval_loss: float | None
    resumed_from: int | None
    already_done: bool = False
    stopped: bool = False
    """Stopped on request (``RUN_DIR/STOP``) at ``steps`` < total steps: STOPPED written, no DONE."""


def _recorded(run_dir: Path, info: dict[str, Any], prefix: str, **flags: bool) -> RunResult:
    """The result of a run that does not train now, from its DONE (``prefix="final_"``) or STOPPED record."""
    return RunResult(
        run_dir,
        info.get("steps", 0),
        info.get("tokens", 0),
        info.get(f"{prefix}loss", float("nan")),
        info.get(f"{prefix}eval_loss"),
        None,
        **flags,
    )


@dataclass
class _LoopState:
    """What ``Trainer._loop`` carries from step to step."""

    metrics: JsonlWriter | None
    bar: Any  # tqdm bar (rank 0, train.progress) or None
    acc: torch.Tensor
    """(4,) float64 device accumulators of the flush window: loss sum, grad-norm sum, steps, stop flag (rank 0
    sets it to 1 when RUN_DIR/STOP exists: the all-reduce the flush does anyway gives every rank the same
    decision)."""
    window_start: int
    t_window: float
    last_loss: float = float("nan")
    last_eval: float | None = None
    stopped: bool = False


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


class Trainer:
    """Single-process trainer. ``callbacks``: ``TrainerCallback`` objects (``scaling_train/callbacks.py``:
    the hooks and when each is called), or objects defining some of the hooks (adapted by ``as_callback``;
    a method that looks like a hook but is none is a TypeError here). ``sinks``: factories
    ``f(trainer) -> Sink | None`` of extra metrics sinks, e.g. ``fitter.sink.in_process_fitter`` (which
    ``scaling-train train`` passes for ``metrics.fit_in_process``)."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        log: Callable[[str], None] = print,
        callbacks: Sequence[TrainerCallback | object] | None = None,
        sinks: Sequence[SinkFactory] = (),
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.callbacks: list[TrainerCallback] = [as_callback(cb) for cb in callbacks or ()]
        self.sink_factories = tuple(sinks)
        self.run_dir = Path(cfg.run_dir)
        self.backend = make_backend(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.data: PreparedData = prepare(
            cfg.data, cfg.model.seq_len, log=self.log if self.backend.is_main else lambda s: None
        )
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = self.data.vocab_size
        elif cfg.model.vocab_size < self.data.vocab_size:
            raise ValueError(
                f"model.vocab_size={cfg.model.vocab_size} < tokenizer vocabulary {self.data.vocab_size}"
            )
        world = self.backend.world_size
        mb = cfg.train.micro_batch_size or cfg.train.batch_size // world
        if cfg.train.batch_size % (world * mb):
            raise ValueError(
                f"train.batch_size={cfg.train.batch_size} must be divisible by world_size={world} x "
                f"micro_batch_size={mb}"
            )
        self.micro_bs = mb
        self.accum = cfg.train.batch_size // (world * mb)
        torch.manual_seed(cfg.seed)
        model = GPT(cfg.model).to(self.backend.device)
        self.raw_model = model
        self.param_counts = model.param_counts()
        self.flops_per_token = model.flops_per_token()
        opt = make_optimizer(model, cfg.optim)
        self.model, self.optimizer = self.backend.prepare(model, opt)
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        self.total_steps = cfg.total_steps
        if isinstance(self.data.train, PooledStream):  # every mixed pool must get >= 1 sequence per step
            self.data.train.counts(
                cfg.branch.parent_batch_size if cfg.branch.parent else cfg.train.batch_size
            )

    def _write_config(self) -> None:
        path = self.run_dir / CONFIG
        resolved = to_dict(self.cfg)
        if path.is_file():
            old = yaml.safe_load(path.read_text()) or {}
            old_sem = {k: v for k, v in old.items() if k not in ("resolved", "config_hash")}
            from scaling_train.config import from_dict  # local: avoids a cycle at import time

            try:
                old_cfg = from_dict(RunConfig, old_sem, source=str(path))
                diff = _diff_keys(semantic_dict(old_cfg), semantic_dict(self.cfg))
            except Exception as e:  # an unreadable config is a mismatch too
                diff = [f"unreadable: {e}"]
            if diff:
                raise ConfigMismatchError(
                    f"{self.run_dir} holds a run with another config ({'; '.join(diff[:5])}). "
                    "Use another run_dir, or delete that folder to start over."
                )
        resolved["config_hash"] = config_hash(self.cfg)
        resolved["resolved"] = {
            "params": self.param_counts,
            "flops_per_token": self.flops_per_token,
            "tokens_per_step": self.cfg.tokens_per_step,
            "total_steps": self.total_steps,
            "total_tokens": self.total_steps * self.cfg.tokens_per_step,
            # U = the training split in tokens (one epoch); epochs > 1 means repeated data
            "unique_tokens": self.data.train.unique_tokens,
            "epochs": epochs_seen(self.total_steps * self.cfg.tokens_per_step, self.data.train.unique_tokens),
            **self._pool_info(),
            "micro_batch_size": self.micro_bs,
            "grad_accum": self.accum,
            "world_size": self.backend.world_size,
        }
        atomic_write(path, yaml.safe_dump(resolved, sort_keys=False))

    def _write_lr_schedule(self) -> None:
        """``RUN/lr_schedule.json``: the planned LR of every step (``lr_at``, a branch's included), written
        atomically before the first metrics row so the fitter and report read it instead of training code."""
        lr = [self.lr_at(s) for s in range(self.total_steps)]  # (total_steps,), one float per optimizer step
        atomic_write(self.run_dir / LR_SCHEDULE_FILE, json.dumps(lr))

    def _pool_batch_size(self) -> int:
        return self.cfg.branch.parent_batch_size if self.cfg.branch.parent else self.cfg.train.batch_size

    def _pool_info(self) -> dict:
        """``resolved.pools`` of a run on data.pools: per mixed pool its unique tokens U_p, noise, realised
        weight (sequences per step / batch) and epochs over the whole run; {} without pools."""
        train = self.data.train
        if not isinstance(train, PooledStream):
            return {}
        B, D = self._pool_batch_size(), self.total_steps * self.cfg.tokens_per_step
        counts, epochs = train.counts(B), train.pool_epochs(D, B)
        return {
            "pools": {
                s.name: {
                    "unique_tokens": s.n_seqs * train.seq_len,
                    "noise": s.noise,
                    "weight": counts[s.name] / B,
                    "sequences_per_step": counts[s.name],
                    "epochs": epochs[s.name],
                }
                for s in train.mixed
            }
        }

    # -------------------------------------------------------------- batches
    def micro_batches(self, step: int, *, split: bool = False) -> list[Batch]:
        """This rank's micro-batches of optimizer step ``step`` (pure function of seed and step).

        ``split``: a lone micro-batch of >= 2 sequences comes back as two halves (``mb // 2`` and the
        rest), for the noise-scale probe; more than one micro-batch is returned unchanged."""
        br, train = self.cfg.branch, self.data.train
        if br.parent is None:  # batch_indices over the split, or each pool's share of the step (data.pools)
            idx = train.step_indices(self.cfg.seed, step, self.cfg.train.batch_size)
        elif br.divisor > 1:  # a branch below the parent's batch: part (step mod m) of one parent batch
            part = br.parent_batch_size // br.divisor
            idx = train.step_indices(self.cfg.seed, br.step + step // br.divisor, br.parent_batch_size)
            idx = idx[(step % br.divisor) * part : (step % br.divisor + 1) * part]  # (batch_size,)
        else:  # a branch reads the parent's batches in the parent's order, factor of them per step
            first = br.step + step * br.factor
            idx = np.concatenate(
                [train.step_indices(self.cfg.seed, first + i, br.parent_batch_size) for i in range(br.factor)]
            )  # (factor * parent_batch_size,) = (batch_size,)
        per_rank = len(idx) // self.backend.world_size
        mine = idx[self.backend.rank * per_rank : (self.backend.rank + 1) * per_rank]
        if split and len(mine) == self.micro_bs >= 2:
            h = self.micro_bs // 2
            return [self.data.train.batch(mine[:h]), self.data.train.batch(mine[h:])]
        return [
            self.data.train.batch(mine[i : i + self.micro_bs]) for i in range(0, len(mine), self.micro_bs)
        ]

    def lr_at(self, step: int) -> float:
        """Planned LR of 0-based step ``step``; a branch's is ``lr_scale`` x the parent's mean LR over the
        parent steps it covers (the parent's schedule in tokens)."""
        br = self.cfg.branch
        if br.parent is None:
            return lr_at(self.cfg.optim, step, self.total_steps)
        if br.divisor > 1:
            return br.lr_scale * lr_at(self.cfg.optim, br.step + step // br.divisor, br.parent_total_steps)
        first = br.step + step * br.factor
        return br.lr_scale * float(
            np.mean([lr_at(self.cfg.optim, first + i, br.parent_total_steps) for i in range(br.factor)])
        )

    def _load_parent(self) -> None:
        """A branch's first start: model and optimizer states from the parent's checkpoint at branch.step."""
        br = self.cfg.branch
        state = checkpoint.load_step(Path(br.parent) / CHECKPOINTS, br.step, map_location=self.backend.device)
        if state.get("step") != br.step:
            raise RuntimeError(f"{br.parent} checkpoint of step {br.step} holds step {state.get('step')}")
        self.backend.load_model_state(self.model, state["model"])
        self.backend.load_optim_state(self.optimizer, state["optimizer"])
        self.log(
            f"[train] branch of {br.parent} from its step {br.step}: x{br.factor / br.divisor:g} batch, "
            f"lr x{br.lr_scale:.3g}"
        )

    def _val_docs_before(self, seq: int) -> int:
        """Documents (EOS tokens) of the validation split before sequence ``seq``; cached per sequence."""
        cache = self.__dict__.setdefault("_docs_before", {})
        if seq not in cache:
            val, T = self.data.val, self.cfg.model.seq_len
            prev = max((k for k in cache if k < seq), default=None)
            base, start = (cache[prev], prev * T) if prev is not None else (0, 0)
            cache[seq] = base + int(np.count_nonzero(np.asarray(val.tokens[start : seq * T]) == val.eos_id))
        return cache[seq]

    @torch.no_grad()
    def evaluate(self, step: int | None = None) -> dict[str, float]:
        """Mean NLL and accuracy over ``eval_batches`` validation micro-batches, evenly spaced over the
        split; per-document log-likelihoods (the fused loss's segment sums) go to ``samples.jsonl``."""
        n = self.cfg.train.eval_batches
        if n == 0:
            return {}
        self.model.eval()
        val, dev = self.data.val, self.backend.device
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # nll, correct, tokens
        # evenly spaced over the whole split (its first sequences are one file, not a sample)
        total = n * self.micro_bs * self.backend.world_size
        all_ids = (np.arange(total, dtype=np.int64) * val.n_seqs) // total
        mine = all_ids.reshape(self.backend.world_size, n, self.micro_bs)[self.backend.rank]
        seg_parts, meta = [], []  # per batch: (S,) nll and token tensors; host-side (doc, seq) ids
        for ids in mine:
            batch = val.batch(ids)
            seg = batch.segment_ids.numpy()
            for r, i in enumerate(ids):  # segment g of row r is document docs_before(i) + g - seg[r, 0]
                first = int(seg[r, 0])
                meta += [
                    (self._val_docs_before(int(i)) + g - first, int(i))
                    for g in range(first, int(seg[r, -1]) + 1)
                ]
            batch = batch.to(dev)
            with self.backend.autocast():
                out = self.model(
                    batch.idx,
                    batch.targets,
                    batch.segment_ids,
                    num_segments=batch.num_segments,
                    reduction="sum",
                )
            sums += torch.stack(
                [
                    out.token_nll.double().sum(),
                    out.token_correct.double().sum(),
                    torch.tensor(float(out.token_nll.numel()), dtype=torch.float64, device=dev),
                ]
            )
            seg_parts += [out.segment_nll.double(), out.segment_tokens.double()]
        sums = self.backend.all_reduce_mean(sums)
        n_seg = len(meta)
        flat = torch.cat([sums, *seg_parts[0::2], *seg_parts[1::2]]).tolist()  # sync: one transfer per eval
        nll, correct, count = flat[:3]
        if self._samples is not None and step is not None:
            seg_nll, seg_tok = flat[3 : 3 + n_seg], flat[3 + n_seg :]
            for (doc, seq), s_nll, s_tok in zip(meta, seg_nll, seg_tok):
                self._samples.write(
                    {
                        "step": step,
                        "sample": doc,
                        "seq": seq,
                        "tokens": int(s_tok),
                        "nll_sum": s_nll,
                        "loglik": -s_nll,
                    }
                )
            self._samples.flush()
        self.model.train()
        return {"eval_loss": nll / count, "eval_acc": correct / count}

    # ----------------------------------------------------------------- run
    def run(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        recorded = self._recorded_result()
        if recorded is not None:
            return recorded
        self._setup()
        if self.backend.is_main:
            self._write_config()
            self._write_lr_schedule()
        # metrics.jsonl + the W&B sink + the sinks passed in (rank 0 only)
        metrics = open_trainer_stream(self, self.sink_factories) if self.backend.is_main else None
        if self.cfg.evals.tasks:  # downstream evals every k steps, scalars added to the flushed rows
            from scaling_train.evals.callback import EvalCallback

            self.callbacks.append(EvalCallback(cfg=self.cfg.evals))
        self.callbacks[:] = [as_callback(cb) for cb in self.callbacks]  # any appended since __init__ too
        found = self._resume(metrics)
        if found is not None:  # callbacks' own state (e.g. the noise-scale EMAs) continues too
            saved = found.get("callbacks", {})
            for cb in self.callbacks:
                if cb.state_key in saved:
                    cb.load_state_dict(saved[cb.state_key])
        for cb in self.callbacks:
            cb.on_train_begin(self)
        result = self._loop(self.start_step, metrics)
        result.resumed_from = None if found is None else self.start_step
        if self.backend.is_main:
            if metrics is not None:
                metrics.close()
            if self._samples is not None:
                self._samples.close()
            self._write_record(result)
        self.backend.barrier()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return result

    def _recorded_result(self) -> RunResult | None:
        """The result of a run that does not train now: DONE, or STOPPED while its STOP still stands. With
        STOP removed, STOPPED is archived (rank 0) and the run resumes: None."""
        done = self.run_dir / DONE
        if done.is_file():
            self.log(f"[train] {self.run_dir} is already DONE; nothing to do")
            return _recorded(self.run_dir, json.loads(done.read_text() or "{}"), "final_", already_done=True)
        stopped = self.run_dir / STOPPED
        if not stopped.is_file():
            return None
        if (self.run_dir / STOP).is_file():  # the request stands: still stopped, nothing to do
            try:
                info = json.loads(stopped.read_text() or "{}")
            except ValueError:
                info = {}
            self.log(
                f"[train] {self.run_dir} is STOPPED at step {info.get('steps')} on request; remove "
                f"{self.run_dir / STOP} (or `scaling-train sweep SPEC --resume-stopped`) to train it to the end"
            )
            return _recorded(self.run_dir, info, "", stopped=True)
        if self.backend.is_main:  # STOP removed: resume to the end, the stop's record archived
            self.log(
                f"[train] {self.run_dir}: STOP removed, resuming; STOPPED -> {archive_stopped(self.run_dir)}"
            )
        return None

    def _resume(self, metrics: JsonlWriter | None) -> dict[str, Any] | None:
        """Model, optimizer and RNG from the newest good checkpoint (metrics rows after it dropped), else a
        branch's parent state; sets ``start_step`` and opens ``samples.jsonl`` (rolled back to it). Returns
        the checkpoint's state, None when the run starts from step 0."""
        self.start_step = 0  # callbacks with side files roll them back to this step
        found = checkpoint.load_latest(self.run_dir / CHECKPOINTS, map_location=self.backend.device)
        if found is not None:
            path, state = found
            self.backend.load_model_state(self.model, state["model"])
            self.backend.load_optim_state(self.optimizer, state["optimizer"])
            torch.set_rng_state(state["rng_cpu"])
            self.start_step = state["step"]
            if metrics is not None:
                metrics.truncate(state["metrics_offset"])  # drop rows written after the checkpoint
            self.log(
                f"[train] resumed {self.run_dir} from {path.name} (step {self.start_step}/{self.total_steps})"
            )
        elif self.cfg.branch.parent is not None:
            self._load_parent()
        self._samples = None
        if self.backend.is_main and self.cfg.train.eval_batches:
            rollback_jsonl(self.run_dir / SAMPLES, self.start_step)  # recomputed after the checkpoint
            self._samples = JsonlWriter(self.run_dir / SAMPLES)
        return None if found is None else found[1]

    def _write_record(self, result: RunResult) -> None:
        """Rank 0's record of the run: STOPPED when it stopped on request, else DONE."""
        p = "" if result.stopped else "final_"
        record = {
            "steps": result.steps,
            "tokens": result.tokens,
            f"{p}loss": result.final_loss,
            f"{p}eval_loss": result.final_eval_loss,
        }
        if result.stopped:
            record.update(
                total_steps=self.total_steps, request=read_stop_request(self.run_dir), time=time.time()
            )
            atomic_write(self.run_dir / STOPPED, json.dumps(record, indent=1))
            self.log(
                f"[train] stopped on request at step {result.steps}/{self.total_steps} "
                f"(checkpoint written; remove {self.run_dir / STOP} to resume to the end)"
            )
        else:
            record.update(
                params=self.param_counts,
                flops=float(self.flops_per_token * result.tokens),
                config_hash=config_hash(self.cfg),
            )
            atomic_write(self.run_dir / DONE, json.dumps(record, indent=1))

    def _checkpoint(self, step: int, metrics: JsonlWriter | None) -> None:
        offset = metrics.flush() if metrics is not None else 0
        state = {
            "model": self.backend.model_state(self.model),
            "optimizer": self.backend.optim_state(self.optimizer),
            "step": step,
            "rng_cpu": torch.get_rng_state(),
            "metrics_offset": offset,
            "config_hash": config_hash(self.cfg),
            "callbacks": {  # keyed by state_key (default: the class name, as before state_key existed)
                cb.state_key: cb_state for cb in self.callbacks if (cb_state := cb.state_dict()) is not None
            },
        }
        if self.backend.is_main:
            checkpoint.save(
                self.run_dir / CHECKPOINTS,
                step,
                state,
                keep=self.cfg.train.keep_checkpoints,
                protect=self.cfg.train.keep_steps,
            )
        self.backend.barrier()

    def _loop(self, start_step: int, metrics: JsonlWriter | None) -> RunResult:
        cfg, T, tps = self.cfg, self.total_steps, self.cfg.tokens_per_step
        st = _LoopState(
            metrics=metrics,
            bar=self._progress_bar(start_step),
            acc=torch.zeros(4, dtype=torch.float64, device=self.backend.device),
            window_start=start_step,
            t_window=time.perf_counter(),
        )
        keep_steps = set(cfg.train.keep_steps)  # branch points: checkpointed even between ckpt_every
        self.model.train()
        for step in range(start_step, T):
            lr = self.lr_at(step)
            self._train_step(step, lr, st.acc)
            done_steps = step + 1
            is_last = done_steps == T
            do_eval = is_last or (cfg.train.eval_every and done_steps % cfg.train.eval_every == 0)
            if done_steps % cfg.train.log_every == 0 or is_last or do_eval:
                self._flush(st, done_steps, lr, is_last=is_last, do_eval=bool(do_eval))
            periodic = cfg.train.ckpt_every and done_steps % cfg.train.ckpt_every == 0
            if (periodic or done_steps in keep_steps or st.stopped) and not is_last:
                self._checkpoint(done_steps, metrics)
            if st.stopped:  # on request: resumable from the checkpoint just written
                break
        if st.bar is not None:
            st.bar.close()
        if st.stopped:
            return RunResult(
                self.run_dir, done_steps, done_steps * tps, st.last_loss, st.last_eval, None, stopped=True
            )
        if start_step < T:
            self._checkpoint(T, metrics)
        return RunResult(self.run_dir, T, T * tps, st.last_loss, st.last_eval, None)

    def _progress_bar(self, start_step: int) -> Any:
        """A tqdm bar on rank 0 when ``train.progress``; None otherwise."""
        if not (self.cfg.train.progress and self.backend.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps,
            initial=start_step,
            desc=self.run_dir.name,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )

    def _train_step(self, step: int, lr: float, acc: torch.Tensor) -> None:
        """Optimizer step ``step`` at learning rate ``lr``: forward/backward of its micro-batches, clipping,
        ``optimizer.step()``; adds (loss, grad norm, 1) to the flush window's device accumulators ``acc``."""
        dev = self.backend.device
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        split = [cb.split_micro_batch(self, step) for cb in self.callbacks]  # all asked (the probe counts)
        batches = self.micro_batches(step, split=any(split))
        n_seqs = sum(b.idx.shape[0] for b in batches)  # this rank's sequences in the step
        step_loss = torch.zeros((), dtype=torch.float64, device=dev)
        for i, b in enumerate(batches):
            b = b.to(dev)
            parts = n_seqs / b.idx.shape[0]  # = accum for equal micro-batches; loss weight = 1 / parts
            ctx = self.backend.no_sync(self.model) if i < len(batches) - 1 else contextlib.nullcontext()
            with ctx:
                with self.backend.autocast():
                    out = self.model(b.idx, b.targets)
                self.backend.backward(out.loss / parts)
            step_loss += out.loss.detach().double() * (b.idx.shape[0] / self.micro_bs)  # 1.0 unless split
            for cb in self.callbacks:
                cb.on_micro_batch(self, out, b)
        gnorm = self.backend.clip_grad_norm(self.model, self.cfg.optim.grad_clip)
        for cb in self.callbacks:
            cb.on_before_step(self, step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        acc[:3] += torch.stack(
            [
                step_loss / (n_seqs / self.micro_bs),  # = / accum (and / 1 for a split micro-batch)
                gnorm.detach().double(),
                torch.ones((), dtype=torch.float64, device=dev),
            ]
        )

    def _flush(self, st: _LoopState, done_steps: int, lr: float, *, is_last: bool, do_eval: bool) -> None:
        """One metrics flush after ``done_steps`` steps: the window's means (and the stop decision) from the
        device, the evaluation when due, every callback's ``on_flush``, then the row to ``metrics.jsonl``."""
        if self.backend.is_main and not is_last and (self.run_dir / STOP).exists():  # one stat per flush
            st.acc[3] = 1.0
        st.acc = self.backend.all_reduce_mean(st.acc)
        # sync: one host transfer per flush, not per step
        loss_sum, gn_sum, n, stop_flag = st.acc.tolist()
        st.stopped = stop_flag > 0  # = 1 / world_size on every rank when rank 0 saw STOP
        st.acc.zero_()
        row = self._row(done_steps, lr, loss=loss_sum / n, grad_norm=gn_sum / n, st=st)
        if do_eval:
            ev = self.evaluate(step=done_steps)
            row.update(ev)
            st.last_eval = ev.get("eval_loss", st.last_eval)
        for cb in self.callbacks:
            cb.on_flush(self, row)
        st.last_loss = row["loss"]
        if st.metrics is not None:
            st.metrics.write(row)
            st.metrics.flush()
        if st.bar is not None:
            st.bar.update(done_steps - st.bar.n)
            post = {"loss": f"{st.last_loss:.3f}"}
            if st.last_eval is not None:
                post["eval"] = f"{st.last_eval:.3f}"
            st.bar.set_postfix(post)
        st.window_start, st.t_window = done_steps, time.perf_counter()

    def _row(self, done_steps: int, lr: float, *, loss: float, grad_norm: float, st: _LoopState) -> dict:
        """The metrics row of a flush after ``done_steps`` steps (callbacks and the evaluation add to it)."""
        tps, train = self.cfg.tokens_per_step, self.data.train
        now = time.perf_counter()
        pooled = isinstance(train, PooledStream)
        return {
            "step": done_steps,
            "tokens": done_steps * tps,
            "epochs": epochs_seen(done_steps * tps, train.unique_tokens),
            **(
                {
                    f"epochs/{k}": v
                    for k, v in train.pool_epochs(done_steps * tps, self._pool_batch_size()).items()
                }
                if pooled
                else {}
            ),
            "flops": float(self.flops_per_token * done_steps * tps),
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": (done_steps - st.window_start) * tps / max(now - st.t_window, 1e-9),
            "time": time.time(),
        }


def train(cfg: RunConfig, **kw: Any) -> RunResult:
    return Trainer(cfg, **kw).run()
