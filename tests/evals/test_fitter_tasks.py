"""Task laws in the fitter: recover known laws from synthetic run folders and predict the larger runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from scaling_train.fitter.core import SweepFitter
from scaling_train.fitter.tail import RunTail
from scaling_train.fitter.tasks import fit_task_laws

A, B, C_ = 0.1, 0.03, 0.02  # p_correct = A + B log N + C_ log C
EPS, K, GAMMA = 0.9, 2.0, 1.2  # Err(L) = EPS - K exp(-GAMMA L)
PU_C, PU_ALPHA = 4.0, 0.5  # P(N) = exp(-exp(PU_C) N**-PU_ALPHA)
FPT = 6.0  # FLOPs per token per parameter


def _loss(N: float, D: float) -> float:
    return 1.5 + 300 / N**0.3 + 200 / D**0.3


def _run(root, name: str, N: float, total_tokens: float, steps: list[int], *, done: bool) -> None:
    d = root / name
    d.mkdir()
    total_steps = 100
    resolved = {"params": {"non_embedding": N}, "flops_per_token": FPT * N, "total_tokens": total_tokens,
                "total_steps": total_steps, "tokens_per_step": total_tokens / total_steps}  # fmt: skip
    (d / "config.yaml").write_text(yaml.safe_dump({"resolved": resolved}))
    rows = []
    for s in steps:
        D = total_tokens * s / total_steps
        L = _loss(N, D)
        P = math.exp(-math.exp(PU_C) * N**-PU_ALPHA)
        attempts = 100_000
        rows.append({
            "step": s, "loss": L + 0.05, "eval_loss": L, "flops": FPT * N * D,
            "task/mc/p_correct": A + B * math.log(N) + C_ * math.log(FPT * N * D),
            "task/mc/acc": 1 - (EPS - K * math.exp(-GAMMA * L)),
            "task/code/pass_rate": P, "task/code/passes": round(P * attempts), "task/code/attempts": attempts,
        })  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (d / "DONE").write_text("{}")


@pytest.fixture
def sweep(tmp_path):
    for N in (1e5, 3e5, 1e6):
        _run(tmp_path, f"N{N:.0e}", N, 20 * N, [25, 50, 75, 100], done=True)
    _run(tmp_path, "N1e7", 1e7, 20 * 1e7, [10], done=False)  # the larger run, still training
    return tmp_path


def _tails(root) -> dict[str, RunTail]:
    tails = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        t = RunTail(d)
        t.poll()
        tails[d.name] = t
    return tails


def test_recovers_laws_and_predicts_larger_run(sweep):
    big_loss = _loss(1e7, 2e8)
    out = fit_task_laws(_tails(sweep), {"N1e7": {"loss": big_loss, "status": "running"}})
    mc, code = out["mc"], out["code"]
    assert mc["kind"] == "multiple_choice" and code["kind"] == "pass_until"
    c = mc["continuous"]
    assert (c["a"], c["b_logN"], c["c_logC"]) == pytest.approx((A, B, C_), abs=1e-8)
    e = mc["err_of_loss"]
    assert (e["eps"], e["k"], e["gamma"]) == pytest.approx((EPS, K, GAMMA), rel=1e-4)
    pu = code["pass_until"]
    assert (pu["c"], pu["alpha"]) == pytest.approx((PU_C, PU_ALPHA), abs=0.02)
    assert set(mc["predictions"]) == {"N1e7"}  # finished runs are observed, not predicted
    p = mc["predictions"]["N1e7"]
    C_final = FPT * 1e7 * 2e8
    assert p["p_correct"] == pytest.approx(A + B * math.log(1e7) + C_ * math.log(C_final), rel=1e-8)
    assert p["acc"] == pytest.approx(1 - (EPS - K * math.exp(-GAMMA * big_loss)), rel=1e-4)
    want = math.exp(-math.exp(PU_C) * 1e7**-PU_ALPHA)
    assert code["predictions"]["N1e7"]["pass_rate_law"] == pytest.approx(want, rel=0.05)


def test_too_few_points_give_errors_not_exceptions(tmp_path):
    _run(tmp_path, "only", 1e5, 2e6, [50], done=False)
    out = fit_task_laws(_tails(tmp_path), {})
    assert "error" in out["mc"]["continuous"] and "error" in out["mc"]["err_of_loss"]
    assert "error" in out["code"]["pass_until"]
    assert fit_task_laws({}, {}) == {}


def test_sweep_law_json_has_tasks_section(sweep):
    SweepFitter(sweep, log=lambda s: None).step()
    law = json.loads((sweep / "sweep_law.json").read_text())
    assert set(law["tasks"]) == {"mc", "code"}
    assert np.isfinite(law["tasks"]["mc"]["continuous"]["a"])
