"""Data pools of known quality (issue 18, part 3): slices, noise, mixing, validation, records."""

import json

import numpy as np
import pytest
import yaml

from scaling_train import config as config_mod
from scaling_train.config import ConfigError
from scaling_train.data import DataConfig, PooledStream, batch_indices, parse_mix, pool_counts, prepare
from scaling_train.train import RunConfig, config_hash
from tests.fixtures.runs import TINY_MAX_BYTES, tiny_config

T = 32
POOLS = [{"name": "clean", "tokens": 40 * T + 7}, {"name": "noisy", "tokens": 80 * T, "noise": 0.3}]


def _cfg(**kw) -> DataConfig:
    return DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES, pools=kw.pop("pools", POOLS), **kw)


def test_pools_are_disjoint_slices_in_declaration_order_whatever_the_mix():
    full = prepare(DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES), T, log=lambda s: None)
    a = prepare(_cfg(mix="clean:0.25+noisy:0.75"), T, log=lambda s: None)
    b = prepare(_cfg(mix={"noisy": 2}), T, log=lambda s: None)
    assert isinstance(a.train, PooledStream)
    assert [(s.name, s.first, s.n_seqs) for s in a.train.pools] == [("clean", 0, 40), ("noisy", 40, 80)]
    assert [(s.name, s.first, s.n_seqs) for s in b.train.pools] == [("clean", 0, 40), ("noisy", 40, 80)]
    assert (
        a.train.pool_unique_tokens == {"clean": 40 * T, "noisy": 80 * T} and a.train.unique_tokens == 120 * T
    )
    assert b.train.pool_unique_tokens == {"noisy": 80 * T} and b.train.unique_tokens == 80 * T
    # the tokenizer and the validation split are the whole corpus's: every run is scored on the same text
    assert a.tokenizer_path == full.tokenizer_path and a.val.n_seqs == full.val.n_seqs
    # a clean pool's sequences are the split's own; the same noisy sequence is the same in every mix
    assert np.array_equal(a.train.batch(np.arange(40)).idx, full.train.batch(np.arange(40)).idx)
    ids = np.arange(40, 120, 7)
    assert np.array_equal(a.train.batch(ids).idx, b.train.batch(ids).idx)


def test_noise_rate_is_known_deterministic_and_drawn_from_the_pool():
    p = prepare(_cfg(mix="noisy"), T, log=lambda s: None).train
    raw = np.asarray(p.tokens, dtype=np.int64)
    ids = np.arange(40, 120)
    rows = p._rows(ids)  # (80, T+1) corrupted rows
    clean = np.stack([raw[i * T : i * T + T + 1] for i in ids])
    changed = rows != clean
    # P(changed) = 0.3 x P(the drawn token differs); the drawn token equals the original only by chance
    assert 0.2 < changed.mean() < 0.33
    pool_vocab = set(raw[40 * T : 120 * T].tolist())
    assert set(rows[changed].tolist()) <= pool_vocab
    assert np.array_equal(rows, p._rows(ids))  # a pure function of the sequence index: every epoch the same
    b = p.batch(ids[:4])
    assert np.array_equal(b.idx.numpy(), rows[:4, :-1]) and np.array_equal(b.targets.numpy(), rows[:4, 1:])


def test_each_step_takes_its_share_of_each_pool_and_each_pool_repeats_on_its_own():
    p = prepare(_cfg(mix="clean:0.25+noisy:0.75"), T, log=lambda s: None).train
    B = 8
    assert p.counts(B) == {"clean": 2, "noisy": 6}
    steps = [p.step_indices(3, s, B) for s in range(60)]
    assert np.array_equal(steps[5], p.step_indices(3, 5, B))  # a pure function of (seed, step)
    for idx in steps:
        assert len(idx) == B and np.sum(idx < 40) == 2
    clean = np.concatenate([idx[idx < 40] for idx in steps[:20]])  # 20 steps x 2 = one clean epoch
    assert np.array_equal(np.sort(clean), np.arange(40))
    noisy = np.concatenate([idx[idx >= 40] for idx in steps[:40]])  # 40 x 6 = 3 noisy epochs
    assert np.array_equal(np.bincount(noisy - 40, minlength=80), np.full(80, 3))
    assert p.pool_epochs(20 * B * T, B) == pytest.approx({"clean": 1.0, "noisy": 20 * 6 / 80})
    # the default stream draws exactly as before: batch_indices over the whole split
    full = prepare(DataConfig(vocab_size=512, max_bytes=TINY_MAX_BYTES), T, log=lambda s: None).train
    assert np.array_equal(full.step_indices(3, 7, B), batch_indices(3, 7, B, full.n_seqs))


def test_pool_counts_and_mix_syntax():
    assert pool_counts([0.3, 0.7], 16) == [5, 11]  # 4.8 -> 5, 11.2 -> 11 (largest remainder)
    assert pool_counts([1, 1, 1], 8) == [3, 3, 2]
    with pytest.raises(ValueError, match=r"pool\(s\) \['b'\] 0 of train.batch_size=8 .* >= 20"):
        pool_counts([0.95, 0.05], 8, names=["a", "b"])
    assert parse_mix("clean") == {"clean": 1.0}
    assert parse_mix("clean:0.5+noisy:1.5") == {"clean": 0.5, "noisy": 1.5}
    assert _cfg(mix="clean:1+noisy:3").mix == {"clean": 0.25, "noisy": 0.75}


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (["data.pools=[{name: clean, tokens: 0}]", "data.mix=clean"], r"data.pools\[0\]: pool 'clean': tokens=0 must be > 0"),
        (["data.pools=[{name: a, tokens: 100, noise: 1.0}]", "data.mix=a"], r"data.pools\[0\]: pool 'a': noise=1.0 must be in \[0, 1\)"),
        (["data.pools=[{name: 'a+b', tokens: 100}]", "data.mix=a"], r"data.pools\[0\]: name='a\+b' must start with a letter"),
        (["data.pools=[{name: a, tokens: 100}, {name: a, tokens: 100}]", "data.mix=a"], r"names \['a', 'a'\] must be unique"),
        (["data.pools=[{name: a, tokens: 100}]"], r"data.pools=\['a'\] needs data.mix"),
        (["data.mix=a"], r"data.mix='a' needs data.pools"),
        (["data.pools=[{name: a, tokens: 100}]", "data.mix=a:0.5+b:0.5"], r"pool 'b' is not declared in data.pools \['a'\]"),
        (["data.pools=[{name: a, tokens: 100}]", "data.mix={a: -1}"], r"weight -1 of pool 'a' must be a finite number > 0"),
        (["data.pools=[{name: a, tokens: 100}]", "data.mix=a:x"], r"weight 'x' of pool 'a' is not a number"),
        (["data.pools=[{name: a, tokens: 100}]", "data.mix=a", "data.unique_tokens=500"], r"data.unique_tokens=500 and data.pools=\['a'\] both"),
        (["data.pools=[{name: a, tokens: 100, colour: red}]", "data.mix=a"], r"unknown key 'data.pools\[0\].colour'"),
    ],
)  # fmt: skip
def test_pool_config_errors_name_the_key_value_and_range(over, match):
    with pytest.raises(ConfigError, match=match):
        config_mod.load(RunConfig, None, over)


def test_pools_larger_than_the_split_fail_with_the_sizes():
    huge = [{"name": "a", "tokens": 10**9}]
    with pytest.raises(
        ValueError, match=r"data.pools need 31250000 sequences .*a=1,000,000,000\) .* raise data.max_bytes or shrink"
    ):
        prepare(_cfg(pools=huge, mix="a"), T, log=lambda s: None)


def test_runs_without_pools_hash_as_before():
    """Hashes measured on the commit before data.pools and data.unique_tokens existed (5cd8f2b): existing runs
    keep their folders."""
    tiny = config_mod.load(RunConfig, "configs/train/tiny.yaml")
    assert config_hash(tiny) == "e4499ad0"
    assert (
        config_hash(config_mod.load(RunConfig, "configs/train/tiny.yaml", ["data.unique_tokens=5000"]))
        == "a0a5eeb6"
    )
    assert config_hash(RunConfig()) == "38f85bdb"
    pooled = config_mod.load(
        RunConfig, "configs/train/tiny.yaml", ["data.pools=[{name: a, tokens: 1e5}]", "data.mix=a"]
    )
    assert config_hash(pooled) != "e4499ad0"


def test_trainer_records_per_pool_epochs(tmp_path):
    from scaling_train.train import train

    pools = "[{name: clean, tokens: 2560}, {name: noisy, tokens: 12800, noise: 0.3}]"
    cfg = tiny_config(
        tmp_path / "run", **{"data.pools": pools, "data.mix": "clean:0.5+noisy:0.5", "train.max_steps": 20}
    )
    res = train(cfg, log=lambda s: None)
    assert np.isfinite(res.final_loss)
    conf = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    pools_r = conf["resolved"]["pools"]  # 20 steps x 4 sequences x 64 tokens = 5120 tokens per pool
    assert pools_r["clean"] == {
        "unique_tokens": 2560,
        "noise": 0.0,
        "weight": 0.5,
        "sequences_per_step": 4,
        "epochs": 2.0,
    }
    assert pools_r["noisy"]["epochs"] == pytest.approx(0.4) and pools_r["noisy"]["noise"] == 0.3
    assert conf["resolved"]["unique_tokens"] == 2560 + 12800 and conf["data"]["mix"] == {
        "clean": 0.5,
        "noisy": 0.5,
    }
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epochs/clean"] == pytest.approx(2.0) and rows[-1]["epochs/noisy"] == pytest.approx(0.4)
    assert rows[0]["epochs/clean"] == pytest.approx(0.5)  # after 5 steps x 4 x 64 = 1280 tokens
