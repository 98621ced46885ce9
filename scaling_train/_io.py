"""Atomic file writes: every file a run, sweep or report publishes goes through ``atomic_write``."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a temp file beside ``path``, fsync it, rename it over ``path``: a reader (or a crash)
    sees the old file or the new one, whole, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
