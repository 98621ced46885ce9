"""Text corpora as deterministic lists of documents, split into train/validation by a hash.

Sources (``data.corpus``):
- ``builtin``: the ``.py`` source files of the running interpreter's standard library (no download;
  ``site-packages``, ``test`` and caches are skipped), in sorted path order.
- a path to a ``.txt``/``.md``/other text file (one document), a folder (every text file below it,
  sorted; one document each), or a ``.jsonl`` file (one document per line, from ``data.text_field``).
- ``hf:NAME`` or ``hf:NAME:CONFIG``: a Hugging Face ``datasets`` dataset, when it can be reached.

A document belongs to the validation split when the first 8 bytes of blake2b(name) read as a
fraction fall below ``val_fraction``: the split of a document never depends on the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests"}
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".c", ".h", ".json", ".html", ".tex", ".csv"}


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(files) if f.endswith(".py")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def iter_documents(
    corpus: str, *, text_field: str = "text", max_bytes: int | None = None
) -> Iterator[Document]:
    """Yield the corpus's documents in a deterministic order, stopping after ``max_bytes``."""
    seen = 0

    def gen() -> Iterator[Document]:
        if corpus == "builtin":
            root = Path(sysconfig.get_paths()["stdlib"])
            for p in _stdlib_files():
                yield Document(p.relative_to(root).as_posix(), _read(p))
        elif corpus.startswith("hf:"):
            yield from _hf_documents(corpus, text_field)
        else:
            path = Path(corpus).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"data.corpus={corpus!r}: no such file or folder (use 'builtin', a path, a .jsonl file, or hf:NAME)"
                )
            if path.is_dir():
                files = sorted(
                    (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
                    key=lambda p: p.relative_to(path).as_posix(),
                )
                if not files:
                    raise ValueError(
                        f"data.corpus={corpus!r}: folder has no text files ({sorted(TEXT_SUFFIXES)})"
                    )
                for p in files:
                    yield Document(p.relative_to(path).as_posix(), _read(p))
            elif path.suffix == ".jsonl":
                yield from _jsonl_documents(path, text_field)
            else:
                yield Document(path.name, _read(path))

    for doc in gen():
        if not doc.text:
            continue
        yield doc
        seen += len(doc.text.encode("utf-8", errors="replace"))
        if max_bytes is not None and seen >= max_bytes:
            return


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                raise ValueError(
                    f"{path}:{lineno}: expected an object with a string field data.text_field={text_field!r}"
                )
            yield Document(f"{path.name}:{lineno}", rec[text_field])


def _hf_documents(corpus: str, text_field: str) -> Iterator[Document]:
    parts = corpus[3:].split(":")
    try:
        import datasets  # optional: the `hf` extra
    except ImportError:
        raise ImportError(
            f"data.corpus={corpus!r} needs the `datasets` package: pip install 'scaling-train[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(
            parts[0], parts[1] if len(parts) > 1 else None, split="train", streaming=True
        )
    except Exception as e:  # network or name errors from the hub
        raise RuntimeError(f"data.corpus={corpus!r}: could not load from the Hugging Face hub: {e}") from None
    for i, rec in enumerate(ds):
        yield Document(f"{parts[0]}:{i}", rec[text_field])


def hash_fraction(name: str) -> float:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") / 2**64


def is_validation(name: str, val_fraction: float) -> bool:
    return hash_fraction(name) < val_fraction


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Validation = documents whose name hash falls below ``val_fraction``. Small corpora: if that
    leaves no validation document, the one with the lowest hash is taken; a single document is cut
    at (1 - val_fraction) of its characters."""
    if len(docs) == 1:
        d = docs[0]
        cut = int(len(d.text) * (1 - val_fraction))
        return [Document(d.name, d.text[:cut])], [Document(d.name + ":val", d.text[cut:])]
    train, val = [], []
    for d in docs:
        (val if is_validation(d.name, val_fraction) else train).append(d)
    if not val and len(train) > 1:
        first = min(train, key=lambda d: hash_fraction(d.name))
        train = [d for d in train if d is not first]
        val = [first]
    if not train or not val:
        raise ValueError(
            f"data.val_fraction={val_fraction} leaves {len(train)} train and {len(val)} validation documents "
            f"out of {len(docs)}; both must be non-empty (use a larger corpus or another fraction)"
        )
    return train, val


def fingerprint(docs: list[Document]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for d in docs:
        h.update(d.name.encode())
        h.update(b"\0")
        h.update(d.text.encode("utf-8", errors="replace"))
        h.update(b"\1")
    return h.hexdigest()
