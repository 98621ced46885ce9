"""Two torchrun agents on 127.0.0.1 stand in for two nodes: `scaling-train sweep --backend torchrun`
started twice (NODE_RANK=0 and 1) runs each run over both through a c10d rendezvous."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from scaling_train.sweep import state
from scaling_train.sweep.plan import make_plan
from scaling_train.sweep.spec import load_spec
from tests.fixtures.sweeps import REPO, sweep_cmd, tiny_spec, write_spec

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_agents_nnodes_2(tmp_path, env):
    port = _free_port()
    spec = tiny_spec(
        "two-nodes",
        grid={"sizes": ["0.1M"], "tokens": [2560, 5120]},
        torchrun={"nnodes": 2, "master_addr": "127.0.0.1", "master_port": port},
        cbs={"every": 50, "factors": [2]},  # the 20-step run only: a branch at step 10 over both nodes
        launch={"report": True},
    )
    path = write_spec(tmp_path / "s.yaml", spec)
    out = tmp_path / "out"
    plan = make_plan(load_spec(path), output=out)
    assert all(r.nodes == 2 and r.world_size == 2 for r in plan.runs)
    procs = [
        subprocess.Popen(
            sweep_cmd(path, "--output", str(out), "--backend", "torchrun"),
            cwd=REPO,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (out / "logs").glob("*.log"))
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs) + logs
    for r in plan.runs:
        assert state.is_done(r.run_dir)
        cfg = yaml.safe_load((out / r.name / "config.yaml").read_text())
        assert cfg["resolved"]["world_size"] == 2  # one process on each "node"
        assert len(state.attempts(r.run_dir)) == 1
    assert "2/2 DONE" in outs[0]
    # the critical-batch branch ran after the runs on the same two nodes: world size 2, one attempt
    (short, long_) = sorted(plan.runs, key=lambda r: r.steps)
    assert short.cbs_steps == [] and long_.cbs_steps == [10]
    res = json.loads((Path(long_.run_dir) / "cbs" / "cbs.json").read_text())
    (m,) = res["measurements"]
    (b,) = m["branches"]
    assert not m["pending"] and b["factor"] == 2 and b["penalty"] is not None
    bdir = Path(long_.run_dir) / "cbs" / b["run"]
    assert yaml.safe_load((bdir / "config.yaml").read_text())["resolved"]["world_size"] == 2
    assert len(state.attempts(bdir)) == 1
    assert "[sweep] report" in outs[0] and "[sweep] report" not in outs[1]  # the last report: node 0 only
