"""Stop on request and resume (issue 19): ``RUN/STOP`` makes a run stop cleanly at its next metrics flush
(checkpoint at that step, ``STOPPED`` instead of ``DONE``), a sweep treats it as finished for now, and
``resume_stopped`` / ``--resume-stopped`` trains it to the end with the losses of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from scaling_train.config import ConfigError
from scaling_train.fitter.adaptive import AdaptivePolicy
from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.sweep import state
from scaling_train.sweep.backends import ADAPTIVE, prepare_dir
from scaling_train.sweep.plan import describe_adaptive, make_plan
from scaling_train.sweep.spec import load_spec
from scaling_train.sweep.worker import EXIT_OK, execute
from scaling_train.train import Trainer, train
from scaling_train.train.trainer import archive_stopped
from tests.fixtures.runs import tiny_config
from tests.fixtures.sweeps import REPO, sweep_cmd, tiny_spec, write_spec

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
    run = tmp_path / "r"
    stop = ["python", "-c", f"import pathlib; pathlib.Path({str(run / 'STOPPED')!r}).write_text('{{}}')"]
    said = []
    assert execute(run, stop, retries=2, say=said.append) == EXIT_OK
    att = state.attempts(run)
    assert len(att) == 1 and att[0]["rc"] == 0 and att[0]["stopped"] is True  # not retried: a success
    assert any("stopped on request" in s for s in said)
    assert execute(run, ["false"], say=said.append) == EXIT_OK and len(state.attempts(run)) == 1  # not rerun
    assert "STOPPED on request, skipped" in said[-1]


# ------------------------------------------------------------------------------------------------ spec
def test_adaptive_block_is_a_sweep_setting_validated_with_the_spec(tmp_path):

    grid = {"sizes": ["0.1M", "0.2M"], "tokens": [2560, 5120], "seeds": [0]}
    plain = make_plan(load_spec(write_spec(tmp_path / "p.yaml", tiny_spec(grid=grid))), output=tmp_path / "o")
    path = write_spec(
        tmp_path / "a.yaml", tiny_spec(grid=grid, adaptive={"tolerance": "3e-2", "min_fraction": 0.5})
    )
    plan = make_plan(load_spec(path), output=tmp_path / "o")
    assert plan.adaptive == AdaptivePolicy(tolerance=0.03, min_fraction=0.5)  # YAML's "3e-2" string too
    assert plain.adaptive is None
    assert [r.name for r in plan.runs] == [r.name for r in plain.runs]  # no run's config hash depends on it
    over = make_plan(
        load_spec(path, ["adaptive.tolerance=0.05", "adaptive.keep_largest=true"]), output=tmp_path
    )
    assert (
        over.adaptive.tolerance == 0.05 and over.adaptive.keep_largest and over.adaptive.min_fraction == 0.5
    )
    on = make_plan(load_spec(tmp_path / "p.yaml", ["adaptive.tolerance=0.01"]), output=tmp_path)
    assert on.adaptive == AdaptivePolicy(tolerance=0.01)  # --set alone turns it on, the rest defaults
    with pytest.raises(
        ConfigError, match=r"a\.yaml \+ command line: adaptive: min_fraction=1\.5 must be in \[0, 1\]"
    ):
        load_spec(path, ["adaptive.min_fraction=1.5"])

    text = describe_adaptive(plan)
    assert "tolerance=0.03" in text and "2 of 4 runs always train to the end" in text
    assert describe_adaptive(plain) == ""
    # the launch order under the policy: tiny_spec's local backend runs fewer at once than it has runs
    assert plan.spec.launch.backend == "local" and plan.spec.launch.concurrency < len(plan.runs)
    assert plan.spec.launch.order == "longest" and "launch.order=longest starts each size's longest" in text
    budget = make_plan(load_spec(path, ["launch.order=budget"]), output=tmp_path / "o")
    assert "launch.order" not in describe_adaptive(budget)
    unc = make_plan(load_spec(path, ["adaptive.launch_order=uncertainty"]), output=tmp_path / "o")
    assert "the run the fitter ranks first starts" in describe_adaptive(unc)
    wide = make_plan(
        load_spec(path, ["adaptive.launch_order=uncertainty", "launch.concurrency=8"]), output=tmp_path / "o"
    )
    assert "launch_order=uncertainty has no effect here" in describe_adaptive(wide)

    prepare_dir(plan)  # the fitter reads the policy from SWEEP/adaptive.json
    assert AdaptivePolicy.from_dict(json.loads((tmp_path / "o" / ADAPTIVE).read_text())) == plan.adaptive
    prepare_dir(plain)  # the same folder without the block: no stale policy stops runs
    assert not (tmp_path / "o" / ADAPTIVE).exists()


# -------------------------------------------------------------------------------------- sweep, end to end
@pytest.mark.slow  # ~17 s: four sweep invocations, each a subprocess
def test_sweep_skips_stopped_runs_until_resume_stopped(tmp_path, env):
    spec = tiny_spec("stop", adaptive={})  # 1 run of 10 steps, log_every 2, ckpt_every 4
    path = write_spec(tmp_path / "stop.yaml", spec)
    out = tmp_path / "out"
    (run,) = make_plan(load_spec(path), output=out).runs
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "STOP").write_text(json.dumps(REQUEST))  # as the fitter would: stops at the first flush

    def sweep(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run(
            sweep_cmd(path, "--output", str(out), *args), cwd=REPO, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    first = sweep()
    assert "adaptive: the fitter stops a run" in first.stdout and (out / "adaptive.json").is_file()
    assert state.status(run_dir) == "stopped" and (run_dir / "checkpoints" / "step-00000002.pt").is_file()
    assert f"stopped {run.name} at step 2/10 loss" in first.stdout and "1 stopped early" in first.stdout
    assert [a.get("stopped") for a in state.attempts(run_dir)] == [True]

    again = sweep()  # not relaunched
    assert "1 stopped (--resume-stopped" in again.stdout and "0 to run" in again.stdout
    assert len(state.attempts(run_dir)) == 1

    dry = sweep("--dry-run", "--resume-stopped")
    assert "# STOPPED, skipped" in dry.stdout and f"would resume 1 stopped run(s): {run.name}" in dry.stdout
    assert state.status(run_dir) == "stopped"

    resumed = sweep("--resume-stopped")
    assert f"{run.name}: resumed to the end" in resumed.stdout and "1/1 DONE" in resumed.stdout
    assert state.status(run_dir) == "done" and (run_dir / "STOPPED.1.json").is_file()
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl").rows]
    assert steps == [2, 4, 6, 8, 10]  # continued from the stop's checkpoint, nothing twice
    assert "resumed" in (out / "logs" / f"{run.name}.log").read_text()
