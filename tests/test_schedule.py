"""``scaling_train.schedule``: the LR schedule math below every package, and ``RUN/lr_schedule.json``."""

import json
import subprocess
import sys

import numpy as np
import pytest

from scaling_train.schedule import LR_SCHEDULE_FILE, OptimConfig, lr_array, read_lr_schedule


def test_train_schedule_reexports_the_same_objects():
    from scaling_train.train import schedule as old

    assert (
        old.OptimConfig is OptimConfig
        and old.lr_array is lr_array
        and old.LR_SCHEDULE_FILE == LR_SCHEDULE_FILE
    )


def test_read_lr_schedule(tmp_path):
    assert read_lr_schedule(tmp_path) is None  # a run folder from before the trainer wrote it
    lr = lr_array(OptimConfig(lr=1e-3, warmup_steps=3, schedule="wsd"), 17)  # odd length on purpose
    (tmp_path / LR_SCHEDULE_FILE).write_text(json.dumps(lr.tolist()))
    got = read_lr_schedule(tmp_path)
    assert got.dtype == np.float64 and np.array_equal(got, lr)
    (tmp_path / LR_SCHEDULE_FILE).write_text("[0.1, 0.2")  # torn
    with pytest.raises(ValueError, match="lr_schedule.json"):
        read_lr_schedule(tmp_path)


def test_fitter_and_report_rebuild_a_schedule_without_training_code():
    """The fallback for old run folders imports neither ``scaling_train.train`` nor torch."""
    code = (
        "import sys\n"
        "from scaling_train.schedule import OptimConfig, lr_array\n"
        "import scaling_train.fitter.core, scaling_train.report.data\n"
        "assert len(lr_array(OptimConfig(), 50)) == 50\n"
        "bad = sorted(m for m in sys.modules if m == 'scaling_train.train' or m.startswith('scaling_train.train.'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
