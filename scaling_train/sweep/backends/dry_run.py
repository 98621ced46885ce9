"""``--dry-run``: what a backend would do, the exact commands (local/torchrun, submitit) or the sbatch
scripts (Slurm array), each finished run marked."""

from __future__ import annotations

from scaling_train.sweep import state
from scaling_train.sweep.backends.common import array_groups, run_argv
from scaling_train.sweep.backends.slurm import sbatch_script
from scaling_train.sweep.plan import Plan, command_line

_SKIP_MARKS = {"done": "  # DONE, skipped", "stopped": "  # STOPPED, skipped (--resume-stopped resumes it)"}


def dry_run_text(plan: Plan, backend: str) -> str:
    """What the backend would do: exact commands (local/torchrun) or the sbatch scripts (slurm)."""
    lines = []
    if backend == "slurm" and plan.spec.slurm.mode == "array":
        for gi, runs in enumerate(array_groups(plan)):
            lines.append(
                f"# ---- {plan.sweep_dir / 'slurm' / f'array-{gi}.sbatch'} (sbatch --parsable <this file>)"
            )
            lines.append(sbatch_script(plan, runs))
        return "\n".join(lines)
    tr = plan.spec.torchrun
    for r in plan.runs:
        if backend == "torchrun":
            argv = run_argv(
                plan,
                r,
                rdzv=f"{tr.master_addr}:{tr.master_port + r.index}",
                rdzv_id=f"{plan.spec.name}-{r.name}",
                max_restarts=plan.spec.launch.retries,
            )
        else:
            argv = run_argv(plan, r)
        mark = _SKIP_MARKS.get(state.status(r.run_dir), "")
        lines.append(command_line(argv) + mark)
    if backend == "slurm":
        lines.insert(0, "# submitit: one job per run (requeued on preemption), each running:")
    return "\n".join(lines)
