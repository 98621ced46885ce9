"""Corpora, tokenizer, token shards and packed batches with document ids."""

from scaling_train.data.packing import (
    Batch,
    DataConfig,
    PreparedData,
    TokenStream,
    batch_indices,
    epochs_seen,
    prepare,
)

__all__ = ["Batch", "DataConfig", "PreparedData", "TokenStream", "batch_indices", "epochs_seen", "prepare"]
