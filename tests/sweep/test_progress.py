"""Progress lines while a sweep runs (sweep/progress.py): read from the run folder's tail and predictions."""

from __future__ import annotations

import json
import time

from scaling_train.sweep.progress import TAIL_BYTES, Reporter, last_row, progress_line


def _run(tmp_path, n_rows: int, partial: bool = True):
    d = tmp_path / "run"
    d.mkdir()
    rows = [json.dumps({"step": s, "loss": 5.0 - s * 1e-3, "lr": 1e-3}) for s in range(1, n_rows + 1)]
    text = "\n".join(rows) + "\n" + ('{"step": 99999, "lo' if partial else "")
    (d / "metrics.jsonl").write_text(text)
    return d


def test_last_row_reads_only_the_tail_and_skips_a_torn_line(tmp_path):
    d = _run(tmp_path, 2000)  # ~100 kB, far more than the tail read
    assert (d / "metrics.jsonl").stat().st_size > 5 * TAIL_BYTES
    assert (
        last_row(d / "metrics.jsonl")["step"] == 2000
    )  # the torn last line (a row being written) is skipped
    assert last_row(tmp_path / "missing.jsonl") is None


def test_progress_line_with_and_without_a_prediction(tmp_path):
    d = _run(tmp_path, 180, partial=False)
    assert progress_line(d, "r", 469) == "[sweep] r step 180/469 (38%) loss 4.82"
    (d / "predictions.json").write_text(
        json.dumps({"status": "running", "loss": 3.7112, "low": 3.62, "high": 3.8})
    )
    assert progress_line(d, "r", 469).endswith("| predicted final 3.711 [3.62, 3.8]")
    (d / "predictions.json").write_text(json.dumps({"status": "running", "loss": None, "error": "x"}))
    assert "predicted" not in progress_line(d, "r", 469)
    assert progress_line(tmp_path / "none", "r", 10) is None


def test_reporter_says_a_line_per_run_in_flight(tmp_path):
    d = _run(tmp_path, 10, partial=False)
    said: list[str] = []
    active = [("a", str(d), 20), ("b", str(tmp_path / "not-started"), 20)]
    with Reporter(lambda: active, say=said.append, every_s=0.05):
        time.sleep(0.3)
    assert said and all(s == "[sweep] a step 10/20 (50%) loss 4.99" for s in said)  # b has no row yet
