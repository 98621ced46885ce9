"""Fixtures for the kernel tests.

Triton kernels run on CPU tensors under the Triton interpreter; TRITON_INTERPRET must be set before
triton.jit decorates them, so it is set here (CPU-only machines) before any test imports them.
Deselect the (slow) interpreter tests with `-m "not triton"`.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton: runs Triton kernels (under TRITON_INTERPRET=1 on CPU)")
