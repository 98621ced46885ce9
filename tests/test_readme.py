"""The README stays true: its config reference is generated from the code, and .ci/run installs the
package with the README's own install command and runs its test command.

    python tests/test_readme.py --fix     # regenerate the config reference in README.md
"""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def _reference() -> str:
    from scaling_train.config import markdown_reference
    from scaling_train.train import RunConfig

    return markdown_reference(RunConfig)


def _blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_config_reference_in_sync():
    text = (REPO / "README.md").read_text()
    current = text.split(START)[1].split(END)[0].strip()
    assert current == _reference(), (
        "README config reference is stale: run `python tests/test_readme.py --fix`"
    )


def test_quickstart_is_two_commands_and_ci_uses_them():
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quickstart")[1].split("\n## ")[0]
    blocks = [b.strip() for b in _blocks(quick)]
    assert len(blocks) == 2 and all("\n" not in b for b in blocks)
    install, tests = blocks
    assert install.endswith("scaling-train sweep configs/sweeps/quickstart.yaml")
    assert "pip install torch==2.13.0" in install
    ci = (REPO / ".ci" / "run").read_text()
    # .ci/run installs exactly as the README says (after its own venv + torch step) and runs its test command
    pip_part = install.split("pip install torch==2.13.0 && ")[1].split(" && scaling-train")[0]
    assert (
        pip_part.replace("pip install ", "pip install -q ", 1).replace(
            " pip install --no", " pip install -q --no"
        )
        in ci
    )
    test_cmd = tests.split("&& ")[-1]
    assert test_cmd in ci


def test_named_configs_exist():
    text = (REPO / "README.md").read_text()
    for path in set(re.findall(r"configs/[\w/.-]+\.yaml", text)):
        assert (REPO / path).is_file(), path


if __name__ == "__main__" and "--fix" in sys.argv:
    text = (REPO / "README.md").read_text()
    head, rest = text.split(START)
    _, tail = rest.split(END)
    (REPO / "README.md").write_text(f"{head}{START}\n{_reference()}\n{END}{tail}")
    print("README.md config reference regenerated")
