"""Sweep backends: local (k concurrent runs), torchrun (several nodes, c10d rendezvous), Slurm (sbatch
job arrays from ``launch/slurm/array.sbatch``, or submitit with requeue).

Every backend executes a run through ``scaling_train.sweep.worker`` semantics: skip when DONE or stopped
on request (STOPPED; ``resume_stopped_runs`` first to train those to the end), take the run's lock (never
twice at once), retry a failing run from its checkpoint, record attempts.
Commands are argv lists (no shell); the sbatch script quotes every value with ``shlex.quote``.

One module per backend: ``local.py``, ``torchrun.py``, ``slurm.py`` (job arrays), ``submitit.py``; shared
helpers (the sweep folder, the run's command, the summary and states) in ``common.py``, the online fitter and
report beside the runs in ``sidecar.py``, ``--dry-run`` in ``dry_run.py``. ``BACKENDS`` maps a
``--backend`` name to its launcher.
"""

from __future__ import annotations

from scaling_train.sweep.backends.common import (
    ADAPTIVE,
    prepare_dir,
    report_states,
    resume_stopped_runs,
    run_argv,
)
from scaling_train.sweep.backends.dry_run import dry_run_text
from scaling_train.sweep.backends.local import run_local
from scaling_train.sweep.backends.sidecar import Sidecars
from scaling_train.sweep.backends.slurm import REPO, TEMPLATE, run_slurm, sbatch_script, write_sbatch
from scaling_train.sweep.backends.submitit import run_submitit
from scaling_train.sweep.backends.torchrun import run_torchrun

__all__ = [
    "ADAPTIVE",
    "BACKENDS",
    "REPO",
    "TEMPLATE",
    "Sidecars",
    "dry_run_text",
    "prepare_dir",
    "report_states",
    "resume_stopped_runs",
    "run_argv",
    "run_local",
    "run_slurm",
    "run_submitit",
    "run_torchrun",
    "sbatch_script",
    "write_sbatch",
]

BACKENDS = {"local": run_local, "torchrun": run_torchrun, "slurm": run_slurm}
