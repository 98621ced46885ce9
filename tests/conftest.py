"""Shared fixtures: one tokenizer/shard cache per test session, tiny run configs, GPU/CUDA skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on CPU tensors under the interpreter; it must be set before any triton.jit runs,
# and any test module may import scaling_train.ops first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Small corpus cap so a session trains its BPE in a second or two; every test shares the cache.
TINY_MAX_BYTES = 1_500_000


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    root = os.environ.get("SCALING_TRAIN_TEST_CACHE") or str(tmp_path_factory.mktemp("st_cache"))
    old = os.environ.get("SCALING_TRAIN_CACHE")
    os.environ["SCALING_TRAIN_CACHE"] = root
    yield Path(root)
    if old is None:
        os.environ.pop("SCALING_TRAIN_CACHE", None)
    else:
        os.environ["SCALING_TRAIN_CACHE"] = old


def tiny_overrides(run_dir: Path | str, **extra) -> list[str]:
    """Overrides that make a run CPU-test sized (0.2M model, seq_len 64, vocab 1024, 1 thread)."""
    base = {
        "run_dir": str(run_dir),
        "threads": 1,
        "model.size": "0.2M",
        "model.seq_len": 64,
        "data.vocab_size": 1024,
        "data.max_bytes": TINY_MAX_BYTES,
        "train.batch_size": 8,
        "train.max_steps": 30,
        "train.log_every": 5,
        "train.eval_every": 15,
        "train.eval_batches": 2,
        "train.ckpt_every": 10,
        "train.progress": False,
        "optim.warmup_steps": 5,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(run_dir: Path | str, **extra):
    from scaling_train import config as config_mod
    from scaling_train.train import RunConfig

    return config_mod.load(RunConfig, None, tiny_overrides(run_dir, **extra))


@pytest.fixture
def tiny_cfg(tmp_path):
    return lambda **extra: tiny_config(tmp_path / "run", **extra)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
