"""Token shards (memmapped uint16/uint32 arrays) and packed batches with document ids.

The token stream of a split is every document's tokens followed by EOS, concatenated. Sequence i
of length T is ``stream[i*T : i*T + T]`` with targets shifted by one. The order of training
sequences is a pure function of (seed, step): ``batch_indices(step)`` draws positions
``step*B .. step*B + B - 1`` of an endless stream of per-epoch permutations, so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from scaling_train._io import atomic_write
from scaling_train.config import doc
from scaling_train.data import corpus as corpus_mod
from scaling_train.data import tokenizer as tok_mod
from scaling_train.data.pools import PoolConfig, noise_rows, normalise_mix, pool_counts


@dataclass
class DataConfig:
    corpus: str = doc(
        "'builtin' (Python's stdlib sources), a file, a folder, a .jsonl file, or hf:NAME[:CONFIG].",
        "builtin",
    )
    text_field: str = doc("Field holding the text in .jsonl / Hugging Face records.", "text")
    vocab_size: int = doc("BPE vocabulary size (incl. the EOS token).", 8192)
    val_fraction: float = doc("Fraction of documents (by name hash) held out for validation.", 0.05)
    max_bytes: int | None = doc("Read at most this many bytes of text (null = all).", None)
    unique_tokens: int | None = doc(
        "Train on only the first this many tokens of the training split (whole sequences), repeating them: "
        "a controlled data limit U for repetition studies; the tokenizer and the validation split stay those "
        "of the whole corpus (null = the whole split).",
        None,
    )
    pools: list[PoolConfig] = doc(
        "Named pools of the training split (docs: scaling_train/data/pools.py): each {name, tokens, noise} is "
        "the next `tokens` unique tokens of the split (whole sequences, in declaration order) with a fraction "
        "`noise` of each sequence's tokens replaced by tokens drawn from elsewhere in the pool; the tokenizer "
        "and the validation split stay the whole corpus's. Empty = no pools (the whole split).",
        default_factory=list,
    )
    mix: dict[str, float] | str | None = doc(
        "Mixing weights of the pools a run trains on, {name: weight} or 'clean:0.5+noisy:0.5' ('clean' = that "
        "pool alone); normalised to sum 1; each step takes the largest-remainder rounding of weight x "
        "batch_size sequences from each pool, which repeats on its own. Required with data.pools.",
        None,
    )
    cache_dir: str = doc(
        "Where tokenizers and token shards are cached ($SCALING_TRAIN_CACHE overrides).",
        "~/.cache/scaling_train",
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"data.max_bytes={self.max_bytes} must be > 0 or null")
        if self.unique_tokens is not None and self.unique_tokens <= 0:
            raise ValueError(f"data.unique_tokens={self.unique_tokens} must be > 0 or null")
        if not 258 <= self.vocab_size < 2**32:
            raise ValueError(f"data.vocab_size={self.vocab_size} must be in [258, 2**32)")
        self.pools = [p if isinstance(p, PoolConfig) else PoolConfig(**p) for p in self.pools]
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"data.pools names {names} must be unique")
        if self.pools and self.unique_tokens is not None:
            raise ValueError(
                f"data.unique_tokens={self.unique_tokens} and data.pools={names} both cut the training split; "
                "set one of them (a pool's tokens is its own data limit)"
            )
        if self.pools and self.mix is None:
            raise ValueError(f"data.pools={names} needs data.mix, e.g. {{{names[0]}: 1.0}} or '{names[0]}'")
        if self.mix is not None:
            if not self.pools:
                raise ValueError(f"data.mix={self.mix!r} needs data.pools (none declared)")
            self.mix = normalise_mix(self.mix, self.pools)


def cache_root(cfg: DataConfig) -> Path:
    root = Path(os.environ.get("SCALING_TRAIN_CACHE", cfg.cache_dir)).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock so concurrent runs of a sweep build each cache entry once."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Batch:
    """One micro-batch. ``segment_ids`` are unique within the batch (0..num_segments-1)."""

    idx: torch.Tensor  # (B, T) int64 inputs
    targets: torch.Tensor  # (B, T) int64
    segment_ids: torch.Tensor  # (B, T) int64
    num_segments: int

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        return Batch(
            self.idx.to(device, non_blocking=nb),
            self.targets.to(device, non_blocking=nb),
            self.segment_ids.to(device, non_blocking=nb),
            self.num_segments,
        )


class TokenStream:
    """A memmapped split with packed-sequence access."""

    def __init__(
        self, path: Path, dtype: np.dtype, eos_id: int, seq_len: int, *, max_tokens: int | None = None
    ) -> None:
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        self.eos_id = eos_id
        self.seq_len = seq_len
        self.n_seqs = (len(self.tokens) - 1) // seq_len
        if self.n_seqs < 1:
            raise ValueError(
                f"{path}: {len(self.tokens)} tokens cannot fill one sequence of model.seq_len={seq_len}; "
                "use a larger corpus or a shorter seq_len"
            )
        if max_tokens is not None:  # data.unique_tokens: the first max_tokens tokens, in whole sequences
            if not seq_len <= max_tokens <= self.n_seqs * seq_len:
                raise ValueError(
                    f"data.unique_tokens={max_tokens} must be in [model.seq_len={seq_len}, "
                    f"{self.n_seqs * seq_len}] (the training split of this corpus holds {self.n_seqs} sequences "
                    f"of {seq_len} tokens); raise data.max_bytes or lower data.unique_tokens"
                )
            self.n_seqs = max_tokens // seq_len

    @property
    def unique_tokens(self) -> int:
        """U: the distinct training positions one epoch covers, ``n_seqs * seq_len`` (the tail shorter
        than a sequence is never drawn). A run of D tokens sees ``epochs_seen(D, U)`` epochs."""
        return self.n_seqs * self.seq_len

    def step_indices(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        """Sequence indices of optimizer step ``step`` (``batch_indices`` over the whole split)."""
        return batch_indices(seed, step, batch_size, self.n_seqs)

    def _rows(self, seq_indices: np.ndarray) -> np.ndarray:
        T = self.seq_len
        return np.stack([np.asarray(self.tokens[i * T : i * T + T + 1], dtype=np.int64) for i in seq_indices])

    def batch(self, seq_indices: np.ndarray) -> Batch:
        rows = self._rows(seq_indices)  # (B, T+1)
        x, y = rows[:, :-1], rows[:, 1:]  # (B, T) each
        # document index within the row: EOS closes a document, so count EOS strictly before j
        is_eos = (x == self.eos_id).astype(np.int64)
        local = np.cumsum(is_eos, axis=1) - is_eos  # (B, T)
        per_row = local[:, -1] + 1
        offsets = np.concatenate([[0], np.cumsum(per_row)[:-1]])
        seg = local + offsets[:, None]
        return Batch(
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.ascontiguousarray(y)),
            torch.from_numpy(seg),
            int(per_row.sum()),
        )


@dataclass(frozen=True)
class PoolSlice:
    """Pool ``name``: sequences ``first .. first + n_seqs - 1`` of the training split."""

    name: str
    first: int
    n_seqs: int
    noise: float
    weight: float
    """Its normalised weight in data.mix (0 = declared, not trained on)."""


class PooledStream(TokenStream):
    """The training split cut into named pools (``data.pools``) and read as their mixture (``data.mix``).

    Sequence indices stay indices into the whole split (so ``batch`` is the parent's plus the pools' noise);
    ``step_indices`` draws ``pool_counts(weights, B)`` sequences of each mixed pool from its own per-epoch
    permutations (seed ``seed * 1000 + k + 1`` for pool k), in an order shuffled per step."""

    def __init__(
        self, path, dtype, eos_id, seq_len, *, pools: list[PoolConfig], mix: dict[str, float]
    ) -> None:
        super().__init__(path, dtype, eos_id, seq_len)
        split_seqs = self.n_seqs
        slices, first = [], 0
        for p in pools:
            n = p.tokens // seq_len
            if n < 1:
                raise ValueError(
                    f"data.pools: pool {p.name!r} tokens={p.tokens} holds no sequence of model.seq_len={seq_len}"
                )
            slices.append(PoolSlice(p.name, first, n, p.noise, mix.get(p.name, 0.0)))
            first += n
        if first > split_seqs:
            raise ValueError(
                f"data.pools need {first} sequences of {seq_len} tokens ({first * seq_len:,} tokens: "
                f"{', '.join(f'{s.name}={s.n_seqs * seq_len:,}' for s in slices)}) but the training split holds "
                f"{split_seqs} ({split_seqs * seq_len:,} tokens); raise data.max_bytes or shrink the pools"
            )
        self.pools = slices
        self.mixed = [s for s in slices if s.weight > 0]
        self.n_seqs = first

    @property
    def unique_tokens(self) -> int:
        """Unique tokens of the mixed pools together (each pool's own is ``pool_unique_tokens``)."""
        return sum(s.n_seqs for s in self.mixed) * self.seq_len

    @property
    def pool_unique_tokens(self) -> dict[str, int]:
        return {s.name: s.n_seqs * self.seq_len for s in self.mixed}

    def counts(self, batch_size: int) -> dict[str, int]:
        """Sequences per step of each mixed pool (``pool_counts``; raises if one would get none)."""
        names = [s.name for s in self.mixed]
        return dict(zip(names, pool_counts([s.weight for s in self.mixed], batch_size, names=names)))

    def pool_epochs(self, tokens_seen: float, batch_size: int) -> dict[str, float]:
        """Epochs of each mixed pool after ``tokens_seen`` training tokens at ``batch_size`` sequences/step."""
        c = self.counts(batch_size)
        return {s.name: tokens_seen * c[s.name] / batch_size / (s.n_seqs * self.seq_len) for s in self.mixed}

    def step_indices(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        counts = self.counts(batch_size)
        k_of = {s.name: k for k, s in enumerate(self.pools)}
        parts = [
            s.first + batch_indices(seed * 1000 + k_of[s.name] + 1, step, counts[s.name], s.n_seqs)
            for s in self.mixed
        ]
        idx = np.concatenate(parts)  # (batch_size,) pool by pool
        order = np.random.Generator(np.random.PCG64([seed, step, 0x6D6978])).permutation(len(idx))
        return idx[order]  # pools interleaved: micro-batches and ranks get the mixture, not one pool each

    def _rows(self, seq_indices: np.ndarray) -> np.ndarray:
        rows = super()._rows(seq_indices)
        T = self.seq_len
        seq_indices = np.asarray(seq_indices)
        for s in self.pools:
            if s.noise > 0:
                mine = (seq_indices >= s.first) & (seq_indices < s.first + s.n_seqs)
                if mine.any():
                    src = self.tokens[s.first * T : (s.first + s.n_seqs) * T]
                    rows[mine] = noise_rows(rows[mine], seq_indices[mine], s.noise, src)
        return rows


@lru_cache(maxsize=8)
def _epoch_perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def epochs_seen(tokens: float, unique_tokens: int) -> float:
    """Passes over the training split after ``tokens`` training tokens: ``tokens / unique_tokens``
    (``batch_indices`` walks whole per-epoch permutations, so this is exact in sequences)."""
    if unique_tokens <= 0:
        raise ValueError(f"unique_tokens={unique_tokens} must be > 0 (the training split's size in tokens)")
    return tokens / unique_tokens


def batch_indices(seed: int, step: int, batch_size: int, n_seqs: int) -> np.ndarray:
    """Sequence indices of optimizer step ``step`` (0-based): a pure function of its arguments."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs, offs = pos // n_seqs, pos % n_seqs
    return np.array([_epoch_perm(seed, int(e), n_seqs)[o] for e, o in zip(epochs, offs)], dtype=np.int64)


@dataclass
class PreparedData:
    train: TokenStream
    val: TokenStream
    tokenizer_path: Path
    vocab_size: int
    eos_id: int
    info: dict


def prepare(cfg: DataConfig, seq_len: int, *, log=print) -> PreparedData:
    """Read the corpus, train or load the tokenizer, write or load both token shards."""
    root = cache_root(cfg)
    docs = list(corpus_mod.iter_documents(cfg.corpus, text_field=cfg.text_field, max_bytes=cfg.max_bytes))
    if not docs:
        raise ValueError(f"data.corpus={cfg.corpus!r} yielded no documents")
    train_docs, val_docs = corpus_mod.split_documents(docs, cfg.val_fraction)
    fp = corpus_mod.fingerprint(docs) + f"-val{cfg.val_fraction}"
    key = tok_mod.cache_key(fp, cfg.vocab_size)
    dtype = np.dtype(np.uint16 if cfg.vocab_size <= 2**16 else np.uint32)
    tok_path = root / f"tokenizer-{key}.json"
    shard = {s: root / f"tokens-{key}-{s}.{dtype.name}.bin" for s in ("train", "val")}
    meta_path = root / f"tokens-{key}.json"
    with _file_lock(root / f"{key}.lock"):
        if not (tok_path.is_file() and meta_path.is_file() and all(p.is_file() for p in shard.values())):
            log(
                f"[data] training BPE (vocab {cfg.vocab_size}) on {len(train_docs)} documents of {cfg.corpus!r}"
            )
            tok = tok_mod.load_or_train([d.text for d in train_docs], cfg.vocab_size, tok_path)
            eos_id = tok.token_to_id(tok_mod.EOS)
            counts = {}
            for split, ds in (("train", train_docs), ("val", val_docs)):
                enc = tok.encode_batch([d.text for d in ds])
                arr = np.fromiter(
                    (t for e in enc for t in (*e.ids, eos_id)),
                    dtype=dtype,
                    count=sum(len(e.ids) + 1 for e in enc),
                )
                tmp = shard[split].with_suffix(".tmp")
                arr.tofile(tmp)
                os.replace(tmp, shard[split])
                counts[split] = int(arr.size)
            meta = {
                "corpus": cfg.corpus,
                "documents": {"train": len(train_docs), "val": len(val_docs)},
                "tokens": counts,
                "vocab_size": tok.get_vocab_size(),
                "eos_id": eos_id,
                "fingerprint": fp,
            }
            atomic_write(meta_path, json.dumps(meta, indent=1))
            log(f"[data] {counts['train']:,} train / {counts['val']:,} val tokens cached under {root}")
    meta = json.loads(meta_path.read_text())
    if cfg.pools:
        train = PooledStream(shard["train"], dtype, meta["eos_id"], seq_len, pools=cfg.pools, mix=cfg.mix)
    else:
        train = TokenStream(shard["train"], dtype, meta["eos_id"], seq_len, max_tokens=cfg.unique_tokens)
    return PreparedData(
        train=train,
        val=TokenStream(shard["val"], dtype, meta["eos_id"], seq_len),
        tokenizer_path=tok_path,
        vocab_size=meta["vocab_size"],
        eos_id=meta["eos_id"],
        info=meta,
    )
