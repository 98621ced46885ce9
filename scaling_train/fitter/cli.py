"""``scaling-train fit SWEEP_DIR [--follow]``: predictions for every run of a sweep and the sweep's laws.

    scaling-train fit runs/my_sweep                       # one pass: read, fit, write, exit
    scaling-train fit runs/my_sweep --follow              # keep tailing (Ctrl-C to stop; restart resumes)
    scaling-train fit runs/my_sweep --follow --until-done # exit once every run is DONE or diverged

Writes RUN/predictions.json for each run and SWEEP_DIR/sweep_law.json (both atomically). When the runs
log to W&B (their ``metrics.wandb.mode``) or ``--wandb offline|online`` is given, the predictions and laws
also go to a W&B run of the sweep's group as they change (``scaling_train/fitter/wandb_log.py``).
With ``--follow`` SWEEP_DIR/report.html is refreshed after each refit (``--no-report``: not): the refresh
is ``args.refresh_report``, which ``scaling_train/cli.py`` (the cli layer) sets, so the fitter never imports
the report (issue 16's layers).
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
    wb = _WandbHook(fitter, mode=args.wandb, project=args.wandb_project)
    try:
        if not args.follow:
            fitter.follow(interval=args.interval, max_polls=1)
            if fitter.last_law is None:  # nothing was refitted in that poll: write the law anyway
                fitter.last_law = fitter.write_law()
            law = fitter.last_law
            wb(set(fitter.predictions))
            print(f"[fit] {len(fitter.tails)} runs; sweep law -> {sweep / 'sweep_law.json'}")
            for k in ("chinchilla", "isoflop", "critical_batch"):
                print(f"[fit]   {k}: {law[k].get('error', 'ok')}")
            return 0
        refresh = None if args.no_report else getattr(args, "refresh_report", None)

        def on_refit(names: set[str]) -> None:
            wb(names)
            if refresh is not None:  # report.html, at most once a minute, never raising
                refresh(sweep, log=fitter.log)

        return fitter.follow(
            interval=args.interval, until_done=args.until_done, max_polls=args.max_polls, on_refit=on_refit
        )
    finally:
        wb.close()


class _WandbHook:
    """Logs predictions and laws to the fitter's W&B run after each refit; W&B trouble turns it off
    with one message and never stops the fitter."""

    def __init__(self, fitter, *, mode: str, project: str | None) -> None:
        self.fitter, self.mode, self.project = fitter, mode, project
        self.wb = None
        self.off = mode == "disabled"

    def _open(self) -> bool:
        from scaling_train.fitter.wandb_log import FitterWandb, settings_from_runs
        from scaling_train.metrics.config import WandbConfig

        tails = sorted(self.fitter.tails.values(), key=lambda t: t.run_dir)
        found = settings_from_runs([t.config for t in tails if t.config])  # parsed by the tails already
        if found is None and self.mode == "auto":
            return False
        cfg, sweep = found if found is not None else (WandbConfig(), None)
        if self.mode != "auto":
            cfg.mode = self.mode
        if self.project:
            cfg.project = self.project
        self.wb = FitterWandb(self.fitter.sweep_dir, cfg, sweep_name=sweep)
        self.fitter.log(
            f"[fit] W&B: predictions and laws -> run {self.wb.run_id} ({cfg.mode}, group {cfg.group or sweep or self.fitter.sweep_dir.name})"
        )
        return True

    def __call__(self, refit: set[str]) -> None:
        if self.off:
            return
        try:
            if self.wb is None:
                if not self._open():
                    return
                refit = set(self.fitter.predictions)  # first entry: everything known so far
            self.wb.log(refit, self.fitter.predictions, self.fitter.last_law)
        except Exception as e:  # W&B must never stop the fitter
            self.off = True
            self.fitter.log(f"[fit] W&B logging off: {type(e).__name__}: {e}")

    def close(self) -> None:
        if self.wb is not None:
            try:
                self.wb.close()
            except Exception as e:
                self.fitter.log(f"[fit] W&B finish failed: {type(e).__name__}: {e}")


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
    p.add_argument(
        "--wandb", choices=["auto", "disabled", "offline", "online"], default="auto",
        help="log predictions and laws to a W&B run of the sweep's group (auto: as the runs' metrics.wandb)",
    )  # fmt: skip
    p.add_argument(
        "--wandb-project", default=None, help="W&B project (default: the runs' metrics.wandb.project)"
    )
    p.set_defaults(func=_cmd_fit)
