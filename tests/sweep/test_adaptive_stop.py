"""Stop on request and resume (issue 19): ``RUN/STOP`` makes a run stop cleanly at its next metrics flush
(checkpoint at that step, ``STOPPED`` instead of ``DONE``), a sweep treats it as finished for now, and
``resume_stopped`` / ``--resume-stopped`` trains it to the end with the losses of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.sweep import state
from scaling_train.train import Trainer, train
from scaling_train.train.trainer import archive_stopped
from tests.fixtures.runs import tiny_config

VOLATILE = {"time", "tokens_per_s"}
REQUEST = {"reason": "interval width 0.01 <= 0.02", "step": 10, "fraction": 0.33, "loss": 5.1,
           "low": 5.05, "high": 5.15, "time": 1.0}  # fmt: skip


def _rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in VOLATILE} for r in read_jsonl(run_dir / "metrics.jsonl").rows
    ]


class RequestStopAt:
    """Writes RUN/STOP (as the fitter does) before optimizer step ``step`` (0-based)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_step(self, trainer, step):
        if step == self.step:
            (trainer.run_dir / "STOP").write_text(json.dumps(REQUEST))


class Ended:
    def __init__(self) -> None:
        self.calls = 0

    def on_train_end(self, trainer):
        self.calls += 1


# ---------------------------------------------------------------------------------------------- trainer
def test_stop_at_flush_then_resume_equals_uninterrupted(tmp_path):
    # micro-batches of 4: the gradient-noise-scale EMAs run and must continue across the stop
    extra = {"train.max_steps": 30, "train.micro_batch_size": 4}  # log_every 5, ckpt_every 10, eval_every 15
    train(tiny_config(tmp_path / "ref", **extra), log=lambda s: None)

    run = tmp_path / "r"
    ended = Ended()
    res = Trainer(tiny_config(run, **extra), callbacks=[RequestStopAt(11), ended], log=lambda s: None).run()
    # STOP appeared during step 12 (1-based): the next flush is step 15, between ckpt_every=10 multiples
    assert res.stopped and not res.already_done and res.steps == 15 and ended.calls == 1
    assert not (run / "DONE").exists()
    rec = json.loads((run / "STOPPED").read_text())
    assert rec["steps"] == 15 and rec["total_steps"] == 30 and rec["tokens"] == res.tokens
    assert (
        rec["request"] == REQUEST
        and rec["loss"] == res.final_loss
        and rec["eval_loss"] == res.final_eval_loss
    )
    assert rec["eval_loss"] is not None  # step 15 is an eval step
    assert (run / "checkpoints" / "step-00000015.pt").is_file()
    ref = _rows(tmp_path / "ref")
    assert _rows(run) == ref[:3]  # rows 5, 10, 15, identical to the uninterrupted run's
    assert state.status(run) == "stopped" and state.is_stopped(run)

    # relaunched while STOP stands: nothing happens
    again = Trainer(tiny_config(run, **extra), log=lambda s: None).run()
    assert again.stopped and again.steps == 15 and len(_rows(run)) == 3

    archived = state.resume_stopped(run)
    assert archived == run / "STOPPED.1.json" and json.loads(archived.read_text()) == rec
    assert not (run / "STOP").exists() and not (run / "STOPPED").exists() and state.status(run) == "partial"
    done = Trainer(tiny_config(run, **extra), log=lambda s: None).run()
    assert not done.stopped and done.resumed_from == 15 and done.steps == 30
    assert state.status(run) == "done"
    assert _rows(run) == ref  # bitwise: every loss, lr, grad norm, noise scale and eval value
    samples = read_jsonl(run / "samples.jsonl").rows  # eval at step 15 kept once, not redone
    assert samples == read_jsonl(tmp_path / "ref" / "samples.jsonl").rows


def test_stop_at_the_last_flush_finishes_and_removed_stop_resumes(tmp_path):
    extra = {"train.max_steps": 10, "train.eval_every": 0, "train.ckpt_every": 0}
    run = tmp_path / "r"
    res = Trainer(tiny_config(run, **extra), callbacks=[RequestStopAt(7)], log=lambda s: None).run()
    assert not res.stopped and (run / "DONE").is_file() and not (run / "STOPPED").exists()  # nothing to save

    run2 = tmp_path / "r2"
    (run2).mkdir()
    (run2 / "STOP").write_text("not json")  # present before the start: stops at the first flush, request {}
    res = train(tiny_config(run2, **extra), log=lambda s: None)
    assert res.stopped and res.steps == 5 and json.loads((run2 / "STOPPED").read_text())["request"] == {}
    (run2 / "STOP").unlink()  # removed by hand: the trainer archives the record itself and trains on
    res = train(tiny_config(run2, **extra), log=lambda s: None)
    assert res.steps == 10 and res.resumed_from == 5 and (run2 / "DONE").is_file()
    assert (run2 / "STOPPED.1.json").is_file() and not (run2 / "STOPPED").exists()


# ------------------------------------------------------------------------------------------- run state
def test_status_stopped_and_archives(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    assert state.status(run) == "pending" and state.resume_stopped(run) is None
    (run / "STOPPED").write_text("{}")
    (run / "STOP").write_text("{}")
    assert state.status(run) == "stopped" and state.is_finished_for_now(run)
    with state.RunLock(run) as lock:  # a live process on it wins
        assert lock.acquired and state.status(run) == "running"
    (run / "STOPPED.1.json").write_text("{}")  # an earlier stop's record
    assert state.resume_stopped(run) == run / "STOPPED.2.json"
    assert state.status(run) == "pending" and not (run / "STOP").exists()
    assert archive_stopped(run) is None
    (run / "STOPPED").write_text("{}")
    (run / "DONE").write_text("{}")  # DONE wins
    assert state.status(run) == "done" and not state.is_stopped(run) and state.resume_stopped(run) is None


def test_worker_records_a_stopped_attempt_and_skips_stopped_runs(tmp_path):
    from scaling_train.sweep.worker import EXIT_OK, execute

    run = tmp_path / "r"
    stop = ["python", "-c", f"import pathlib; pathlib.Path({str(run / 'STOPPED')!r}).write_text('{{}}')"]
    said = []
    assert execute(run, stop, retries=2, say=said.append) == EXIT_OK
    att = state.attempts(run)
    assert len(att) == 1 and att[0]["rc"] == 0 and att[0]["stopped"] is True  # not retried: a success
    assert any("stopped on request" in s for s in said)
    assert execute(run, ["false"], say=said.append) == EXIT_OK and len(state.attempts(run)) == 1  # not rerun
    assert "STOPPED on request, skipped" in said[-1]
