import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.train import Trainer, lr_array, train
from scaling_train.train import checkpoint as ckpt
from tests.fixtures.runs import tiny_config, tiny_overrides
from tests.fixtures.tolerances import sum_rtol

REPO = Path(__file__).resolve().parents[2]
VOLATILE = {"time", "tokens_per_s"}


def _rows(run_dir):
    return [
        {k: v for k, v in r.items() if k not in VOLATILE}
        for r in read_jsonl(Path(run_dir) / "metrics.jsonl").rows
    ]


class Crash(Exception):
    pass


class CrashAt:
    def __init__(self, step):
        self.step = step

    def on_before_step(self, trainer, step):
        if step == self.step:
            raise Crash(f"simulated crash at step {step}")


@pytest.mark.slow  # ~18 s on a loaded 2-core machine
def test_loss_falls_on_builtin_corpus(tmp_path):
    """A ~1M-parameter model learns the stdlib corpus within 200 steps on CPU."""
    cfg = tiny_config(
        tmp_path / "r",
        **{
            "model.size": "1M",
            "train.max_steps": 200,
            "train.batch_size": 8,
            "train.eval_every": 100,
            "train.eval_batches": 4,
            "train.ckpt_every": 0,
            "optim.lr": 3e-3,
            "optim.warmup_steps": 20,
        },
    )
    res = train(cfg, log=lambda s: None)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl").rows
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert first > 0.8 * math.log(1024)  # starts near uniform (ln V = 6.93)
    assert last < first - 2.0, (first, last)  # falls by over 2 nats (6.9 -> ~4.3 here)
    assert res.final_eval_loss is not None and res.final_eval_loss < 0.72 * math.log(1024)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert (tmp_path / "r" / "DONE").is_file()


class ScheduleSeenAtFirstFlush:
    """Records whether RUN/lr_schedule.json was there when the first metrics row was flushed."""

    seen: bool | None = None

    def on_flush(self, trainer, row):
        if self.seen is None:
            self.seen = (trainer.run_dir / "lr_schedule.json").is_file()


def test_metrics_rows_and_config_written(tmp_path):
    cfg = tiny_config(tmp_path / "r")
    first = ScheduleSeenAtFirstFlush()
    train(cfg, log=lambda s: None, callbacks=[first])
    # the planned LR of every step, written before the first row: fitter and report read it, not train code
    assert first.seen is True
    lr = json.loads((tmp_path / "r" / "lr_schedule.json").read_text())
    assert lr == pytest.approx(lr_array(cfg.optim, 30).tolist(), rel=0, abs=0)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl").rows
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    r = rows[-1]
    assert r["tokens"] == 30 * 8 * 64
    assert r["flops"] == pytest.approx(r["tokens"] * cfg_flops(tmp_path / "r"))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eval_loss", "eval_acc"} <= set(r)
    assert r["lr"] == pytest.approx(lr_array(cfg.optim, 30)[-1])
    import yaml

    conf = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert conf["model"]["d_model"] == 96 and conf["model"]["vocab_size"] == 1024
    assert conf["resolved"]["total_steps"] == 30 and len(conf["config_hash"]) == 8
    done = json.loads((tmp_path / "r" / "DONE").read_text())
    assert done["steps"] == 30 and done["tokens"] == 30 * 8 * 64
    # a second invocation sees DONE and does nothing
    res = train(tiny_config(tmp_path / "r"), log=lambda s: None)
    assert res.already_done


def cfg_flops(run_dir):
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["resolved"]["flops_per_token"]


def test_eval_writes_per_document_loglik_records(tmp_path):
    train(tiny_config(tmp_path / "r", **{"train.eval_every": 30}), log=lambda s: None)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl").rows
    recs = read_jsonl(tmp_path / "r" / "samples.jsonl").rows
    assert {r["step"] for r in recs} == {30}
    # the records partition the evaluated tokens: 2 eval batches x 8 sequences x 64 tokens
    assert sum(r["tokens"] for r in recs) == 2 * 8 * 64
    # nll_sum: a float32 sum of a document's <= 64 token NLLs; eval_loss: the same NLLs summed in float64
    assert sum(r["nll_sum"] for r in recs) / (2 * 8 * 64) == pytest.approx(
        rows[-1]["eval_loss"], rel=sum_rtol(64)
    )
    assert all(r["loglik"] == -r["nll_sum"] and r["tokens"] > 0 for r in recs)
    # sample ids are documents of the validation split: increasing along the split
    keys = [(r["seq"], r["sample"]) for r in recs]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_grad_accumulation_matches_full_batch(tmp_path):
    a = tiny_config(tmp_path / "a", **{"train.max_steps": 6, "train.eval_every": 0, "train.ckpt_every": 0})
    b = tiny_config(
        tmp_path / "b",
        **{"train.max_steps": 6, "train.eval_every": 0, "train.ckpt_every": 0, "train.micro_batch_size": 2},
    )
    train(a, log=lambda s: None)
    train(b, log=lambda s: None)
    la = [r["loss"] for r in _rows(tmp_path / "a")]
    lb = [r["loss"] for r in _rows(tmp_path / "b")]
    assert la == pytest.approx(lb, rel=1e-4)


@pytest.mark.slow  # ~14 s on a loaded 2-core machine
def test_kill9_and_resume_equals_uninterrupted(tmp_path):
    """A real process killed with SIGKILL after its step-20 checkpoint resumes bitwise (CPU)."""
    # micro-batches of 4: the gradient-noise-scale EMAs run and must continue across the resume
    extra = {"train.max_steps": 40, "train.eval_every": 15, "train.micro_batch_size": 4}
    train(tiny_config(tmp_path / "ref", **extra), log=lambda s: None)

    run = tmp_path / "killed"
    overrides = tiny_overrides(run, **extra)
    # the child trains normally, then hangs before step 26 so the kill lands mid-run
    script = (
        "import sys, time\n"
        "from scaling_train import config as C\n"
        "from scaling_train.train import RunConfig, Trainer\n"
        "class Hang:\n"
        "    def on_before_step(self, t, step):\n"
        "        if step == 25: time.sleep(600)\n"
        f"cfg = C.load(RunConfig, None, {overrides!r})\n"
        "Trainer(cfg, callbacks=[Hang()]).run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    target = run / "checkpoints" / "step-00000020.pt.sha256"
    while not target.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.1)
    rows_before = read_jsonl(run / "metrics.jsonl").rows
    while not rows_before or rows_before[-1]["step"] < 25:  # let it write rows past the checkpoint
        time.sleep(0.1)
        rows_before = read_jsonl(run / "metrics.jsonl").rows
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "DONE").exists()
    # rerun the same command line: resumes from step 20, drops rows 21-25 and recomputes them
    res = subprocess.run(
        [sys.executable, "-m", "scaling_train.cli", "train", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "resumed" in res.stdout and "step-00000020.pt" in res.stdout
    ref_rows = _rows(tmp_path / "ref")
    assert any("gns_b_simple" in r for r in ref_rows)
    assert _rows(run) == ref_rows  # bitwise: every loss, lr, grad norm, noise scale and eval value
    samples = read_jsonl(run / "samples.jsonl").rows  # eval at step 15 was redone, not duplicated
    assert samples == read_jsonl(tmp_path / "ref" / "samples.jsonl").rows
    assert sorted({r["step"] for r in samples}) == [15, 30, 40]


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
    extra = {"train.max_steps": 30, "train.keep_checkpoints": 3}
    train(tiny_config(tmp_path / "ref", **extra), log=lambda s: None)
    run = tmp_path / "r"
    with pytest.raises(Crash):
        Trainer(tiny_config(run, **extra), callbacks=[CrashAt(25)], log=lambda s: None).run()
    latest = run / "checkpoints" / "step-00000020.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # torn write
    logs = []
    with pytest.warns(UserWarning, match="step-00000020.pt.*checksum mismatch"):
        res = Trainer(tiny_config(run, **extra), log=logs.append).run()
    assert res.resumed_from == 10
    assert _rows(run) == _rows(tmp_path / "ref")


def test_all_checkpoints_corrupt_is_an_error_not_a_restart(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(Crash):
        Trainer(tiny_config(run), callbacks=[CrashAt(15)], log=lambda s: None).run()
    for p in ckpt.list_checkpoints(run / "checkpoints"):
        p.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="no usable checkpoint"):
        Trainer(tiny_config(run), log=lambda s: None).run()


def test_checkpoints_are_pruned_and_atomic(tmp_path):
    d = tmp_path / "c"
    for s in (1, 2, 3, 4):
        ckpt.save(d, s, {"x": torch.tensor([s])}, keep=2)
    names = sorted(p.name for p in d.iterdir())
    assert names == [
        "step-00000003.pt",
        "step-00000003.pt.sha256",
        "step-00000004.pt",
        "step-00000004.pt.sha256",
    ]
    path, state = ckpt.load_latest(d)
    assert path.name == "step-00000004.pt" and state["x"].item() == 4


def test_changed_config_in_same_run_dir_is_refused(tmp_path):
    from scaling_train.train.trainer import ConfigMismatchError

    with pytest.raises(Crash):
        Trainer(tiny_config(tmp_path / "r"), callbacks=[CrashAt(12)], log=lambda s: None).run()
    with pytest.raises(ConfigMismatchError, match=r"optim.lr: 0.003 -> 0.001"):
        Trainer(tiny_config(tmp_path / "r", **{"optim.lr": 1e-3}), log=lambda s: None).run()
    # cosmetic keys may change
    Trainer(tiny_config(tmp_path / "r", **{"train.progress": True}), log=lambda s: None).run()


def test_config_and_metrics_record_unique_tokens_and_epochs(tmp_path):
    """A run on a small corpus slice repeats it: config.yaml's resolved section holds U and the planned
    epochs, every metrics row its epochs so far (tokens / U)."""
    import yaml

    from scaling_train.data import prepare

    cfg = tiny_config(
        tmp_path / "r", **{"data.max_bytes": 20_000, "train.eval_every": 0, "train.ckpt_every": 0}
    )
    U = prepare(cfg.data, cfg.model.seq_len, log=lambda s: None).train.unique_tokens
    train(cfg, log=lambda s: None)
    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["resolved"]
    assert resolved["unique_tokens"] == U
    assert resolved["epochs"] == pytest.approx(30 * 8 * 64 / U, rel=1e-12)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl").rows
    for r in rows:
        assert r["epochs"] == pytest.approx(r["tokens"] / U, rel=1e-12)
    assert rows[-1]["epochs"] > 1.0  # 15,360 tokens from a ~20 kB slice: the data repeats
