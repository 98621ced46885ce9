"""Our trainer writes through the stream: device statistics and the noise scale in every row."""

from __future__ import annotations

import pytest

from scaling_train.metrics.jsonl import read_jsonl
from tests.fixtures.tolerances import sum_rtol
from tests.fixtures.training import run_config, train


def test_trainer_rows_carry_stream_statistics(tmp_path):
    cfg = run_config(tmp_path / "r", max_steps=12)
    train(cfg)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl").rows
    assert [r["step"] for r in rows] == [4, 8, 12]
    for r in rows:
        # same tokens as the training loss, which sums a micro-batch's 4 x 64 = 256 NLLs in float32
        # (the statistics sum them in float64)
        assert r["tok_nll"] == pytest.approx(r["loss"], rel=sum_rtol(4 * 64))
        assert r["tok_count"] == 4 * cfg.tokens_per_step
        assert sum(r["tok_nll_hist"]) == pytest.approx(1.0)
        assert len(r["tok_nll_by_pos"]) == 8
        assert r["gns_sq_small"] > r["gns_sq_big"] > 0  # one micro-batch is noisier than the step
    assert "gns_b_simple" in rows[-1] and "eval_loss" in rows[-1]


def test_metrics_off_keeps_plain_rows(tmp_path):
    train(run_config(tmp_path / "r", max_steps=4, **{"metrics.token_stats": "false", "metrics.gns": "false"}))
    (row,) = read_jsonl(tmp_path / "r" / "metrics.jsonl").rows
    assert "tok_nll" not in row and "gns_g2" not in row and row["step"] == 4
