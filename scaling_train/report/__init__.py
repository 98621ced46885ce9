"""Reports of a sweep: a self-contained ``report.html`` (plots embedded, opens offline) and a W&B report.

    from scaling_train.report import write_report
    path = write_report("runs/quickstart")        # -> runs/quickstart/report.html

    scaling-train report runs/quickstart          # the same from the shell (see report/cli.py)

The report never fails on a sweep with missing, partial, diverged or broken runs: it says what is
missing instead. Loading (data.py), fits (analysis.py), figures (figures.py) and the page (html.py)
are separate; the W&B report spec is in wandb_report.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from scaling_train._io import atomic_write

REPORT_FILE = "report.html"
CACHE_FILE = ".report_cache.json"
SUMMARY_FILE = "first_screen.json"  # the report's first screen as numbers (printed by `scaling-train report`)


def write_report(sweep_dir: str | Path, *, output: str | Path | None = None, n_bootstrap: int = 20) -> Path:
    """Write ``SWEEP_DIR/report.html`` (or ``output``) atomically and return its path.

    Cheap to call again while a sweep runs: the expensive fits (Chinchilla bootstrap with
    ``n_bootstrap`` resamples, prediction replays) are cached in ``SWEEP_DIR/.report_cache.json`` keyed
    by their inputs."""
    from scaling_train.report.analysis import analyse
    from scaling_train.report.data import load_sweep
    from scaling_train.report.html import render
    from scaling_train.report.summary import safe_first_screen

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {str(sweep_dir)!r} does not exist")
    sweep = load_sweep(sweep_dir)
    an = analyse(sweep, n_bootstrap=n_bootstrap, cache=sweep_dir / CACHE_FILE)
    screen = safe_first_screen(sweep, an)
    page = render(sweep, an, screen=screen)
    out = Path(output) if output is not None else sweep_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, page)
    atomic_write(out.parent / SUMMARY_FILE, json.dumps(screen, indent=1, default=float))
    return out


def refresh_report(
    sweep_dir: str | Path, *, min_interval_s: float = 60.0, n_bootstrap: int = 0, log=print
) -> Path | None:
    """For loops such as ``fit --follow``: rewrite the report unless it is younger than ``min_interval_s``;
    never raises (a failing report must not stop the fitter), returns the path or None (skipped/failed)."""
    import time

    path = Path(sweep_dir) / REPORT_FILE
    try:
        if path.is_file() and time.time() - path.stat().st_mtime < min_interval_s:
            return None
        return write_report(sweep_dir, n_bootstrap=n_bootstrap)
    except Exception as e:  # noqa: BLE001 - reported, the caller goes on
        log(f"[report] refresh of {path} failed: {type(e).__name__}: {e}")
        return None


__all__ = ["refresh_report", "write_report"]
