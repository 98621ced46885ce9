"""The import contracts in pyproject.toml (``[tool.importlinter]``) hold: layers run one way, the fitter and report
import no training code, private modules stay in their package; and no private name crosses a module (issue 16)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = "scaling_train"


@pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None,
    reason="import-linter is not installed (it is in the dev extra: pip install -e '.[dev]')",
)
def test_import_contracts_are_kept():
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(no_cache=True, no_logo=True))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " kept" in out.stdout and "0 broken" in out.stdout, out.stdout


def _private_imports(pkg: Path) -> list[str]:
    """``from scaling_train.x import _name`` in the package: a private name taken from another module."""
    import ast

    found = []
    for path in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(PKG):
                found += [
                    f"{path.relative_to(pkg.parent)}:{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_no_private_name_crosses_a_module():
    """import-linter sees modules, not names: a private name imported from another module is caught here
    (a package's private modules are the import contract's; the package's own ``_io`` is its lowest layer)."""
    assert not _private_imports(REPO / PKG), "make the name public or keep it in its module:\n" + "\n".join(
        _private_imports(REPO / PKG)
    )


def test_the_private_name_scan_sees_one(tmp_path):
    pkg = tmp_path / PKG
    pkg.mkdir()
    (pkg / "a.py").write_text("from scaling_train.sweep.backends.common import _helper, public\n")
    (pkg / "b.py").write_text(
        "from scaling_train.report.fragments import esc as _e\nfrom __future__ import x\n"
    )
    assert [s.split(": ", 1)[1] for s in _private_imports(pkg)] == [
        "from scaling_train.sweep.backends.common import _helper"
    ]
