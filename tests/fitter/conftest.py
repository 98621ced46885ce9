"""Fixtures shared by the fitter tests."""

from __future__ import annotations

import pytest

from tests.fixtures.training import run_config, train


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two finished runs of one model size (references for each other)."""
    root = tmp_path_factory.mktemp("sweep")
    for lr in ("1e-3", "3e-3"):
        train(run_config(root / f"lr{lr}", max_steps=24, **{"optim.lr": lr}))
    return root
