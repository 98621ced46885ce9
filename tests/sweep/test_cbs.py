"""Branched critical-batch measurements (``scaling-train cbs``, scaling_train/sweep/cbs.py): a factor-1
branch continues its parent exactly; the CLI end to end with a kill and a rerun (resumed, never counted
twice); the spec's cbs block keeps the branch-point checkpoints and validates with clear errors; the
fitter and the report never take branches for runs of the sweep."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from scaling_train.config import ConfigError, from_dict
from scaling_train.fitter.tail import find_runs
from scaling_train.run_folder import DONE, STOPPED, checkpoint_file
from scaling_train.sweep import cbs, state
from scaling_train.sweep.plan import branch_points, describe_cbs, make_plan
from scaling_train.sweep.spec import load_spec
from scaling_train.train import RunConfig, Trainer, config_hash
from scaling_train.train import checkpoint as ckpt
from tests.fixtures.sweeps import PY, REPO, TINY_RUN, tiny_spec, write_spec

PARENT_STEPS = 80


def _parent_cfg(run_dir: Path, **over) -> RunConfig:
    d = json.loads(json.dumps(TINY_RUN))  # deep copy
    d["model"]["size"] = "0.1M"
    d["train"].update({"max_steps": PARENT_STEPS, "ckpt_every": 0, "keep_steps": [20, 40]})
    d["run_dir"] = str(run_dir)
    for k, v in over.items():
        node = d
        *head, last = k.split(".")
        for p in head:
            node = node.setdefault(p, {})
        node[last] = v
    return from_dict(RunConfig, d)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cbs") / "parent"
    Trainer(_parent_cfg(run), log=lambda s: None).run()
    return run


def _losses(run_dir: Path) -> dict[int, float]:
    return {s: r["loss"] for s, r in cbs._rows(run_dir).items()}


def test_keep_steps_survive_retention(parent):
    """ckpt_every=0 and keep_checkpoints=2: the two branch points are written and kept beside the last."""
    steps = sorted(ckpt.step_of(p) for p in ckpt.list_checkpoints(parent / "checkpoints"))
    assert steps == [20, 40, PARENT_STEPS]
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 30 .*\[20, 40, 80\]"):
        ckpt.load_step(parent / "checkpoints", 30)


def test_factor_one_branch_continues_the_parent_exactly(parent, tmp_path):
    """Same data order, LR schedule and optimizer state: a k=1 branch's per-step losses, averaged over the
    parent's 2-step rows, equal the parent's rows (float32 CPU, same ops: to ~1e-6)."""
    cfg = _parent_cfg(tmp_path / "b1", **{
        "branch.parent": str(parent), "branch.step": 20, "branch.factor": 1, "branch.lr_scale": 1.0,
        "branch.parent_batch_size": 8, "branch.parent_total_steps": PARENT_STEPS,
        "train.max_steps": 20, "train.log_every": 1, "train.keep_steps": [],
    })  # fmt: skip
    Trainer(cfg, log=lambda s: None).run()
    branch, main = cbs._rows(tmp_path / "b1"), cbs._rows(parent)
    for a in range(20, 40, 2):
        got = cbs.window_loss(branch, a - 20, a - 20 + 2)
        assert got == pytest.approx(cbs.window_loss(main, a, a + 2), rel=1e-5, abs=1e-5)


def test_branch_config_is_validated_and_hashed_apart():
    base = _parent_cfg(Path("x"))
    with pytest.raises(
        ConfigError, match=r"train.batch_size=8 must be branch.factor=2 x branch.parent_batch_size=8"
    ):
        _parent_cfg(Path("x"), **{"branch.parent": "p", "branch.step": 20, "branch.factor": 2,
                                   "branch.parent_batch_size": 8, "branch.parent_total_steps": 80})  # fmt: skip
    with pytest.raises(ConfigError, match=r"branch.step=90 must be inside the parent's 1..79 steps"):
        _parent_cfg(Path("x"), **{"branch.parent": "p", "branch.step": 90, "branch.factor": 1,
                                   "branch.parent_batch_size": 8, "branch.parent_total_steps": 80})  # fmt: skip
    # keep_steps is not semantic (adding a cbs block to a sweep keeps its run folders)
    assert config_hash(base) == config_hash(_parent_cfg(Path("x"), **{"train.keep_steps": []}))


def test_cli_errors_name_the_value_and_the_range(parent):
    with pytest.raises(
        ConfigError, match=r"--at 30: no checkpoint of step 30 \(the run has \[20, 40, 80\]\)"
    ):
        cbs.make_branch_plan(parent, at=[30], factors=[2], tokens=1024)
    with pytest.raises(ConfigError, match=r"--at 70: a branch point must be a multiple .* in \[2, 64\]"):
        cbs.make_branch_plan(parent, at=[70], factors=[2, 4], tokens=4096)
    with pytest.raises(
        ConfigError, match=r"--factors=\[1, 2\]: batch multiple 1 must be an integer >= 2 or 1/m"
    ):
        cbs.make_branch_plan(parent, at=[20], factors=[1, 2], tokens=1024)
    with pytest.raises(ConfigError, match=r"--factors=\[0.3, 2\]: batch multiple 0.3 must be"):
        cbs.make_branch_plan(parent, at=[20], factors=[0.3, 2], tokens=1024)
    with pytest.raises(ConfigError, match=r"--factors=\[2, 2.0\]: give distinct"):
        cbs.make_branch_plan(parent, at=[20], factors=[2, 2.0], tokens=1024)
    with pytest.raises(ConfigError, match=r"1/16 of the run's batch of 8 sequences over 1 processes"):
        cbs.make_branch_plan(parent, at=[20], factors=[1 / 16, 2], tokens=1024)
    assert cbs._factors("0.5, 2,4") == [0.5, 2.0, 4.0] and cbs._factors("1/4,8") == [0.25, 8.0]
    with pytest.raises(argparse.ArgumentTypeError, match=r"--factors '2,x': 'x' is no number"):
        cbs._factors("2,x")
    plan = cbs.make_branch_plan(parent, at=[20, 40], factors=[2, 4], tokens=8000)
    assert [r.name.split("-")[:3] for r in plan.runs] == [
        ["s20", "k2", "sqrt"], ["s20", "k4", "sqrt"], ["s40", "k2", "sqrt"], ["s40", "k4", "sqrt"]
    ]  # fmt: skip
    # 8000 tokens = 31.25 parent steps round up to whole steps of k=4 and whole parent rows (lcm(2, 2, 4) = 4)
    assert {r.tokens for r in plan.runs} == {32 * 8 * 32} and plan.sweep_dir == parent.resolve() / "cbs"
    # and to at least 4 steps of the largest factor: 1000 tokens -> 16 parent steps, not 4
    short = cbs.make_branch_plan(parent, at=[20], factors=[2, 4], tokens=1000)
    assert {r.tokens for r in short.runs} == {16 * 8 * 32} and short.runs[1].steps == 4
    assert plan.runs[1].overrides["branch.lr_scale"] == 2.0 and plan.runs[1].batch_size == 32


def test_critical_from_branches_brackets_and_interpolates():
    br = [{"factor": 2, "penalty": 0.01}, {"factor": 4, "penalty": 0.03}, {"factor": 8, "penalty": 0.2}]
    c = cbs.critical_from_branches(br, 16, 64, tol=0.05)
    assert (c["low"], c["high"], c["largest_ok"]) == (64, 128, 64)
    # crossing at 0.05 between (4, 0.03) and (8, 0.2): log k = log 4 + (0.02 / 0.17) log 2
    assert c["value"] == pytest.approx(16 * 4 * 2 ** (0.02 / 0.17))
    assert c["tokens"] == pytest.approx(c["value"] * 64) and c["source"] == "branches"
    every = cbs.critical_from_branches(br[:2], 16, 64, tol=0.05)
    assert every["high"] == math.inf and every["value"] == 64
    none = cbs.critical_from_branches(br, 16, 64, tol=0.001)  # k=2 already pays: below 2B; B is the floor
    assert (none["low"], none["high"], none["low_is_reference"]) == (16, 32, True)
    assert not c["low_is_reference"]


def test_branches_below_the_parents_batch_set_the_reference():
    """With a k = 1/2 branch the penalties are taken against it: a parent whose own batch loses more than
    the tolerance to half its batch is bracketed below its batch; one that does not keeps a measured
    lower bound."""
    below = [{"factor": 0.5, "penalty": -0.10}, {"factor": 2, "penalty": 0.01}, {"factor": 4, "penalty": 0.2}]
    c = cbs.critical_from_branches(below, 16, 64, tol=0.05)
    # the parent (k = 1) pays 0.10 against k = 1/2: crossing 0.05 half way in log k between 1/2 and 1
    assert (c["low"], c["high"], c["low_is_reference"]) == (8, 16, True)
    assert c["value"] == pytest.approx(16 * 0.5 * 2**0.5) and c["largest_ok"] == 8
    within = [
        {"factor": 0.5, "penalty": -0.01},
        {"factor": 2, "penalty": 0.02},
        {"factor": 4, "penalty": 0.2},
    ]
    c = cbs.critical_from_branches(within, 16, 64, tol=0.05)
    assert (c["low"], c["high"], c["low_is_reference"]) == (32, 64, False)
    # 0.05 crossed between d = 0.03 (k = 2) and d = 0.21 (k = 4), both against k = 1/2's -0.01
    assert c["value"] == pytest.approx(16 * 2 * 2 ** (0.02 / 0.18))


def test_a_half_batch_branch_reads_each_parent_batch_in_two_halves(parent, tmp_path):
    """k = 1/2: branch steps 2j and 2j + 1 train on the two halves of parent step s + j's batch, in order,
    at lr_scale x the parent's LR of that step; the lag runs the other way (the branch is ahead)."""
    over = {
        "branch.parent": str(parent), "branch.step": 20, "branch.factor": 1, "branch.divisor": 2,
        "branch.lr_scale": 0.7, "branch.parent_batch_size": 8, "branch.parent_total_steps": PARENT_STEPS,
        "train.batch_size": 4, "train.micro_batch_size": 4, "train.max_steps": 8, "train.log_every": 1,
        "train.keep_steps": [],
    }  # fmt: skip
    br = Trainer(_parent_cfg(tmp_path / "half", **over), log=lambda s: None)
    main = Trainer(_parent_cfg(tmp_path / "main"), log=lambda s: None)
    br._setup(), main._setup()  # data and model, no training
    for j in range(4):
        (a,), (b,), (whole,) = (
            br.micro_batches(2 * j),
            br.micro_batches(2 * j + 1),
            main.micro_batches(20 + j),
        )
        assert torch.equal(torch.cat([a.idx, b.idx]), whole.idx) and torch.equal(
            torch.cat([a.targets, b.targets]), whole.targets
        )
        assert br.lr_at(2 * j) == br.lr_at(2 * j + 1) == pytest.approx(0.7 * main.lr_at(20 + j))
    with pytest.raises(ConfigError, match=r"branch.divisor=3 needs branch.factor=1 \(got 1\) and a branch"):
        _parent_cfg(
            tmp_path / "x",
            **{**over, "branch.divisor": 3, "train.batch_size": 2, "train.micro_batch_size": 2},
        )
    trend = lambda u: 5.0 - 0.01 * np.asarray(u, dtype=float)  # noqa: E731
    assert cbs._lag(trend, 20, 28, 36, 0.5) == pytest.approx(-0.0025)  # mean of 0 and -0.005


@pytest.mark.slow
def test_a_branch_below_the_parents_batch_end_to_end(parent, tmp_path):
    """k = 1/2, 2 and 4 from step 20 on the local backend: the half-batch branch takes twice the parent's
    steps over the same tokens, its window loss and (negative) lag are measured, and the penalties and the
    bracket are taken against it."""
    plan = cbs.make_branch_plan(parent, at=[20], factors=[0.5, 2, 4], tokens=16 * 8 * 32)
    assert [(r.name.split("-")[1], r.steps, r.batch_size) for r in plan.runs] == [
        ("k0.5", 32, 4), ("k2", 8, 16), ("k4", 4, 32)
    ]  # fmt: skip
    try:
        assert cbs.run_branches(plan, backend="local", say=lambda s: None) == 0
        (m,) = cbs.measure(parent)["measurements"]
        half, *rest = m["branches"]
        assert half["factor"] == 0.5 and half["batch_size"] == 4 and half["loss"] is not None
        assert half["lag"] < 0 < rest[0]["lag"]
        c = m["cbs_measured"]
        for b in m["branches"]:
            assert b["ok"] == (b["penalty"] - half["penalty"] <= m["tolerance"])
        assert c is not None and c["low"] in (4, 8, 16, 32) and c["low"] < c["high"]
        assert c == cbs.critical_from_branches(m["branches"], 8, 32, m["tolerance"])
    finally:
        import shutil

        shutil.rmtree(parent / "cbs", ignore_errors=True)  # the module's other tests expect no branches


def test_fitter_and_report_ignore_branch_folders(parent):
    from scaling_train.run_folder import CONFIG, METRICS

    sweep = parent.parent
    (parent / "cbs" / "s20-k2-x").mkdir(parents=True, exist_ok=True)
    (parent / "cbs" / "s20-k2-x" / "config.yaml").write_text("{}")
    (sweep / "cbs").mkdir(exist_ok=True)  # even a sweep-level folder named cbs
    (sweep / "cbs" / "config.yaml").write_text("{}")
    assert parent in find_runs(sweep)
    assert not [p for p in find_runs(sweep) if "cbs" in p.parts[len(sweep.parts) :]]
    assert find_runs(parent) == [parent]
    assert not [p for p in find_runs(parent, markers=(CONFIG, METRICS)) if "cbs" in p.parts]  # the report's


def _spec(tmp_path: Path, **cbs_block) -> Path:
    spec = tiny_spec("c", grid={"sizes": ["0.1M"], "tokens": [256 * 80]}, cbs=cbs_block)
    return write_spec(tmp_path / "c.yaml", spec)


def test_spec_cbs_block_validation(tmp_path):
    for block, msg in [
        ({"every": 120}, r"c.yaml: cbs.every=120.0 must be a percent in \(0, 100\)"),
        (
            {"every": 25, "factors": [1, 4]},
            r"cbs.factors=\[1, 4\]: batch multiple 1.0 must be an integer >= 2",
        ),
        ({"every": 25, "factors": [0.5, 4, 4]}, r"cbs.factors=\[0.5, 4, 4\]: a factor is listed twice"),
        ({"every": 25, "factors": []}, r"cbs.factors is empty"),
        ({"every": 25, "tokens_fraction": 0}, r"cbs.tokens_fraction=0.0 must be in \(0, 1\]"),
        (
            {"every": 25, "lr_rule": "cube"},
            r"cbs.lr_rule='cube' is not allowed; choose one of \['sqrt', 'linear'\]",
        ),
    ]:
        with pytest.raises(ConfigError, match=msg):
            load_spec(_spec(tmp_path, **block))


def test_spec_cbs_block_keeps_branch_checkpoints_without_changing_runs(tmp_path):
    plain = make_plan(
        load_spec(
            write_spec(tmp_path / "p.yaml", tiny_spec("c", grid={"sizes": ["0.1M"], "tokens": [256 * 80]}))
        )
    )
    plan = make_plan(load_spec(_spec(tmp_path, every=25, factors=[2, 4], tokens_fraction=0.1)))
    (run,) = plan.runs
    # 80 steps, log_every 2: 0.1 x 80 = 8 parent steps, raised to 4 steps of k=4 = 16 (lcm(2, 2, 4) = 4 divides)
    assert run.cbs_steps == [20, 40, 60]
    assert branch_points(80, 2, every=25, factors=[2, 4], tokens_fraction=0.1)[1] == 16
    assert run.cbs_parent_steps == 16 and plain.runs[0].cbs_parent_steps == 0
    assert run.overrides["train.keep_steps"] == [20, 40, 60]
    assert run.name == plain.runs[0].name  # same config hash: the cbs block adds no new runs
    # the dry run says what the branches cost and when they start: 3 points x 2 factors of 16/80 steps
    text = describe_cbs(plan, "local")
    assert "1 of 1 runs branched every 25%" in text and "6 branches of 20% of their run's tokens" in text
    assert f"{6 * 0.2 * run.flops:.2e} FLOPs = 120% of the sweep's" in text and "(mid-run)" in text
    assert "after the sweep's runs" in describe_cbs(plan, "torchrun") and describe_cbs(plain, "local") == ""


@pytest.mark.slow
def test_cli_end_to_end_kill_and_rerun(parent, env, tmp_path):
    """`scaling-train cbs` on the local backend, killed (the whole process group) while the first branch
    runs past its checkpoint: the rerun resumes it, runs the second, and cbs.json counts each once."""
    import shutil

    run = tmp_path / "parent"
    shutil.copytree(parent, run, ignore=shutil.ignore_patterns("cbs"))
    tokens = 60 * 8 * 32  # 60 parent steps: 30 branch steps at k=2 (checkpoint at 15), 15 at k=4
    cmd = [
        PY,
        "-m",
        "scaling_train.cli",
        "cbs",
        str(run),
        "--at",
        "20",
        "--factors",
        "2,4",
        "--tokens",
        str(tokens),
    ]
    plan = cbs.make_branch_plan(run, at=[20], factors=[2, 4], tokens=tokens)
    first, second = sorted(plan.runs, key=lambda r: -r.est_s)  # the local backend's order (equal: stable)
    assert first.overrides["branch.factor"] == 2
    log = open(tmp_path / "cbs1.log", "wb")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if list((Path(first.run_dir) / "checkpoints").glob("step-*.pt")):
            break
        assert proc.poll() is None, (tmp_path / "cbs1.log").read_text()
        time.sleep(0.01)
    else:
        pytest.fail("the first branch did not checkpoint in 180 s")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert not state.is_done(first.run_dir), "finished before the kill: nothing was resumed"
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert state.is_done(first.run_dir) and state.is_done(second.run_dir)
    assert "resumed" in (run / "cbs" / "logs" / f"{first.name}.log").read_text()
    steps = [
        json.loads(ln)["step"] for ln in (Path(first.run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, first.steps + 1))  # the cut rows were replaced, none written twice
    res = json.loads((run / "cbs" / "cbs.json").read_text())
    (m,) = res["measurements"]
    assert [b["factor"] for b in m["branches"]] == [2, 4] and not m["pending"]
    assert m["tokens"] == tokens and m["window"] == [80 - 28, 80] and m["tolerance"] > 0
    assert all(b["penalty"] is not None and b["lag"] >= 0 for b in m["branches"])
    assert m["cbs_measured"]["source"] == "branches" and m["cbs_measured"]["low"] >= 8
    assert m["cost"]["tokens_ratio"] == pytest.approx(60 / PARENT_STEPS)
    assert "measured critical batch" in again.stdout
    assert "[cbs]   cost per branch: " in again.stdout  # the unresumed branch's start-up / training / end
    # a third invocation runs nothing and writes the same measurement
    third = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "2/2 runs DONE, 0 to run" in third.stdout, third.stdout
    assert json.loads((run / "cbs" / "cbs.json").read_text())["measurements"][0]["branches"] == m["branches"]
    assert [len(state.attempts(r.run_dir)) for r in (first, second)] == [1, 1]


def _sweep(tmp_path: Path, env, spec: dict):
    """``scaling-train sweep`` of ``spec`` into tmp_path/out, checked to exit 0; (its result, its plan)."""
    path = write_spec(tmp_path / f"{spec['name']}.yaml", spec)
    out = tmp_path / "out"
    res = subprocess.run(
        [PY, "-m", "scaling_train.cli", "sweep", str(path), "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return res, make_plan(load_spec(path), output=out)


@pytest.mark.slow
def test_sweep_with_cbs_block_branches_mid_run(tmp_path, env):
    """The local backend starts a run's branches while the run still trains (a free slot, its branch point's
    checkpoint written), each once; the sweep's after-the-runs pass then has nothing left to run."""
    spec = tiny_spec(
        "cb", grid={"sizes": ["0.1M"], "tokens": [256 * 400]}, cbs={"every": 25, "factors": [2]},
        launch={"concurrency": 2},
    )  # fmt: skip
    res, plan = _sweep(tmp_path, env, spec)
    (run,) = plan.runs
    assert run.cbs_steps == [100, 200, 300]
    got = json.loads((Path(run.run_dir) / "cbs" / "cbs.json").read_text())
    assert [m["step"] for m in got["measurements"]] == [100, 200, 300]
    assert all(m["cbs_measured"] and not m["pending"] and m["loss"] is not None for m in got["measurements"])
    assert yaml.safe_load((Path(run.run_dir) / "config.yaml").read_text())["train"]["keep_steps"] == [
        100, 200, 300
    ]  # fmt: skip
    (parent_try,) = state.attempts(run.run_dir)
    first = Path(run.run_dir) / "cbs" / got["measurements"][0]["branches"][0]["run"]
    (branch_try,) = state.attempts(first)  # one attempt each: never run twice
    assert branch_try["start"] < parent_try["end"], "the step-100 branch waited for its parent to end"
    c = got["measurements"][0]["cost"]  # timing is not asserted, only that the split is there
    assert c["branch_train_s"] > 0 and c["parent_span_s"] > 0 and c["branch_start_s"] is not None
    assert "[cbs] 1 branched run(s) had every branch DONE already (mid-run)" in res.stdout
    assert "measured critical batch" in res.stdout


def test_mid_run_branches_follow_the_parents_checkpoints(parent, tmp_path):
    """``MidRun.poll`` hands out a step's branches once its parent has the step's checkpoint, each once;
    until then they count as pending in cbs.json (no measurement from a partial set of factors); a parent
    stopped early gets none."""
    import shutil

    plan = make_plan(load_spec(_spec(tmp_path, every=25, factors=[2])), output=tmp_path / "out")
    (run,) = plan.runs
    assert run.cbs_steps == [20, 40, 60] and run.steps == PARENT_STEPS
    shutil.copytree(parent, run.run_dir, ignore=shutil.ignore_patterns("cbs"))
    (Path(run.run_dir) / "checkpoints" / checkpoint_file(PARENT_STEPS)).unlink()
    mid = cbs.MidRun(plan, say=lambda s: None)
    got = mid.poll()  # the parent has the checkpoints of steps 20 and 40, not 60
    assert sorted(r.overrides["branch.step"] for _, r in got) == [20, 40]
    assert all(bp.sweep_dir == Path(run.run_dir) / "cbs" for bp, _ in got)
    assert mid.poll() == [] and mid.expecting({run.run_dir}) and not mid.expecting(set())
    res = cbs.write_results(run.run_dir)  # planned, none started: every measurement waits for its branch
    assert [(m["step"], len(m["pending"]), m["cbs_measured"]) for m in res["measurements"]] == [
        (20, 1, None), (40, 1, None), (60, 1, None)
    ]  # fmt: skip
    (Path(run.run_dir) / "checkpoints" / checkpoint_file(60)).write_bytes(b"")
    (late,) = mid.poll()
    assert late[1].overrides["branch.step"] == 60 and mid.poll() == [] and not mid.expecting({run.run_dir})
    stopped = cbs.MidRun(plan, say=lambda s: None)
    (Path(run.run_dir) / DONE).unlink()
    (Path(run.run_dir) / STOPPED).write_text("{}")
    assert stopped.poll() == [] and not stopped.expecting({run.run_dir})


def test_lag_is_the_parent_trend_over_the_batches_a_branch_step_has_not_consumed():
    """Linear trend -0.01 per step, k = 4: the parent's losses on the 4 batches of a branch step are
    measured after 0, 1, 2, 3 more updates than the branch's: a lag of 0.01 x 1.5."""
    trend = lambda u: 5.0 - 0.01 * np.asarray(u, dtype=float)  # noqa: E731
    assert cbs._lag(trend, 20, 28, 36, 4) == pytest.approx(0.015)
    assert cbs._lag(trend, 20, 28, 36, 1) == pytest.approx(0.0)


@pytest.mark.slurm
@pytest.mark.slow
def test_cli_on_a_real_slurm_cluster(parent, env, tmp_path, slurm_cluster):
    """`scaling-train cbs --backend slurm`: the branches go through an sbatch job array (the sweep's Slurm
    backend), each runs once, cbs.json counts both, and a rerun submits nothing."""
    import shutil

    run = tmp_path / "parent run"  # a space in the path: quoted everywhere
    shutil.copytree(parent, run, ignore=shutil.ignore_patterns("cbs"))
    cmd = [PY, "-m", "scaling_train.cli", "cbs", str(run), "--at", "40", "--factors", "2,4", "--tokens", "4096",
           "--backend", "slurm"]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "submitted array-0.sbatch as job array" in res.stdout
    plan = cbs.make_branch_plan(run, at=[40], factors=[2, 4], tokens=4096)
    for r in plan.runs:
        assert state.is_done(r.run_dir) and len(state.attempts(r.run_dir)) == 1
    (m,) = json.loads((run / "cbs" / "cbs.json").read_text())["measurements"]
    assert [b["factor"] for b in m["branches"]] == [2, 4] and not m["pending"]
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "all 2 runs DONE" in again.stdout


def test_branches_use_the_sweeps_launch_settings(tmp_path):
    """A run of a sweep: its branches take the sweep's spec.yaml (backend, Slurm, concurrency), even when the
    spec's relative base does not resolve from the sweep folder; never the fitter or the report."""
    spec = tiny_spec(
        "sw", base="../train/tiny.yaml", launch={"concurrency": 3, "fitter": True, "report": True}
    )
    write_spec(tmp_path / "spec.yaml", spec)
    got = cbs._sweep_spec(tmp_path / "N1e5-run")
    assert got.name == "sw-cbs" and got.launch.concurrency == 3
    assert not got.launch.fitter and not got.launch.report
    assert cbs._sweep_spec(tmp_path / "x" / "lone-run").name == "lone-run-cbs"  # no spec: the defaults


def test_branch_cost_splits_start_up_training_and_end(tmp_path):
    """One attempt from t=100 to t=120, rows of steps 1..10 at t=103..112 (1 s a step): 2 s of start-up
    before step 1's second, 10 s of training, 8 s of end; a resumed run (two attempts) is not split."""
    rows = {s: {"loss": 1.0, "time": 102.0 + s} for s in range(1, 11)}
    state.record_attempt(tmp_path, {"attempt": 1, "start": 100.0, "end": 120.0, "rc": 0})
    assert cbs._phases_s(tmp_path, rows) == pytest.approx((2.0, 10.0, 8.0))
    state.record_attempt(tmp_path, {"attempt": 2, "start": 130.0, "end": 131.0, "rc": 0})
    assert cbs._phases_s(tmp_path, rows) == (None, None, None)
    assert cbs._span_s(rows, 2, 8, 20.0) == pytest.approx(6.0) and cbs._span_s(rows, 2, 8, 5.0) is None


def test_branches_run_on_the_parents_nodes(parent, tmp_path):
    """A branch trains on the parent's processes: (nodes, devices) from the sweep's plan.json entry of the
    parent when it matches the parent's world size, else one node with that world size."""
    (tmp_path / "plan.json").write_text(
        json.dumps({"runs": [{"run_dir": str(tmp_path / "p"), "nodes": 2, "devices": 4}]})
    )
    (tmp_path / "p").mkdir()
    assert cbs._parent_layout((tmp_path / "p").resolve(), 8) == (2, 4)
    assert cbs._parent_layout((tmp_path / "p").resolve(), 4) == (1, 4)  # plan.json disagrees: the run rules
    assert cbs._parent_layout((tmp_path / "q").resolve(), 2) == (1, 2)  # not in the plan
    plan = cbs.make_branch_plan(parent, at=[20], factors=[2], tokens=16 * 8 * 32, layout=(2, 1))
    assert [(r.nodes, r.devices) for r in plan.runs] == [(2, 1)]
    plain = cbs.make_branch_plan(parent, at=[20], factors=[2], tokens=16 * 8 * 32)
    assert [(r.nodes, r.devices) for r in plain.runs] == [(1, 1)]


@pytest.mark.slow
def test_one_slot_runs_a_runs_branches_before_the_next_run(tmp_path, env):
    """launch.concurrency=1: the longest run goes first, then its branches (ready since its step-20
    checkpoint), then the next run of the sweep; each once."""
    spec = tiny_spec(
        "c1", grid={"sizes": ["0.1M"], "tokens": [256 * 40, 256 * 80]}, cbs={"every": 50, "factors": [2]}
    )
    _, plan = _sweep(tmp_path, env, spec)
    short, long_ = sorted(plan.runs, key=lambda r: r.steps)
    (m,) = json.loads((Path(long_.run_dir) / "cbs" / "cbs.json").read_text())["measurements"]
    (b,) = m["branches"]
    (long_try,) = state.attempts(long_.run_dir)
    (branch_try,) = state.attempts(Path(long_.run_dir) / "cbs" / b["run"])
    (short_try,) = state.attempts(short.run_dir)
    assert long_try["end"] <= branch_try["start"] and branch_try["end"] <= short_try["start"]


def test_a_ready_run_starts_before_a_branch_whose_parent_still_trains(tmp_path):
    """Local backend, two slots: a branch ready while its parent trains yields to a run of the sweep that is
    ready (started late, a long run would end the sweep alone); once the parent has ended, its branch goes
    before any run, so it starts no later than the slot its parent frees."""
    from types import SimpleNamespace

    from scaling_train.sweep.backends.local import _todo, _Workers

    spec = tiny_spec(
        "cy", grid={"sizes": ["0.1M"], "tokens": [256 * 40, 256 * 80]}, cbs={"every": 50, "factors": [2]},
        launch={"concurrency": 2},
    )  # fmt: skip
    plan = make_plan(load_spec(write_spec(tmp_path / "cy.yaml", spec)), output=tmp_path / "out")
    short, long_ = sorted(plan.runs, key=lambda r: r.steps)
    w = _Workers(plan, _todo(plan), say=lambda s: None)
    claimed = w.claim()[1]  # nothing trains yet: the longest run first (LPT)
    assert claimed.name == long_.name and w.running == {long_.run_dir}
    branch = SimpleNamespace(run_dir=str(Path(long_.run_dir) / "cbs" / "b"), name="b")
    w.branch_pending = [(SimpleNamespace(sweep_dir=Path(long_.run_dir) / "cbs"), branch)]
    assert w.claim()[1].name == short.name, "the branch took the slot a ready run was waiting for"
    assert w.claim()[1] is branch  # no run left to start: the branch takes the next slot
    w.running = {short.run_dir}
    w.branch_pending = [(SimpleNamespace(sweep_dir=Path(long_.run_dir) / "cbs"), branch)]
    w.pending = [short]  # its parent has ended: the branch goes before a ready run
    assert w.claim()[1] is branch
