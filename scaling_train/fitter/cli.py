"""``scaling-train fit SWEEP_DIR [--follow]``: predictions for every run of a sweep and the sweep's laws.

    scaling-train fit runs/my_sweep                       # one pass: read, fit, write, exit
    scaling-train fit runs/my_sweep --follow              # keep tailing (Ctrl-C to stop; restart resumes)
    scaling-train fit runs/my_sweep --follow --until-done # exit once every run is DONE or diverged

Writes RUN/predictions.json for each run and SWEEP_DIR/sweep_law.json (both atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaling_train.config import ConfigError


def _cmd_fit(args: argparse.Namespace) -> int:
    from scaling_train.fitter.core import SweepFitter

    sweep = Path(args.sweep_dir)
    if not sweep.is_dir():
        raise ConfigError(f"scaling-train fit: SWEEP_DIR {str(sweep)!r} is not a folder")
    if args.interval <= 0:
        raise ConfigError(f"--interval={args.interval} must be > 0 seconds")
    fitter = SweepFitter(sweep)
    if not args.follow:
        fitter.follow(interval=args.interval, max_polls=1)
        law = fitter.write_law()
        print(f"[fit] {len(fitter.tails)} runs; sweep law -> {sweep / 'sweep_law.json'}")
        for k in ("chinchilla", "isoflop", "critical_batch"):
            print(f"[fit]   {k}: {law[k].get('error', 'ok')}")
        return 0
    return fitter.follow(
        interval=args.interval,
        until_done=args.until_done,
        max_polls=args.max_polls,
        report=not args.no_report,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit", help="predict final losses and fit the sweep's laws (online with --follow)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("sweep_dir", help="folder holding the sweep's run folders")
    p.add_argument("--follow", action="store_true", help="keep tailing the run folders")
    p.add_argument(
        "--interval", type=float, default=10.0, help="seconds between polls with --follow (default 10)"
    )
    p.add_argument(
        "--until-done", action="store_true", help="with --follow: exit when every run is DONE or diverged"
    )
    p.add_argument("--max-polls", type=int, default=None, help="with --follow: exit after this many polls")
    p.add_argument(
        "--no-report", action="store_true", help="with --follow: do not refresh SWEEP_DIR/report.html"
    )
    p.set_defaults(func=_cmd_fit)
