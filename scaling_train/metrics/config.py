"""Config of the metrics stream (``RunConfig.metrics``): device statistics, noise scale, sinks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scaling_train.config import doc


@dataclass
class WandbConfig:
    mode: Literal["disabled", "offline", "online"] = doc(
        "W&B sink: disabled, offline (files under RUN_DIR/wandb, `wandb sync` later) or online.", "disabled"
    )
    project: str = doc("W&B project.", "scaling_train")
    entity: str | None = doc("W&B entity (team or user); null = the account's default.", None)
    group: str | None = doc("W&B group; null = the sweep name (RunConfig.sweep).", None)
    tags: list[str] = doc("W&B tags.", default_factory=list)


@dataclass
class MetricsConfig:
    token_stats: bool = doc(
        "Per-token statistics from the fused loss (NLL histogram, by position, accuracy).", True
    )
    nll_bins: int = doc("Bins of the token-NLL histogram over [0, nll_max] (last bin open-ended).", 32)
    nll_max: float = doc("Upper edge of the token-NLL histogram in nats.", 16.0)
    pos_buckets: int = doc("Position buckets of the loss-by-position curve (must be <= seq_len).", 8)
    gns: bool = doc(
        "Gradient noise scale: grad accumulation >= 2 or, with one micro-batch, its two halves on measured "
        "steps (one process); DDP: local vs all-reduced gradient.",
        True,
    )
    gns_every: int = doc("Measure the noise scale every k optimizer steps (1 = every step).", 1)
    gns_split_every: int = doc(
        "With one micro-batch per step the probe runs it as two halves; do that every k optimizer steps "
        "(splitting costs ~4-6% of a step on the CPU, so every 4th keeps it near 1.5%).",
        4,
    )
    gns_decay: float = doc("EMA decay per flush of the noise-scale estimates.", 0.9)
    law_loss: Literal["train", "eval"] = doc(
        "The loss the fitter, the laws and the report use for this run: 'train' (the training loss of each "
        "flush: a fresh batch every step, so noisy when batches are small) or 'eval' (the validation loss of "
        "each evaluation: the same held-out tokens every time and for every run of a sweep, so the curve and the "
        "final value carry no batch noise; give the run evaluations, e.g. rules.evals_per_run in a sweep).",
        "train",
    )
    law_burn_in: int = doc(
        "Leave this run's points before this optimizer step out of every loss-curve fit (its own prediction and as "
        "a reference), on top of the laws' rule of 3 warmup lengths: for runs whose early transient outlasts a short "
        "warmup (the quickstart: 10 warmup steps, loss still leaving its token-frequency phase near step 100). A fit "
        "never drops more than half of the observed steps. 0 = the laws' rule only.",
        0,
    )
    fit_in_process: bool = doc(
        "Refit this run's final-loss prediction in the training process at flushes.", False
    )
    fit_every: int = doc("In-process fit every k flushes.", 5)
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata={"doc": "W&B sink"})

    def __post_init__(self) -> None:
        if self.nll_bins < 1 or self.pos_buckets < 1:
            raise ValueError(
                f"metrics.nll_bins={self.nll_bins} and metrics.pos_buckets={self.pos_buckets} must be >= 1"
            )
        if not self.nll_max > 0:
            raise ValueError(f"metrics.nll_max={self.nll_max} must be > 0")
        if self.gns_every < 1 or self.fit_every < 1 or self.gns_split_every < 1:
            raise ValueError(
                f"metrics.gns_every={self.gns_every}, metrics.gns_split_every={self.gns_split_every} and "
                f"metrics.fit_every={self.fit_every} must be >= 1"
            )
        if not 0 <= self.gns_decay < 1:
            raise ValueError(f"metrics.gns_decay={self.gns_decay} must be in [0, 1)")
        if (
            isinstance(self.law_burn_in, bool)
            or not isinstance(self.law_burn_in, int)
            or self.law_burn_in < 0
        ):
            raise ValueError(f"metrics.law_burn_in={self.law_burn_in!r} must be an integer step >= 0")


def law_column(run_config: dict | None) -> str:
    """The metrics.jsonl column a run's curve, final loss and predictions are in, from its resolved config
    (``config.yaml`` as a dict): ``eval_loss`` under ``metrics.law_loss: eval``, else ``loss`` (the training loss).
    The fitter (``RunTail``) and the report (``RunData``) both read it here."""
    law = ((run_config or {}).get("metrics") or {}).get("law_loss", "train")
    return "eval_loss" if law == "eval" else "loss"


REPEAT_EPOCHS = 1.05
"""A run whose training tokens exceed this many epochs of its training split repeats its data (the same value
as ``laws.data_constrained.REPEATED_EPOCHS``; tests/fitter/test_fitter.py checks they agree)."""


def memorised_loss_reason(run_config: dict | None) -> str | None:
    """Why a run's final loss is not predicted, or None: its laws read the training loss
    (``law_column`` = ``loss``) and it plans more than ``REPEAT_EPOCHS`` epochs (``resolved.epochs``). Past
    its first epoch the training loss measures how well the model memorised the repeated tokens (a 1M model
    after 8 epochs of 5e4 tokens: training loss 0.99, validation loss 5.49), which no learning curve of the
    laws describes; its validation loss can be predicted instead. The fitter neither predicts such a run nor
    uses its curve as a reference; the report does not replay it."""
    if law_column(run_config) != "loss":
        return None
    resolved = (run_config or {}).get("resolved") or {}
    ep = resolved.get("epochs")
    if (
        resolved.get("pools")
        or not isinstance(ep, (int, float))
        or isinstance(ep, bool)
        or ep <= REPEAT_EPOCHS
    ):
        return None
    return (
        f"the run repeats its training data ({ep:.3g} epochs planned) and its laws read the training loss, "
        "which past the first epoch measures memorisation; set metrics.law_loss: eval (and rules.evals_per_run "
        "in a sweep) to predict its validation loss"
    )


def law_burn_in(run_config: dict | None) -> int:
    """``metrics.law_burn_in`` of a run's resolved config (``config.yaml`` as a dict; 0 when absent or not a
    non-negative integer: a config the run itself accepted validated it)."""
    v = ((run_config or {}).get("metrics") or {}).get("law_burn_in", 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
