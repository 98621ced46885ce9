"""Corpora, tokenizer, token shards and packed batches with document ids."""

from scaling_train.data.packing import (
    Batch,
    DataConfig,
    PooledStream,
    PoolSlice,
    PreparedData,
    TokenStream,
    batch_indices,
    epochs_seen,
    prepare,
)
from scaling_train.data.pools import PoolConfig, format_mix, parse_mix, pool_counts

__all__ = [
    "Batch",
    "DataConfig",
    "PoolConfig",
    "PoolSlice",
    "PooledStream",
    "PreparedData",
    "TokenStream",
    "batch_indices",
    "epochs_seen",
    "format_mix",
    "parse_mix",
    "pool_counts",
    "prepare",
]
