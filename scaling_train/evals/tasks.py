"""Task records: multiple choice, cloze and PassUntil (sample-and-verify) items, and a named task.

    task = Task("next_line", "multiple_choice", [MultipleChoiceItem(ctx, [a, b, c, d], answer=2), ...])
    task = Task("identifier", "cloze", [ClozeItem(ctx, " name"), ...])
    task = Task("compiles", "pass_until", [PassUntilItem(prompt, verifier=still_compiles(prompt)), ...])

Items hold text; the harness tokenizes them. A verifier is any ``Callable[[str], bool]`` applied to the
decoded continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

TaskKind = Literal["multiple_choice", "cloze", "pass_until"]
KINDS: tuple[str, ...] = ("multiple_choice", "cloze", "pass_until")


@dataclass(frozen=True)
class MultipleChoiceItem:
    """``context`` followed by one of ``choices``; ``answer`` indexes the correct choice."""

    context: str
    choices: tuple[str, ...]
    answer: int
    id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if len(self.choices) < 2:
            raise ValueError(f"item {self.id!r}: {len(self.choices)} choices; at least 2 are needed")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"item {self.id!r}: answer={self.answer} must index one of the {len(self.choices)} choices"
            )
        if any(not c for c in self.choices):
            raise ValueError(f"item {self.id!r}: empty choice (a choice needs at least one character)")


@dataclass(frozen=True)
class ClozeItem:
    """``context`` followed by the answer span ``answer`` (scored: its log-likelihood; greedy exact match)."""

    context: str
    answer: str
    id: str = ""

    def __post_init__(self) -> None:
        if not self.answer:
            raise ValueError(f"item {self.id!r}: empty answer span")


@dataclass(frozen=True)
class PassUntilItem:
    """Sample continuations of ``prompt`` until ``verifier(continuation)`` passes (or the budget is spent)."""

    prompt: str
    verifier: Callable[[str], bool] = field(compare=False)
    id: str = ""


Item = MultipleChoiceItem | ClozeItem | PassUntilItem
_ITEM_TYPE = {"multiple_choice": MultipleChoiceItem, "cloze": ClozeItem, "pass_until": PassUntilItem}


@dataclass(frozen=True)
class Task:
    name: str
    kind: TaskKind
    items: Sequence[Item]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind={self.kind!r} is not one of {KINDS}")
        if not self.items:
            raise ValueError(f"task {self.name!r} has no items")
        want = _ITEM_TYPE[self.kind]
        for i, it in enumerate(self.items):
            if not isinstance(it, want):
                raise TypeError(
                    f"task {self.name!r} ({self.kind}): item {i} is a {type(it).__name__}, not a {want.__name__}"
                )
        if any(c in self.name for c in "/ \n"):
            raise ValueError(f"task name {self.name!r} must not contain '/', spaces or newlines")

    def __len__(self) -> int:
        return len(self.items)
