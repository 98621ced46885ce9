"""The fitter's run tails: saved state round-trips non-finite row values (JSON writes them as strings); the
plan is parsed again only when it changes."""

from __future__ import annotations

import json
import math

from scaling_train.fitter.core import write_json_atomic
from scaling_train.fitter.tail import RunTail


def test_state_roundtrip_keeps_non_finite_values_as_numbers(tmp_path):
    """A NaN noise scale is written as "nan"; a restarted fitter read it back as a string and crashed
    comparing it with 0 in the critical-batch fit (seen on the repeat-cpu sweep)."""
    t = RunTail(tmp_path)
    t.rows = {10: {"loss": 5.0, "gns_b_simple": math.nan}, 20: {"loss": 4.0, "gns_b_simple": math.inf}}
    write_json_atomic(tmp_path / "state.json", t.state())  # how the fitter saves its state
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["rows"][0][1]["gns_b_simple"] == "nan"
    u = RunTail(tmp_path)
    u.load_state(saved)
    assert math.isnan(u.rows[10]["gns_b_simple"]) and u.rows[20]["gns_b_simple"] == math.inf
    assert all(isinstance(v, float) for r in u.rows.values() for v in r.values())
    saved["rows"][0][1]["junk"] = "text"  # anything that is not a number is dropped, not kept as a string
    u.load_state(saved)
    assert "junk" not in u.rows[10]


def test_a_pooled_run_gives_no_single_unique_token_count(tmp_path):
    """A run on data pools has one U per pool (resolved.pools); their sum must not feed the data-constrained law."""
    t = RunTail(tmp_path)
    t.config = {"resolved": {"unique_tokens": 4.5e5}}
    assert t.unique_tokens == 4.5e5
    pools = {"clean": {"unique_tokens": 5e4}, "noisy": {"unique_tokens": 4e5}}
    t.config = {"resolved": {"unique_tokens": 4.5e5, "pools": pools}}
    assert t.unique_tokens is None


def test_plan_runs_reads_the_plan_again_only_when_it_changes(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from scaling_train.fitter.tail import plan_runs

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"runs": [{"name": "a", "flops": 1.0}, "junk"]}))
    reads = []
    real = Path.read_text

    def counting(self, *a, **k):
        reads.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", counting)
    assert plan_runs(tmp_path) == [{"name": "a", "flops": 1.0}] == plan_runs(tmp_path)
    assert reads == ["plan.json"]  # the second call came from the cache
    plan.write_text(json.dumps({"runs": [{"name": "a"}, {"name": "bb"}]}))
    st = plan.stat()
    os.utime(plan, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a rewrite always moves the mtime
    assert [r["name"] for r in plan_runs(tmp_path)] == ["a", "bb"] and reads == ["plan.json"] * 2
    plan.write_text("{not json")
    assert plan_runs(tmp_path) == [] and plan_runs(None) == [] and plan_runs(tmp_path / "missing") == []


def test_the_fitter_refits_a_run_only_when_what_its_prediction_reads_changes(tmp_path):
    """A run whose laws read the validation loss appends training rows between its evaluations: those leave its
    prediction as it was (no refit, no new line in predictions.jsonl), an evaluation point or a divergence
    refits it at once."""
    import yaml

    from scaling_train.fitter.core import SweepFitter
    from tests.fixtures.synth import write_sweep

    sweep = write_sweep(tmp_path / "s", runs=[{"N": 1e5, "D": 3e5, "status": "partial", "fraction": 0.5}])
    (run,) = [p for p in sweep.iterdir() if (p / "config.yaml").is_file()]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["metrics"] = {"law_loss": "eval"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    with open(run / "metrics.jsonl", "w") as f:  # an evaluation every 8th row
        for i, r in enumerate(rows):
            f.write(json.dumps({**r, "eval_loss": r["loss"] + 0.05} if i % 8 == 7 else r) + "\n")
    fitter = SweepFitter(sweep, log=lambda s: None)
    assert fitter.step() == {run.name}
    record = (run / "predictions.jsonl").read_text().splitlines()
    assert json.loads(record[-1])["loss"] is not None
    step = rows[-1]["step"]

    def append(**extra):
        nonlocal step
        step += 1
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": rows[-1]["loss"], **extra}) + "\n")

    append()
    append()
    assert fitter.step() == set()  # two training rows: nothing a prediction reads
    assert (run / "predictions.jsonl").read_text().splitlines() == record
    assert fitter.tails[run.name].last_step == step  # the rows were read all the same
    append(eval_loss=rows[-1]["loss"])
    assert fitter.step() == {run.name}
    assert len((run / "predictions.jsonl").read_text().splitlines()) == len(record) + 1
    append(loss="nan")  # a diverged training loss ends the run's predictions whatever the law column
    assert fitter.step() == {run.name}
    assert json.loads((run / "predictions.json").read_text())["status"] == "diverged"
