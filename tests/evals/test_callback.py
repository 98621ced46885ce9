"""Evals every k steps in a real (tiny) training run, through the metrics stream."""

from __future__ import annotations

import json

import pytest

from scaling_train.evals.callback import EvalCallback, parse_row_key
from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.train.trainer import Trainer


def test_evals_every_k_steps_in_metrics_rows(tiny_cfg, tmp_path):
    task_file = tmp_path / "own.jsonl"
    task_file.write_text(
        "\n".join(
            json.dumps({"context": "import ", "choices": [c, "zzzz"], "answer": 0}) for c in ("os", "sys")
        )
        + "\n"
    )
    cfg = tiny_cfg(**{
        "train.max_steps": 20, "train.log_every": 5, "train.eval_every": 20, "evals.every": 10,
        "evals.tasks": f"[next_line,identifier,compiles,{task_file}]", "evals.n_items": 6,
        "evals.pass_until_items": 2, "evals.max_attempts": 4, "evals.max_new_tokens": 8,
        "model.loss_impl": "torch",
    })  # fmt: skip
    logs: list[str] = []
    Trainer(cfg, log=logs.append).run()
    rows = read_jsonl(cfg.run_dir + "/metrics.jsonl", 0).rows
    with_tasks = [r["step"] for r in rows if "task/next_line/acc" in r]
    assert with_tasks == [10, 20]
    last = rows[-1]
    names = {parse_row_key(k)[0] for k in last if parse_row_key(k)}
    assert names == {"next_line", "identifier", "compiles", "own"}
    assert 0 <= last["task/next_line/acc"] <= 1 and last["task/next_line/n_items"] == 6
    assert last["task/identifier/loglik"] < 0
    assert (
        0
        <= last["task/compiles/pass_rate_low"]
        <= last["task/compiles/pass_rate"]
        <= last["task/compiles/pass_rate_high"]
    )
    recs = read_jsonl(cfg.run_dir + "/evals.jsonl", 0).rows
    assert [(r["step"], r["task"]) for r in recs] == [
        (s, t) for s in (10, 20) for t in ("next_line", "identifier", "compiles", "own")
    ]
    assert len(recs[0]["records"][0]["loglik"]) == 4  # every choice's log-likelihood
    assert any("[evals] 4 task(s)" in s for s in logs)


def test_due_schedule():
    cb = EvalCallback([], every=10)
    # flushes every 4 steps: evals at the first flush at or after 10, 20, 30 and at the end (34)
    due = [s for s in range(4, 35, 4) if cb._due(s, 34, 4)] + ([34] if cb._due(34, 34, 4) else [])
    assert due == [12, 20, 32, 34]
    with pytest.raises(ValueError, match="every=-1"):
        EvalCallback([], every=-1)


def test_resume_rolls_back_eval_records(tiny_cfg):
    """Records of steps after the checkpoint are recomputed on resume, never duplicated."""

    class CrashAt:
        def on_before_step(self, trainer, step):
            if step == 17:
                raise RuntimeError("crash")

    extra = {
        "train.max_steps": 20, "train.log_every": 5, "train.eval_every": 0, "train.ckpt_every": 10,
        "evals.every": 5, "evals.tasks": "[next_line]", "evals.n_items": 4, "model.loss_impl": "torch",
    }  # fmt: skip
    with pytest.raises(RuntimeError, match="crash"):
        Trainer(tiny_cfg(**extra), callbacks=[CrashAt()], log=lambda s: None).run()
    path = tiny_cfg(**extra).run_dir + "/evals.jsonl"
    assert [r["step"] for r in read_jsonl(path, 0).rows] == [5, 10, 15]
    Trainer(tiny_cfg(**extra), log=lambda s: None).run()
    assert [r["step"] for r in read_jsonl(path, 0).rows] == [5, 10, 15, 20]


def test_items_longer_than_the_context_are_dropped_with_a_message():
    from scaling_train.evals.tasks import ClozeItem, MultipleChoiceItem, PassUntilItem, Task

    cb = EvalCallback()
    cb._encode = lambda s: list(range(len(s.split())))  # one token per word
    mc = Task("mc", "multiple_choice", [
        MultipleChoiceItem("ctx", ("a b", "c"), 0, id="fits"),
        MultipleChoiceItem("ctx", ("a b c d e", "c"), 1, id="too-long"),
    ])  # fmt: skip
    cloze = Task("cl", "cloze", [ClozeItem("ctx", "a b c d e", id="too-long")])
    pu = Task("pu", "pass_until", [PassUntilItem("a b c d e f g", verifier=bool)])
    said = []
    out = cb._fit_context([mc, cloze, pu], 4, said.append)
    assert [t.name for t in out] == ["mc", "pu"] and [it.id for it in out[0].items] == ["fits"]
    assert said == [
        "[evals] mc: 1 of 2 items dropped: a continuation is longer than model.seq_len=4 tokens",
        "[evals] cl: 1 of 1 items dropped: a continuation is longer than model.seq_len=4 tokens",
    ]
