"""Branched training (Merrill et al. 2025): the critical batch measured mid-run, from a run's checkpoint.

    scaling-train cbs RUN_DIR --at 200 --factors 2,4,8 --tokens 2e5             # local, one at a time
    scaling-train cbs RUN_DIR --at 200,400 --lr-rule linear --backend slurm     # the sweep's backends
    scaling-train cbs RUN_DIR --at 200 --dry-run                                 # plan, exact commands

From the parent's checkpoint at step s each branch trains ``T`` tokens at ``k x`` the parent's batch B
(k = 1/m goes below it: each parent batch split into m steps, which tells whether B itself already pays),
LR = the parent's planned LR at the same token x sqrt(k) (Adam) or x k, on the parent's own batches in
the parent's order (branch step j = parent steps s + jk .. s + jk + k - 1; ``BranchConfig`` in
train/config.py). Its training loss over the last half of the T tokens is compared with the parent's
training loss over the same tokens -- the same sequences, so the difference is the batch's effect, not
data noise -- less the ``lag``: a branch step's loss is measured by a model that has not yet consumed
the step's other k - 1 parent batches, so the parent's trend over those batches is subtracted (the
comparison is at the same consumed tokens). Tolerance = ``Z_TOL`` x the standard error of the parent's own loss over that window, from
the scatter of its metrics rows about a local quadratic trend (``_row_noise``), not a constant. Penalties
are taken against the smallest batch measured (the parent, or a k < 1 branch). The largest k whose
penalty stays within the tolerance (with every smaller k) is the measured critical batch at the
parent's loss there, bracketed by the first k that pays a penalty; ``low_is_reference`` says the lower
bound is only the smallest batch measured.

Branches are ordinary runs: a ``Plan`` whose runs live in ``RUN/cbs/<name>`` (name
``s<step>-k<k>-<rule>-T<tokens>-<config hash>``), executed by the sweep backends (DONE skipped, locked,
retried from their checkpoint). ``RUN/cbs/`` is not a run of the sweep: the fitter and the report do
not find it (``fitter.tail.find_runs``). Results: ``RUN/cbs/cbs.json`` (rebuilt from the finished branch
folders every time, so a rerun or a resumed branch is never counted twice):

    {"run", "seq_len", "batch_size", "total_steps", "updated",
     "measurements": [{"step", "parent_steps", "tokens", "lr_rule", "window": [a, b], "loss", "noise_se",
                       "tolerance", "gns_b_simple" (tokens, pooled over the parent's rows of 3 branch spans around it),
                       "branches": [{"factor", "batch_size", "lr_scale", "loss", "penalty", "lag", "ok",
                                     "eval_loss", "run", "time_s"}],
                       "pending": [names not DONE],
                       "cbs_measured": {"value", "low", "high" (sequences), "tokens", "low_tokens",
                                        "high_tokens", "largest_ok", "low_is_reference",
                                        "source": "branches"},
                       "cost": {"tokens_ratio", "time_ratio", "branch_time_s", "parent_time_s",
                                "branch_start_s", "branch_train_s", "branch_end_s", "parent_start_s",
                                "parent_end_s", "parent_span_s", "train_vs_span"}}]}
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scaling_train.config import ConfigError, deep_merge, from_dict, load_yaml, parse_overrides
from scaling_train.fitter.cbs import pooled_b_simple
from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.run_folder import CBS, CBS_RESULTS, CONFIG, METRICS, checkpoint_steps, rows_by_step
from scaling_train.run_names import fmt_e
from scaling_train.sweep import state
from scaling_train.sweep.plan import (
    CPU_FLOPS_PER_S,
    GPU_FLOPS_PER_S,
    Plan,
    RunSpec,
    branch_length,
    branch_window,
    describe,
    factor_label,
    factor_parts,
    format_overrides,
)
from scaling_train.sweep.spec import SweepSpec
from scaling_train.train.config import RunConfig, config_hash

CBS_DIR, RESULTS = CBS, CBS_RESULTS  # RUN/cbs/cbs.json
LR_RULES = {"sqrt": math.sqrt, "linear": float}
Z_TOL = 2.0
"""Penalty tolerance in standard errors of the parent's own window loss (~95%, one-sided ~98%)."""


# ------------------------------------------------------------------------------------------- plan
def _parent(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(semantic config dict, resolved block) of a run folder's ``config.yaml``."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    resolved = raw.pop("resolved", {}) or {}
    raw.pop("config_hash", None)
    if (raw.get("branch") or {}).get("parent"):
        raise ConfigError(f"{run_dir} is itself a branch; branch its parent {raw['branch']['parent']}")
    return raw, resolved


def _sweep_spec(run_dir: Path) -> SweepSpec:
    """The parent's sweep spec (SWEEP/spec.yaml, written by the sweep) for the backends' settings, else
    the defaults; a branch plan never starts the fitter or the report."""
    path = run_dir.parent / "spec.yaml"
    spec = SweepSpec(name=run_dir.name)
    if path.is_file():
        try:  # its base is not needed (the branches start from the run's own config.yaml)
            spec = from_dict(SweepSpec, load_yaml(path), source=str(path))
        except ConfigError:
            pass  # the runs' own configs are what matters; the defaults launch them locally
    return _branch_spec(spec)


def make_branch_plan(
    run_dir: str | Path,
    *,
    at: list[int],
    factors: list[float],
    tokens: float,
    lr_rule: str = "sqrt",
    spec: SweepSpec | None = None,
    require_checkpoints: bool = True,
    layout: tuple[int, int] | None = None,
) -> Plan:
    """The branches of ``run_dir`` as a sweep plan in ``run_dir/cbs`` (one run per (step, factor)), each on
    the parent's processes: ``layout`` = (nodes, devices per node), else the parent's entry in its sweep's
    ``plan.json``, else one node with the parent's world size.

    ``tokens`` is rounded up to whole branch steps of every factor and whole metrics rows of the parent
    (``plan.branch_window``); errors name the value, the allowed range and where it came from."""
    run_dir = Path(run_dir).resolve()
    base, resolved = _parent(run_dir)
    where = f"scaling-train cbs {run_dir}"
    if lr_rule not in LR_RULES:
        raise ConfigError(f"{where}: --lr-rule={lr_rule!r} is not allowed; choose one of {list(LR_RULES)}")
    try:
        parts = [factor_parts(k) for k in factors]
    except ValueError as e:
        raise ConfigError(f"{where}: --factors={factors}: {e}") from None
    if not factors or len(set(parts)) != len(parts):
        raise ConfigError(
            f"{where}: --factors={factors}: give distinct integers >= 2 (and 1/m below the run's batch), "
            "e.g. 2,4,8 or 0.5,2,4,8"
        )
    cfg = from_dict(RunConfig, base, source=str(run_dir / CONFIG))
    T = int(resolved.get("total_steps") or cfg.total_steps)
    B, log_every, tps = cfg.train.batch_size, cfg.train.log_every, cfg.tokens_per_step
    if not tokens > 0:
        raise ConfigError(f"{where}: --tokens={tokens} must be > 0")
    n = branch_length(tokens / tps, log_every, factors)  # parent steps per branch
    for s in at:
        if s % log_every or not 0 < s or s + n > T:
            raise ConfigError(
                f"{where}: --at {s}: a branch point must be a multiple of the run's train.log_every="
                f"{log_every} in [{log_every}, {T - n}] (the run has {T} steps and the branch covers {n} "
                f"of them = {n * tps:,} tokens); lower --tokens or pick another step"
            )
        if require_checkpoints and s not in (have := checkpoint_steps(run_dir)):
            raise ConfigError(
                f"{where}: --at {s}: no checkpoint of step {s} (the run has {have or 'none'}); a run keeps "
                "the steps of train.keep_steps (a sweep's cbs block sets them) and its newest "
                "train.keep_checkpoints"
            )
    spec = spec or _sweep_spec(run_dir)
    out = run_dir / CBS_DIR
    runs: list[RunSpec] = []
    fpt = float(resolved.get("flops_per_token") or 0.0)
    fps = spec.resources.flops_per_s or (GPU_FLOPS_PER_S if spec.resources.gpu else CPU_FLOPS_PER_S)
    world = int(resolved.get("world_size") or 1)
    nodes, devices = layout or _parent_layout(run_dir, world)
    for _f, d in parts:
        if d > 1 and B % (d * world):
            raise ConfigError(
                f"{where}: --factors: 1/{d} of the run's batch of {B} sequences over {world} processes is not a "
                f"whole number of sequences per process; use a divisor of {B // world}"
            )
    for s in at:
        for f, d in parts:
            k = f / d
            steps = n // f * d  # branch steps over the n parent steps
            over = {
                "branch.parent": str(run_dir), "branch.step": int(s), "branch.factor": f,
                "branch.lr_scale": float(f"{LR_RULES[lr_rule](k):.6g}"), "branch.parent_batch_size": B,
                "branch.parent_total_steps": T, "train.batch_size": f * B // d, "train.max_steps": steps,
                "train.max_tokens": None, "train.log_every": 1, "train.eval_every": 0,
                "train.ckpt_every": max(1, steps // 2), "train.keep_steps": [], "train.progress": False,
            }  # fmt: skip
            if d > 1:
                over["branch.divisor"] = d
            if cfg.train.micro_batch_size is None:  # the parent's memory footprint per pass (at most)
                over["train.micro_batch_size"] = min(B, f * B // d) // world
            bcfg = from_dict(
                RunConfig, deep_merge(base, parse_overrides(format_overrides(over))), source=where
            )
            h = config_hash(bcfg)
            name = f"s{s}-k{factor_label(k)}-{lr_rule}-T{fmt_e(n * tps)}-{h}"
            over["run_dir"] = str(out / name)
            est = fpt * n * tps / (fps * world) + spec.resources.overhead_s
            runs.append(
                RunSpec(
                    index=len(runs), name=name, size=str(cfg.model.size), n_params=int(
                        (resolved.get("params") or {}).get("non_embedding", 0)), tokens=n * tps,
                    steps=steps, batch_size=f * B // d, lr=bcfg.optim.lr, seed=cfg.seed, flops=fpt * n * tps,
                    devices=devices, nodes=nodes, est_s=est, time_limit_min=int(math.ceil(2 * est / 60 + 10)),
                    config_hash=h, run_dir=str(out / name), overrides=over,
                )
            )  # fmt: skip
    return Plan(spec=spec, sweep_dir=out, base=base, runs=runs)


def _parent_layout(run_dir: Path, world: int) -> tuple[int, int]:
    """(nodes, devices per node) of the parent: its run in the sweep's ``plan.json`` (beside the run folder)
    when that matches its world size, else (1, world)."""
    try:
        runs = json.loads((run_dir.parent / "plan.json").read_text()).get("runs") or []
        (r,) = [r for r in runs if Path(r["run_dir"]).resolve() == run_dir]
        nodes, devices = int(r["nodes"]), int(r["devices"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return 1, world
    return (nodes, devices) if nodes * devices == world else (1, world)


def run_branches(plan: Plan, *, backend: str = "local", say=print) -> int:
    """Execute the branch plan on a sweep backend, then (re)write ``cbs.json``; the backend's exit code."""
    from scaling_train.sweep import backends

    rc = backends.BACKENDS[backend](plan, say=say)
    write_results(plan.sweep_dir.parent)
    return rc


def sweep_branch_plan(plan: Plan, run: RunSpec, *, require_checkpoints: bool = True) -> Plan:
    """The branch plan the sweep's cbs block makes for one of its runs: every step of ``run.cbs_steps``, each
    branch ``run.cbs_parent_steps`` long (``tokens_fraction`` of the run, rounded by ``plan.branch_points``)."""
    c = plan.spec.cbs
    return make_branch_plan(
        run.run_dir, at=run.cbs_steps, factors=list(c.factors),
        tokens=run.cbs_parent_steps * run.tokens / run.steps,
        lr_rule=c.lr_rule, spec=_branch_spec(plan.spec), require_checkpoints=require_checkpoints,
        layout=(run.nodes, run.devices),
    )  # fmt: skip


class MidRun:
    """The cbs block's branches of a sweep, started while their parents still train (Merrill et al. measure
    mid-run): a parent's branches of step s become ready as soon as the parent has written its checkpoint
    of step s (``train.keep_steps`` keeps it), each handed out once per launch.
    The local backend starts a ready branch in the next free slot (after a ready run of the sweep while the
    branch's parent still trains: the parent's slot takes the branch at the latest), the Slurm array backend
    submits them as a job array of their own, so a measurement lands in ``RUN/cbs/cbs.json`` (rewritten
    when a branch or its parent ends) while the sweep is still going. A parent stopped early (adaptive)
    gets no more branches: there is no main curve to compare them with."""

    def __init__(self, plan: Plan, say=print) -> None:
        self.plan, self.say = plan, say
        on = plan.spec.cbs.every is not None
        self.waiting: dict[str, tuple[RunSpec, list[int]]] = {
            r.run_dir: (r, list(r.cbs_steps)) for r in plan.runs if on and r.cbs_steps
        }
        self.plans: dict[str, Plan] = {}  # parent run_dir -> its branch plan, once it has a branch point

    def poll(self) -> list[tuple[Plan, RunSpec]]:
        """The (branch plan, branch) pairs that became ready since the last call, not finished yet."""
        from scaling_train.sweep.backends.common import prepare_dir

        out: list[tuple[Plan, RunSpec]] = []
        for key, (run, steps) in list(self.waiting.items()):
            if state.is_stopped(run.run_dir):
                del self.waiting[key]
                continue
            have = set(checkpoint_steps(run.run_dir)) & set(steps)
            if not have:
                continue
            if key not in self.plans:
                try:
                    self.plans[key] = bp = sweep_branch_plan(self.plan, run, require_checkpoints=False)
                except ConfigError as e:  # say it and keep the sweep going; `scaling-train cbs` retries it
                    self.say(f"[cbs] {run.name}: no branches: {e}")
                    del self.waiting[key]
                    continue
                prepare_dir(bp)
            bp = self.plans[key]
            out += [
                (bp, r)
                for r in bp.runs
                if r.overrides["branch.step"] in have and not state.is_finished_for_now(r.run_dir)
            ]
            rest = [s for s in steps if s not in have]
            if rest:
                self.waiting[key] = (run, rest)
            else:
                del self.waiting[key]
        return out

    def expecting(self, running: set[str]) -> bool:
        """Whether a run in flight (run folders ``running``) may still write a branch point's checkpoint."""
        return any(key in running for key in self.waiting)


def sweep_branches(plan: Plan, *, backend: str, say=print) -> int:
    """The cbs block of a sweep: branch every DONE run at its ``cbs_steps``; 0 when every branch is DONE
    (the local backend has already run most of them mid-run, ``MidRun``: those are DONE and skipped)."""
    rc, ran_already = 0, 0
    for run in plan.runs:
        if not run.cbs_steps:
            continue
        if state.is_stopped(run.run_dir):  # the adaptive policy stopped it: no main curve to compare with
            say(
                f"[cbs] {run.name}: stopped early (adaptive), no branches; --resume-stopped finishes it first"
            )
            continue
        if not state.is_done(run.run_dir):
            say(f"[cbs] {run.name}: not DONE, its branches wait for the next invocation")
            rc = 1
            continue
        bp = sweep_branch_plan(plan, run)
        if all(
            state.is_finished_for_now(r.run_dir) for r in bp.runs
        ):  # run mid-run (or before): results only
            write_results(run.run_dir)
            ran_already += 1
            continue
        rc = max(rc, run_branches(bp, backend=backend, say=say))
    if ran_already:
        say(
            f"[cbs] {ran_already} branched run(s) had every branch DONE already (mid-run); their cbs.json rewritten"
        )
    return rc


def final_pass(plan: Plan) -> None:
    """After the branches: one more ``fit`` and ``report`` of the sweep (each when the spec enables it)."""
    import subprocess

    for what, on in (("fit", plan.spec.launch.fitter), ("report", plan.spec.launch.report)):
        if on:
            cmd = [plan.python(), "-m", "scaling_train.cli", what, str(plan.sweep_dir)]
            if what == "report":  # the sweep's report: where it is and its first screen go to the terminal
                print(f"[sweep] report: {' '.join(cmd)}", flush=True)
                subprocess.run(cmd, check=False)
            else:
                subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _branch_spec(spec: SweepSpec) -> SweepSpec:
    s = copy.deepcopy(spec)
    s.name = f"{spec.name}-cbs"
    s.launch.fitter = s.launch.report = False
    return s


# ------------------------------------------------------------------------------------- analysis
def _rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Metrics rows by step (a resumed run's rewritten rows replace the cut ones: never counted twice)."""
    return rows_by_step(read_jsonl(run_dir / METRICS).rows, where=lambda r: "loss" in r)


def window_loss(rows: dict[int, dict[str, Any]], a: int, b: int) -> float | None:
    """Step-weighted mean training loss over steps (a, b] from rows whose spans (previous row, row] lie
    inside; None unless the rows tile the window exactly (a and b are row boundaries)."""
    steps = sorted(rows)
    total, covered, prev = 0.0, 0, 0
    for s in steps:
        if prev >= a and s <= b:
            total += float(rows[s]["loss"]) * (s - prev)
            covered += s - prev
        prev = s
    return total / covered if covered == b - a and b > a else None


def _row_noise(rows: dict[int, dict[str, Any]], s: int, b: int, span: int):
    """(noise sd of one parent step's training loss, trend(step)) around a branch (parent steps s..b):
    the parent's rows of ``span`` steps fitted by a quadratic in step over [s - (b - s), b + (b - s)], the
    scatter about it (a row's sd = a step's sd / sqrt(span)). None below 6 rows."""
    n = b - s
    pts = [
        (t, float(r["loss"]))
        for t, r in sorted(rows.items())
        if s - n <= t <= b + n and t - span in rows and math.isfinite(float(r["loss"]))
    ]
    if len(pts) < 6:
        return None
    t = np.array([p[0] for p in pts], dtype=np.float64) - (span - 1) / 2  # a row's centre step
    y = np.array([p[1] for p in pts])
    mu, sc = t.mean(), max(t.std(), 1.0)
    c = np.polyfit((t - mu) / sc, y, 2)
    resid = y - np.polyval(c, (t - mu) / sc)
    sd = float(np.sqrt(np.sum(resid**2) / (len(y) - 3)) * np.sqrt(span))
    return sd, lambda u: np.polyval(c, (np.asarray(u, dtype=np.float64) - mu) / sc)


def _lag(trend, s: int, a: int, b: int, k: float) -> float:
    """What the parent's trend gains in the window from updates the branch has not taken yet: a branch
    step's loss is measured before its update, on k parent batches, by a model that has consumed the
    tokens of the step's first parent batch only; the parent's loss on batch u (step u, 1-based) by one
    that consumed u - 1. Mean over u in (a, b] of trend(first step of u's branch batch) - trend(u).
    Below the parent's batch (k = 1/m) the branch is ahead instead: its loss on part p of batch u is
    measured after u - 1 + p/m parent batches, so the lag is the mean of trend(u + p/m) - trend(u) (< 0)."""
    u = np.arange(a + 1, b + 1)
    f, d = factor_parts(k) if k != 1 else (1, 1)
    if d > 1:
        ahead = u[:, None] + np.arange(d)[None, :] / d  # (window, m)
        return float(np.mean(trend(ahead) - trend(u)[:, None]))
    first = s + ((u - 1 - s) // f) * f + 1
    return float(np.mean(trend(first) - trend(u)))


def _time_s(run_dir: Path) -> float:
    return float(sum(max(0.0, a.get("end", 0) - a.get("start", 0)) for a in state.attempts(run_dir)))


def _phases_s(run_dir: Path, rows: dict[int, dict[str, Any]]) -> tuple[float | None, ...]:
    """(start-up, training, end) wall seconds of a run trained in one attempt, from its metrics rows'
    ``time``: training = the rows' span plus the steps before the first row at the rows' pace; start-up =
    the rest of the time from the attempt's start to the first row (process start, imports, data,
    checkpoint load); end = from the last row to the attempt's end (final eval, checkpoint, exit).
    Nones for a resumed run or one without two timed rows."""
    tries = state.attempts(run_dir)
    timed = sorted((s, float(r["time"])) for s, r in rows.items() if isinstance(r.get("time"), (int, float)))
    if (
        len(tries) != 1
        or not {"start", "end"} <= set(tries[0])
        or len(timed) < 2
        or timed[-1][0] <= timed[0][0]
    ):
        return None, None, None
    (f, t_f), (last, t_l) = timed[0], timed[-1]
    pace = (t_l - t_f) / (last - f)
    return t_f - f * pace - float(tries[0]["start"]), t_l - t_f + f * pace, float(tries[0]["end"]) - t_l


def _span_s(rows: dict[int, dict[str, Any]], s: int, b: int, total_s: float) -> float | None:
    """The parent's wall seconds from its row of step s to its row of step b (its pace over a branch's
    tokens); None without both rows or when a resume lies between them (the span then exceeds the run's
    own trained time or is negative)."""
    try:
        span = float(rows[b]["time"]) - float(rows[s]["time"])
    except (KeyError, TypeError, ValueError):
        return None
    return span if 0 < span <= total_s else None


def measure(run_dir: str | Path) -> dict[str, Any]:
    """Every branch measurement of ``run_dir`` from its ``cbs/`` folders (see the module docstring)."""
    run_dir = Path(run_dir).resolve()
    base, resolved = _parent(run_dir)
    cfg = from_dict(RunConfig, base, source=str(run_dir / CONFIG))
    B, seq, tps = cfg.train.batch_size, cfg.model.seq_len, cfg.tokens_per_step
    log_every = cfg.train.log_every
    T = int(resolved.get("total_steps") or cfg.total_steps)
    rows = _rows(run_dir)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for d in sorted((run_dir / CBS_DIR).glob(f"*/{CONFIG}")):
        bdir = d.parent
        braw = yaml.safe_load(d.read_text()) or {}
        br = braw.get("branch") or {}
        if not br.get("parent"):
            continue
        f, d, s = int(br["factor"]), int(br.get("divisor") or 1), int(br["step"])
        k = f / d
        n = int((braw.get("resolved") or {}).get("total_steps") or braw["train"]["max_steps"]) * f // d
        rule = _lr_rule_of(k, float(br["lr_scale"]))
        groups.setdefault((s, n, rule), []).append(
            {"dir": bdir, "factor": k, "lr_scale": float(br["lr_scale"]), "done": state.is_done(bdir)}
        )
    for r in _planned_not_started(run_dir / CBS_DIR):  # pending too: a measurement waits for all its k
        o = r["overrides"]
        f, d = int(o["branch.factor"]), int(o.get("branch.divisor") or 1)
        k, lr_scale = f / d, float(o["branch.lr_scale"])
        rule = _lr_rule_of(k, lr_scale)
        key = (int(o["branch.step"]), int(o["train.max_steps"]) * f // d, rule)
        groups.setdefault(key, []).append(
            {"dir": Path(r["run_dir"]), "factor": k, "lr_scale": lr_scale, "done": False}
        )
    out = []
    parent_time = _time_s(run_dir)
    parent_start, _, parent_end = _phases_s(run_dir, rows)
    for (s, n, rule), items in sorted(groups.items()):
        w = branch_window(log_every, [it["factor"] for it in items])
        win = max(w, (n // 2) // w * w)
        a, b = s + n - win, s + n
        main = window_loss(rows, a, b)
        fit = _row_noise(rows, s, b, log_every)
        sd, trend = fit if fit is not None else (None, None)
        se = sd / math.sqrt(win) if sd is not None else None
        tol = Z_TOL * se if se is not None else None
        m: dict[str, Any] = {
            "step": s, "parent_steps": n, "tokens": n * tps, "lr_rule": rule, "window": [a, b],
            "loss": main, "loss_at_step": (rows.get(s) or {}).get("loss"), "noise_se": se, "tolerance": tol,
            "gns_b_simple": pooled_b_simple([r for t, r in rows.items() if s - n < t <= b + n]), "branches": [], "pending": [],
        }  # fmt: skip
        btime, starts, trains, ends = 0.0, [], [], []
        for it in sorted(items, key=lambda x: x["factor"]):
            if not it["done"]:
                m["pending"].append(it["dir"].name)
                continue
            k = it["factor"]
            brow = _rows(it["dir"])
            bl = window_loss(brow, round((a - s) / k), round((b - s) / k))  # branch steps of the window
            done = json.loads((it["dir"] / state.DONE).read_text() or "{}")
            t = _time_s(it["dir"])
            btime += t
            start_s, train_s, end_s = _phases_s(it["dir"], brow)
            if train_s is not None:
                starts.append(start_s)
                trains.append(train_s)
                ends.append(end_s)
            lag = _lag(trend, s, a, b, k) if trend is not None else 0.0
            pen = bl - main - lag if bl is not None and main is not None else None
            m["branches"].append(
                {"factor": k, "batch_size": round(k * B), "lr_scale": it["lr_scale"], "loss": bl, "penalty": pen, "lag": lag,
                 "ok": None, "eval_loss": done.get("final_eval_loss"), "run": it["dir"].name, "time_s": t,
                 "start_s": start_s, "train_s": train_s, "end_s": end_s}
            )  # fmt: skip
        # "ok" against the smallest batch measured (critical_from_branches): the parent, or a branch below it
        ref = _reference_penalty(m["branches"])
        for x in m["branches"]:
            x["ok"] = (x["penalty"] - ref <= tol) if x["penalty"] is not None and tol is not None else None
        # none until every branch of the step is DONE: a partial set would bracket the wrong k
        m["cbs_measured"] = None if m["pending"] else critical_from_branches(m["branches"], B, seq, tol)
        m["cost"] = {
            "tokens_ratio": n * tps / (T * tps),
            "time_ratio": (btime / max(len(m["branches"]), 1)) / parent_time if parent_time else None,
            "branch_time_s": btime,
            "parent_time_s": parent_time,
            # the same split into start-up, training and end: a branch's training against the parent's own
            # wall time over the branch's tokens (its token share), its start-up and end against the parent's
            "branch_start_s": float(np.mean(starts)) if starts else None,
            "branch_train_s": float(np.mean(trains)) if trains else None,
            "branch_end_s": float(np.mean(ends)) if ends else None,
            "parent_start_s": parent_start,
            "parent_end_s": parent_end,
            "parent_span_s": _span_s(rows, s, b, parent_time),
        }
        c = m["cost"]
        c["train_vs_span"] = (
            c["branch_train_s"] / c["parent_span_s"] if c["branch_train_s"] and c["parent_span_s"] else None
        )
        out.append(m)
    return {
        "run": run_dir.name, "seq_len": seq, "batch_size": B, "total_steps": T, "tokens_per_step": tps,
        "z_tolerance": Z_TOL, "updated": time.time(), "measurements": out,
    }  # fmt: skip


def _lr_rule_of(k: float, lr_scale: float) -> str:
    """The LR_RULES name that scales the LR by ``lr_scale`` at factor ``k``, else "custom"."""
    return next((n for n, f in LR_RULES.items() if math.isclose(f(k), lr_scale, rel_tol=1e-4)), "custom")


def _planned_not_started(cbs_dir: Path) -> list[dict[str, Any]]:
    """The runs of the latest branch plan (``cbs_dir/plan.json``, written when a branch plan is launched) whose
    folder holds no ``config.yaml`` yet: not started, but part of their step's measurement."""
    try:
        runs = json.loads((cbs_dir / "plan.json").read_text()).get("runs") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [
        r
        for r in runs
        if isinstance(r, dict)
        and "branch.step" in (r.get("overrides") or {})
        and not (Path(r["run_dir"]) / CONFIG).is_file()
    ]


def _reference_penalty(branches: list[dict[str, Any]]) -> float:
    """The penalty of the smallest batch measured, which every other is taken against: the parent's (0) unless
    a branch below its batch (k < 1) has one."""
    below = [
        (b["factor"], b["penalty"]) for b in branches if b.get("penalty") is not None and b["factor"] < 1
    ]
    return min(below)[1] if below else 0.0


def critical_from_branches(
    branches: list[dict[str, Any]], batch_size: int, seq_len: int, tol: float | None
) -> dict[str, Any] | None:
    """Largest k x B whose penalty (and every smaller k's) is within ``tol``; bracketed by the first k that
    pays one (``high`` = inf when none does). Penalties are taken against the smallest batch measured: the
    parent itself (k = 1, penalty 0) or, with branches below its batch (k = 1/m), the smallest of those, so a
    parent whose own batch already pays (a smaller batch reaches a lower loss on the same tokens) is
    bracketed below its batch. ``value`` interpolates in log k where the penalty crosses ``tol`` between
    the two. ``low_is_reference``: the smallest batch measured is the lower bound -- the critical batch may
    lie below it too (nothing smaller was measured to tell). Sequences."""
    pts = [(b["factor"], b["penalty"]) for b in branches if b.get("penalty") is not None]
    if tol is None or not pts:
        return None
    pts = sorted([*pts, (1, 0.0)] if all(k != 1 for k, _ in pts) else pts)
    ref = _reference_penalty(branches)
    k_ok, d_ok, k_bad, d_bad = pts[0][0], 0.0, None, None
    for k, p in pts[1:]:
        d = p - ref
        if d <= tol:
            k_ok, d_ok = k, d
        else:
            k_bad, d_bad = k, d
            break
    if k_bad is None:
        value, high = float(k_ok), math.inf
    else:
        f = (tol - d_ok) / (d_bad - d_ok) if d_bad > d_ok else 0.0
        value, high = float(np.exp(np.log(k_ok) + f * (np.log(k_bad) - np.log(k_ok)))), float(k_bad)
    res = {
        "value": value * batch_size, "low": float(k_ok) * batch_size, "high": high * batch_size,
        "largest_ok": round(k_ok * batch_size), "source": "branches", "unit": "sequences",
        "low_is_reference": k_ok == pts[0][0],
    }  # fmt: skip
    res.update({f"{key}_tokens": res[key] * seq_len for key in ("value", "low", "high")})
    res["tokens"] = res.pop("value_tokens")
    return res


def write_results(run_dir: str | Path) -> dict[str, Any]:
    """``measure`` -> ``RUN/cbs/cbs.json``, atomically (an open-ended ``high`` is written "inf")."""
    from scaling_train.fitter.core import write_json_atomic

    res = measure(run_dir)
    write_json_atomic(Path(run_dir) / CBS_DIR / RESULTS, res)
    return res


def describe_results(res: dict[str, Any]) -> str:
    lines = [f"[cbs] {res['run']}: batch {res['batch_size']} x {res['seq_len']} tokens"]
    for m in res["measurements"]:
        tol = m.get("tolerance")
        lines.append(
            f"[cbs] step {m['step']} ({m['lr_rule']}, {m['tokens']:,} tokens, window {m['window']}): parent loss "
            + (
                f"{m['loss']:.4f}"
                if m["loss"] is not None
                else "unknown (its rows do not cover the window yet)"
            )
            + (f", tolerance {tol:.4f}" if tol is not None else ", tolerance unknown")
        )
        for b in m["branches"]:
            pen = b["penalty"]
            lines.append(
                f"[cbs]   k={factor_label(b['factor']):<4} B={b['batch_size']:<5} loss {b['loss']:.4f} penalty "
                f"{pen:+.4f} {'ok' if b['ok'] else 'PENALTY'}"
                if pen is not None
                else f"[cbs]   k={factor_label(b['factor'])} B={b['batch_size']}: rows do not cover the window"
            )
        c = m.get("cbs_measured")
        if c:
            lines.append(
                f"[cbs]   measured critical batch {c['value']:.0f} sequences [{c['low']:.0f}, {c['high']:.0f}]"
                f" at loss {m['loss']:.4f}"
                + (
                    f" (the lower bound is the smallest batch measured, {c['low']:.0f}: add a factor below it, "
                    "e.g. 0.5, to test it)"
                    if c.get("low_is_reference") and math.isfinite(c["high"])
                    else ""
                )
            )
        cost = m.get("cost") or {}
        if cost.get("branch_train_s") is not None:  # branches trained in one attempt
            vs, p0 = cost.get("train_vs_span"), cost.get("parent_start_s")
            lines.append(
                f"[cbs]   cost per branch: {cost['tokens_ratio']:.0%} of the run's tokens; training "
                f"{cost['branch_train_s']:.1f} s"
                + (f" ({vs:.2f}x the run's own time over those tokens)" if vs is not None else "")
                + f", start-up {cost['branch_start_s']:.1f} s"
                + (f" ({cost['branch_start_s'] - p0:+.1f} s against the run's)" if p0 is not None else "")
                + f", end {cost['branch_end_s']:.1f} s"
            )
        if m["pending"]:
            lines.append(f"[cbs]   not DONE: {', '.join(m['pending'])} (rerun the command to finish them)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- CLI
def _ints(text: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 2,4,8") from None


def _factors(text: str) -> list[float]:
    """--factors: comma-separated batch multiples, integers >= 2 and 1/m below the run's batch (0.5 or 1/2)."""
    out = []
    for x in (x.strip() for x in text.split(",")):
        if not x:
            continue
        try:
            num, _, den = x.partition("/")
            out.append(float(num) / float(den) if den else float(num))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(
                f"--factors {text!r}: {x!r} is no number; give e.g. 2,4,8 or 0.5,2,4,8"
            ) from None
    return out


def _cmd_cbs(args: argparse.Namespace) -> int:
    from scaling_train.sweep import backends

    plan = make_branch_plan(
        args.run_dir, at=args.at, factors=args.factors, tokens=args.tokens, lr_rule=args.lr_rule,
        require_checkpoints=not args.dry_run,
    )  # fmt: skip
    if args.concurrency is not None:
        plan.spec.launch.concurrency = args.concurrency
    backend = args.backend or plan.spec.launch.backend
    print(describe(plan))
    if args.dry_run:
        print(backends.dry_run_text(plan, backend))
        return 0
    rc = run_branches(plan, backend=backend)
    print(describe_results(write_results(plan.sweep_dir.parent)))
    print(f"[cbs] results: {plan.sweep_dir / RESULTS}")
    return rc


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cbs",
        help="measure the critical batch by branched training from a run's checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run folder with a checkpoint at each --at step")
    p.add_argument("--at", type=_ints, required=True, help="parent step(s) to branch from, e.g. 200,400")
    p.add_argument(
        "--factors", type=_factors, default=[2.0, 4.0, 8.0],
        help="batch multiples k: integers >= 2, and 1/m (0.5, 1/4) below the run's batch (default 2,4,8)",
    )  # fmt: skip
    p.add_argument(
        "--tokens", type=float, required=True, help="tokens per branch (rounded up to whole steps of every k)"
    )
    p.add_argument("--lr-rule", choices=tuple(LR_RULES), default="sqrt", help="LR x sqrt(k) (Adam) or x k")
    p.add_argument("--backend", choices=("local", "torchrun", "slurm"), default=None)
    p.add_argument("--concurrency", type=int, default=None, help="local: branches at the same time")
    p.add_argument("--dry-run", action="store_true", help="print the branch plan and commands; start nothing")
    p.set_defaults(func=_cmd_cbs)
