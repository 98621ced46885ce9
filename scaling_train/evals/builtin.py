"""Built-in tasks, generated deterministically from the held-out (validation) split of the corpus.

- ``next_line`` (multiple choice): the last lines of a file as context; the true next line against
  three lines drawn from other files.
- ``identifier`` (cloze): an identifier that already occurred earlier in the same file, after the text
  that precedes it; scored by log-likelihood and by exact match of greedy decoding.
- ``compiles`` (PassUntil): a prefix of a function that parses, ending at a statement boundary; a sample
  passes when the prompt followed by its complete lines (at least one non-blank) still parses with
  Python's own parser (``compile(..., "exec", ast.PyCF_ONLY_AST)``).

Items depend only on (corpus documents, val_fraction, seed, n_items): the same data config gives the
same tasks in every run of a sweep.
"""

from __future__ import annotations

import ast
import keyword
import re
import textwrap
import warnings
from collections.abc import Callable

import numpy as np

from scaling_train.data.corpus import Document, is_validation, iter_documents, split_documents
from scaling_train.evals.tasks import ClozeItem, MultipleChoiceItem, PassUntilItem, Task

CONTEXT_CHARS = 600
"""Characters of file text kept before an item (the harness keeps the last seq_len tokens of it)."""

SEEN_WITHIN = 400
"""identifier: the answer occurred at most this many characters before (inside the kept context)."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def validation_documents(corpus: str = "builtin", *, val_fraction: float = 0.05, max_docs: int = 12,
                         text_field: str = "text") -> list[Document]:  # fmt: skip
    """Up to ``max_docs`` held-out documents: those whose name hash puts them in the validation split.

    The split of a document depends on its name only (``data.corpus.is_validation``), so these are never
    training documents whatever ``data.max_bytes`` is; reading past ``max_bytes`` just finds more of
    them. A corpus of one document falls back to ``split_documents`` (its held-out tail)."""
    out, first = [], []
    for d in iter_documents(corpus, text_field=text_field):
        if len(first) < 2:
            first.append(d)
        if is_validation(d.name, val_fraction):
            out.append(d)
            if len(out) >= max_docs:
                break
    if not out:
        if not first:
            raise ValueError(f"corpus {corpus!r} yielded no documents")
        out = split_documents(first, val_fraction)[1] if len(first) == 1 else []
    if not out:
        raise ValueError(
            f"corpus {corpus!r} has no held-out document at data.val_fraction={val_fraction}; raise it"
        )
    return out


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, sum(map(ord, name))]))


def _lines(doc: Document) -> list[str]:
    return doc.text.split("\n")


def _good_line(s: str) -> bool:
    t = s.strip()
    return len(t) >= 8 and not t.startswith("#")


def next_line_task(docs: list[Document], *, n_items: int = 64, seed: int = 0, n_choices: int = 4) -> Task:
    """Multiple choice: which line comes next? (true line vs ``n_choices - 1`` lines of other files)."""
    if len(docs) < 2:
        raise ValueError(f"next_line needs >= 2 held-out documents for distractors, got {len(docs)}")
    rng = _rng(seed, "next_line")
    lines = [_lines(d) for d in docs]
    cands = [(di, li) for di, ls in enumerate(lines) for li in range(1, len(ls)) if _good_line(ls[li])]
    if not cands:
        raise ValueError("next_line: no held-out line of >= 8 characters")
    pool = {di: [ls[li] for li in range(len(ls)) if _good_line(ls[li])] for di, ls in enumerate(lines)}
    picks = rng.choice(len(cands), size=min(n_items, len(cands)), replace=False)
    items = []
    for p in sorted(picks.tolist()):
        di, li = cands[p]
        true = lines[di][li]
        ctx = "\n".join(lines[di][:li]) + "\n"
        others = [s for dj, ls in pool.items() if dj != di for s in ls if s != true]
        if len(others) < n_choices - 1:
            continue
        wrong = [others[j] for j in rng.choice(len(others), size=n_choices - 1, replace=False)]
        ans = int(rng.integers(n_choices))
        choices = wrong[:ans] + [true] + wrong[ans:]
        items.append(
            MultipleChoiceItem(ctx[-CONTEXT_CHARS:], tuple(choices), ans, id=f"{docs[di].name}:{li + 1}")
        )
    return Task("next_line", "multiple_choice", items)


def identifier_task(docs: list[Document], *, n_items: int = 64, seed: int = 0) -> Task:
    """Cloze: complete an identifier that the file used before (exact match = greedy decoding)."""
    rng = _rng(seed, "identifier")
    cands: list[tuple[int, int, int]] = []  # (doc, start, end)
    for di, d in enumerate(docs):
        last: dict[str, int] = {}  # identifier -> start of its previous occurrence
        for m in _IDENT.finditer(d.text):
            w, s = m.group(), m.start()
            prev = last.get(w)
            # the previous occurrence lies inside the context the item keeps (a margin for the space)
            if prev is not None and prev >= s - SEEN_WITHIN and s >= 200 and not keyword.iskeyword(w):
                cands.append((di, s, m.end()))
            last[w] = s
    if not cands:
        raise ValueError("identifier: no repeated identifier in the held-out documents")
    picks = rng.choice(len(cands), size=min(n_items, len(cands)), replace=False)
    items = []
    for p in sorted(picks.tolist()):
        di, s, e = cands[p]
        text = docs[di].text
        if text[s - 1] == " ":  # byte-level BPE attaches a leading space to the word: keep them together
            s -= 1
        items.append(ClozeItem(text[max(0, s - CONTEXT_CHARS) : s], text[s:e], id=f"{docs[di].name}@{s}"))
    return Task("identifier", "cloze", items)


def parses(src: str) -> bool:
    """Python's own parser accepts ``src`` (no code is run)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning on odd escapes in sampled text
            compile(src, "<eval>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def still_compiles(prompt: str) -> Callable[[str], bool]:
    """Verifier: ``prompt`` + the continuation's complete lines parses, with >= 1 non-blank new line."""

    def verify(continuation: str) -> bool:
        if "\n" not in continuation:
            return False
        done = continuation[: continuation.rindex("\n") + 1]  # complete lines only
        if not done.strip():
            return False
        return parses(prompt + done)

    return verify


def compiles_task(docs: list[Document], *, n_items: int = 16, seed: int = 0, min_lines: int = 2) -> Task:
    """PassUntil: continue a function prefix (cut at a statement boundary) so that it still parses."""
    rng = _rng(seed, "compiles")
    cands: list[tuple[str, str]] = []  # (id, prompt)
    for d in docs:
        try:
            tree = ast.parse(d.text)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            seg = ast.get_source_segment(d.text, node)
            if seg is None:
                continue
            src = textwrap.dedent(" " * node.col_offset + seg)
            ls = src.split("\n")
            if len(ls) <= min_lines + 1:
                continue
            cuts = [j for j in range(min_lines, len(ls)) if parses("\n".join(ls[:j]) + "\n")]
            if cuts:
                j = cuts[int(rng.integers(len(cuts)))]
                cands.append((f"{d.name}:{node.lineno}+{j}", "\n".join(ls[:j]) + "\n"))
    if not cands:
        raise ValueError("compiles: no function in the held-out documents parses on its own")
    picks = rng.choice(len(cands), size=min(n_items, len(cands)), replace=False)
    items = [
        PassUntilItem(cands[p][1], still_compiles(cands[p][1]), id=cands[p][0])
        for p in sorted(picks.tolist())
    ]
    return Task("compiles", "pass_until", items)


BUILTIN: dict[str, Callable[..., Task]] = {
    "next_line": next_line_task,
    "identifier": identifier_task,
    "compiles": compiles_task,
}


def build_tasks(
    names: list[str], docs: list[Document] | None = None, *, n_items: int = 64, pass_until_items: int = 16,
    seed: int = 0, corpus: str = "builtin", val_fraction: float = 0.05,
) -> list[Task]:  # fmt: skip
    """Built-in task names and/or paths to JSONL task files (``*.jsonl``), in the given order."""
    from scaling_train.evals.jsonl import load_jsonl_task

    tasks = []
    for name in names:
        if name.endswith(".jsonl"):
            tasks.append(load_jsonl_task(name))
            continue
        if name not in BUILTIN:
            raise ValueError(
                f"evals.tasks: unknown task {name!r}; built-in: {sorted(BUILTIN)}, or a path to a .jsonl file"
            )
        if docs is None:
            docs = validation_documents(corpus, val_fraction=val_fraction)
        n = pass_until_items if name == "compiles" else n_items
        tasks.append(BUILTIN[name](docs, n_items=n, seed=seed))
    return tasks
