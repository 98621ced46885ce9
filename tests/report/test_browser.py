"""The report renders in headless Chromium offline: no console errors, every image decoded, a screenshot.

Skipped with a visible reason when no Chromium is installed (Debian: apt-get install chromium)."""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install 'scaling-train[report]')")

from scaling_train.report import write_report  # noqa: E402
from tests.fixtures import synth  # noqa: E402
from tests.fixtures.browser import check_page, find_chromium  # noqa: E402

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium binary (apt-get install chromium, or set $CHROMIUM)"
)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("kind", [pytest.param("full", marks=pytest.mark.slow), "messy"])  # full: ~8 s
def test_report_renders(tmp_path, kind):
    if kind == "full":
        sweep = synth.write_sweep(tmp_path / "s", tasks=True)  # + the Downstream tasks section (2 tasks)
        n_images = 7
    else:  # partial + diverged + a planned run that never started: fewer panels, still a clean page
        sweep = synth.write_sweep(
            tmp_path / "s",
            runs=[{"N": 1e5, "D": 3e5}, {"N": 2e5, "D": 3e5, "status": "partial", "fraction": 0.5},
                  {"N": 4e5, "D": 3e5, "status": "diverged"}],
            plan_extra=["N1e6-D1e6-B16-lr3e-3-s0-deadbeef"],
        )  # fmt: skip
        n_images = 4  # loss, history, isoflop scatter, gns, token-NLL fallback; not per-sample (none)
    html = write_report(sweep, n_bootstrap=0)
    shot = tmp_path / "shot.png"
    res = check_page(html, shot, max_height=4000)
    assert res.errors == []
    assert len(res.images) >= n_images and res.broken_images == []
    assert all(i["naturalWidth"] > 300 and i["naturalHeight"] > 200 for i in res.images)
    assert res.title.startswith("Scaling report")
    assert "Fitted laws" in res.text and "Runs" in res.text
    assert "Downstream tasks" in res.text
    if kind == "full":
        assert "Task next_line" in res.text and "Task laws" in res.text
    if kind == "messy":
        assert "no downstream evals: enable with evals.tasks=" in res.text
        assert "What is missing or incomplete" in res.text and "deadbeef" in res.text
        assert "no per-sample records" in res.text
    w, h = _png_size(shot)
    assert w >= 1000 and h >= 1500
    assert shot.stat().st_size > 50_000  # a real page, not a blank one


def test_checker_catches_errors(tmp_path):
    """The checker itself: a broken image and a console error must be reported (so the test above can fail)."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body><p>x</p>"
        "<img src='data:image/png;base64,AAAA'><img src='missing.png'>"
        "<script>console.error('boom')</script></body></html>"
    )
    res = check_page(page, tmp_path / "bad.png")
    assert len(res.broken_images) == 2
    assert any("boom" in e for e in res.errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in res.errors)
