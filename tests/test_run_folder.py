"""``scaling_train.run_folder`` owns the run folder (issue 16): its file names, run discovery, the rows-by-step
rule of a resumed run, run names and task-row keys; no other module spells a run-folder file name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from scaling_train import run_folder as rf

PKG = Path(rf.__file__).resolve().parent


def _make_run(d: Path, *files: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        (d / f).write_text("{}\n")
    return d


def test_find_runs_on_a_sweep_folder(tmp_path):
    sw = tmp_path / "sweep"
    _make_run(sw / "N1e5-D1e6-B16-lr3e-3-s0-1a2b3c4d", rf.CONFIG, rf.METRICS, rf.DONE)
    _make_run(sw / "group" / "b", rf.CONFIG)  # a grandchild run
    _make_run(sw / "only-metrics", rf.METRICS)  # a folder whose config.yaml is missing
    _make_run(sw / "a" / rf.CHECKPOINTS, rf.CONFIG)  # not runs: a run's checkpoints, its branches, W&B, logs
    _make_run(sw / "a" / rf.CBS / "s20-k2-x", rf.CONFIG)
    _make_run(sw / rf.WANDB_DIR / "offline-run-x", rf.CONFIG)
    _make_run(sw / "logs", rf.CONFIG)
    _make_run(sw / "a", rf.CONFIG)
    (sw / "plan.json").write_text("{}")

    rel = [p.relative_to(sw).as_posix() for p in rf.find_runs(sw)]
    assert rel == ["N1e5-D1e6-B16-lr3e-3-s0-1a2b3c4d", "a", "group/b"]
    with_metrics = [p.relative_to(sw).as_posix() for p in rf.find_runs(sw, markers=(rf.CONFIG, rf.METRICS))]
    assert with_metrics == ["N1e5-D1e6-B16-lr3e-3-s0-1a2b3c4d", "a", "group/b", "only-metrics"]
    # a run folder given as the sweep: itself (its checkpoints and branches are not runs)
    assert rf.find_runs(sw / "a") == [sw / "a"]
    assert rf.find_runs(tmp_path / "absent") == []
    # the fitter's and the report's entry points are this function
    from scaling_train.fitter.tail import find_runs

    assert find_runs is rf.find_runs


def test_resumed_run_rows_replace_the_later_steps():
    """A run resumed from its step-20 checkpoint rewrites steps 30, 40: the new rows win, the old step 40 (not
    rewritten yet) is dropped, and the steps stay ascending."""
    first = [{"step": s, "loss": 10.0 - s / 10} for s in (10, 20, 30, 40)]
    resumed = [{"step": 30, "loss": 7.5}]
    rows = rf.rows_by_step(first + resumed)
    assert list(rows) == [10, 20, 30] and rows[30]["loss"] == 7.5
    # incrementally (a tailing reader) the same
    inc = rf.rows_by_step(first)
    rf.rows_by_step(resumed, into=inc)
    assert inc == rows
    # where / keep; a row without a step is skipped
    mixed = [
        {"step": 5, "loss": 1.0},
        {"step": 5, "eval_loss": 2.0},
        {"loss": 3.0},
        {"step": 6, "task/a/acc": 1},
    ]
    assert rf.rows_by_step(mixed, where=lambda r: "loss" in r) == {5: {"step": 5, "loss": 1.0}}
    assert rf.rows_by_step(mixed, where=rf.has_task_key, keep=lambda r: r["step"]) == {6: 6}
    from scaling_train.metrics.jsonl import put_row

    assert put_row is rf.put_row


def test_task_keys_round_trip():
    for task, metric in (("next_line", "acc"), ("compiles", "pass_rate_low"), ("id-ent_1", "p_correct")):
        key = rf.task_key(task, metric)
        assert key == f"task/{task}/{metric}" and rf.is_task_key(key)
        assert rf.parse_task_key(key) == (task, metric)
    assert rf.parse_task_key(rf.EVAL_TIME_KEY) is None and rf.is_task_key(rf.EVAL_TIME_KEY)
    assert rf.parse_task_key("loss") is None and not rf.is_task_key("loss") and not rf.is_task_key(3)
    assert rf.has_task_key({"step": 1, rf.task_key("a", "acc"): 0.5}) and not rf.has_task_key({"step": 1})
    from scaling_train.evals.callback import parse_row_key, row_key
    from scaling_train.fitter.tasks import PREFIX, task_kinds

    assert parse_row_key is rf.parse_task_key and row_key is rf.task_key and PREFIX == rf.TASK_PREFIX
    row = {rf.task_key("a", "p_correct"): 0.4, rf.task_key("b", "exact_match"): 1.0, rf.EVAL_TIME_KEY: 2.0}
    assert task_kinds([row]) == {"a": "multiple_choice", "b": "cloze"}


def test_run_names_and_file_helpers():
    name = rf.run_name(n_params=2.2e5, tokens=1.1e6, batch_size=16, lr=3e-3, seed=0, cfg_hash="1a2b3c4d")
    assert name == "N2.2e5-D1.1e6-B16-lr3e-3-s0-1a2b3c4d"
    assert rf.parse_run_name(name)["N"] == 2.2e5
    from scaling_train import run_names

    assert run_names.parse_run_name is rf.parse_run_name  # scaling_train.run_names stays importable
    assert rf.checkpoint_file(100) == "step-00000100.pt" and rf.CHECKPOINT_RE.search("step-00000100.pt")
    assert rf.stopped_archive(2) == "STOPPED.2.json"
    assert Path(rf.stopped_archive(2)).match(rf.STOPPED_ARCHIVES)


def test_checkpoint_steps(tmp_path):
    assert rf.checkpoint_steps(tmp_path) == []
    d = tmp_path / rf.CHECKPOINTS
    d.mkdir()
    for s in (40, 20):
        (d / rf.checkpoint_file(s)).write_bytes(b"")
        (d / (rf.checkpoint_file(s) + ".sha256")).write_text("x")
    (d / ".step-00000060.pt.tmp1.2").write_bytes(b"")  # a write in flight
    assert rf.checkpoint_steps(tmp_path) == [20, 40]
    (tmp_path / rf.DONE).write_text(json.dumps({"final_loss": 3.0}))
    from scaling_train.sweep import state

    assert state.DONE == rf.DONE and state.status(tmp_path) == "done"


# ------------------------------------------------------------------------------------- no literals elsewhere
FILE_NAMES = {
    rf.CONFIG, rf.LR_SCHEDULE, rf.METRICS, rf.SAMPLES, rf.EVALS, rf.CHECKPOINTS, rf.DONE, rf.STOP, rf.STOPPED,
    rf.STOPPED_ARCHIVES, rf.PREDICTIONS, rf.PREDICTIONS_LOG, rf.ATTEMPTS, rf.CBS_RESULTS, rf.WANDB_RUN, rf.HPARAMS,
}  # fmt: skip
"""Names scanned for. Not ``cbs``, ``wandb`` and ``.lock``: a CLI subcommand, a summary key, a package and the
data cache's lock files (``data/packing.py``: ``f"{key}.lock"``) share them."""

ALLOWED = {
    "run_folder.py": "the module that owns the names",
}


def _string_literals(tree: ast.AST):
    """String constants that are not docstrings (a bare string statement), with their line numbers."""
    bare = {
        id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare:
            yield n.lineno, n.value


def _spells_a_name(s: str) -> bool:
    """``"DONE"``, ``"*/config.yaml"``, ``"/metrics.jsonl"`` (an f-string's piece) or a ``task/`` key; not prose
    (a help text or message that names a file has spaces)."""
    if any(c.isspace() for c in s):
        return False
    return s in FILE_NAMES or any(part in FILE_NAMES for part in s.split("/")) or s.startswith(rf.TASK_PREFIX)


def test_no_package_spells_a_run_folder_file_name():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel in ALLOWED:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{rel}:{line}: {s!r}" for line, s in _string_literals(tree) if _spells_a_name(s)]
    assert not found, "use the names of scaling_train.run_folder instead:\n" + "\n".join(found)
