"""Append-only JSONL files that survive crashes.

Writers append whole lines and flush + fsync at each flush, so after a crash at most the last line is
torn. Readers skip a torn last line (no trailing newline) without error, skip and count malformed lines,
and can resume from a byte offset so a tailing reader never re-reads a file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling_train._io import atomic_write
from scaling_train.run_folder import put_row  # noqa: F401 - the rows-by-step rule, re-exported


def clean_for_json(v: Any) -> Any:
    """JSON has no NaN/inf: write them as strings 'nan', 'inf', '-inf' (read back as floats)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: clean_for_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_for_json(x) for x in v]
    return v


_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _restore(v: Any) -> Any:
    if isinstance(v, str) and v in _SPECIAL:
        return _SPECIAL[v]
    if isinstance(v, dict):
        return {k: _restore(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_restore(x) for x in v]
    return v


class JsonlWriter:
    """Append rows to a JSONL file; ``flush()`` writes them, flushes and fsyncs (one syscall batch)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail()
        self._f = open(self.path, "ab")
        self._pending: list[bytes] = []

    def _repair_torn_tail(self) -> None:
        """A crash may leave a last line without its newline: cut it so new rows start clean."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            # find the last newline; everything after it is torn
            pos, chunk = size, 1 << 16
            while pos > 0:
                start = max(0, pos - chunk)
                f.seek(start)
                buf = f.read(pos - start)
                i = buf.rfind(b"\n")
                if i >= 0:
                    f.truncate(start + i + 1)
                    return
                pos = start
            f.truncate(0)

    def write(self, row: dict[str, Any]) -> None:
        self._pending.append(json.dumps(clean_for_json(row), separators=(",", ":")).encode() + b"\n")

    def flush(self) -> int:
        """Write pending rows durably; returns the file size afterwards (a safe resume offset)."""
        if self._pending:
            self._f.write(b"".join(self._pending))
            self._pending.clear()
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def truncate(self, offset: int) -> None:
        """Roll the file back to ``offset`` (a value ``flush`` returned), e.g. on resume from a checkpoint."""
        self._pending.clear()
        self._f.flush()
        os.truncate(self.path, offset)
        self._f.seek(0, os.SEEK_END)

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()


@dataclass
class ReadResult:
    rows: list[dict[str, Any]]
    offset: int
    """Byte offset after the last complete line read; pass it back to continue."""
    malformed: int = 0
    torn_tail: bool = False
    malformed_lines: list[int] = field(default_factory=list)


def finite_number(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool, not NaN / inf), else None: a metric a reader can
    print or fit."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_jsonl(path: str | Path, offset: int = 0) -> ReadResult:
    """Read complete lines from ``offset``. A last line without newline is left for next time."""
    path = Path(path)
    if not path.exists():
        return ReadResult([], offset)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < offset:  # the file was rolled back (a resumed run): start over
            offset = 0
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n")
    complete = data[: end + 1] if end >= 0 else b""
    rows, bad, bad_lines = [], 0, []
    for i, line in enumerate(complete.split(b"\n")[:-1]):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
        except ValueError:
            bad += 1
            bad_lines.append(i)
            continue
        rows.append(_restore(row))
    return ReadResult(
        rows, offset + len(complete), bad, torn_tail=len(complete) < len(data), malformed_lines=bad_lines
    )


def rollback_jsonl(path: str | Path, max_step: int, *, key: str = "step") -> int:
    """Drop rows whose ``key`` exceeds ``max_step`` (a side file of a run resumed from a checkpoint at
    ``max_step``), rewriting the file atomically. Returns the number of rows dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    rows = read_jsonl(path).rows
    kept = [r for r in rows if not (isinstance(r.get(key), (int, float)) and r[key] > max_step)]
    if len(kept) == len(rows):
        return 0
    atomic_write(
        path, b"".join(json.dumps(clean_for_json(r), separators=(",", ":")).encode() + b"\n" for r in kept)
    )
    return len(rows) - len(kept)
