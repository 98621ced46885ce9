"""``scaling-train sweep CONFIG [--output DIR] [--backend local|torchrun|slurm] [--dry-run] [--resume-stopped]``.

    scaling-train sweep configs/sweeps/quickstart.yaml                    # CPU, ~4 min on 2 cores
    scaling-train sweep configs/sweeps/quickstart.yaml --dry-run          # plan + exact commands, starts nothing
                                                                          # (warns when a run repeats its data)
    scaling-train sweep configs/sweeps/chinchilla-small.yaml --backend slurm
    NODE_RANK=0 scaling-train sweep configs/sweeps/ladder-3b.yaml --backend torchrun   # on every node

Rerunning the same command skips finished runs (DONE) and resumes partial ones from their checkpoints.
With a ``cbs:`` block every run is branched at its cbs steps (``scaling-train cbs``; results in
RUN/cbs/cbs.json): mid-run on the local and Slurm array backends (once the run has checkpointed the branch
point: a free slot, or a job array of its own), after the runs on torchrun and submitit; then the fitter and
the report run once more.

With an ``adaptive:`` block (docs/sweep.md) the sweep writes its policy to SWEEP/adaptive.json and the online
fitter stops a run (RUN/STOP -> checkpoint, RUN/STOPPED) once its final loss is predicted well enough. A
stopped run counts as finished for now: later invocations skip it, until

    scaling-train sweep configs/sweeps/quickstart.yaml --resume-stopped   # every stopped run to its end
"""

from __future__ import annotations

import argparse
import sys


def _cmd_sweep(args: argparse.Namespace) -> int:
    from scaling_train.sweep import backends, state
    from scaling_train.sweep.backends.torchrun import this_node_rank
    from scaling_train.sweep.plan import (
        describe,
        describe_adaptive,
        describe_cbs,
        make_plan,
        repetition_warnings,
    )
    from scaling_train.sweep.spec import load_spec

    overrides = list(args.set or ())
    if args.concurrency is not None:
        overrides.append(f"launch.concurrency={args.concurrency}")
    spec = load_spec(args.config, overrides)  # --set goes through the spec's own validation
    plan = make_plan(spec, output=args.output)  # every spec error is raised here, before anything starts
    backend = args.backend or spec.launch.backend
    print(describe(plan))
    if plan.adaptive is not None:
        print(describe_adaptive(plan))
    if spec.cbs.every is not None:
        print(describe_cbs(plan, backend))
    if args.dry_run:
        for line in repetition_warnings(plan, _unique_tokens):
            print(line)
        if args.resume_stopped:
            stopped = [r.name for r in plan.runs if state.is_stopped(r.run_dir)]
            print(
                f"# --resume-stopped would resume {len(stopped)} stopped run(s): {', '.join(stopped) or '-'}"
            )
        print(f"\n# backend {backend}: exact commands (run folder base config: {plan.base_path})")
        print(backends.dry_run_text(plan, backend))
        return 0
    if args.resume_stopped:
        backends.resume_stopped_runs(plan)
    rc = backends.BACKENDS[backend](plan)
    if spec.cbs.every is not None:  # the branches not run yet (all of them on torchrun and submitit)
        from scaling_train.sweep import cbs

        rc = max(rc, cbs.sweep_branches(plan, backend=backend))
        if backend != "torchrun" or this_node_rank(spec) == 0:  # one node fits and reports
            cbs.final_pass(plan)  # the fitter and the report read the new cbs.json files
    return rc


def _unique_tokens(cfg) -> int | None:
    """U of a run's training split. Prepares (tokenizes and caches, as the first run would) a local
    corpus once; None for a remote ``hf:`` corpus, which a dry run does not download."""
    if cfg.data.corpus.startswith("hf:"):
        return None
    from scaling_train.data import prepare

    return prepare(cfg.data, cfg.model.seq_len, log=lambda s: print(s, file=sys.stderr)).train.unique_tokens


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="plan and launch a sweep (local, torchrun, slurm)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="sweep spec YAML, e.g. configs/sweeps/quickstart.yaml")
    p.add_argument(
        "--output", default=None, help="sweep folder (default: the spec's output, else runs/<name>)"
    )
    p.add_argument(
        "--backend",
        choices=("local", "torchrun", "slurm"),
        default=None,
        help="where runs execute (default: the spec's launch.backend)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan, a warning for every run that repeats its training data (epochs = D / U; "
        "tokenizes a local corpus once, cached for the runs) and the exact commands; start no run",
    )
    p.add_argument(
        "--resume-stopped",
        action="store_true",
        help="first make every run stopped early on request (RUN/STOPPED, e.g. by the adaptive policy) "
        "resumable, then launch: they train from their stop's checkpoint to the end (the stop record is kept "
        "as RUN/STOPPED.<n>.json); without it a stopped run is skipped like a DONE one",
    )
    p.add_argument(
        "--concurrency", type=int, default=None, help="local: runs at the same time (launch.concurrency)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a sweep-spec key, e.g. --set launch.retries=2 (repeatable)",
    )
    p.set_defaults(func=_cmd_sweep)
