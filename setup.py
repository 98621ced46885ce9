"""Builds the optional C++ extension `scaling_train._C` from csrc/*.cpp.

    pip install torch==2.13.0
    pip install --no-build-isolation -e ".[dev]"

The extension is built against the torch already installed (hence --no-build-isolation). Without
torch or a C++ compiler the package installs as pure Python and impl="cpp" is reported unavailable
(scaling_train.ops then tries a cached JIT build, else falls back to impl="torch").
Environment: SCALING_TRAIN_NO_EXT=1 skips the build; SCALING_TRAIN_PORTABLE=1 drops -march=native.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

# keep in sync with scaling_train/ops/_cpp_loader.py (the JIT build uses the same flags)
# -fno-trapping-math: lets GCC inline floorf and if-convert the clamps of the row kernels' exp, so those loops
# vectorise (with FP traps assumed observable they stay scalar: 2-3x slower rows); no value changes
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]
if os.environ.get("SCALING_TRAIN_PORTABLE", "0") != "1":
    CXX_FLAGS.append("-march=native")  # built where it runs: AVX2 / AVX-512 for the row kernels


def _warn(message: str) -> None:
    print(f"\nWARNING (scaling_train setup.py): {message}\n", file=sys.stderr)


def _extension_kwargs() -> dict:
    if os.environ.get("SCALING_TRAIN_NO_EXT", "0") == "1":
        _warn("SCALING_TRAIN_NO_EXT=1: skipping the C++ extension (impl='cpp' unavailable).")
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as err:
        _warn(
            f"torch is not importable ({err}); installing without the C++ extension. Install torch first "
            "and use `pip install --no-build-isolation` to build it."
        )
        return {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    ext = CppExtension(
        name="scaling_train._C", sources=sources, extra_compile_args=CXX_FLAGS, extra_link_args=["-fopenmp"]
    )

    class OptionalBuildExtension(BuildExtension):
        """Turns a failed compile (no compiler, missing headers) into a warning and a pure-Python install."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as err:  # CompileError, LinkError, OSError (no compiler), ...
                _warn(
                    f"building scaling_train._C failed ({type(err).__name__}: {err}); impl='cpp' unavailable."
                )

        def build_extension(self, extension) -> None:
            try:
                super().build_extension(extension)
            except Exception as err:
                _warn(
                    f"building {extension.name} failed ({type(err).__name__}: {err}); impl='cpp' unavailable."
                )

    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)},
    }


setup(**_extension_kwargs())
