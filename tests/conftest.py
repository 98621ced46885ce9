"""Session-wide fixtures: one tokenizer/shard cache per test session, ``tiny_cfg``, GPU/CUDA skips.

Shared helpers that are not fixtures (tiny run configs, tolerances, synthetic data, the browser check) live in
``tests/fixtures`` and are imported absolutely: ``from tests.fixtures.runs import tiny_config``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.fixtures.runs import tiny_config

# Triton kernels run on CPU tensors under the interpreter; it must be set before any triton.jit runs,
# and any test module may import scaling_train.ops first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
