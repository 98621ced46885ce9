"""The report's "Downstream tasks" section: task metrics from metrics.jsonl and the fitter's task laws
(run by the real fitter on synthetic run folders), the one-liner without evals, and a fit error's message."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install 'scaling-train[report]')")

from scaling_train.report import write_report  # noqa: E402
from scaling_train.report.data import load_sweep  # noqa: E402
from scaling_train.report.tasks import NO_EVALS, tasks_section  # noqa: E402
from tests.fixtures import synth  # noqa: E402


@pytest.fixture(scope="module")
def task_sweep(tmp_path_factory) -> Path:
    return synth.task_sweep(tmp_path_factory.mktemp("tasks") / "sw")


def _section(html: str) -> str:
    m = re.search(r"<section id='tasks-section'>(.*?)<section id=\"laws-section\">", html, flags=re.S)
    assert m, "no Downstream tasks section"
    return m.group(1)


def _figs(sec: str) -> dict[str, str]:
    return dict(re.findall(r"<section class='fig' id='fig-(task_\w+)'>(.*?)</section>", sec, flags=re.S))


def test_section_renders_with_images(task_sweep):
    law = json.loads((task_sweep / "sweep_law.json").read_text())["tasks"]
    assert set(law) == {"next_line", "compiles"}
    assert "error" not in law["next_line"]["continuous"] and "error" not in law["next_line"]["err_of_loss"]
    sweep = load_sweep(task_sweep)
    assert all(len(r.task_rows) >= 3 for r in sweep.runs)
    sec = _section(write_report(task_sweep, n_bootstrap=0).read_text())
    assert "Downstream tasks" in sec and NO_EVALS not in sec
    figs = _figs(sec)
    assert set(figs) == {"task_next_line", "task_compiles"}
    for key, body in figs.items():
        assert "data:image/png;base64," in body and "Not drawn" not in body, (key, body[-300:])
    assert "2 unfinished run(s)" in figs["task_next_line"] and "PassUntil law" in figs["task_compiles"]
    laws = sec[sec.index("id='task-laws'") :]
    for s in ("Err(L) from loss", "PassUntil", "continuous metric", "eps =", "alpha =", "c_logC =", "RMSE ="):
        assert s in laws, s
    preds = sec[sec.index("id='task-predictions'") :]
    partial = [r.name for r in sweep.runs if r.status == "partial"]
    assert len(partial) == 2 and all(n in preds for n in partial)
    assert "p_correct = " in preds and "acc = " in preds
    # the predicted accuracy follows the true Err(L) at the predicted loss
    t = synth.TASK_ERR
    for n in partial:
        p = law["next_line"]["predictions"][n]
        assert p["acc"] == pytest.approx(
            1 - (t["eps"] - t["k"] * 2.718281828 ** (-t["gamma"] * p["loss"])), abs=0.03
        )


def test_no_evals_one_liner(tmp_path):
    sweep = synth.write_sweep(tmp_path / "plain", runs=[{"N": 1e5, "D": 3e5}, {"N": 2e5, "D": 3e5}])
    sec = _section(write_report(sweep, n_bootstrap=0).read_text())
    assert NO_EVALS in sec and "<img" not in sec and "task-laws" not in sec
    assert "evals.tasks=[next_line,identifier,compiles]" in NO_EVALS


def test_fit_error_message_shown(task_sweep, tmp_path):
    sw = shutil.copytree(task_sweep, tmp_path / "err")
    path = sw / "sweep_law.json"
    law = json.loads(path.read_text())
    law["tasks"]["next_line"]["err_of_loss"] = {
        "error": "RuntimeError: Err(L) boom did not converge",
        "n_points": 3,
    }
    law["tasks"]["compiles"]["pass_until"] = {
        "error": "ValueError: 1 run; PassUntil needs 2 sizes",
        "n_points": 1,
    }
    law["tasks"]["broken_task"] = {"error": "ValueError: whole task failed"}
    path.write_text(json.dumps(law))
    html = tasks_section(load_sweep(sw))
    for msg in (
        "RuntimeError: Err(L) boom did not converge",
        "ValueError: 1 run; PassUntil needs 2 sizes",
        "ValueError: whole task failed",
    ):
        assert f"not fitted: {msg}" in html, msg
    figs = _figs(html)
    # the figures are still drawn, the failed law's line left out and its message in the caption
    assert "data:image/png;base64," in figs["task_next_line"]
    assert "Err(L) not fitted: RuntimeError: Err(L) boom" in figs["task_next_line"]
    assert "PassUntil law not fitted" in figs["task_compiles"]
    assert "task_broken_task" in figs and "Not drawn" in figs["task_broken_task"]


def test_resumed_run_task_rows(tmp_path):
    """A resumed run rewrites steps: later task rows replace the earlier ones at and after that step."""
    d = synth.write_run(tmp_path, 1e5, 3e5, tasks=True)
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    task_steps = [r["step"] for r in rows if "task/next_line/acc" in r]
    redo = dict(rows[[r["step"] for r in rows].index(task_steps[1])], **{"task/next_line/acc": 0.99})
    with open(d / "metrics.jsonl", "a") as f:
        f.write(json.dumps(redo) + "\n")
    from scaling_train.report.data import load_run

    run = load_run(d)
    assert [r["step"] for r in run.task_rows] == task_steps[:2]
    assert run.task_rows[-1]["task/next_line/acc"] == 0.99
