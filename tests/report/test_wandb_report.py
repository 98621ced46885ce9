"""The W&B report, offline: the spec's panels plot keys our W&B sink really logs, against tokens or FLOPs,
over the runs of the sweep's group; wandb-workspaces objects build without network; nothing is saved
when not logged in. One real tiny training run checks the report against the trainer's own files."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install 'scaling-train[report]')")

from scaling_train.report import write_report  # noqa: E402
from scaling_train.report.data import load_sweep  # noqa: E402
from scaling_train.report.wandb_report import build_spec, save_report, to_report  # noqa: E402
from tests.fixtures.runs import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """One real 0.2M-parameter run (30 steps, grad accumulation 2 so the noise scale is measured)."""
    from scaling_train.train import train

    sweep = tmp_path_factory.mktemp("real") / "rs"
    cfg = tiny_config(sweep / "run0", **{"train.micro_batch_size": 4, "train.log_every": 2, "sweep": "rs"})
    train(cfg, log=lambda *a, **k: None)
    return sweep


def _logged_keys(sweep) -> set[str]:
    """Keys the W&B sink would log for this sweep's rows (its own payload function) + its pred/* keys."""
    from scaling_train.metrics.wandb_sink import WandbSink

    keys = {"pred/loss", "pred/low", "pred/high"}
    for r in load_sweep(sweep).runs:
        for row in r.rows + r.eval_rows:
            keys |= set(WandbSink._payload(None, row))
    return keys


def test_spec_panels_match_logged_keys(real_sweep):
    spec = build_spec(real_sweep, entity="someone", project="proj")
    json.dumps(spec)  # plain JSON
    assert spec["runset"]["filters"] == "Metric('Group') == 'rs'"  # the W&B group = the sweep name
    logged = _logged_keys(real_sweep)
    panels = [p for s in spec["sections"] for p in s["panels"]]
    assert len(panels) >= 8
    for p in panels:
        assert p["x"] in ("tokens", "flops", "loss"), p
        ys = p["y"] if isinstance(p["y"], list) else [p["y"]]
        for y in ys:
            assert y in logged, (y, sorted(logged))
        if p["type"] == "line":
            assert p["x"] in ("tokens", "flops")
    assert {p["x"] for p in panels} >= {"tokens", "flops"}
    assert "| law |" in spec["laws_markdown"] and "Chinchilla" in spec["laws_markdown"]


def test_wandb_objects_offline(real_sweep):
    import wandb_workspaces.reports.v2 as wr

    spec = build_spec(real_sweep, entity="someone", project="proj")
    report = to_report(spec)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == len(spec["sections"])
    for g, sec in zip(grids, spec["sections"]):
        assert [p.title for p in g.panels] == [p["title"] for p in sec["panels"]]
        assert g.runsets[0].project == "proj" and "rs" in g.runsets[0].filters
    assert any(isinstance(b, wr.MarkdownBlock) for b in report.blocks)
    spec["entity"] = None
    with pytest.raises(ValueError, match="no entity"):
        to_report(spec)


def test_not_saved_when_logged_out(real_sweep, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert save_report(build_spec(real_sweep, entity="someone", project="proj")) is None


def test_real_run_report(real_sweep):
    sweep = load_sweep(real_sweep)
    (run,) = sweep.runs
    assert run.status == "done" and run.N and run.total_steps == 30 and run.flops_per_token
    assert run.tokens[-1] == 30 * run.tokens_per_step
    html = write_report(real_sweep, n_bootstrap=0).read_text()
    assert "id='fig-loss'" in html and "id='fig-gns'" in html
    loss = html[html.index("id='fig-loss'") : html.index("</section>", html.index("id='fig-loss'"))]
    assert "data:image/png;base64," in loss
    gns = html[html.index("id='fig-gns'") : html.index("</section>", html.index("id='fig-gns'"))]
    assert "data:image/png;base64," in gns  # the trainer's gns_b_simple rows were found
    if (
        real_sweep / "run0" / "samples.jsonl"
    ).is_file():  # the trainer's per-sample records, when it writes them
        samples = html[
            html.index("id='fig-samples'") : html.index("</section>", html.index("id='fig-samples'"))
        ]
        assert "data:image/png;base64," in samples
    else:
        assert "no per-sample records" in html
    assert "no downstream evals: enable with evals.tasks=" in html  # a run without evals: one line
    assert "no plan.json" in html  # a bare folder of runs: said, not fatal


def test_adaptive_section_only_for_an_adaptive_sweep(real_sweep, tmp_path):
    """An adaptive sweep with one run stopped early gets an 'Adaptive sweep' section: the account as Markdown
    (policy, the stopped run with its step, prediction and reason, compute not spent, both laws) and panels of
    keys the sink logs from the fitter's predictions (``new_prediction``: pred/width, pred/stop)."""
    import shutil

    import wandb_workspaces.reports.v2 as wr

    from scaling_train.metrics.wandb_sink import new_prediction

    assert all(
        s["title"] != "Adaptive sweep" for s in build_spec(real_sweep, entity="e", project="p")["sections"]
    )
    sw = tmp_path / "rs"
    shutil.copytree(real_sweep, sw)
    (sw / "adaptive.json").write_text(json.dumps({"tolerance": 0.02, "launch_order": "plan"}))
    run = sw / "run0"
    (run / "DONE").unlink()
    (run / "STOPPED").write_text(
        json.dumps({"steps": 20, "request": {"reason": "interval width 0.01 <= 0.02"}})
    )
    pred = {"run": "run0", "status": "stopped", "step": 20, "loss": 5.0, "low": 4.9, "high": 5.15,
            "adaptive": {"stop": True, "reason": "interval width 0.01 <= 0.02"}}  # fmt: skip
    (run / "predictions.json").write_text(json.dumps(pred))
    logged, _ = new_prediction(run, 0.0)
    assert logged["pred/width"] == pytest.approx(0.25 / 5.0) and logged["pred/stop"] == 1.0
    spec = build_spec(sw, entity="e", project="p")
    (sec,) = [s for s in spec["sections"] if s["title"] == "Adaptive sweep"]
    md = sec["markdown"]
    assert "Policy (`adaptive.json`): tolerance=0.02, launch_order=plan" in md
    assert "1 run(s) stopped early" in md and "| run0 |" in md and "20 / 30 (67%)" in md
    assert "5.0000 [4.9000, 5.1500]" in md and "interval width 0.01 <= 0.02" in md
    assert "| finished runs only (0 runs) | not fitted" in md
    for p in sec["panels"]:
        assert p["x"] == "tokens" and set(p["y"]) <= set(logged), p
    report = to_report(spec)
    mds = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert any("1 run(s) stopped early" in b.text for b in mds)
    # a replay's summary joins the account, with both of its laws
    law = {"E": 1.5, "A": 20.0, "B": 30.0, "alpha": 0.3, "beta": 0.28}

    def replayed_markdown(**laws) -> str:
        """The section's Markdown after a replay summary with ``laws`` (law_adaptive, law_full, ...)."""
        (sw / "adaptive_replay.json").write_text(json.dumps(
            {"n_stopped": 1, "n_runs": 3, "compute_fraction": 0.6, "coverage": 1.0, "max_law_deviation": 0.004,
             **laws}
        ))  # fmt: skip
        (sec,) = [
            s for s in build_spec(sw, entity="e", project="p")["sections"] if s["title"] == "Adaptive sweep"
        ]
        return sec["markdown"]

    md = replayed_markdown(law_adaptive=law, law_full=None)
    assert "**Replayed** (`adaptive_replay.json`): 1 of 3 runs would have stopped, spending 60%" in md
    assert "| adaptive sweep (replayed) | 1.5 | 20 | 30 | 0.3 | 0.28 |" in md
    assert "| full sweep | not fitted |" in md and "1 run(s) stopped early" in md
    # a replay with bootstrap intervals (replay --bootstrap K): each parameter with its interval, and which of
    # the adaptive law's parameters lie outside the full sweep's (an open-ended bound is null in the JSON)
    full = {**law, "E": 1.6, "ci": {"E": [0.0, 2.0], "A": [5.0, None], "B": [10.0, 90.0], "alpha": [0.1, 0.5],
                                    "beta": [0.29, 0.4]}}  # fmt: skip
    md = replayed_markdown(law_adaptive=law, law_full=full, outside_full_ci=["beta"])
    assert "| full sweep | 1.6 [0, 2] | 20 | 30 [10, 90] | 0.3 [0.1, 0.5] | 0.28 [0.29, 0.4] |" in md
    assert "The adaptive law's parameters outside the full sweep's interval: beta." in md
    from scaling_train.report.adaptive import adaptive_section
    from scaling_train.report.data import load_sweep

    html = adaptive_section(load_sweep(sw))
    assert "<td>1.6 [0, 2]</td>" in html and "outside the full sweep&#x27;s interval: beta." in html
