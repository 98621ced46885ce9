"""The data-pools panel: drawn from the fitter's pool law, absent for a sweep without pools, a note (never a
lost report) when the block is broken."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaling_train.fitter.core import SweepFitter
from scaling_train.report.analysis import analyse
from scaling_train.report.data import load_sweep
from scaling_train.report.figures import NoData
from scaling_train.report.html import render
from scaling_train.report.pools import data_pools, fit_from_block
from tests.fixtures.pools import TRUE, write_pooled_sweep


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """A synthetic pooled sweep (24 runs from a known pool law) with the fitter's sweep_law.json."""
    sweep = write_pooled_sweep(tmp_path_factory.mktemp("pools") / "s")
    SweepFitter(sweep, log=lambda s: None).step()
    return sweep


def _load(sweep):
    s = load_sweep(sweep)
    return s, analyse(s, n_bootstrap=0)


@pytest.mark.slow  # 13 s on 2 idle cores
def test_panel_draws_the_pool_law(pooled):
    sweep, an = _load(pooled)
    fig = data_pools(sweep, an)
    assert fig.key == "data-pools" and fig.png.startswith(b"\x89PNG") and len(fig.png) > 10_000
    assert "utility q=" in fig.caption and "Predicted best: at largest run" in fig.caption
    assert "10x the largest run" in fig.caption and "borrowed" in fig.caption  # noisy never repeats
    g = fit_from_block(sweep.law["data_pools"])
    for mix in ("clean", "noisy", "clean:0.5+noisy:0.5"):
        assert np.allclose(g.predict(mix, 1e6, 2e5), TRUE.predict(mix, 1e6, 2e5), rtol=0.03)
    html = render(sweep, an)
    assert "id='fig-data-pools'" in html and "Data pools" in html and "Repeated data" not in html


def test_panel_absent_without_pools_and_a_note_when_broken(pooled, tmp_path):
    law = json.loads((pooled / "sweep_law.json").read_text())
    (tmp_path / "sweep_law.json").write_text(json.dumps({**law, "law": "chinchilla"}))
    sweep, an = _load(tmp_path)
    with pytest.raises(NoData, match="pool"):
        data_pools(sweep, an)
    bare = {k: v for k, v in law.items() if k != "data_pools"}
    (tmp_path / "sweep_law.json").write_text(json.dumps({**bare, "law": "chinchilla"}))
    assert "fig-data-pools" not in render(*_load(tmp_path))  # no pools: no section at all
    broken = {**law, "data_pools": {**law["data_pools"], "alpha": None, "error": "boom"}}
    (tmp_path / "sweep_law.json").write_text(json.dumps(broken))
    sweep, an = _load(tmp_path)
    with pytest.raises(NoData, match=r"lacks \['alpha'\] \(boom\)"):
        data_pools(sweep, an)
    html = render(sweep, an)
    assert "id='fig-data-pools'" in html and "Not drawn: sweep_law.json data_pools lacks" in html
    garbage = {**law, "data_pools": {**law["data_pools"], "runs": [{"mix": "clean", "N": "x", "D": 1,
                                                                    "eval_loss": 5.0}]}}  # fmt: skip
    (tmp_path / "sweep_law.json").write_text(json.dumps(garbage))
    html = render(*_load(tmp_path))
    assert "id='fig-data-pools'" in html and "figure failed" in html and 'id="laws-section"' in html
    with pytest.raises(NoData, match="malformed"):
        fit_from_block({**law["data_pools"], "pools": {"clean": {"utility": 1.0}}})
