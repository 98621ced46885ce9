"""The sidecars of a sweep: the online fitter beside the runs (``scaling-train fit --follow``), a last fit
and the report after them, each when the spec's ``launch`` asks."""

from __future__ import annotations

import subprocess

from scaling_train.sweep.plan import Plan, command_line


class Sidecars:
    """The online fitter beside the runs, the report after them (each when the spec's ``launch`` asks)."""

    def __init__(self, plan: Plan, say=print) -> None:
        self.plan, self.say, self.proc = plan, say, None

    def start_fitter(self) -> None:
        if not self.plan.spec.launch.fitter:
            return
        log = open(self.plan.sweep_dir / "logs" / "fitter.log", "ab")  # noqa: SIM115 - lives with the process
        cmd = [
            self.plan.python(),
            "-m",
            "scaling_train.cli",
            "fit",
            str(self.plan.sweep_dir),
            "--follow",
            "--until-done",
            "--interval",
            f"{self.plan.spec.launch.fitter_interval:g}",
            *([] if self.plan.spec.launch.live_report else ["--no-report"]),
        ]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.say(f"[sweep] online fitter: {command_line(cmd)}  (log: logs/fitter.log)")

    def finish(self) -> None:
        later = self.plan.stages_after_runs  # their own last fit and report follow: doing both here is waste
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)  # --follow exits once every run is DONE
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=10)
            if not later:  # one last pass over the finished folders: final predictions and the final law
                cmd = [self.plan.python(), "-m", "scaling_train.cli", "fit", str(self.plan.sweep_dir)]
                subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if self.plan.spec.launch.report and later:
            self.say("[sweep] the report follows the critical-batch branches (cbs block)")
        elif self.plan.spec.launch.report:
            cmd = [self.plan.python(), "-m", "scaling_train.cli", "report", str(self.plan.sweep_dir)]
            self.say(f"[sweep] report: {command_line(cmd)}")
            subprocess.run(cmd, check=False)
