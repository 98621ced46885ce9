"""Sweep plan: spec -> one ``RunSpec`` per grid point, with deterministic names and exact commands.

Run names encode the coordinates and the hash of the resolved run config (STYLE 8):

    N2.2e5-D1.1e6-B16-lr3e-3-s0-1a2b3c4d     N non-embedding params, D training tokens, B global batch
                                             (sequences), peak lr, seed, config_hash (8 hex)

``parse_run_name`` gives the coordinates back. An edited base config changes the hash, so it is a new
run folder rather than a silently mixed one.
"""

from __future__ import annotations

import itertools
import math
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaling_train.config import ConfigError, deep_merge, from_dict, load_yaml, parse_overrides
from scaling_train.data.pools import format_mix, pool_counts
from scaling_train.fitter.adaptive import MIN_LAW_POINTS, AdaptivePolicy
from scaling_train.fitter.cbs import LR_BATCH_RULES
from scaling_train.metrics.config import REPEAT_EPOCHS
from scaling_train.models import sizes
from scaling_train.run_names import NAME_RE, parse_run_name, run_name  # noqa: F401 (names live there; re-exported)
from scaling_train.sweep.spec import PowerRule, SweepSpec, adaptive_policy, factor_label, factor_parts
from scaling_train.train.config import RunConfig, config_hash

CPU_FLOPS_PER_S = 4e9  # measured: ~0.2M-param model, 1 thread, 2-core VM (benchmarks/results/sweep.md)
GPU_FLOPS_PER_S = 2e14  # H100 bf16 at ~25% MFU for small models
BYTES_PER_PARAM = 16  # fp32 weights + grads + Adam m, v (ZeRO splits these across devices)
GPU_MEMORY = 60e9  # usable bytes per GPU for states (80 GB card minus activations)
TARGET_HOURS = 4.0  # auto devices: enough GPUs to finish a run in about this long


@dataclass
class RunSpec:
    index: int
    name: str
    size: str
    n_params: int  # non-embedding N of the actual shape
    tokens: int  # D = steps * batch_size * seq_len
    steps: int
    batch_size: int
    lr: float
    seed: int
    flops: float  # flops_per_token (incl. attention and LM head) * D
    devices: int  # processes per node
    nodes: int
    est_s: float
    time_limit_min: int
    config_hash: str
    run_dir: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted RunConfig keys this run sets on the command line (spec overrides + coordinates)."""
    cbs_steps: list[int] = field(default_factory=list)
    """Steps the spec's cbs block branches this run from (``scaling_train.sweep.cbs``)."""
    cbs_parent_steps: int = 0
    """Parent steps each of those branches covers (``branch_points``; 0 without branches)."""
    budget: float | None = None
    """The value of the grid's budget axis (``grid.tokens_per_param`` / ``tokens`` / ``flops``) the run was planned
    at: the runs of one budget share it exactly (None for a run planned otherwise, e.g. a cbs branch)."""

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes


@dataclass
class Plan:
    spec: SweepSpec
    sweep_dir: Path
    base: dict[str, Any]  # written to sweep_dir/base.yaml: spec.base merged with spec.run
    runs: list[RunSpec]
    adaptive: AdaptivePolicy | None = None
    """The spec's adaptive block (written to sweep_dir/adaptive.json for the fitter); None = not adaptive."""

    @property
    def stages_after_runs(self) -> bool:
        """Whether work of the sweep follows its runs and ends with its own last fit and report (the cbs
        block's branches, ``sweep.cbs.final_pass``), so the sidecars leave both to it."""
        return self.spec.cbs.every is not None

    @property
    def base_path(self) -> Path:
        return self.sweep_dir / "base.yaml"

    def train_argv(self, run: RunSpec) -> list[str]:
        """`scaling_train.cli train` arguments of one run (after the interpreter / torchrun)."""
        return ["-m", "scaling_train.cli", "train", str(self.base_path), *format_overrides(run.overrides)]

    def python(self) -> str:
        return self.spec.launch.python or sys.executable

    def to_json(self) -> dict[str, Any]:
        return {"sweep": self.spec.name, "spec": self.spec.source, "runs": [asdict(r) for r in self.runs]}


# ---------------------------------------------------------------------------------------- rules
def _size_n(size: str | float, where: str) -> float:
    try:
        return sizes.parse_size(size, where=where)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def apply_rule(rule: PowerRule, n: float, *, where: str) -> float:
    """value * (N / N0) ** exponent, clamped and rounded as the rule says."""
    v = rule.value * (n / _size_n(rule.ref_size, where=f"{where}.ref_size")) ** rule.exponent
    if rule.min is not None:
        v = max(v, rule.min)
    if rule.max is not None:
        v = min(v, rule.max)
    if rule.multiple_of:
        v = max(rule.multiple_of, rule.multiple_of * round(v / rule.multiple_of))
    return v


def format_overrides(over: dict[str, Any]) -> list[str]:
    """``{'optim.lr': 0.003}`` -> ``['optim.lr=0.003']`` (values as YAML scalars; null for None)."""
    out = []
    for k, v in over.items():
        if v is None:
            s = "null"
        elif isinstance(v, bool):
            s = "true" if v else "false"
        elif isinstance(v, (int, float)):
            s = repr(v)
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            s = "[" + ",".join(repr(x) for x in v) + "]"  # a YAML flow list of numbers
        else:
            s = str(v)
            # keep strings strings: a value YAML would read as something else is written quoted
            try:
                if yaml.safe_load(s) != s:
                    s = "'" + s.replace("'", "''") + "'"
            except yaml.YAMLError:
                s = "'" + s.replace("'", "''") + "'"
        out.append(f"{k}={s}")
    return out


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'optim': {'lr': 1}}`` -> ``{'optim.lr': 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------- cbs
MIN_BRANCH_STEPS = 4
"""The largest factor's branch takes at least this many steps: its compared window (the last half) then
holds >= 2 steps taken after >= 2 updates (a 1-step branch window is the checkpoint itself)."""


def branch_window(log_every: int, factors: list[float] | tuple[float, ...]) -> int:
    """Parent steps a branch length must be a multiple of: every integer factor k divides it (whole branch
    steps; a factor 1/m splits each parent step into m branch steps, so any length is whole) and so does
    the parent's log_every (its metrics rows bound the compared window)."""
    return math.lcm(int(log_every), *(factor_parts(k)[0] for k in factors))


def branch_length(want_steps: float, log_every: int, factors: list[float] | tuple[float, ...]) -> int:
    """Parent steps of a branch: ``want_steps`` rounded up to a multiple of ``branch_window`` and to at
    least ``MIN_BRANCH_STEPS`` steps of the largest factor."""
    unit = branch_window(log_every, factors)
    floor = MIN_BRANCH_STEPS * max(factor_parts(k)[0] for k in factors)
    return unit * max(1, math.ceil(want_steps / unit), math.ceil(floor / unit))


def branch_points(
    total_steps: int, log_every: int, *, every: float, factors: list[float], tokens_fraction: float
) -> tuple[list[int], int]:
    """(branch steps, parent steps per branch) of a sweep's cbs block for one run: every ``every`` percent,
    rounded to the run's log rows, each leaving room for the branch before the run ends; the branch length
    is ``tokens_fraction`` of the run, rounded up by ``branch_length``."""
    n = branch_length(tokens_fraction * total_steps, log_every, factors)
    out: list[int] = []
    p = every
    while p < 100 - 1e-9:
        s = int(round(p / 100 * total_steps / log_every)) * log_every
        if log_every <= s and s + n <= total_steps and s not in out:
            out.append(s)
        p += every
    return out, n


# ---------------------------------------------------------------------------------------- plan
def make_plan(spec: SweepSpec, *, output: str | Path | None = None) -> Plan:
    """Expand the grid. Raises ConfigError (file, key, value, allowed) before anything starts."""
    sweep_dir = Path(output or spec.output or Path("runs") / spec.name).absolute()
    base = load_yaml(spec.base) if spec.base else {}
    base = deep_merge(base, spec.run or {})
    spec_over = _spec_overrides(spec)
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}  # run name -> the grid point that made it (a second one is an error)
    for pt in _grid_points(spec):
        runs.append(
            _plan_run(
                spec, pt, base=base, spec_over=spec_over, sweep_dir=sweep_dir, index=len(runs), seen=seen
            )
        )
    return Plan(spec=spec, sweep_dir=sweep_dir, base=base, runs=runs, adaptive=adaptive_policy(spec))


@dataclass(frozen=True)
class _Point:
    """One grid point: a size at a budget, the optional batch-size / unique-tokens / pools axes and a seed."""

    si: int  # index in grid.sizes
    size: Any
    n_target: float  # the size as N (the rules' N, not the actual shape's)
    kind: str  # "tokens_per_param" | "tokens" | "flops"
    budget: float
    bs_axis: Any
    u_axis: Any
    mix_axis: Any
    seed: Any

    def label(self) -> str:
        """'size=1M tokens=1e+06' as the errors and the duplicate check name the point."""
        return f"size={self.size} {self.kind}={self.budget:g}"


@dataclass
class _Sized:
    """A grid point's actual shape and step count, before its run config is final."""

    over: dict[str, Any]  # spec overrides + model.size and the data axes; the run's overrides grow from it
    n: int  # non-embedding N of the actual shape
    n_total: int  # n + embedding and head (vocab * d_model * 2), for the memory estimate
    fpt: float  # FLOPs per token (attention and LM head included)
    batch_size: int
    tps: int  # tokens per step = batch_size * seq_len
    lr: float
    steps: int


def _spec_overrides(spec: SweepSpec) -> dict[str, Any]:
    """The spec's overrides as dotted keys, validated once so that their errors name the spec, not a run."""
    spec_over = {str(k): v for k, v in flat(spec.overrides or {}).items()}
    try:
        parse_overrides(format_overrides(spec_over))
    except ConfigError as e:
        raise ConfigError(f"{spec.source}: overrides: {e}") from None
    return spec_over


def _grid_points(spec: SweepSpec) -> Iterator[_Point]:
    """Yields the grid points in plan order: size, budget, (batch size, unique tokens, pools), seed."""
    src, g = spec.source, spec.grid
    budgets: list[tuple[str, float]] = [
        (k, float(v)) for k in ("tokens_per_param", "tokens", "flops") if getattr(g, k) for v in getattr(g, k)
    ]
    for si, size in enumerate(g.sizes):
        n_target = _size_n(size, where=f"{src}: grid.sizes[{si}]")
        for bi, (kind, budget) in enumerate(budgets):
            if g.budget_sizes is not None and str(size) not in {str(x) for x in g.budget_sizes[bi]}:
                continue  # a staggered design: this budget does not run this size
            for bs_axis, u_axis, mix_axis in itertools.product(
                g.batch_sizes or [None], g.unique_tokens or [None], g.pools or [None]
            ):
                for seed in g.seeds:
                    yield _Point(si, size, n_target, kind, budget, bs_axis, u_axis, mix_axis, seed)


def _size_point(spec: SweepSpec, pt: _Point, base: dict[str, Any], spec_over: dict[str, Any]) -> _Sized:
    """The point's shape (from base + its model and data axes), batch size, lr and steps; ConfigError if off."""
    src, rules = spec.source, spec.rules
    over: dict[str, Any] = dict(spec_over)
    over["model.size"] = str(pt.size)
    if pt.u_axis is not None:
        over["data.unique_tokens"] = int(pt.u_axis)
    if pt.mix_axis is not None:
        over["data.mix"] = str(pt.mix_axis)
    where0 = f"grid.sizes[{pt.si}]={pt.size!r}" + (f" grid.pools={pt.mix_axis!r}" if pt.mix_axis else "")
    cfg0 = _build(base, over, src, where=where0)
    shape, T = cfg0.model.shape, cfg0.model.seq_len
    n = sizes.non_embedding_params(shape)
    vocab = cfg0.model.vocab_size or cfg0.data.vocab_size
    fpt = sizes.flops_per_token(shape, T, vocab_size=vocab)
    B_rule = int(apply_rule(rules.batch_size, pt.n_target, where=f"{src}: rules.batch_size"))
    B = int(pt.bs_axis) if pt.bs_axis is not None else B_rule
    lr = rules.lr.value if rules.mup else apply_rule(rules.lr, pt.n_target, where=f"{src}: rules.lr")
    lr *= (B / B_rule) ** LR_BATCH_RULES[rules.lr_batch]  # the rule the fitter groups batch sweeps by
    if cfg0.data.pools:  # every mixed pool gets >= 1 sequence of each step
        try:
            pool_counts(list(cfg0.data.mix.values()), B, names=list(cfg0.data.mix))
        except ValueError as e:
            raise ConfigError(f"{src} ({where0}): {e}") from None
    steps = _steps(src, pt, n=n, fpt=fpt, B=B, T=T)
    return _Sized(over, n, n + vocab * shape.d_model * 2, fpt, B, B * T, lr, steps)


def _steps(src: str, pt: _Point, *, n: int, fpt: float, B: int, T: int) -> int:
    """Optimizer steps of the point's budget: ceil(D / (B T)); ConfigError when D is under one step."""
    d_target = {"tokens_per_param": pt.budget * n, "tokens": pt.budget, "flops": pt.budget / fpt}[pt.kind]
    tps = B * T
    if d_target < tps:
        key = {"tokens_per_param": "grid.tokens_per_param", "tokens": "grid.tokens", "flops": "grid.flops"}[
            pt.kind
        ]
        raise ConfigError(
            f"{src}: {key} value {pt.budget:g} gives D={d_target:,.0f} tokens for size {pt.size} (N={n:,}), "
            f"below one optimizer step of batch_size*seq_len = {B}*{T} = {tps:,} tokens; "
            f"raise the budget, or lower the batch size or seq_len"
        )
    return math.ceil(d_target / tps)


def _run_overrides(spec: SweepSpec, pt: _Point, sz: _Sized) -> dict[str, Any]:
    """``sz.over`` completed with the run's coordinates and the rules' switches (the dict itself, updated)."""
    rules = spec.rules
    over = sz.over
    over.update(
        {
            "train.max_steps": sz.steps,
            "train.max_tokens": None,
            "train.batch_size": sz.batch_size,
            "optim.lr": float(f"{sz.lr:.3g}"),
            "seed": int(pt.seed),
            "sweep": spec.name,
        }
    )
    if rules.evals_per_run is not None:
        over["train.eval_every"] = max(1, sz.steps // rules.evals_per_run)
    if rules.mup:
        over.update({"model.mup": True, "model.mup_base_width": rules.mup_base_width})
    if spec.resources.gpu:
        over["device"] = "cuda"
    return over


def _claim(seen: dict[str, str], name: str, pt: _Point, src: str) -> None:
    """Returns nothing: records ``name`` in ``seen``, or raises ConfigError when another point made it."""
    if name in seen:
        raise ConfigError(
            f"{src}: two grid points resolve to the same run {name} ({seen[name]} and {pt.label()}); "
            "remove the duplicate size or budget"
        )
    seen[name] = (
        pt.label()
        + (f" unique_tokens={pt.u_axis:g}" if pt.u_axis else "")
        + (f" pools={pt.mix_axis}" if pt.mix_axis else "")
    )


def _plan_run(
    spec: SweepSpec,
    pt: _Point,
    *,
    base: dict[str, Any],
    spec_over: dict[str, Any],
    sweep_dir: Path,
    index: int,
    seen: dict[str, str],
) -> RunSpec:
    """The RunSpec of one grid point: resolved config, name (claimed in ``seen``), branch points, resources."""
    res = spec.resources
    sz = _size_point(spec, pt, base, spec_over)
    over = _run_overrides(spec, pt, sz)
    cfg = _build(base, over, spec.source, where=f"run {pt.label()}")
    h = config_hash(cfg)
    D = sz.steps * sz.tps
    name = run_name(
        n_params=sz.n, tokens=D, batch_size=sz.batch_size, lr=cfg.optim.lr, seed=int(pt.seed), cfg_hash=h
    )
    _claim(seen, name, pt, spec.source)
    over["run_dir"] = str(sweep_dir / name)
    cbs_steps: list[int] = []
    cbs_n = 0
    # branch points: checkpoints the run keeps (not hashed)
    if _branched(spec.cbs, pt.size, pt.budget):
        cbs_steps, cbs_n = branch_points(
            sz.steps, cfg.train.log_every, every=spec.cbs.every, factors=spec.cbs.factors,
            tokens_fraction=spec.cbs.tokens_fraction,
        )  # fmt: skip
        over["train.keep_steps"] = cbs_steps
    flops = sz.fpt * D
    devices, nodes = _resources(spec, n_total=sz.n_total, flops=flops)
    fps = res.flops_per_s or (GPU_FLOPS_PER_S if res.gpu else CPU_FLOPS_PER_S)
    est = flops / (fps * devices * nodes) + res.overhead_s
    limit = res.time_limit_min or int(math.ceil(2 * est / 60 + 10))
    return RunSpec(
        index=index, name=name, size=str(pt.size), n_params=sz.n, tokens=D, steps=sz.steps,
        batch_size=sz.batch_size, lr=cfg.optim.lr, seed=int(pt.seed), flops=flops, devices=devices, nodes=nodes,
        est_s=est, time_limit_min=int(limit), config_hash=h, run_dir=str(sweep_dir / name), overrides=over,
        cbs_steps=cbs_steps, cbs_parent_steps=cbs_n if cbs_steps else 0, budget=pt.budget,
    )  # fmt: skip


def _branched(c, size: Any, budget: float) -> bool:
    """Whether the spec's cbs block branches the run of grid size ``size`` at budget value ``budget``."""
    if c.every is None or (c.sizes is not None and str(size) not in {str(x) for x in c.sizes}):
        return False
    return c.budgets is None or any(math.isclose(float(budget), float(b), rel_tol=1e-9) for b in c.budgets)


def run_config(plan: Plan, run: RunSpec) -> RunConfig:
    """The resolved RunConfig of one planned run (base + its overrides), as its process will build it."""
    return _build(plan.base, run.overrides, plan.spec.source, where=run.name)


def repetition_warnings(plan: Plan, unique_tokens: Callable[[RunConfig], int | None]) -> list[str]:
    """Warnings for the runs whose token budget D exceeds their training split's U unique tokens.

    ``unique_tokens(cfg)`` gives U for a run config (the data layer's ``TokenStream.unique_tokens``),
    or None when it cannot be known before training (e.g. a remote corpus); it is called once per
    distinct (data, seq_len). Epochs = D / U; a run with epochs > 1 sees every token ``epochs - 1``
    more times after the first pass, which a Chinchilla fit on (N, D) ignores. Returns one line per
    repeating run, then a summary line (nothing when no run repeats data)."""
    cache: dict[str, int | None] = {}
    out: list[str] = []
    worst, unknown, train_loss = 0.0, 0, 0
    pooled: list[str] = []
    for run in plan.runs:
        cfg = run_config(plan, run)
        if cfg.data.pools:  # per-pool epochs from the config alone (a pool's U is its declared size)
            key = repr((sorted(asdict(cfg.data).items()), cfg.model.seq_len))
            if key not in cache:  # prepares the data once: pools larger than the split fail here
                cache[key] = unique_tokens(cfg)
            line, ep = _pool_epochs_line(run, cfg)
            pooled.append(line)
            if max(ep.values()) > 1.0:
                worst = max(worst, max(ep.values()))
                out.append(f"warning: run {run.index} {run.name} repeats data pool(s) " + ", ".join(
                    f"{k} ({e:.2f} epochs)" for k, e in ep.items() if e > 1.0))  # fmt: skip
            continue
        key = repr((sorted(asdict(cfg.data).items()), cfg.model.seq_len))
        if key not in cache:
            cache[key] = unique_tokens(cfg)
        U = cache[key]
        if U is None:
            unknown += 1
            continue
        epochs = run.tokens / U
        if epochs > 1.0:
            worst = max(worst, epochs)
            train_loss += epochs > REPEAT_EPOCHS and cfg.metrics.law_loss == "train"
            out.append(
                f"warning: run {run.index} {run.name} trains on D={run.tokens:,} tokens but data.corpus="
                f"{cfg.data.corpus!r} (max_bytes={cfg.data.max_bytes}, seq_len={cfg.model.seq_len}) holds "
                f"U={U:,} unique training tokens: {epochs:.2f} epochs, every token seen {epochs - 1:.2f} "
                "more times after the first pass"
            )
    if out:
        out.append(
            f"warning: {len(out)} of {len(plan.runs)} runs repeat data (up to {worst:.2f} epochs); a Chinchilla "
            "fit on (N, D) ignores repetition, so the fitter's sweep law is the data-constrained one "
            "(sweep_law.json law; laws.fit_data_constrained), or use a larger corpus (data.corpus, "
            "data.max_bytes) or smaller token budgets"
        )
        if train_loss:
            out.append(
                f"warning: {train_loss} repeating run(s) have metrics.law_loss: train; past the first epoch the "
                "training loss measures memorisation, so the fitter will not predict their final loss: set "
                "metrics.law_loss: eval (and rules.evals_per_run) to predict their validation loss"
            )
    if pooled:
        out = ["per-pool epochs (data.pools; epochs = D x n_p / B / U_p):", *pooled, *out]
    if unknown:
        out.append(
            f"note: U unknown before training for {unknown} runs (remote corpus); repetition not checked"
        )
    return out


def _pool_epochs_line(run: RunSpec, cfg: RunConfig) -> tuple[str, dict[str, float]]:
    """'  run i name: mix -> pool: U_p, n_p/B sequences per step, epochs' for a run on data.pools, and the
    epochs per pool: pool p holds U_p = (tokens_p // T) T tokens and gets n_p of every B sequences
    (``pool_counts``), so it is seen ``D n_p / (B U_p)`` times."""
    T, B, mix = cfg.model.seq_len, run.batch_size, cfg.data.mix
    counts = dict(zip(mix, pool_counts(list(mix.values()), B, names=list(mix))))
    sizes_ = {p.name: (p.tokens // T) * T for p in cfg.data.pools}
    ep = {k: run.tokens * counts[k] / B / sizes_[k] for k in mix}
    parts = [f"{k}: U={sizes_[k]:.3g}, {counts[k]}/{B} seqs/step, {ep[k]:.2f} epochs" for k in mix]
    return f"  run {run.index} {run.name} [{format_mix(mix)}]: " + "; ".join(parts), ep


def _build(base: dict, over: dict, src: str, *, where: str) -> RunConfig:
    try:
        merged = deep_merge(base, parse_overrides(format_overrides(over)))
        return from_dict(RunConfig, merged, source=f"{src} ({where})")
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{src} ({where}): {e}") from None


def _resources(spec: SweepSpec, *, n_total: float, flops: float) -> tuple[int, int]:
    """(devices per node, nodes): from resources.* when set, else from N (memory) and C (time)."""
    res = spec.resources
    if res.devices is not None:
        devices = res.devices
    elif not res.gpu:
        devices = 1
    else:
        by_time = flops / ((res.flops_per_s or GPU_FLOPS_PER_S) * TARGET_HOURS * 3600)
        by_mem = BYTES_PER_PARAM * n_total / GPU_MEMORY
        want = max(1, math.ceil(max(by_time, by_mem)))
        total = 1 << (want - 1).bit_length()  # next power of two
        return min(total, res.devices_per_node), res.nodes or max(1, total // res.devices_per_node)
    nodes = res.nodes or (spec.torchrun.nnodes if spec.torchrun.nnodes > 1 else 1)
    return devices, nodes


# ---------------------------------------------------------------------------------------- display
def _fmt_s(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else (f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h")


def describe(plan: Plan) -> str:
    """The plan as a table: run name, N, D, FLOPs, devices, estimated time."""
    lines = [
        f"sweep {plan.spec.name}: {len(plan.runs)} runs -> {plan.sweep_dir}",
        f"{'#':>3} {'run':42s} {'N':>9} {'D':>9} {'FLOPs':>8} {'B':>4} {'lr':>7} {'steps':>6} {'dev':>7} {'est':>6}",
    ]
    for r in plan.runs:
        lines.append(
            f"{r.index:>3} {r.name:42s} {r.n_params:9.2e} {r.tokens:9.2e} {r.flops:8.1e} {r.batch_size:>4} "
            f"{r.lr:7.1e} {r.steps:>6} {f'{r.nodes}x{r.devices}':>7} {_fmt_s(r.est_s):>6}"
        )
    total = sum(r.est_s for r in plan.runs)
    conc = plan.spec.launch.concurrency
    lines.append(
        f"total: {sum(r.flops for r in plan.runs):.2e} FLOPs, {_fmt_s(total)} of run time "
        f"(~{_fmt_s(total / conc)} wall with launch.concurrency={conc})"
    )
    return "\n".join(lines)


def describe_cbs(plan: Plan, backend: str) -> str:
    """The cbs block's branches: which runs, how many, their tokens and FLOPs against the sweep's, and when
    ``backend`` starts them; "" for a sweep without a cbs block."""
    c = plan.spec.cbs
    if c.every is None:
        return ""
    runs = [r for r in plan.runs if r.cbs_steps]
    k = len(c.factors)
    n_br = sum(len(r.cbs_steps) for r in runs) * k
    flops = sum(len(r.cbs_steps) * k * r.flops * r.cbs_parent_steps / r.steps for r in runs)
    total = sum(r.flops for r in plan.runs)
    share = [r.cbs_parent_steps / r.steps for r in runs]
    pct = (
        f"{min(share):.0%}"
        if f"{min(share):.0%}" == f"{max(share):.0%}"
        else f"{min(share):.0%}-{max(share):.0%}"
    )
    when = (
        "in the next free slot once its run has checkpointed the branch point (mid-run)"
        if backend == "local"
        else "as a job array once its run has checkpointed the branch point (mid-run, slurm.wait)"
        if backend == "slurm" and plan.spec.slurm.mode == "array" and plan.spec.slurm.wait
        else "after the sweep's runs, on the same backend"
    )
    rule = "sqrt(k)" if c.lr_rule == "sqrt" else "k"
    head = (
        f"cbs: {len(runs)} of {len(plan.runs)} runs branched every {c.every:g}% of their steps, k = "
        f"{', '.join(map(factor_label, c.factors))} (lr x {rule})"
    )
    if not runs:
        return head + ": no run leaves room for a branch (raise the budget or lower cbs.tokens_fraction)"
    return (
        f"{head}: {n_br} branches of {pct} of their run's tokens each (whole branch steps, >= {MIN_BRANCH_STEPS} "
        f"at the largest k), {flops:.2e} FLOPs = {flops / total:.0%} of the sweep's; each starts {when} "
        "-> RUN/cbs/cbs.json"
    )


def describe_adaptive(plan: Plan) -> str:
    """The adaptive policy and the runs it never stops; "" for a sweep without one."""
    pol = plan.adaptive
    if pol is None:
        return ""
    unit = "of the predicted loss" if pol.relative else "in loss units"
    exempt = pol.exempt([(r.name, r.n_params, r.tokens) for r in plan.runs])
    lines = [
        f"adaptive: the fitter stops a run past {pol.min_fraction:.0%} of its steps once its 90% interval is "
        f"< {pol.tolerance:g} {unit} at {pol.stable_updates} updates {pol.spacing:.0%} of the run apart "
        f"({', '.join(f'{k}={v}' for k, v in pol.to_dict().items())}) -> {plan.sweep_dir / 'adaptive.json'}",
        f"adaptive: {len(exempt)} of {len(plan.runs)} runs always train to the end" + (":" if exempt else ""),
    ]
    lines += [f"  {name}: {why}" for name, why in exempt.items()]
    lines += _launch_order_notes(plan)
    return "\n".join(lines)


def _launch_order_notes(plan: Plan) -> list[str]:
    """What decides which run starts next in an adaptive sweep, and a warning where the order wastes savings."""
    pol, la = plan.adaptive, plan.spec.launch
    if pol is None:
        return []
    if la.backend != "local" or la.concurrency >= len(plan.runs):
        if pol.launch_order == "uncertainty":
            return [
                f"adaptive: launch_order=uncertainty has no effect here: the {la.backend} backend with "
                f"concurrency {la.concurrency} starts all {len(plan.runs)} runs at once"
            ]
        return []
    if pol.launch_order == "uncertainty":
        return [
            "adaptive: when a slot frees, the run the fitter ranks first starts (SWEEP/launch_order.json: the "
            f"largest drop of the law's uncertainty at {pol.target_compute:g}x the largest run per FLOP; the "
            f"planned order until {MIN_LAW_POINTS} runs of 2 sizes are known)"
        ]
    if la.order == "longest":
        return [
            "adaptive: note: launch.order=longest starts each size's longest runs before its short ones have "
            "finished, so they train without a same-size reference and stop later (replayed on 4 slots: 84-92% "
            "of the compute against 72-90% with sizes ascending, BENCHMARKS.md); launch.order=budget or "
            "adaptive.launch_order=uncertainty leaves more to save"
        ]
    return []


def command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
