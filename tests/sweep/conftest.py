"""Fixtures of the sweep tests: tiny specs on the built-in corpus, a shared data cache, a real Slurm.

Runs are tiny (0.1M params, seq_len 32, vocab 512, ~3 MB of text, 1 thread) so the whole folder
stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

TINY_RUN = {
    "threads": 1,
    "device": "cpu",
    "model": {"seq_len": 32},
    "data": {"vocab_size": 512, "max_bytes": 3_000_000, "val_fraction": 0.1},
    "optim": {"warmup_steps": 2, "lr": 3e-3},
    "train": {
        "batch_size": 8,
        "max_steps": 10,
        "log_every": 2,
        "eval_every": 0,
        "eval_batches": 1,
        "ckpt_every": 4,
        "progress": False,
    },
    "metrics": {"gns": False},
}


def tiny_spec(name: str = "t", **over) -> dict:
    spec = {
        "name": name,
        "run": TINY_RUN,
        "grid": {"sizes": ["0.1M"], "tokens": [2560], "seeds": [0]},  # 10 steps of 8 x 32 tokens
        "rules": {"lr": {"value": 3e-3, "ref_size": "1M"}, "batch_size": {"value": 8, "ref_size": "1M"}},
        "resources": {"devices": 1},
        "launch": {"concurrency": 1, "retries": 0, "fitter": False, "report": False, "stale_lock_s": 30},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict) and k != "grid":  # a grid is given whole
            spec[k] = {**spec[k], **v}
        else:
            spec[k] = v
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_cmd(spec_path: Path, *args: str) -> list[str]:
    return [PY, "-m", "scaling_train.cli", "sweep", str(spec_path), *args]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One tokenizer/shard cache for every test of the session (built once, under a file lock)."""
    d = Path(os.environ.get("SCALING_TRAIN_TEST_CACHE") or tmp_path_factory.mktemp("st_cache"))
    return d


@pytest.fixture()
def env(data_cache) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"SCALING_TRAIN_CACHE": str(data_cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    return e


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm cluster (launch/slurm/local_cluster.sh); skips with the reason otherwise."""
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"Slurm not installed (missing {', '.join(missing)}): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (munged key, slurmd)")
    script = REPO / "launch" / "slurm" / "local_cluster.sh"
    out = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"local Slurm cluster did not start:\n{out.stdout}\n{out.stderr}")
    yield script
