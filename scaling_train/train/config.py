"""The resolved configuration of one training run (``scaling-train train CONFIG key=value ...``)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from scaling_train.config import doc, to_dict
from scaling_train.data import DataConfig
from scaling_train.evals.config import EvalsConfig
from scaling_train.metrics.config import MetricsConfig
from scaling_train.models import ModelConfig
from scaling_train.train.schedule import OptimConfig


@dataclass
class LoopConfig:
    batch_size: int = doc("Global batch in sequences per optimizer step.", 16)
    micro_batch_size: int | None = doc(
        "Sequences per forward/backward (per process); null = batch_size.", None
    )
    max_steps: int | None = doc("Budget in optimizer steps (exactly one of max_steps / max_tokens).", None)
    max_tokens: float | None = doc(
        "Budget in training tokens; steps = ceil(max_tokens / (batch_size*seq_len)).", None
    )
    log_every: int = doc("Flush metrics to metrics.jsonl every k steps (one host sync per flush).", 10)
    eval_every: int = doc("Evaluate on the validation split every k steps (0 = only at the end).", 100)
    eval_batches: int = doc("Validation micro-batches per evaluation.", 4)
    ckpt_every: int = doc("Checkpoint every k steps (0 = only at the end).", 100)
    keep_checkpoints: int = doc("Keep the newest k checkpoints.", 2)
    keep_steps: list[int] = doc(
        "Also checkpoint at these steps and keep them beyond keep_checkpoints (branch points of "
        "`scaling-train cbs`; a sweep's cbs block sets them).",
        default_factory=list,
    )
    compile: bool = doc("torch.compile the model.", False)
    progress: bool = doc("Show a progress bar.", True)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size} must be >= 1")
        mb = self.micro_batch_size
        if mb is not None and (mb < 1 or self.batch_size % mb):
            raise ValueError(
                f"train.micro_batch_size={mb} must be >= 1 and divide train.batch_size={self.batch_size}"
            )
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ValueError(
                f"set exactly one of train.max_steps={self.max_steps} and train.max_tokens={self.max_tokens}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps={self.max_steps} must be >= 1")
        if self.max_tokens is not None and not self.max_tokens > 0:
            raise ValueError(f"train.max_tokens={self.max_tokens} must be > 0")
        for name in ("log_every",):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 1")
        for name in ("eval_every", "ckpt_every", "eval_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 0")
        if self.keep_checkpoints < 1:
            raise ValueError(f"train.keep_checkpoints={self.keep_checkpoints} must be >= 1")
        if any(int(s) < 1 for s in self.keep_steps):
            raise ValueError(f"train.keep_steps={self.keep_steps}: every step must be >= 1")


@dataclass
class BranchConfig:
    """A branch of another run (``scaling-train cbs``, scaling_train/sweep/cbs.py): it starts from the
    parent's checkpoint at ``step`` and reads the parent's data in the parent's order, ``factor`` parent
    steps per branch step (so ``train.batch_size = factor x parent_batch_size``). Branch step j trains on
    parent steps ``step + j*factor .. step + (j+1)*factor - 1`` with LR ``lr_scale x`` the mean of the
    parent's planned LR over those steps (the parent's schedule, in tokens). ``divisor`` m > 1 (with
    factor 1) goes below the parent's batch: each parent batch is split into m branch steps of
    ``parent_batch_size / m`` sequences in order (branch step j trains on part j mod m of parent step
    ``step + j // m``, at ``lr_scale x`` that step's LR)."""

    parent: str | None = doc("Parent run folder; null = an ordinary run (not a branch).", None)
    step: int = doc("Parent step whose checkpoint (parent/checkpoints/step-*.pt) the branch starts from.", 0)
    factor: int = doc("Parent steps (batches) per branch step: the batch multiple k.", 1)
    divisor: int = doc("Branch steps per parent step (batch = parent's / divisor; factor must be 1).", 1)
    lr_scale: float = doc("Branch LR / parent LR at the same token (sqrt(k) or k).", 1.0)
    parent_batch_size: int = doc("The parent's train.batch_size (sequences).", 1)
    parent_total_steps: int = doc("The parent's planned steps (its LR schedule's length).", 1)

    def __post_init__(self) -> None:
        if self.parent is None:
            return
        if self.step < 1 or self.factor < 1 or self.divisor < 1 or self.parent_batch_size < 1:
            raise ValueError(
                f"branch.step={self.step}, branch.factor={self.factor}, branch.divisor={self.divisor} and "
                f"branch.parent_batch_size={self.parent_batch_size} must be >= 1"
            )
        if self.divisor > 1 and (self.factor != 1 or self.parent_batch_size % self.divisor):
            raise ValueError(
                f"branch.divisor={self.divisor} needs branch.factor=1 (got {self.factor}) and a "
                f"branch.parent_batch_size ({self.parent_batch_size}) it divides"
            )
        if not self.lr_scale > 0:
            raise ValueError(f"branch.lr_scale={self.lr_scale} must be > 0")
        if not 0 < self.step < self.parent_total_steps:
            raise ValueError(
                f"branch.step={self.step} must be inside the parent's 1..{self.parent_total_steps - 1} steps"
            )


@dataclass
class DistConfig:
    """How one run is spread over processes; applied in ``train/backend.py`` only (model code stays
    single-device). The process count comes from the launcher (torchrun's WORLD_SIZE), not from here."""

    strategy: Literal["auto", "single", "ddp", "fsdp", "deepspeed"] = doc(
        "auto = single for one process, else ddp below 300M non-embedding params, fsdp from 300M.",
        "auto",
    )
    zero_stage: int | None = doc(
        "DeepSpeed ZeRO stage 1/2/3; null = 2 below 1e9 non-embedding params, 3 from there.", None
    )
    offload: bool = doc("DeepSpeed: offload optimizer state to CPU (ZeRO-2/3).", False)
    comm_backend: Literal["auto", "nccl", "gloo"] = doc(
        "Process-group backend; auto = nccl on GPU, gloo on CPU.", "auto"
    )
    fsdp_sharding: Literal["full_shard", "shard_grad_op", "no_shard"] = doc(
        "FSDP sharding strategy.", "full_shard"
    )

    def __post_init__(self) -> None:
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"dist.zero_stage={self.zero_stage} must be 0, 1, 2, 3 or null")


@dataclass
class RunConfig:
    run_dir: str = doc(
        "Run folder: config.yaml, metrics.jsonl, checkpoints/, DONE, predictions.json.", "runs/default"
    )
    seed: int = doc("Seed of the init and of the batch order.", 0)
    device: Literal["auto", "cpu", "cuda"] = doc("auto = cuda when available.", "auto")
    precision: Literal["auto", "fp32", "bf16"] = doc(
        "Autocast dtype; auto = bf16 on GPU, fp32 on CPU.", "auto"
    )
    threads: int | None = doc("torch CPU threads (null = torch's default).", None)
    sweep: str | None = doc("Sweep name (set by the launcher; W&B group).", None)
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "model"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "data"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"doc": "optimizer"})
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=200), metadata={"doc": "loop"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"doc": "distribution (train/backend.py)"})
    metrics: MetricsConfig = doc(
        "Metrics stream: device statistics, noise scale, W&B.", default_factory=MetricsConfig
    )
    evals: EvalsConfig = doc(
        "Downstream evals every k steps (scaling_train/evals, docs/evals.md).", default_factory=EvalsConfig
    )
    branch: BranchConfig = doc(
        "Branched training of `scaling-train cbs` (set by it; null parent = an ordinary run).",
        default_factory=BranchConfig,
    )

    def __post_init__(self) -> None:
        br = self.branch
        if br.parent is not None and self.train.batch_size * br.divisor != br.factor * br.parent_batch_size:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} must be branch.factor={br.factor} x "
                f"branch.parent_batch_size={br.parent_batch_size}"
                + (f" / branch.divisor={br.divisor}" if br.divisor > 1 else "")
            )
        if self.model.vocab_size is not None and self.model.vocab_size < self.data.vocab_size:
            raise ValueError(
                f"model.vocab_size={self.model.vocab_size} is below data.vocab_size={self.data.vocab_size}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.seq_len

    @property
    def total_steps(self) -> int:
        if self.train.max_steps is not None:
            return self.train.max_steps
        return max(1, math.ceil(self.train.max_tokens / self.tokens_per_step))  # type: ignore[operator]


# Keys that do not change what is computed: they may differ on resume and are left out of the hash.
NON_SEMANTIC = {
    ("train", "progress"),
    ("run_dir",),
    ("threads",),
    ("train", "log_every"),
    ("train", "keep_steps"),
    ("sweep",),
    ("metrics",),
    ("evals",),
}


@dataclass(frozen=True)
class LaterField:
    """A config key added after the hash was first defined: left out of the hash while ``when`` (default:
    the key itself) holds ``absent``, the value that means "as before the key existed", so the runs of
    before keep their hash (their run folders and run names)."""

    path: tuple[str, ...]
    absent: Any
    when: tuple[str, ...] | None = None


LATER_FIELDS = (
    # the whole block, while the run is no branch (branched training, `scaling-train cbs`)
    LaterField(("branch",), None, when=("branch", "parent")),
    LaterField(("data", "pools"), []),  # data pools
    LaterField(("data", "mix"), None),  # ... and their mix (set exactly when pools are)
    LaterField(("data", "unique_tokens"), None),  # repeated data: null = the whole training split
    LaterField(("branch", "divisor"), 1),  # branches below the parent's batch (cbs factors 1/m)
)
"""Every key added after the hash was defined, and the value at which it is left out: the next one is a line."""

PATH_FIELDS = {("branch", "parent")}
"""Folders, not semantics (another kind than LATER_FIELDS, left out whatever their value): a branch lives under
its parent's run folder, so it keeps its hash wherever the sweep folder is moved."""


def semantic_dict(cfg: RunConfig) -> dict:
    """The resolved config the hash covers: ``to_dict(cfg)`` without the ``LATER_FIELDS`` at their absent
    value, the ``PATH_FIELDS`` and the ``NON_SEMANTIC`` keys."""
    d = to_dict(cfg)
    absent = [f.path for f in LATER_FIELDS if _get(d, f.when or f.path) == f.absent]  # before any is popped
    for path in (*absent, *PATH_FIELDS, *NON_SEMANTIC):
        _pop(d, path)
    return d


def _get(d: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        d = d[key]
    return d


def _pop(d: dict, path: tuple[str, ...]) -> None:
    """Remove ``path`` from ``d`` if it is there (its block may be gone already, e.g. ``branch``)."""
    for key in path[:-1]:
        d = d.get(key)
        if not isinstance(d, dict):
            return
    d.pop(path[-1], None)


def config_hash(cfg: RunConfig) -> str:
    """8 hex digits over the resolved, semantic config: an edited config is a new run."""
    raw = json.dumps(semantic_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:8]
