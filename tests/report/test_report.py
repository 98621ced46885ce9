"""The HTML report: laws recovered from synthetic sweeps, every panel drawn, and a sweep with missing,
partial, diverged, torn and broken runs still reported (with what is missing), offline and self-contained."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install 'scaling-train[report]')")

from scaling_train.report import write_report  # noqa: E402
from scaling_train.report.analysis import analyse  # noqa: E402
from scaling_train.report.data import load_sweep  # noqa: E402
from tests.fixtures import synth  # noqa: E402


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory) -> Path:
    return synth.write_sweep(tmp_path_factory.mktemp("full") / "iso")


@pytest.fixture(scope="module")
def full_report(full_sweep) -> Path:
    return write_report(full_sweep, n_bootstrap=0)


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r"<section class='fig' id='fig-(\w+)'>(.*?)</section>", html, flags=re.S))


def test_laws_recovered(full_sweep):
    an = analyse(load_sweep(full_sweep), n_bootstrap=0)
    t = synth.TRUE
    c = an.chinchilla
    assert c is not None, an.laws[0].error
    for k in ("E", "alpha", "beta"):
        assert getattr(c, k) == pytest.approx(t[k], rel=0.02), k
    iso = an.isoflop
    assert iso is not None, an.laws[1].error
    assert iso.a == pytest.approx(
        t["beta"] / (t["alpha"] + t["beta"]), abs=0.03
    )  # N_opt ∝ C**(beta/(alpha+beta))
    b = an.critical_batch
    assert b is not None and b.alpha_B == pytest.approx(synth.ALPHA_B, rel=0.05)
    assert b.B_star == pytest.approx(synth.B_STAR, rel=0.1)
    # every finished run has a replayed prediction history; it closes in on the final loss
    assert len(an.history) == 15 and all(len(h) >= 5 for h in an.history.values())
    finals = {r.name: r.final_loss for r in load_sweep(full_sweep).runs}
    for name, h in an.history.items():
        err = [abs(p["loss"] - finals[name]) / finals[name] for p in h]
        assert h[-1]["fraction"] > 0.8 and h[0]["fraction"] < 0.2
        # closes in: half the first replay's error, or within 0.5% already (a lucky 10% replay can be exact)
        assert err[-1] < 0.08 and (err[-1] < err[0] / 2 or err[-1] < 0.005), (name, err)


def test_full_report_has_every_panel(full_report):
    html = full_report.read_text()
    secs = _sections(html)
    for key in ("loss", "history", "isoflop", "gns", "samples"):
        assert key in secs, key
        assert "data:image/png;base64," in secs[key] and "Not drawn" not in secs[key], (key, secs[key][-300:])
    assert "no per-sample records" not in html
    assert "What is missing" not in html  # nothing missing in this sweep
    laws = html[html.index("id='laws'") :]
    for name in ("Chinchilla", "IsoFLOP", "Critical batch", "alpha", "B_star", "RMSE of log L", "R² of L"):
        assert name in laws, name
    # self-contained: no external resource of any kind
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", html)
    assert "<script" not in html


def test_missing_partial_diverged_broken(tmp_path):
    sweep = synth.write_sweep(
        tmp_path / "messy",
        runs=[
            {"N": 1e5, "D": 3e5},
            {"N": 2e5, "D": 3e5, "status": "partial", "fraction": 0.4},
            {"N": 4e5, "D": 3e5, "status": "diverged"},
        ],
        plan_extra=["N1e6-D1e6-B16-lr3e-3-s0-deadbeef"],
    )
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    done = next(p for p in runs if (p / "DONE").is_file())
    with open(done / "metrics.jsonl", "a") as f:
        f.write("{not json}\n")  # a malformed line
        f.write('{"step": 99999, "loss": 1.')  # a torn last line (crash mid-write)
    broken = tmp_path / "messy" / "N3e5-D1e5-broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("resolved: [unclosed\n")
    empty = tmp_path / "messy" / "N5e5-D1e5-empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("resolved: {total_steps: 10, tokens_per_step: 1024}\n")

    out = write_report(sweep, n_bootstrap=0)
    html = out.read_text()
    st = {r.name: r.status for r in load_sweep(sweep).runs}
    assert sorted(st.values()) == sorted(["done", "partial", "diverged", "missing", "broken", "no metrics"])
    box = html[html.index("id='missing'") : html.index("</div>", html.index("id='missing'"))]
    for word in ("missing", "partial", "diverged", "broken", "no metrics", "deadbeef"):
        assert word in box, word
    done_notes = next(r.notes for r in load_sweep(sweep).runs if r.status == "done")
    assert any("malformed" in n for n in done_notes) and any("torn" in n for n in done_notes)
    assert "non-finite loss at step" in html
    secs = _sections(html)
    assert "data:image/png;base64," in secs["loss"]  # the curves that exist are still drawn
    assert "no per-sample records" in secs["samples"]
    # too few runs for the sweep laws: said, not raised
    laws = html[html.index("id='laws'") :]
    assert "not fitted" in laws and "at least 5" in laws
    # the partial run's prediction is drawn ahead of its curve and listed in the laws table
    assert "1 unfinished run(s)" in secs["loss"]
    assert "Final loss of" in laws


def test_empty_and_nonexistent(tmp_path):
    (tmp_path / "empty").mkdir()
    html = write_report(tmp_path / "empty").read_text()
    assert "no runs found" in html and "no plan.json" in html
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


@pytest.mark.slow  # ~10 s on a loaded 2-core machine (two report builds in subprocesses)
def test_cli_and_cache(full_sweep, tmp_path):
    out = tmp_path / "r.html"
    cmd = [
        sys.executable,
        "-m",
        "scaling_train.cli",
        "report",
        str(full_sweep),
        "--output",
        str(out),
        "--bootstrap",
        "0",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout and out.stat().st_size > 50_000
    assert (full_sweep / ".report_cache.json").is_file()
    res = subprocess.run([sys.executable, "-m", "scaling_train.cli", "report", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode != 0 and "is not a folder" in (res.stdout + res.stderr)


def test_fitter_prediction_record_is_used(tmp_path):
    sweep = synth.write_sweep(tmp_path / "h", runs=[{"N": 1e5, "D": 3e5}])
    run = next(p for p in sweep.iterdir() if p.is_dir())
    rows = [{"step": s, "loss": 5.0 - s / 100, "low": 4.5, "high": 5.5} for s in (50, 100, 150)]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    an = analyse(load_sweep(sweep), n_bootstrap=0)
    h = an.history[run.name]
    assert [p["source"] for p in h] == ["fitter"] * 3 and [p["step"] for p in h] == [50, 100, 150]


def test_cache_roundtrip_gives_the_same_fits(full_sweep, tmp_path):
    cache = tmp_path / "cache.json"
    sweep = load_sweep(full_sweep)
    a = analyse(sweep, n_bootstrap=0, cache=cache)
    keys = set(json.loads(cache.read_text()))
    assert {k.split("-")[0] for k in keys} == {"chin", "iso", "hist"}
    b = analyse(sweep, n_bootstrap=0, cache=cache)  # every expensive fit decoded from the JSON cache
    assert b.chinchilla == a.chinchilla and b.isoflop == a.isoflop
    assert b.laws == a.laws and b.history == a.history
    cache.write_text("{torn")  # a broken cache is rebuilt, not fatal
    assert analyse(sweep, n_bootstrap=0, cache=cache).chinchilla == a.chinchilla


def test_refresh_report_throttles_and_never_raises(tmp_path):
    from scaling_train.report import refresh_report

    sweep = synth.write_sweep(
        tmp_path / "r", runs=[{"N": 1e5, "D": 3e5, "status": "partial", "fraction": 0.5}]
    )
    first = refresh_report(sweep, min_interval_s=60)
    assert first == sweep / "report.html" and first.is_file()
    assert refresh_report(sweep, min_interval_s=60) is None  # too soon: skipped
    assert refresh_report(sweep, min_interval_s=0) == first
    logged = []
    assert refresh_report(tmp_path / "gone", min_interval_s=0, log=logged.append) is None
    assert logged and "does not exist" in logged[0]


def test_eval_records_are_per_sample_loglik(tmp_path):
    sweep = synth.write_sweep(
        tmp_path / "ev", runs=[{"N": 1e5, "D": 3e5, "evals": True}, {"N": 4e5, "D": 3e5, "evals": True}]
    )
    runs = load_sweep(sweep).runs
    for r in runs:
        last = [s for s in r.samples if s["step"] == r.total_steps]
        # the twice-written last step counts once; MC items contribute the right choice's loglik
        assert (
            sum(s["task"] == "cloze_x" for s in last) == 40 and sum(s["task"] == "mc_y" for s in last) == 30
        )
        mc = [s for s in last if s["task"] == "mc_y"]
        assert all(s["tokens"] == 2 and s["loglik"] < 0 for s in mc)
        assert {s["loglik"] for s in mc if s["sample"] == "m2"} == {
            -3 * r.final_loss
        }  # answer 2 -> loglik[2]
    html = write_report(sweep, n_bootstrap=0).read_text()
    sec = _sections(html)["samples"]
    assert "data:image/png;base64," in sec and "cloze_x" in sec and "mc_y" in sec
    assert "no per-sample records" not in html
