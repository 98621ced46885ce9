"""Distributed backends on CPU: torchrun --nproc_per_node 2 (gloo) with DDP, DeepSpeed ZeRO-2/3 and FSDP
give the loss trajectory of one process with the same global batch; ZeRO-2/3 and FSDP runs cut back to
a checkpoint resume to the same losses; DDP's gradient-noise-scale hook agrees with accumulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

ARGS = [
    str(REPO / "configs" / "train" / "tiny.yaml"),
    "model.size=0.1M",
    "model.seq_len=32",
    "data.vocab_size=512",
    "data.max_bytes=3000000",
    "data.val_fraction=0.1",
    "train.max_steps=8",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_every=0",
    "train.eval_batches=1",
    "train.ckpt_every=4",
    "train.progress=false",
    "threads=1",
    "optim.warmup_steps=2",
    "device=cpu",
    "metrics.gns=false",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = os.environ.get("SCALING_TRAIN_TEST_CACHE") or str(tmp_path_factory.mktemp("st_cache"))
    return {**os.environ, "SCALING_TRAIN_CACHE": cache, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cmd(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "scaling_train.cli", "train"]
    dist = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [sys.executable, *dist, "-m", "scaling_train.cli", "train"]


def _train(run_dir: Path, env, *extra: str, nproc: int = 1) -> list[dict]:
    cmd = _cmd(nproc)
    res = subprocess.run(
        [*cmd, *ARGS, f"run_dir={run_dir}", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def single(tmp_path_factory, env):
    return _train(tmp_path_factory.mktemp("single") / "run", env)


STRATEGIES = {
    "ddp": ("dist.strategy=ddp",),
    "zero2": ("dist.strategy=deepspeed", "dist.zero_stage=2"),
    "zero3": ("dist.strategy=deepspeed", "dist.zero_stage=3"),
    "fsdp": ("dist.strategy=fsdp",),
}


@pytest.mark.parametrize("extra", list(STRATEGIES.values()), ids=list(STRATEGIES))
def test_two_processes_match_one(tmp_path, env, single, extra):
    rows = _train(tmp_path / "run", env, *extra, nproc=2)
    assert [r["step"] for r in rows] == [r["step"] for r in single]
    for a, b in zip(rows, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-4), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    import yaml

    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["resolved"]["world_size"] == 2


@pytest.mark.parametrize("name", ["zero2", "zero3", "fsdp"])
def test_resume_from_checkpoint(tmp_path, env, single, name):
    run = tmp_path / "run"
    extra = STRATEGIES[name]
    _train(run, env, *extra, nproc=2)
    # cut the run back to its step-4 checkpoint, as a crash after it would leave it
    (run / "DONE").unlink()
    for p in (run / "checkpoints").glob("step-00000008.pt*"):
        p.unlink()
    rows = _train(run, env, *extra, nproc=2)
    for a, b in zip(rows, single):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-4)


def test_ddp_gradient_noise_scale_matches_accumulation(tmp_path, env):
    """DDP's comm hook (local vs all-reduced gradient) measures what one process measures with two
    micro-batches: rank 0's half of the batch is the first micro-batch, the mean is the whole batch."""
    gns = ("metrics.gns=true", "metrics.gns_every=1")
    one = _train(tmp_path / "one", env, *gns, "train.micro_batch_size=4")
    ddp = _train(tmp_path / "ddp", env, *gns, "dist.strategy=ddp", nproc=2)
    assert all("gns_sq_small" in r for r in one) and all("gns_sq_small" in r for r in ddp)
    for a, b in zip(ddp, one):
        assert a["gns_sq_small"] == pytest.approx(b["gns_sq_small"], rel=1e-3)
        assert a["gns_sq_big"] == pytest.approx(b["gns_sq_big"], rel=1e-3)
        if isinstance(b["gns_b_simple"], float):
            assert a["gns_b_simple"] == pytest.approx(b["gns_b_simple"], rel=1e-2)
        else:  # "nan" (JSON's spelling) until the |G|^2 estimate turns positive
            assert a["gns_b_simple"] == b["gns_b_simple"]
    assert sum(isinstance(r.get("gns_b_simple"), float) for r in one) >= 3


EVALS = (
    "evals.tasks=[next_line,compiles]", "evals.n_items=4", "evals.pass_until_items=2", "evals.max_attempts=4",
    "evals.max_new_tokens=4", "evals.batch_size=4", "evals.every=4",
)  # fmt: skip


@pytest.fixture(scope="module")
def single_evals(tmp_path_factory, env):
    run = tmp_path_factory.mktemp("single_evals") / "run"
    return _train(run, env, *EVALS), run


@pytest.mark.parametrize("name", ["fsdp", "zero3"])
def test_evals_with_sharded_parameters(tmp_path, env, single_evals, name):
    """FSDP / ZeRO-3: every rank runs the evals (the forward gathers the shards), sampling follows rank 0,
    rank 0 writes; the scores match one process with the same weights."""
    one, one_dir = single_evals
    rows = _train(tmp_path / "run", env, *STRATEGIES[name], *EVALS, nproc=2)
    ev = [r for r in rows if any(k.startswith("task/") for k in r)]
    ev1 = [r for r in one if any(k.startswith("task/") for k in r)]
    assert [r["step"] for r in ev] == [r["step"] for r in ev1] == [4, 8]
    for a, b in zip(ev, ev1):
        for k in ("task/next_line/p_correct", "task/next_line/loglik_correct"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-4), k
        assert 0 <= a["task/compiles/pass_rate"] <= 1 and 1 <= a["task/compiles/attempts"] <= 2 * 4
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["task"]) for r in recs) == [
        (4, "compiles"),
        (4, "next_line"),
        (8, "compiles"),
        (8, "next_line"),
    ]


def test_stop_request_agrees_across_ranks_and_resumes(tmp_path, env, single):
    """Only rank 0 looks for RUN/STOP; the flag rides in the flush's all-reduce, so both ranks stop at the same
    step and checkpoint together (a disagreement would hang one rank in its next collective); then resumed
    to the end, the curve is one process's."""
    from scaling_train.sweep import state

    run = tmp_path / "run"
    run.mkdir()
    (run / "STOP").write_text('{"reason": "test"}')  # there from the start: the first flush (step 1) stops
    rows = _train(run, env, "dist.strategy=ddp", nproc=2)
    rec = json.loads((run / "STOPPED").read_text())
    assert [r["step"] for r in rows] == [1] and rec["steps"] == 1 and rec["request"] == {"reason": "test"}
    assert not (run / "DONE").exists() and (run / "checkpoints" / "step-00000001.pt").is_file()
    assert state.resume_stopped(run) == run / "STOPPED.1.json"
    rows = _train(run, env, "dist.strategy=ddp", nproc=2)
    assert [r["step"] for r in rows] == [r["step"] for r in single] and (run / "DONE").is_file()
    for a, b in zip(rows, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-4), (a, b)
