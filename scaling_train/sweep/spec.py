"""The sweep spec: a YAML file in ``configs/sweeps/`` that names the grid, the per-size rules, the
resources and the launcher. Loaded into typed dataclasses; every mistake fails before anything
starts, naming the file, the key, the value and what is allowed.

    name: quickstart
    base: ../train/tiny.yaml            # optional run config (path relative to this file)
    run: {model: {seq_len: 64}}         # nested RunConfig values for every run (over base)
    overrides: {optim.warmup_steps: 10} # dotted RunConfig keys for every run (shown in each command)
    grid:
      sizes: [0.2M, 0.5M, 1M, 3M]       # named sizes or numbers (non-embedding parameters)
      tokens_per_param: [5, 10, 20]     # exactly one of tokens_per_param | tokens | flops (IsoFLOP)
      batch_sizes: null                 # null = from rules.batch_size; a list makes a batch-size axis
      unique_tokens: null               # null = the whole training split; a list makes a data-limit axis
      pools: null                       # data mixes over run.data.pools, e.g. [clean, noisy, "clean:0.5+noisy:0.5"]
      seeds: [0]
    rules:
      lr: {value: 3e-3, ref_size: 1M, exponent: -0.25}        # lr(N) = value * (N / ref)**exponent
      batch_size: {value: 16, ref_size: 1M, exponent: 0.0, multiple_of: 8}
      mup: false                        # muP transfer: lr(N) = value for every width, model.mup=true
    resources: {devices: 1, nodes: 1, time_limit_min: null, flops_per_s: null}
    launch: {concurrency: 2, retries: 1, fitter: true, report: true}
    slurm: {partition: null, mode: array}
    torchrun: {nnodes: 1, master_addr: 127.0.0.1, master_port: 29500}
    cbs: {every: 25, factors: [2, 4, 8], tokens_fraction: 0.1, lr_rule: sqrt}  # optional branches
    adaptive: {tolerance: 0.02, min_fraction: 0.25}  # optional: the fitter stops runs whose final loss is known
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scaling_train.config import ConfigError, doc, load
from scaling_train.data.pools import PoolConfig, normalise_mix, parse_mix
from scaling_train.fitter.adaptive import AdaptivePolicy


@dataclass
class Grid:
    sizes: list[str] = doc(
        "Model sizes (named like '1M' or numbers of non-embedding parameters).", default_factory=list
    )
    tokens_per_param: list[float] | None = doc("Token budgets as D/N ratios (Chinchilla-optimal ~20).", None)
    tokens: list[float] | None = doc("Token budgets in absolute training tokens.", None)
    flops: list[float] | None = doc("IsoFLOP budgets in training FLOPs; D = C / flops_per_token(N).", None)
    budget_sizes: list[list[str]] | None = doc(
        "Per value of the budget axis (in its order), the grid.sizes it runs: a staggered IsoFLOP design puts each "
        "budget's sizes around its optimum instead of running every size at every budget; null = every size at "
        "every budget.",
        None,
    )
    batch_sizes: list[int] | None = doc(
        "Batch-size axis in sequences; null = one batch size from rules.batch_size.", None
    )
    unique_tokens: list[float] | None = doc(
        "Unique-token axis: each run trains on only the first U tokens of the training split and repeats them "
        "(data.unique_tokens), for repetition studies; null = the whole split.",
        None,
    )
    pools: list[str] | None = doc(
        "Data-pool axis: each value is a data.mix over the pools declared in the runs' data.pools, 'clean' or "
        "'clean:0.5+noisy:0.5' (weights normalised); null = no axis.",
        None,
    )
    seeds: list[int] = doc("Seeds (init and data order).", default_factory=lambda: [0])


@dataclass
class PowerRule:
    value: float = doc("The value at ref_size.", 3e-3)
    ref_size: str = doc("Reference size N0 (named or a number).", "1M")
    exponent: float = doc("value(N) = value * (N / N0) ** exponent.", 0.0)
    multiple_of: int | None = doc("Round to a multiple of this (batch sizes).", None)
    min: float | None = doc("Clamp from below.", None)
    max: float | None = doc("Clamp from above.", None)


@dataclass
class Rules:
    lr: PowerRule = doc(
        "Peak learning rate as a power law in N.", default_factory=lambda: PowerRule(3e-3, "1M", 0.0)
    )
    batch_size: PowerRule = doc(
        "Global batch (sequences) as a power law in N.", default_factory=lambda: PowerRule(16, "1M", 0.0, 8)
    )
    lr_batch: Literal["none", "sqrt", "linear"] = doc(
        "How the LR follows a batch-size axis (grid.batch_sizes): none = the size's rules.lr at every batch; "
        "sqrt = x sqrt(B / B_rule) (Adam; the rule cbs branches use by default); linear = x B / B_rule; "
        "B_rule = rules.batch_size at the run's size (where rules.lr holds).",
        "none",
    )
    mup: bool = doc(
        "muP transfer: model.mup=true and the same lr for every width (rules.lr.exponent ignored).", False
    )
    mup_base_width: int = doc("muP base width (where rules.lr.value was tuned).", 128)
    evals_per_run: int | None = doc(
        "Validation evaluations per run, evenly spaced: train.eval_every = max(1, steps // k) for each run (a "
        "curve of k points whatever the run's length, which metrics.law_loss: eval needs); null = the run "
        "config's train.eval_every.",
        None,
    )

    def __post_init__(self) -> None:
        if self.evals_per_run is not None and not (
            isinstance(self.evals_per_run, int)
            and not isinstance(self.evals_per_run, bool)
            and self.evals_per_run >= 1
        ):
            raise ValueError(f"rules.evals_per_run={self.evals_per_run!r} must be an integer >= 1 (or null)")


@dataclass
class Resources:
    devices: int | None = doc("Processes (GPUs) per node per run; null = 1 on CPU, else from N and D.", None)
    nodes: int | None = doc("Nodes per run; null = from devices and devices_per_node.", None)
    devices_per_node: int = doc("GPUs per node of the cluster.", 8)
    time_limit_min: float | None = doc(
        "Slurm time limit per run in minutes; null = 2x the estimate + 10.", None
    )
    flops_per_s: float | None = doc(
        "Achieved training FLOP/s per device for estimates; null = 4e9 CPU, 2e14 GPU.", None
    )
    overhead_s: float = doc("Fixed seconds per run (start-up, data, checkpoints) in estimates.", 8.0)
    gpu: bool = doc("Runs use GPUs (device=cuda; Slurm asks --gpus-per-node).", False)
    cpus_per_task: int | None = doc("Slurm --cpus-per-task; null = not set.", None)
    mem: str | None = doc("Slurm --mem (e.g. '16G'); null = not set.", None)


@dataclass
class Launch:
    backend: Literal["local", "torchrun", "slurm"] = doc(
        "Default sweep backend (the --backend flag wins).", "local"
    )
    concurrency: int = doc("local: runs at the same time on this machine.", 1)
    retries: int = doc("A failing run is retried up to this many times (others go on).", 1)
    fitter: bool = doc("Start `scaling-train fit SWEEP_DIR --follow` beside the runs (when installed).", True)
    order: Literal["longest", "budget"] = doc(
        "local: the order runs start in. 'longest': the longest first (the shortest wall time); 'budget': the "
        "smallest compute budget first, so each larger run has finished runs for the fitter's references when its "
        "own predictions are made (better early predictions, a little more wall time).",
        "longest",
    )
    live_report: bool = doc(
        "Let the online fitter refresh report.html while the runs train (at most once a minute). A refresh takes "
        "~10 s of CPU, during which no prediction is made: off for short sweeps (the report is written at the end "
        "either way, when launch.report is on).",
        True,
    )
    fitter_interval: float = doc(
        "Seconds between the online fitter's polls (`fit --interval`): short runs need short polls, or their "
        "curves are predicted only a few times.",
        10.0,
    )
    report: bool = doc("Run `scaling-train report SWEEP_DIR` at the end (when installed).", True)
    stale_lock_s: float = doc(
        "A run lock whose heartbeat is older than this is stale and may be taken.", 120.0
    )
    python: str | None = doc("Python interpreter for runs; null = the one running the sweep.", None)


@dataclass
class Slurm:
    mode: Literal["array", "submitit"] = doc(
        "sbatch job array from launch/slurm/array.sbatch, or submitit.", "array"
    )
    partition: str | None = doc("--partition.", None)
    account: str | None = doc("--account.", None)
    qos: str | None = doc("--qos.", None)
    max_parallel: int | None = doc("Array throttle: at most this many runs at once (%k).", None)
    setup: list[str] = doc(
        "Shell lines run before each job (module load, venv activation).", default_factory=list
    )
    extra: list[str] = doc("Extra sbatch options, e.g. ['--constraint=h100'].", default_factory=list)
    template: str | None = doc("sbatch template path; null = launch/slurm/array.sbatch.", None)
    wait: bool = doc("Wait for the jobs to finish and print their states.", True)
    requeue: bool = doc(
        "submitit: requeue on preemption/timeout (the run resumes from its checkpoint).", True
    )


@dataclass
class Torchrun:
    nnodes: int = doc(
        "Agents (nodes) per run; each node runs `scaling-train sweep ... --backend torchrun`.", 1
    )
    node_rank: int | None = doc("This node's rank; null = $NODE_RANK or 0.", None)
    master_addr: str = doc("c10d rendezvous host (node 0).", "127.0.0.1")
    master_port: int = doc("c10d rendezvous port (each run uses master_port + its index).", 29500)


@dataclass
class CBS:
    """Branched critical-batch measurements (``scaling-train cbs``, docs/cbs.md) on every run of the sweep."""

    every: float | None = doc(
        "Branch at every this many percent of each run (25 = at 25%, 50%, 75%); null = no branches.", None
    )
    factors: list[float] = doc(
        "Batch multiples k of the branches: integers >= 2, and 1/m (0.5, 0.25) for branches below the run's "
        "own batch (they tell whether that batch already pays a penalty).",
        default_factory=lambda: [2, 4, 8],
    )
    tokens_fraction: float = doc(
        "Tokens each branch trains, as a fraction of its run's tokens (rounded up so every k divides).", 0.1
    )
    lr_rule: Literal["sqrt", "linear"] = doc("Branch LR = parent LR x sqrt(k) (Adam) or x k.", "sqrt")
    sizes: list[str] | None = doc(
        "Branch only the runs of these grid.sizes values (as written there); null = every size.", None
    )
    budgets: list[float] | None = doc(
        "Branch only the runs of these budget values (of the grid's budget axis: grid.flops, grid.tokens or "
        "grid.tokens_per_param); null = every budget. One budget's runs give the critical batch at several losses "
        "for a fraction of the cost.",
        None,
    )


@dataclass
class SweepSpec:
    name: str = doc("Sweep name: output folder runs/<name>, W&B group.", "sweep")
    base: str | None = doc("Base run config YAML (relative to the spec file).", None)
    run: dict = doc("Nested RunConfig values for every run (over base).", default_factory=dict)
    overrides: dict = doc(
        "Dotted RunConfig keys for every run (over run; written into each command).", default_factory=dict
    )
    output: str | None = doc("Sweep folder; null = runs/<name> (the --output flag wins).", None)
    grid: Grid = doc("The axes.", default_factory=Grid)
    rules: Rules = doc("Per-size LR and batch rules.", default_factory=Rules)
    resources: Resources = doc("Devices, nodes, time limits.", default_factory=Resources)
    launch: Launch = doc("Launcher behaviour.", default_factory=Launch)
    slurm: Slurm = doc("Slurm settings.", default_factory=Slurm)
    torchrun: Torchrun = doc("Multi-node torchrun settings.", default_factory=Torchrun)
    cbs: CBS = doc("Branched critical-batch measurements on every run.", default_factory=CBS)
    adaptive: dict[str, Any] | None = doc(
        "Adaptive sweep: the online fitter stops a run (RUN/STOP, resumable) once its predicted final loss is "
        "known within the policy's tolerance; keys of scaling_train.fitter.adaptive.AdaptivePolicy (tolerance, "
        "relative, stable_updates, spacing, min_fraction, keep_full_per_size, keep_largest, launch_order, "
        "target_compute, law_tolerance); {} = the defaults, "
        "null = off. A sweep-level setting: no run's config or hash depends on it.",
        None,
    )
    source: str = field(default="<dict>", metadata={"doc": "(set by the loader)"})


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and validate a sweep spec (structure here; the grid itself in ``plan.make_plan``).

    ``overrides`` (``["launch.retries=2"]``, the sweep command's ``--set``) win over the file and go
    through the same checks: an unknown key or a bad value names the command line."""
    path = Path(path)
    spec = load(SweepSpec, path, overrides)
    spec.source = str(path)
    if spec.base is not None:
        base = Path(spec.base)
        if not base.is_absolute():
            cand = (path.parent / base).resolve()
            base = cand if cand.is_file() else Path(spec.base).resolve()
        if not base.is_file():
            raise ConfigError(
                f"{path}: base={spec.base!r} does not exist (looked next to the spec and in the cwd)"
            )
        spec.base = str(base)
    _check(spec, f"{path} + command line" if overrides else str(path))
    return spec


def _check(spec: SweepSpec, src: str) -> None:
    g = spec.grid
    if not spec.name or "/" in spec.name or spec.name in (".", ".."):
        raise ConfigError(f"{src}: name={spec.name!r} must be a non-empty folder name without '/'")
    if not g.sizes:
        raise ConfigError(f"{src}: grid.sizes is empty; list at least one size, e.g. [0.2M, 1M]")
    given = [k for k in ("tokens_per_param", "tokens", "flops") if getattr(g, k) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"{src}: give exactly one budget axis of grid.tokens_per_param / grid.tokens / grid.flops (got {given or 'none'})"
        )
    if g.budget_sizes is not None:
        axis = getattr(g, given[0])
        known = [str(x) for x in g.sizes]
        if len(g.budget_sizes) != len(axis):
            raise ConfigError(
                f"{src}: grid.budget_sizes has {len(g.budget_sizes)} lists for the {len(axis)} values of "
                f"grid.{given[0]}={axis}; give one list of sizes per budget, in the same order"
            )
        for i, sz in enumerate(g.budget_sizes):
            bad = [x for x in (sz or []) if str(x) not in known]
            if not sz or bad:
                raise ConfigError(
                    f"{src}: grid.budget_sizes[{i}]={sz} (for grid.{given[0]}[{i}]={axis[i]:g}): "
                    f"{bad or 'empty'}; each list names sizes of grid.sizes={known}"
                )
    optional = tuple(k for k in ("batch_sizes", "unique_tokens") if getattr(g, k) is not None)
    for key in (*given, "seeds", *optional):
        vals = getattr(g, key)
        if not vals:
            raise ConfigError(f"{src}: grid.{key} is empty; list at least one value")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{src}: grid.{key}={vals} has duplicates")
        if key != "seeds" and any(not v > 0 for v in vals):
            raise ConfigError(f"{src}: grid.{key}={vals}: every value must be > 0")
    if g.pools is not None:
        _check_pools(g.pools, src)
    if len(set(map(str, g.sizes))) != len(g.sizes):
        raise ConfigError(f"{src}: grid.sizes={g.sizes} has duplicates")
    for name in ("lr", "batch_size"):
        r = getattr(spec.rules, name)
        if not r.value > 0:
            raise ConfigError(f"{src}: rules.{name}.value={r.value} must be > 0")
        if r.multiple_of is not None and r.multiple_of < 1:
            raise ConfigError(f"{src}: rules.{name}.multiple_of={r.multiple_of} must be >= 1")
    la = spec.launch
    if la.concurrency < 1:
        raise ConfigError(f"{src}: launch.concurrency={la.concurrency} must be >= 1")
    if la.retries < 0:
        raise ConfigError(f"{src}: launch.retries={la.retries} must be >= 0")
    if not la.fitter_interval > 0:
        raise ConfigError(f"{src}: launch.fitter_interval={la.fitter_interval} must be > 0 seconds")
    res = spec.resources
    for key in ("devices", "nodes"):
        v = getattr(res, key)
        if v is not None and v < 1:
            raise ConfigError(f"{src}: resources.{key}={v} must be >= 1 or null")
    if spec.torchrun.nnodes < 1:
        raise ConfigError(f"{src}: torchrun.nnodes={spec.torchrun.nnodes} must be >= 1")
    _check_cbs(spec.cbs, spec.grid, src)
    adaptive_policy(spec, src)
    for key in spec.overrides:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{src}: overrides key {key!r} must be a dotted RunConfig key like optim.lr")


def adaptive_policy(spec: SweepSpec, src: str | None = None) -> AdaptivePolicy | None:
    """The spec's ``adaptive:`` block as a validated ``AdaptivePolicy``; None when the block is absent (null).
    A bad key or value raises ``ConfigError`` naming ``src`` (default: the spec file), the key and the value."""
    if spec.adaptive is None:
        return None
    block = dict(spec.adaptive)
    hints = typing.get_type_hints(AdaptivePolicy)
    for k, v in block.items():  # YAML 1.1 reads 3e-2 as a string; the spec's other numbers accept it too
        if hints.get(k) is float and isinstance(v, str):
            try:
                block[k] = float(v)
            except ValueError:
                pass  # left as it is: the policy's check names it
    try:
        return AdaptivePolicy.from_dict(block, source=f"{src or spec.source}: adaptive")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_pools(mixes: list[str], src: str) -> None:
    """Syntax of grid.pools (that each name is a declared pool is checked per run, in make_plan)."""
    if not mixes:
        raise ConfigError(
            f"{src}: grid.pools is empty; list at least one mix, e.g. [clean, 'clean:0.5+noisy:0.5']"
        )
    seen: dict[tuple, str] = {}
    for i, m in enumerate(mixes):
        try:
            names = parse_mix(m, key=f"grid.pools[{i}]")
            mix = normalise_mix(m, [PoolConfig(name=n, tokens=1) for n in names], key=f"grid.pools[{i}]")
        except ValueError as e:
            raise ConfigError(f"{src}: {e}") from None
        key = tuple(sorted((k, round(v, 12)) for k, v in mix.items()))
        if key in seen:
            raise ConfigError(f"{src}: grid.pools[{i}]={m!r} is the same mix as {seen[key]!r}")
        seen[key] = m


def factor_parts(k: float) -> tuple[int, int]:
    """(factor, divisor) of a branch's batch multiple ``k``: an integer k >= 2 is (k, 1) (k parent batches per
    branch step), k = 1/m with an integer m >= 2 is (1, m) (each parent batch split into m branch steps: a
    branch below the parent's batch, which tells whether the parent's own batch already pays a penalty).
    ValueError naming the value and the allowed values otherwise."""
    x = float(k)
    if x >= 2 and x == int(x):
        return int(x), 1
    if 0 < x < 1 and abs(1 / x - round(1 / x)) < 1e-6 * (1 / x) and round(1 / x) >= 2:
        return 1, int(round(1 / x))
    raise ValueError(f"batch multiple {k!r} must be an integer >= 2 or 1/m for an integer m >= 2 (0.5, 0.25)")


def factor_label(k: float) -> str:
    """``k`` as written in branch names and tables: 2, 4, 0.5, 0.25."""
    f, d = factor_parts(k)
    return str(f) if d == 1 else f"{1 / d:g}"


def _check_cbs(c: CBS, g: Grid, src: str) -> None:
    if c.every is None:
        return
    if not 0 < c.every < 100:
        raise ConfigError(
            f"{src}: cbs.every={c.every} must be a percent in (0, 100), e.g. 25 for branches at 25/50/75%"
        )
    if not c.factors:
        raise ConfigError(f"{src}: cbs.factors is empty; list batch multiples >= 2, e.g. [2, 4, 8]")
    shown = "[" + ", ".join(f"{float(k):g}" for k in c.factors) + "]"
    for k in c.factors:
        try:
            factor_parts(k)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{src}: cbs.factors={shown}: {e}") from None
    if len({float(k) for k in c.factors}) != len(c.factors):
        raise ConfigError(f"{src}: cbs.factors={shown}: a factor is listed twice")
    if not 0 < c.tokens_fraction <= 1:
        raise ConfigError(f"{src}: cbs.tokens_fraction={c.tokens_fraction} must be in (0, 1]")
    if c.sizes is not None:
        known = [str(x) for x in g.sizes]
        bad = [x for x in c.sizes if str(x) not in known]
        if bad or not c.sizes:
            raise ConfigError(f"{src}: cbs.sizes={c.sizes}: {bad or 'empty'} not in grid.sizes={known}")
    if c.budgets is not None:
        axis = next((k for k in ("tokens_per_param", "tokens", "flops") if getattr(g, k) is not None), None)
        values = list(getattr(g, axis) or []) if axis else []
        bad = [
            b for b in c.budgets if not any(math.isclose(float(b), float(v), rel_tol=1e-9) for v in values)
        ]
        if bad or not c.budgets:
            raise ConfigError(f"{src}: cbs.budgets={c.budgets}: {bad or 'empty'} not in grid.{axis}={values}")
