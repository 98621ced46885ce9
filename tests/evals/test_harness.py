"""Harness likelihoods against a float64 reference; PassUntil against exact pass probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, nbinom

from scaling_train.evals import (
    ClozeItem,
    MultipleChoiceItem,
    PassUntilItem,
    Task,
    evaluate_cloze,
    evaluate_multiple_choice,
    evaluate_pass_until,
    pass_rate_estimate,
    score_continuations,
)
from scaling_train.models import GPT, ModelConfig

V = 97  # odd vocabulary, not a multiple of any block size


def _model(impl: str = "torch", doc_mask: bool = False, seq_len: int = 24, vocab: int = V) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        size=None, d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=vocab, seq_len=seq_len,
        loss_impl=impl, attn_doc_mask=doc_mask, init_std=0.2,
    )  # fmt: skip
    return GPT(cfg).eval()


@torch.no_grad()
def _reference_loglik(model: GPT, ctx: list[int], cont: list[int]) -> tuple[float, int]:
    """One pair alone (no padding, no segments), logits of the LM head in float64."""
    T = model.cfg.seq_len
    ctx = ctx[-(T + 1 - len(cont)) :]
    row = torch.tensor([ctx + cont])
    h = model.hidden_states(row[:, :-1])[0].double()  # (L, H)
    logp = torch.log_softmax(h @ model.head_weight.double().T, dim=-1)  # (L, V) float64
    pos = torch.arange(len(ctx) - 1, row.shape[1] - 1)
    tgt = row[0, pos + 1]
    ll = float(logp[pos, tgt].sum())
    correct = int((logp[pos].argmax(-1) == tgt).sum())
    return ll, correct


def _random_pairs(n: int, seed: int = 1) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        c = int(rng.integers(1, 40))  # some contexts longer than seq_len=24: cut from the left
        k = int(rng.integers(1, 9))
        pairs.append((rng.integers(0, V, c).tolist(), rng.integers(0, V, k).tolist()))
    return pairs


@pytest.mark.parametrize("impl", ["torch", "auto"])
@pytest.mark.parametrize("doc_mask", [False, True])
def test_loglik_equals_float64_reference(impl, doc_mask):
    model = _model(impl, doc_mask)
    pairs = _random_pairs(23)
    sc = score_continuations(model, pairs, batch_size=5)  # odd batch: padding in most batches
    ref = [_reference_loglik(model, c, k) for c, k in pairs]
    np.testing.assert_allclose(sc.loglik, [r[0] for r in ref], rtol=1e-5, atol=1e-4)
    assert sc.tokens.tolist() == [len(k) for _, k in pairs]
    assert sc.correct.tolist() == [r[1] for r in ref]
    assert sc.truncated == sum(len(c) + len(k) - 1 > 24 for c, k in pairs)
    # batch composition must not matter
    one = score_continuations(model, pairs, batch_size=1)
    np.testing.assert_allclose(one.loglik, sc.loglik, rtol=1e-5, atol=1e-5)


def _toy_codec():
    # token i <-> character chr(ord('a') + i): a text codec for a small vocabulary
    def encode(s: str) -> list[int]:
        return [ord(ch) - 97 for ch in s]

    def decode(ids: list[int]) -> str:
        return "".join(chr(97 + i) for i in ids)

    return encode, decode


def test_multiple_choice_metrics_from_reference():
    model = _model(vocab=26)
    enc, _ = _toy_codec()
    items = [
        MultipleChoiceItem("abcab", ("ca", "b", "zzz", "hello"), 0),
        MultipleChoiceItem("qq", ("xyz", "w"), 1),
        MultipleChoiceItem("thequickbrownfox", ("jumps", "sleeps", "runs"), 2),
    ]
    res = evaluate_multiple_choice(model, Task("mc", "multiple_choice", items), enc, bos_id=25)
    acc, acc_tok, p_cor = [], [], []
    for it, rec in zip(items, res.records):
        ll = np.array([_reference_loglik(model, [25, *enc(it.context)], enc(c))[0] for c in it.choices])
        np.testing.assert_allclose(rec["loglik"], ll, atol=1e-4)
        p = np.exp(ll) / np.exp(ll).sum()
        np.testing.assert_allclose(rec["p"], p, rtol=1e-4)
        np.testing.assert_allclose(rec["p_incorrect"], np.delete(p, it.answer), rtol=1e-4)
        acc.append(np.argmax(ll) == it.answer)
        acc_tok.append(np.argmax(ll / np.array([len(c) for c in it.choices])) == it.answer)
        p_cor.append(p[it.answer])
    assert res.metrics["acc"] == pytest.approx(np.mean(acc))
    assert res.metrics["acc_norm_token"] == pytest.approx(np.mean(acc_tok))
    # toy codec: one byte per token, so byte and token normalisation agree
    assert res.metrics["acc_norm_byte"] == pytest.approx(np.mean(acc_tok))
    assert res.metrics["p_correct"] == pytest.approx(np.mean(p_cor), rel=1e-4)


@torch.no_grad()
def test_cloze_exact_match_is_greedy_decoding():
    model = _model(vocab=26)
    enc, dec = _toy_codec()
    ctxs = ["abc", "zyxw", "hello", "q", "mmmmm"]
    items = []
    for i, c in enumerate(ctxs):
        # greedy continuation of 3 tokens by argmax of the logits, computed independently
        x = torch.tensor([[25, *enc(c)]])
        for _ in range(3):
            x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
        greedy = dec(x[0, -3:].tolist())
        ans = greedy if i % 2 == 0 else greedy[:2] + dec([(enc(greedy[2])[0] + 1) % 26])
        items.append(ClozeItem(c, ans))
    res = evaluate_cloze(model, Task("cz", "cloze", items), enc, bos_id=25)
    assert [r["exact_match"] for r in res.records] == [True, False, True, False, True]
    ll = [_reference_loglik(model, [25, *enc(it.context)], enc(it.answer))[0] for it in items]
    np.testing.assert_allclose([r["loglik"] for r in res.records], ll, atol=1e-4)
    assert res.metrics["exact_match"] == pytest.approx(0.6)
    assert res.metrics["p_answer"] == pytest.approx(np.mean(np.exp(ll)), rel=1e-4)


# ------------------------------------------------------------------------------------------- PassUntil


@pytest.mark.parametrize("K,B", [(1, 5), (2, 7), (3, 40)])
@pytest.mark.parametrize("p", [0.03, 0.3, 0.9])
def test_pass_until_estimator_is_exactly_unbiased(K, B, p):
    """E[p_hat] = p by enumerating every stopping point of sequential sampling."""
    expect = 0.0
    for n in range(K, B + 1):  # K-th pass on attempt n: nbinom counts failures before K passes
        pr = nbinom.pmf(n - K, K, p)
        est = pass_rate_estimate(np.array([n]), np.array([K]), target_passes=K, max_attempts=B).estimate
        expect += pr * est
    for k in range(K):  # budget spent with k < K passes
        pr = binom.pmf(k, B, p)
        est = pass_rate_estimate(np.array([B]), np.array([k]), target_passes=K, max_attempts=B).estimate
        expect += pr * est
    assert expect == pytest.approx(p, rel=1e-10)


def _known_model(vocab: int = 10) -> GPT:
    """A GPT whose next-token distribution depends on the last token only, with a closed form:
    attention and MLP outputs are zero, so logits = head @ rmsnorm(wte[last]) * norm_f."""
    model = _model(vocab=vocab, seq_len=16)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.proj.weight.zero_()
            blk.mlp.w_down.weight.zero_()
        g = torch.Generator().manual_seed(3)
        model.wte.weight.copy_(torch.randn(vocab, 32, generator=g))
        model.lm_head.weight.copy_(torch.randn(vocab, 32, generator=g) * 0.4)
    return model


def _transition(model: GPT) -> np.ndarray:
    w = model.wte.weight.double()
    h = w * torch.rsqrt(w.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps) * model.norm_f.weight.double()
    return torch.softmax(h @ model.head_weight.double().T, dim=-1).detach().numpy()  # (V, V) P(next | last)


def test_pass_until_matches_exact_pass_rate():
    vocab = 10
    model = _known_model(vocab)
    P = _transition(model)
    enc, dec = _toy_codec()
    # a sample (2 new tokens) passes when it contains 'b' or 'c': exact probability from P
    verifier = lambda s: "b" in s or "c" in s  # noqa: E731
    hit = np.array([dec([i]) in ("b", "c") for i in range(vocab)])
    exact = []
    items = []
    for rep in range(4):
        for last in range(vocab):
            p_first = P[last, hit].sum()
            p_second = sum(P[last, t] * P[t, hit].sum() for t in range(vocab) if not hit[t])
            exact.append(p_first + p_second)
            items.append(PassUntilItem(dec([(last + rep) % vocab, last]), verifier, id=f"{rep}-{last}"))
    exact = np.array(exact)
    assert 0.05 < exact.min() and exact.max() < 0.95  # a spread of pass rates, none trivial
    res = evaluate_pass_until(
        model, Task("pu", "pass_until", items), enc, dec, bos_id=9, max_attempts=400, target_passes=4,
        batch_size=32, max_new_tokens=2, seed=0,
    )  # fmt: skip
    m = res.metrics
    se = (m["pass_rate_high"] - m["pass_rate_low"]) / (2 * 1.959964)
    assert m["pass_rate_low"] <= exact.mean() <= m["pass_rate_high"]
    assert abs(m["pass_rate"] - exact.mean()) < 3 * se
    assert se < 0.05
    # per item: stop at the 4th pass; mean attempts close to 4 / p
    att = np.array([r["attempts"] for r in res.records])
    assert all(r["passes"] == 4 for r in res.records)
    assert np.mean(att) == pytest.approx(np.mean(4 / exact), rel=0.2)
    # the same seed gives the same samples
    again = evaluate_pass_until(
        model, Task("pu", "pass_until", items[:5]), enc, dec, bos_id=9, max_attempts=400, target_passes=4,
        batch_size=32, max_new_tokens=2, seed=0,
    )  # fmt: skip
    assert [r["attempts"] for r in again.records] == att[:5].tolist()


def test_pass_until_budget_runs_out():
    model = _known_model()
    enc, dec = _toy_codec()
    items = [PassUntilItem("ab", lambda s: False), PassUntilItem("cd", lambda s: False)]
    res = evaluate_pass_until(
        model, Task("never", "pass_until", items), enc, dec, bos_id=9, max_attempts=50,
        batch_size=16, max_new_tokens=1,
    )  # fmt: skip
    assert [r["attempts"] for r in res.records] == [50, 50]
    assert res.metrics["pass_rate"] == 0.0 and res.metrics["pass_rate_low"] == 0.0
    # 0 passes in 100 samples: the upper end still allows a few percent
    assert 0.01 < res.metrics["pass_rate_high"] < 0.1


def test_bad_inputs_are_named():
    model = _model()
    with pytest.raises(ValueError, match="pair 1: empty continuation"):
        score_continuations(model, [([1], [2]), ([1], [])])
    with pytest.raises(ValueError, match="exceeds model.seq_len=24"):
        score_continuations(model, [([1], list(range(30)))])
    with pytest.raises(ValueError, match="answer=3"):
        MultipleChoiceItem("x", ("a", "b"), 3)
    with pytest.raises(TypeError, match="item 0 is a ClozeItem"):
        Task("t", "multiple_choice", [ClozeItem("a", "b")])
    assert math.isfinite(score_continuations(model, [([1], [2])]).loglik[0])


def test_sampling_with_kv_cache_draws_what_full_recompute_draws():
    from scaling_train.evals.harness import sample_continuations

    model = _model(seq_len=24).eval()
    kw = dict(max_new_tokens=8, temperature=1.0)
    prompt = [3, 5, 7, 11, 13]

    def draw(m):
        return sample_continuations(m, prompt, 6, generator=torch.Generator().manual_seed(4), **kw)

    cached = draw(model)
    type(model).supports_kv_cache = False  # the sliding-window path, recomputed at every step
    try:
        full = draw(model)
    finally:
        type(model).supports_kv_cache = True
    assert cached == full and len(cached) == 6 and all(len(t) == 8 for t in cached)
    # a sample that would not fit the context takes the sliding-window path: still 8 tokens each
    long = sample_continuations(model, list(range(20)), 2, generator=torch.Generator().manual_seed(0), **kw)
    assert all(len(t) == 8 for t in long)
