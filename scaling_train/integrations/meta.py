"""What both integrations write into a run folder before training, without transformers or accelerate.

``write_run_meta`` writes ``config.yaml`` (the ``resolved`` section the fitter and report read) and
``lr_schedule.json`` (the planned LR per step); ``count_params`` gives the non-embedding N of any
``nn.Module``. The transformers callback (``hf.py``) and the accelerate tracker
(``accelerate_tracker.py``) both import from here, so neither needs the other's dependency.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from scaling_train._io import atomic_write
from scaling_train.run_folder import CONFIG, LR_SCHEDULE


def write_run_meta(run_dir: Path, *, total_steps: int, lr: list[float], params: dict, tokens_per_step: float | None,
                   extra: dict | None = None) -> None:  # fmt: skip
    """``config.yaml`` (with the ``resolved`` section the fitter reads) and ``lr_schedule.json``, atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(extra or {})
    meta["resolved"] = {
        "params": params,
        "total_steps": int(total_steps),
        "tokens_per_step": tokens_per_step,
        "total_tokens": tokens_per_step * total_steps if tokens_per_step else None,
    }
    for name, text in (
        (CONFIG, yaml.safe_dump(meta, sort_keys=False)),
        (LR_SCHEDULE, json.dumps(lr)),
    ):
        atomic_write(run_dir / name, text)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Non-embedding N (Kaplan): all parameters minus input/output embedding matrices (and position tables)."""
    total = sum(p.numel() for p in model.parameters())
    emb_ids = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            emb_ids.add(id(m.weight))
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if get_out is not None else None
    if out is not None:
        emb_ids.add(id(out.weight))
    emb = sum(p.numel() for p in model.parameters() if id(p) in emb_ids)
    return {"non_embedding": total - emb, "embedding": emb, "total": total}
