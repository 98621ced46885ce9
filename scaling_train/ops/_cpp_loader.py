"""Loads the C++ CPU kernels (`torch.ops.scaling_train.*`).

Order: the prebuilt extension `scaling_train._C` (built by setup.py), else a JIT build of csrc/*.cpp
with torch.utils.cpp_extension.load (cached under TORCH_EXTENSIONS_DIR, ~1 min the first time),
else unavailable: impl="auto" then falls back to impl="torch", impl="cpp" raises with the reason.
Set SCALING_TRAIN_NO_JIT=1 to skip the JIT build.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

_CSRC = Path(__file__).resolve().parents[2] / "csrc"
_reason: str | None = None
# same flags as setup.py; -march=native: the JIT build always runs on the machine that uses it
_CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-march=native"]


def _ops_registered() -> bool:
    return hasattr(torch.ops.scaling_train, "lce_fwd")


_available: bool | None = None  # cached result of the first load attempt


@torch.compiler.assume_constant_result  # torch.compile: evaluated once at trace time, not traced
def cpp_available() -> bool:
    """True once torch.ops.scaling_train.lce_fwd is registered (loads or JIT-builds it on first call)."""
    global _available
    if _available is None:
        _available = _load()
    return _available


def _load() -> bool:
    global _reason
    try:
        import scaling_train._C  # noqa: F401  (registers the ops on import)
    except ImportError as err:
        _reason = f"scaling_train._C is not built ({err})"
    if not _ops_registered() and os.environ.get("SCALING_TRAIN_NO_JIT", "0") != "1":
        sources = sorted(str(p) for p in _CSRC.glob("*.cpp"))
        if not sources:
            _reason = f"{_reason}; no C++ sources found under {_CSRC} for a JIT build"
        else:
            try:
                from torch.utils.cpp_extension import load

                load(
                    name="scaling_train_C_jit",
                    sources=sources,
                    extra_cflags=_CXX_FLAGS,
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,
                    verbose=False,
                )
            except Exception as err:  # no compiler / ninja / headers: report, fall back
                _reason = f"{_reason}; JIT build of {_CSRC} failed: {type(err).__name__}: {err}"
                warnings.warn(
                    f"scaling_train: C++ kernels unavailable, impl='cpp' disabled: {_reason}", stacklevel=2
                )
    if _ops_registered():
        from . import lce_cpp

        lce_cpp.register_fakes()
        return True
    return False


def cpp_unavailable_reason() -> str:
    return "available" if cpp_available() else str(_reason)
