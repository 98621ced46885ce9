"""Byte-level BPE trained with `tokenizers` on the training split, cached by a hash of (corpus, settings)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
TOKENIZER_VERSION = 1  # bump when the training recipe changes; invalidates caches


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if not 258 <= vocab_size <= 2**32 - 1:
        raise ValueError(f"data.vocab_size={vocab_size} must be in [258, 2**32) (256 bytes + EOS + merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def cache_key(corpus_fingerprint: str, vocab_size: int) -> str:
    raw = f"bpe-v{TOKENIZER_VERSION}-{corpus_fingerprint}-{vocab_size}"
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


def load_or_train(texts: list[str], vocab_size: int, path: Path) -> Tokenizer:
    """Load the tokenizer at ``path`` or train it and save it atomically."""
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tok = train_bpe(texts, vocab_size)
    tmp = path.with_suffix(f".tmp{id(tok)}")
    tok.save(str(tmp))
    tmp.replace(path)
    return tok
