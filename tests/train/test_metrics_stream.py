"""The trainer's stream sinks come in from outside: ``scaling-train train`` wires the in-process fitter."""

from __future__ import annotations

import json

from scaling_train.train import Trainer
from tests.fixtures.runs import tiny_config, tiny_overrides

FIT = {"metrics.fit_in_process": "true", "metrics.fit_every": 2, "train.eval_every": 0, "train.ckpt_every": 0}


def test_cli_wires_the_in_process_fitter(tmp_path, capsys):
    from scaling_train.cli import main

    assert main(["train", *tiny_overrides(tmp_path / "r", **FIT)]) == 0
    pred = json.loads((tmp_path / "r" / "predictions.json").read_text())
    assert pred["step"] == 30  # the closing refit saw the last row


def test_trainer_without_the_fitter_sink_says_so(tmp_path):
    lines: list[str] = []
    Trainer(tiny_config(tmp_path / "r", **FIT), log=lines.append).run()
    assert not (tmp_path / "r" / "predictions.json").exists()
    assert any("fit_in_process=true but no in-process fitter is wired" in s for s in lines), lines
