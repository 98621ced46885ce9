"""``scaling-train report SWEEP_DIR [--output FILE] [--bootstrap K] [--wandb]``.

    scaling-train report runs/quickstart                  # -> runs/quickstart/report.html (opens offline)
    scaling-train report runs/quickstart --wandb          # also save the W&B report (when logged in)
    scaling-train report runs/quickstart --wandb-spec spec.json   # the W&B report spec, offline

A sweep with missing, partial or diverged runs still gives a report that lists what is missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scaling_train.config import ConfigError


def _cmd_report(args: argparse.Namespace) -> int:
    from scaling_train.report import SUMMARY_FILE, write_report

    sweep = Path(args.sweep_dir)
    if not sweep.is_dir():
        raise ConfigError(f"scaling-train report: SWEEP_DIR {str(sweep)!r} is not a folder")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap={args.bootstrap} must be >= 0")
    t0 = time.perf_counter()
    path = write_report(sweep, output=args.output, n_bootstrap=args.bootstrap)
    print(f"[report] {path} ({path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f}s)")
    _print_first_screen(path.parent / SUMMARY_FILE)
    if args.wandb or args.wandb_spec:
        from scaling_train.report.wandb_report import build_spec, save_report

        spec = build_spec(sweep, entity=args.entity, project=args.project)
        if args.wandb_spec:
            import json

            Path(args.wandb_spec).write_text(json.dumps(spec, indent=1))
            print(f"[report] W&B report spec -> {args.wandb_spec}")
        if args.wandb:
            url = save_report(spec)
            print(f"[report] W&B report: {url}" if url else "[report] W&B: not logged in; report not saved")
    return 0


def _print_first_screen(path) -> None:
    """The report's first screen on the terminal (the end of ``scaling-train sweep`` runs this command)."""
    import json

    from scaling_train.report.summary import lines

    try:
        screen = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    print("\n".join(lines(screen)))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write SWEEP_DIR/report.html (plots embedded) and optionally a W&B report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("sweep_dir", help="folder holding the sweep's run folders (and plan.json, sweep_law.json)")
    p.add_argument("--output", default=None, help="HTML file (default: SWEEP_DIR/report.html)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=20,
        help="bootstrap resamples of the Chinchilla fit (default 20; 0 = none)",
    )
    p.add_argument("--wandb", action="store_true", help="save the W&B report too (needs `wandb login`)")
    p.add_argument("--wandb-spec", default=None, help="write the W&B report spec (JSON) to this file")
    p.add_argument("--entity", default=None, help="W&B entity (default: the runs' config, else your default)")
    p.add_argument(
        "--project", default=None, help="W&B project (default: the runs' config, else scaling_train)"
    )
    p.set_defaults(func=_cmd_report)
