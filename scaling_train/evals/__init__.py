"""Downstream evals scored with the fused loss's per-sample sums (multiple choice, cloze) and by
sampling against a verifier (PassUntil); built-in tasks from the held-out corpus split; JSONL tasks;
a trainer callback. See docs/evals.md."""

from scaling_train.evals.harness import (
    ContinuationScores,
    PassRate,
    TaskResult,
    evaluate_cloze,
    evaluate_multiple_choice,
    evaluate_pass_until,
    evaluate_task,
    pass_rate_estimate,
    sample_continuations,
    score_continuations,
)
from scaling_train.evals.jsonl import TaskFileError, load_jsonl_task
from scaling_train.evals.tasks import ClozeItem, MultipleChoiceItem, PassUntilItem, Task

__all__ = [
    "ClozeItem",
    "ContinuationScores",
    "MultipleChoiceItem",
    "PassRate",
    "PassUntilItem",
    "Task",
    "TaskFileError",
    "TaskResult",
    "evaluate_cloze",
    "evaluate_multiple_choice",
    "evaluate_pass_until",
    "evaluate_task",
    "load_jsonl_task",
    "pass_rate_estimate",
    "sample_continuations",
    "score_continuations",
]
