"""Config of the downstream evals run during training (``RunConfig.evals``)."""

from __future__ import annotations

from dataclasses import dataclass

from scaling_train.config import doc


@dataclass
class EvalsConfig:
    tasks: list[str] = doc(
        "Tasks evaluated during training: built-in 'next_line', 'identifier', 'compiles' (generated from "
        "the held-out split of data.corpus) and/or paths to JSONL task files; empty = no evals.",
        default_factory=list,
    )
    every: int = doc(
        "Evaluate at the first metrics flush at or after every k-th step (0 = only at the last step).", 0
    )
    n_items: int = doc("Items per built-in multiple-choice / cloze task.", 64)
    pass_until_items: int = doc("Items of the built-in PassUntil task ('compiles').", 8)
    max_attempts: int = doc("PassUntil: sampling budget per item.", 32)
    target_passes: int = doc(
        "PassUntil: stop an item after this many passes (>= 2 gives a useful unbiased estimate).", 2
    )
    max_new_tokens: int = doc("PassUntil: tokens sampled per attempt.", 32)
    temperature: float = doc("PassUntil: sampling temperature.", 1.0)
    batch_size: int = doc("Sequences per eval forward (scoring) and samples per round (PassUntil).", 32)
    seed: int = doc("Seed of the built-in task generation and of the PassUntil sampler.", 0)
    records: bool = doc(
        "Write per-item records to RUN_DIR/evals.jsonl (task scalars always go to the row).", True
    )

    def __post_init__(self) -> None:
        for name in (
            "n_items",
            "pass_until_items",
            "max_attempts",
            "target_passes",
            "max_new_tokens",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"evals.{name}={getattr(self, name)} must be >= 1")
        if self.every < 0:
            raise ValueError(f"evals.every={self.every} must be >= 0 (0 = only at the last step)")
        if not self.temperature > 0:
            raise ValueError(f"evals.temperature={self.temperature} must be > 0")
        if self.target_passes > self.max_attempts:
            raise ValueError(
                f"evals.target_passes={self.target_passes} must be <= evals.max_attempts={self.max_attempts}"
            )
