"""``scaling-train`` command line: parse -> build -> run. Each subcommand's help gives the exact usage.

scaling-train train CONFIG [key=value ...]     one run (single process; torchrun for several)
scaling-train train --help-config              every config key with its default and meaning
scaling-train cbs RUN_DIR --at STEP --tokens T  critical batch by branched training (docs/cbs.md)
scaling-train replay SWEEP_DIR --adaptive       a finished sweep replayed under the adaptive policy
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scaling_train.config import ConfigError

PLUGINS = (
    "scaling_train.sweep.cli",  # scaling-train sweep
    "scaling_train.sweep.cbs",  # scaling-train cbs
    "scaling_train.fitter.cli",  # scaling-train fit
    "scaling_train.report.cli",  # scaling-train report
    "scaling_train.sweep.adaptive",  # scaling-train replay
)
"""Modules that add a subcommand with ``register(subparsers)``; each sets ``func`` -> exit code."""


def _cmd_train(args: argparse.Namespace) -> int:
    from scaling_train import config as config_mod
    from scaling_train.train import RunConfig, Trainer

    if args.help_config and args.markdown:
        print(config_mod.markdown_reference(RunConfig))
        return 0
    if args.help_config:
        for key, tp, default, text in config_mod.describe(RunConfig):
            print(f"{key:28s} {tp:34s} default {default:14s} {text}")
        return 0
    overrides = list(args.overrides)
    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        overrides.insert(0, args.config)  # only overrides: start from the defaults
        args.config = None
    cfg = config_mod.load(RunConfig, args.config, overrides)
    from scaling_train.fitter.sink import in_process_fitter  # the CLI wires sinks: train imports no fitter

    trainer = Trainer(cfg, sinks=[in_process_fitter])
    res = trainer.run()
    if getattr(res, "stopped", False):
        print(
            f"[train] stopped on request (RUN/STOP) at step {res.steps}: checkpointed, no DONE; "
            f"rerun without STOP to train to the end -> {res.run_dir}"
        )
    elif not res.already_done:
        ev = f", eval loss {res.final_eval_loss:.4f}" if res.final_eval_loss is not None else ""
        print(
            f"[train] done: {res.steps} steps, {res.tokens:,} tokens, loss {res.final_loss:.4f}{ev} -> {res.run_dir}"
        )
    if trainer.backend.world_size > 1:
        from scaling_train.train.backend import leave_and_exit

        leave_and_exit()  # everything is written and fsynced (metrics, checkpoint, DONE)
    return 0


def _refresh_report(sweep_dir, *, log=print):
    """``fit --follow``'s report refresh, wired here so the fitter (below the report) never imports it."""
    from scaling_train.report import refresh_report

    return refresh_report(sweep_dir, log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scaling-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run from a YAML config plus key=value overrides")
    t.add_argument("config", nargs="?", help="YAML run config, e.g. configs/train/tiny.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 model.size=2M")
    t.add_argument("--help-config", action="store_true", help="list every config key and exit")
    t.add_argument(
        "--markdown", action="store_true", help="with --help-config: as the README's markdown table"
    )
    t.set_defaults(func=_cmd_train)
    # Other subcommands live beside their code: each module has register(subparsers).
    for mod in PLUGINS:
        importlib.import_module(mod).register(sub)
    # Hooks from higher layers, for subcommands of lower ones (the fitter's --follow refreshes the report).
    p.set_defaults(refresh_report=_refresh_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
