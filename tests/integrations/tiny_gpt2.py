"""The tiny GPT-2 and data of the integration tests and their multi-process scripts."""

from __future__ import annotations

import torch
import transformers

V, T = 97, 32


def model(dropout: float = 0.0) -> transformers.GPT2LMHeadModel:
    """Randomly initialised (seed 0); without dropout (the default) two runs on the same data get the same
    gradients."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=2, resid_pdrop=dropout, embd_pdrop=dropout,
        attn_pdrop=dropout,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def pattern_data(n: int) -> list[dict[str, torch.Tensor]]:
    """A learnable pattern (next = 3 * token + 1 mod V): a clear gradient signal."""
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(n):
        x = [int(torch.randint(0, V, (1,), generator=g))]
        for _ in range(T - 1):
            x.append((x[-1] * 3 + 1) % V)
        ids = torch.tensor(x)
        data.append({"input_ids": ids, "labels": ids.clone()})
    return data
