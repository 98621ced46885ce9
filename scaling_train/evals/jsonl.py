"""Users' own tasks from JSONL, one item per line, in the common context/choices/answer layout.

Multiple choice (``answer`` is the index of the right choice, or the right choice's text)::

    {"context": "The capital of France is", "choices": [" Paris", " Rome"], "answer": 0}

Cloze (no ``choices``; ``answer`` is the span whose log-likelihood is scored)::

    {"context": "def add(a, b):\\n    return a", "answer": " + b"}

Optional ``"id"``. All lines of one file must be the same kind. Every error names ``path:line``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaling_train.evals.tasks import ClozeItem, MultipleChoiceItem, Task


class TaskFileError(ValueError):
    """A JSONL task file is malformed; the message names the file and line and what to fix."""


def _item(rec: Any, where: str) -> MultipleChoiceItem | ClozeItem:
    if not isinstance(rec, dict):
        raise TaskFileError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    unknown = set(rec) - {"context", "choices", "answer", "id"}
    if unknown:
        raise TaskFileError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: context, choices, answer, id"
        )
    ctx = rec.get("context")
    if not isinstance(ctx, str):
        raise TaskFileError(f"{where}: 'context' must be a string, got {ctx!r}")
    item_id = str(rec.get("id", where))
    if "answer" not in rec:
        raise TaskFileError(f"{where}: missing 'answer'")
    ans = rec["answer"]
    if "choices" not in rec:
        if not isinstance(ans, str) or not ans:
            raise TaskFileError(
                f"{where}: cloze item (no 'choices') needs a non-empty string 'answer', got {ans!r}"
            )
        return ClozeItem(ctx, ans, id=item_id)
    choices = rec["choices"]
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise TaskFileError(f"{where}: 'choices' must be a list of >= 2 non-empty strings, got {choices!r}")
    if isinstance(ans, bool) or not isinstance(ans, (int, str)):
        raise TaskFileError(f"{where}: 'answer' must be a choice index or a choice's text, got {ans!r}")
    if isinstance(ans, str):
        if ans not in choices:
            raise TaskFileError(f"{where}: answer {ans!r} is not one of the choices {choices!r}")
        ans = choices.index(ans)
    if not 0 <= ans < len(choices):
        raise TaskFileError(
            f"{where}: answer={ans} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
        )
    return MultipleChoiceItem(ctx, tuple(choices), ans, id=item_id)


def load_jsonl_task(path: str | Path, *, name: str | None = None) -> Task:
    """Read a task file; the task is multiple choice when its items have ``choices``, else cloze."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TaskFileError(f"{path}: no such task file")
    items: list[MultipleChoiceItem | ClozeItem] = []
    kind: str | None = None
    first_line = 0
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            item = _item(rec, where)
            k = "multiple_choice" if isinstance(item, MultipleChoiceItem) else "cloze"
            if kind is None:
                kind, first_line = k, lineno
            elif k != kind:
                raise TaskFileError(
                    f"{where}: a {k} item in a {kind} task (line {first_line} set the kind); "
                    "put multiple-choice and cloze items in separate files"
                )
            items.append(item)
    if not items:
        raise TaskFileError(f"{path}: no items (the file is empty)")
    return Task(name or path.stem, kind, items)  # type: ignore[arg-type]
