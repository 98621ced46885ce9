"""Atomic checkpoints: write a temp file, fsync, rename; a sha256 sidecar detects torn or corrupt files.

Layout: ``run_dir/checkpoints/step-00000100.pt`` + ``step-00000100.pt.sha256``. Loading walks from the
newest to older checkpoints and skips (with a warning) any that fail their checksum or fail to load,
so a crash while writing never restarts a run silently from step 0. Retention keeps the newest ``keep``
plus the ``protect``ed steps (``train.keep_steps``: the branch points of ``scaling-train cbs``).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from scaling_train._io import atomic_write
from scaling_train.run_folder import CHECKPOINT_RE, checkpoint_file


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    ckpt_dir: str | Path, step: int, state: dict[str, Any], *, keep: int, protect: Collection[int] = ()
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = ckpt_dir / checkpoint_file(step)
    # the checksum first: a kill between the two writes leaves a sidecar without its .pt (invisible), never
    # a .pt without its sidecar (unusable, which would stop the run from resuming at all)
    atomic_write(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest())
    atomic_write(path, data)
    _fsync_dir(ckpt_dir)
    protect = {int(s) for s in protect}
    for old in list_checkpoints(ckpt_dir)[keep:]:
        if step_of(old) in protect:
            continue
        for p in (old, old.with_name(old.name + ".sha256")):
            p.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Newest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CHECKPOINT_RE.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def step_of(path: Path) -> int:
    """The step of ``step-00000100.pt`` (100)."""
    m = CHECKPOINT_RE.search(path.name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint file named like step-00000100.pt")
    return int(m.group(1))


def _verified(path: Path, map_location: str | torch.device) -> dict:
    data = path.read_bytes()
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        raise ValueError("checksum file missing")
    if hashlib.sha256(data).hexdigest() != side.read_text().strip():
        raise ValueError("checksum mismatch (torn or corrupt file)")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


def load_step(ckpt_dir: str | Path, step: int, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint of exactly ``step``, checksum verified; FileNotFoundError naming the steps there are."""
    path = Path(ckpt_dir) / checkpoint_file(step)
    if not path.is_file():
        have = sorted(step_of(p) for p in list_checkpoints(ckpt_dir))
        raise FileNotFoundError(
            f"no checkpoint of step {step} in {ckpt_dir} (it has steps {have or 'none'}); a run keeps the "
            "steps of train.keep_steps (a sweep's cbs block sets them) and its newest train.keep_checkpoints"
        )
    try:
        return _verified(path, map_location)
    except Exception as e:
        raise RuntimeError(f"checkpoint {path} is not usable: {e}") from e


def load_latest(ckpt_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint that passes its checksum and loads; None when there is none at all.

    Raises RuntimeError when checkpoints exist but none is usable (never a silent restart)."""
    paths = list_checkpoints(ckpt_dir)
    problems = []
    for path in paths:
        try:
            return path, _verified(path, map_location)
        except Exception as e:  # any failure: try the previous checkpoint
            problems.append(f"{path.name}: {e}")
            warnings.warn(f"skipping checkpoint {path}: {e}; trying an older one", stacklevel=2)
    if paths:
        raise RuntimeError(
            f"no usable checkpoint in {ckpt_dir}: "
            + "; ".join(problems)
            + ". Delete the folder to restart from step 0 on purpose."
        )
    return None
