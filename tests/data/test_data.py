import json

import numpy as np
import pytest

from scaling_train.data import DataConfig, batch_indices, prepare
from scaling_train.data import corpus as corpus_mod
from tests.fixtures.runs import TINY_MAX_BYTES


def test_builtin_corpus_is_deterministic_and_stdlib():
    a = list(corpus_mod.iter_documents("builtin", max_bytes=300_000))
    b = list(corpus_mod.iter_documents("builtin", max_bytes=300_000))
    assert [d.name for d in a] == [d.name for d in b] and len(a) > 3
    assert all(d.name.endswith(".py") and "site-packages" not in d.name for d in a)
    assert [d.name for d in a] == sorted(d.name for d in a)


def test_split_by_name_hash_is_independent_of_other_documents():
    docs = list(corpus_mod.iter_documents("builtin", max_bytes=2_000_000))
    train, val = corpus_mod.split_documents(docs, 0.1)
    sub_train, sub_val = corpus_mod.split_documents(docs[::2], 0.1)
    val_names = {d.name for d in val}
    assert {d.name for d in sub_val} == {d.name for d in docs[::2]} & val_names
    assert val_names.isdisjoint(d.name for d in train)


def test_prepare_is_cached_and_deterministic(tmp_path):
    cfg = DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES, cache_dir=str(tmp_path))
    logs = []
    p1 = prepare(cfg, 32, log=logs.append)
    assert any("training BPE" in s for s in logs)
    logs.clear()
    p2 = prepare(cfg, 32, log=logs.append)
    assert not logs  # second call hits the cache
    assert p1.tokenizer_path == p2.tokenizer_path
    assert np.array_equal(np.asarray(p1.train.tokens), np.asarray(p2.train.tokens))
    # a fresh cache reproduces the same tokens (training the tokenizer is deterministic)
    p3 = prepare(
        DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES, cache_dir=str(tmp_path / "other")),
        32,
        log=logs.append,
    )
    assert np.array_equal(np.asarray(p1.train.tokens), np.asarray(p3.train.tokens))
    assert p1.vocab_size == 512 and p1.train.tokens.dtype == np.uint16
    # another vocabulary is another cache entry
    p4 = prepare(
        DataConfig(vocab_size=600, max_bytes=TINY_MAX_BYTES, cache_dir=str(tmp_path)), 32, log=logs.append
    )
    assert p4.tokenizer_path != p1.tokenizer_path


def test_batches_pure_function_of_seed_and_step():
    n = 1000
    a = batch_indices(3, 7, 16, n)
    assert np.array_equal(a, batch_indices(3, 7, 16, n))
    assert not np.array_equal(a, batch_indices(4, 7, 16, n))
    # one epoch of steps visits every sequence exactly once
    seen = np.concatenate([batch_indices(0, s, 10, n) for s in range(100)])
    assert np.array_equal(np.sort(seen), np.arange(n))
    # the next epoch is another permutation
    nxt = np.concatenate([batch_indices(0, s, 10, n) for s in range(100, 200)])
    assert np.array_equal(np.sort(nxt), np.arange(n)) and not np.array_equal(seen, nxt)


def test_packed_batch_segments_follow_eos():
    p = prepare(DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES), 64)
    s = p.train
    b = s.batch(np.arange(0, 40))
    x, y, seg = b.idx.numpy(), b.targets.numpy(), b.segment_ids.numpy()
    assert x.shape == (40, 64) and np.array_equal(x[:, 1:], y[:, :-1])
    toks = np.asarray(s.tokens)
    assert np.array_equal(x[1], toks[64:128]) and np.array_equal(y[1], toks[65:129])
    for r in range(40):
        change = np.flatnonzero(np.diff(seg[r]))  # a new segment starts right after each EOS
        assert np.array_equal(change, np.flatnonzero(x[r, :-1] == p.eos_id))
    assert seg.min() == 0 and seg.max() == b.num_segments - 1
    assert (np.diff(seg.reshape(-1)) >= 0).all()  # unique and increasing across rows


def test_jsonl_and_folder_corpora(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"document number {i} " * 50}) for i in range(40)) + "\n")
    docs = list(corpus_mod.iter_documents(str(f)))
    assert len(docs) == 40 and docs[3].name == "c.jsonl:4"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no field"}\n')
    with pytest.raises(
        ValueError, match=r"bad.jsonl:2: expected an object with a string field data.text_field='text'"
    ):
        list(corpus_mod.iter_documents(str(bad)))
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        list(corpus_mod.iter_documents(str(bad)))
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bee")
    (folder / "sub" / "a.md").write_text("ay")
    (folder / "skip.bin").write_bytes(b"\0\1")
    assert [d.name for d in corpus_mod.iter_documents(str(folder))] == ["b.txt", "sub/a.md"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(corpus_mod.iter_documents(str(tmp_path / "missing")))


def test_data_config_errors():
    with pytest.raises(ValueError, match=r"data.val_fraction=1.5 must be in \(0, 1\)"):
        DataConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="data.vocab_size=10"):
        DataConfig(vocab_size=10)


def test_hf_datasets_source_local_and_unreachable(tmp_path, monkeypatch):
    """``hf:NAME`` goes through datasets.load_dataset (streaming); a local dataset folder stands in for
    the hub, and an unreachable hub name fails with a message naming the corpus."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # offline from the start: the local folder needs no hub, and otherwise datasets first tries to reach it
    # (~20 s of timeouts on a machine without network). The libraries read the variables once, at import.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "\n".join(json.dumps({"body": f"text {i} " * 20}) for i in range(5)) + "\n"
    )
    docs = list(corpus_mod.iter_documents(f"hf:{folder}", text_field="body"))
    assert len(docs) == 5 and docs[0].text.startswith("text 0")
    with pytest.raises(RuntimeError, match=r"data.corpus='hf:no-such-org/no-such-set': could not load"):
        list(corpus_mod.iter_documents("hf:no-such-org/no-such-set"))


def test_unique_tokens_is_one_epoch_of_the_training_split():
    """U = n_seqs * seq_len (the tail short of a sequence is never drawn); after n_seqs sequences every
    training sequence was drawn exactly once, i.e. epochs_seen(tokens, U) = 1."""
    from scaling_train.data import epochs_seen

    cfg = DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES)
    T = 32
    train = prepare(cfg, T, log=lambda s: None).train
    U = train.unique_tokens
    assert U == train.n_seqs * T and len(train.tokens) - 1 - T < U <= len(train.tokens) - 1
    bs = 4
    steps = train.n_seqs // bs  # whole steps inside the first epoch
    seen = np.concatenate([batch_indices(0, s, bs, train.n_seqs) for s in range(steps)])
    assert len(np.unique(seen)) == len(seen) == steps * bs  # no sequence repeats within an epoch
    assert epochs_seen(steps * bs * T, U) == pytest.approx(steps * bs / train.n_seqs, rel=1e-12)
    assert epochs_seen(3 * U, U) == 3.0
    with pytest.raises(ValueError, match=r"unique_tokens=0 must be > 0"):
        epochs_seen(10, 0)


def test_data_unique_tokens_cuts_the_training_split_only():
    """data.unique_tokens = K: U = the first K // T whole sequences of the training split, repeated; the
    tokenizer and the validation split are the whole corpus's (so runs with different U compare)."""
    T = 32
    full = prepare(DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES), T, log=lambda s: None)
    K = 10 * T + 5
    cut = prepare(
        DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES, unique_tokens=K), T, log=lambda s: None
    )
    assert cut.train.unique_tokens == 10 * T and cut.train.n_seqs == 10
    assert cut.tokenizer_path == full.tokenizer_path
    assert cut.val.n_seqs == full.val.n_seqs and cut.val.unique_tokens == full.val.unique_tokens
    # every drawn sequence lies in the first 10; after 10 sequences the epoch starts over
    drawn = np.concatenate([batch_indices(0, s, 4, cut.train.n_seqs) for s in range(10)])
    assert drawn.max() < 10 and np.all(np.bincount(drawn, minlength=10) == 4)
    a, b = cut.train.batch(np.arange(10)), full.train.batch(np.arange(10))
    assert np.array_equal(a.idx, b.idx)
    with pytest.raises(ValueError, match=r"data.unique_tokens=10 must be in \[model.seq_len=32, "):
        prepare(DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES, unique_tokens=10), T, log=lambda s: None)
    too_many = full.train.unique_tokens + T
    with pytest.raises(ValueError, match=rf"data.unique_tokens={too_many} must be in .*raise data.max_bytes"):
        prepare(
            DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES, unique_tokens=too_many),
            T,
            log=lambda s: None,
        )
    with pytest.raises(ValueError, match=r"data.unique_tokens=0 must be > 0 or null"):
        DataConfig(unique_tokens=0)
