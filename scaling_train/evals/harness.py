"""Score tasks with the fused loss's per-sample sums: one forward per batch, no (B, T, V) logits kept.

Each (context, continuation) pair is one row: inputs ``ctx + cont[:-1]``, targets ignored (-100) on the
context and equal to the continuation on its positions, and every position of the row in segment
``row`` (padding: segment -1). ``linear_cross_entropy(..., segment_ids, num_segments=rows)`` then
returns per row ``segment_nll`` = -log p(cont | ctx), ``segment_tokens`` = len(cont) and
``segment_correct`` = continuation tokens that are the argmax (all of them <=> greedy decoding
reproduces the continuation: exact match). Giving the context the row's segment id keeps the rows
correct under ``model.attn_doc_mask`` (a row attends within itself).

PassUntil (Hu et al. 2024, "Predicting emergent abilities with infinite resolution evaluation"):
sample continuations of a prompt until the verifier has passed ``passes`` = K times or
``max_attempts`` = B samples are spent. With n attempts and k passes, the per-item estimate

    p_hat = (K - 1) / (n - 1)   if the K-th pass came at attempt n,   k / B   if the budget ran out,

is unbiased for the item's pass probability (Girshick, Mosteller & Savage 1946: the number of
sample paths to the stopping point through a first success over all paths to it). The task pass
rate is the mean of p_hat over items; its interval is mean +- z * se with
``se**2 = max(var(p_hat) / m, sum_i pt_i (1 - pt_i) / n_i / m**2)``, pt_i = (k_i + z**2/2) / (n_i + z**2)
(between-item spread, floored by Agresti-Coull binomial noise so that 0 passes still gives a width).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from scaling_train.evals.tasks import ClozeItem, MultipleChoiceItem, PassUntilItem, Task

Encode = Callable[[str], list[int]]
Decode = Callable[[list[int]], str]


@dataclass(frozen=True)
class ContinuationScores:
    """Per (context, continuation) pair, in input order."""

    loglik: np.ndarray  # (S,) float64: log p(continuation | context) = -segment_nll
    tokens: np.ndarray  # (S,) int64: continuation tokens scored
    correct: np.ndarray  # (S,) int64: continuation tokens that are the argmax
    truncated: int = 0  # pairs whose context was cut from the left to fit seq_len


@dataclass
class TaskResult:
    name: str
    kind: str
    metrics: dict[str, float]
    """Task-level scalars (means over items), e.g. ``acc``, ``p_correct``, ``pass_rate``."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """One dict per item (log-likelihoods per choice, attempts, ...)."""


def _model_seq_len(model: torch.nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "seq_len"):
        raise TypeError(
            f"{type(model).__name__} has no .cfg.seq_len; pass a scaling_train GPT (trainer.raw_model)"
        )
    return int(cfg.seq_len)


@torch.no_grad()
def score_continuations(
    model: torch.nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 32,
    pad_id: int = 0,
    autocast: Callable[[], Any] | None = None,
) -> ContinuationScores:
    """Log-likelihood of each continuation given its context (token ids), from the fused loss.

    Contexts longer than ``seq_len + 1 - len(continuation)`` tokens keep their last tokens. A context
    must hold at least one token (prepend EOS for an empty one)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    T = _model_seq_len(model)
    device = next(model.parameters()).device
    rows: list[list[int]] = []
    starts: list[int] = []  # position in the row's targets where the continuation starts
    truncated = 0
    for i, (ctx, cont) in enumerate(pairs):
        ctx, cont = list(ctx), list(cont)
        if not ctx:
            raise ValueError(
                f"pair {i}: empty context; prepend a token (e.g. EOS) so the first token is predicted"
            )
        if not cont:
            raise ValueError(f"pair {i}: empty continuation")
        if len(cont) > T:
            raise ValueError(f"pair {i}: continuation of {len(cont)} tokens exceeds model.seq_len={T}")
        keep = T + 1 - len(cont)  # context tokens that fit: row length len(ctx)+len(cont)-1 <= T
        if len(ctx) > keep:
            ctx, truncated = ctx[-keep:], truncated + 1
        rows.append(ctx + cont)
        starts.append(len(ctx) - 1)
    order = sorted(range(len(rows)), key=lambda j: len(rows[j]))  # similar lengths share a batch
    nll_parts, tok_parts, cor_parts = [], [], []
    ctx_mgr = autocast or nullcontext
    for b0 in range(0, len(order), batch_size):
        ids = order[b0 : b0 + batch_size]
        L = max(len(rows[j]) for j in ids) - 1  # (B, L) inputs
        idx = torch.full((len(ids), L), pad_id, dtype=torch.int64)
        tgt = torch.full((len(ids), L), -100, dtype=torch.int64)
        seg = torch.full((len(ids), L), -1, dtype=torch.int64)
        for r, j in enumerate(ids):
            row, s = rows[j], starts[j]
            n = len(row) - 1
            idx[r, :n] = torch.tensor(row[:-1])
            tgt[r, s:n] = torch.tensor(row[s + 1 :])  # continuation tokens only
            seg[r, :n] = r
        with ctx_mgr():
            out = model(
                idx.to(device), tgt.to(device), seg.to(device), num_segments=len(ids), reduction="sum"
            )
        nll_parts.append(out.segment_nll.double())
        tok_parts.append(out.segment_tokens)
        cor_parts.append(out.segment_correct)
    inv = torch.empty(len(order), dtype=torch.int64)
    inv[torch.tensor(order, dtype=torch.int64)] = torch.arange(len(order))
    # sync: one device->host transfer per call
    nll = torch.cat(nll_parts).cpu()[inv].numpy()
    tok = torch.cat(tok_parts).cpu()[inv].numpy()
    cor = torch.cat(cor_parts).cpu()[inv].numpy()
    return ContinuationScores(-nll, tok.astype(np.int64), cor.astype(np.int64), truncated)


def _nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def evaluate_multiple_choice(
    model: torch.nn.Module, task: Task, encode: Encode, *, bos_id: int, batch_size: int = 32,
    autocast: Callable[[], Any] | None = None,
) -> TaskResult:  # fmt: skip
    """Log-likelihood of every choice; accuracies (raw, per-token and per-byte normalised), p(correct)
    = softmax over the choices' log-likelihoods at the answer, and the mass on each incorrect choice."""
    pairs, owner = [], []
    for i, it in enumerate(task.items):
        assert isinstance(it, MultipleChoiceItem)
        ctx = [bos_id, *encode(it.context)]
        for c in it.choices:
            pairs.append((ctx, encode(c)))
            owner.append(i)
    sc = score_continuations(model, pairs, batch_size=batch_size, autocast=autocast)
    records, k = [], 0
    acc, acc_tok, acc_byte, p_cor, ll_cor, ll_cor_tok, max_wrong = [], [], [], [], [], [], []
    for it in task.items:
        n = len(it.choices)  # type: ignore[union-attr]
        ll, tok = sc.loglik[k : k + n], sc.tokens[k : k + n]
        nb = np.array([_nbytes(c) for c in it.choices], dtype=np.float64)  # type: ignore[union-attr]
        k += n
        a = it.answer  # type: ignore[union-attr]
        p = np.exp(ll - ll.max())
        p /= p.sum()  # (n,) softmax over choices
        acc.append(float(np.argmax(ll) == a))
        acc_tok.append(float(np.argmax(ll / tok) == a))
        acc_byte.append(float(np.argmax(ll / nb) == a))
        p_cor.append(float(p[a]))
        ll_cor.append(float(ll[a]))
        ll_cor_tok.append(float(ll[a] / tok[a]))
        wrong = np.delete(p, a)
        max_wrong.append(float(wrong.max()))
        records.append(
            {"id": it.id, "answer": a, "loglik": ll.tolist(), "tokens": tok.tolist(), "p": p.tolist(),
             "p_incorrect": wrong.tolist()}
        )  # fmt: skip
    m = {
        "acc": float(np.mean(acc)),
        "acc_norm_token": float(np.mean(acc_tok)),
        "acc_norm_byte": float(np.mean(acc_byte)),
        "p_correct": float(np.mean(p_cor)),
        "p_incorrect_max": float(np.mean(max_wrong)),
        "loglik_correct": float(np.mean(ll_cor)),
        "loglik_correct_per_token": float(np.mean(ll_cor_tok)),
        "n_items": float(len(task.items)),
    }
    return TaskResult(task.name, task.kind, m, records)


def evaluate_cloze(
    model: torch.nn.Module, task: Task, encode: Encode, *, bos_id: int, batch_size: int = 32,
    autocast: Callable[[], Any] | None = None,
) -> TaskResult:  # fmt: skip
    """Log-likelihood of each answer span; ``exact_match`` = every answer token is the argmax (greedy
    decoding returns the answer); ``p_answer`` = mean exp(loglik) (the chance that sampling returns it)."""
    pairs = []
    for it in task.items:
        assert isinstance(it, ClozeItem)
        pairs.append(([bos_id, *encode(it.context)], encode(it.answer)))
    sc = score_continuations(model, pairs, batch_size=batch_size, autocast=autocast)
    nbytes = np.array([_nbytes(it.answer) for it in task.items], dtype=np.float64)  # type: ignore[union-attr]
    em = sc.correct == sc.tokens
    records = [
        {"id": it.id, "loglik": float(ll), "tokens": int(t), "correct_tokens": int(c), "exact_match": bool(e)}
        for it, ll, t, c, e in zip(task.items, sc.loglik, sc.tokens, sc.correct, em)
    ]
    m = {
        "loglik": float(sc.loglik.mean()),
        "nll_per_token": float(-sc.loglik.sum() / sc.tokens.sum()),
        "bits_per_byte": float(-sc.loglik.sum() / nbytes.sum() / math.log(2)),
        "exact_match": float(em.mean()),
        "token_acc": float(sc.correct.sum() / sc.tokens.sum()),
        "p_answer": float(np.exp(sc.loglik).mean()),
        "n_items": float(len(task.items)),
    }
    return TaskResult(task.name, task.kind, m, records)


# --------------------------------------------------------------------------------------------------
# sampling + PassUntil


@torch.no_grad()
def sample_continuations(
    model: torch.nn.Module,
    prompt: Sequence[int],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    autocast: Callable[[], Any] | None = None,
    sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[list[int]]:
    """``n`` independent samples of up to ``max_new_tokens`` tokens after ``prompt`` (cut at EOS).

    Each step runs the model on the last ``seq_len`` tokens and draws from softmax(logits / temperature)
    at the last position. ``sync`` (sharded models, every rank sampling in lockstep) maps each step's
    drawn tokens to rank 0's, so all ranks continue the same sequences."""
    if not prompt:
        raise ValueError("empty prompt; prepend a token (e.g. EOS)")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    T = _model_seq_len(model)
    device = next(model.parameters()).device
    x = torch.tensor(list(prompt), dtype=torch.int64, device=device).expand(n, -1)  # (n, P)
    ctx_mgr = autocast or nullcontext
    new = []
    # KV cache when the whole sample fits the context (the last input is P + max_new_tokens - 1 tokens):
    # the prompt runs once (one row, shared by the n samples), then one token per step. Longer samples
    # slide a window of the last seq_len tokens, recomputed at every step.
    cache = None
    if getattr(model, "supports_kv_cache", False) and x.shape[1] + max_new_tokens - 1 <= T:
        from scaling_train.models.gpt import KVCache

        cache = KVCache()
        with ctx_mgr():
            logits = model(x[:1], cache=cache)[:, -1].float().expand(n, -1)
        cache.k = [k.expand(n, -1, -1, -1) for k in cache.k]
        cache.v = [v.expand(n, -1, -1, -1) for v in cache.v]
    for step in range(max_new_tokens):
        if cache is None:
            with ctx_mgr():
                logits = model(x[:, -T:])[:, -1].float()  # (n, V) last position only is kept
        elif step > 0:
            with ctx_mgr():
                logits = model(new[-1], cache=cache)[:, -1].float()
        probs = torch.softmax(logits.double() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)  # (n, 1)
        if sync is not None:
            nxt = sync(nxt)
        new.append(nxt)
        if cache is None:
            x = torch.cat([x, nxt], dim=1)
    toks = torch.cat(new, dim=1).tolist()  # sync: one transfer per call
    if eos_id is not None:
        toks = [t[: t.index(eos_id)] if eos_id in t else t for t in toks]
    return toks


@dataclass(frozen=True)
class PassRate:
    """Task pass rate from PassUntil sampling (see the module docstring for the estimator)."""

    estimate: float
    low: float
    high: float
    per_item: np.ndarray  # (m,) unbiased per-item estimates
    attempts: np.ndarray  # (m,) int
    passes: np.ndarray  # (m,) int


def pass_rate_estimate(
    attempts: np.ndarray,
    passes: np.ndarray,
    *,
    target_passes: int,
    max_attempts: int,
    confidence: float = 0.95,
) -> PassRate:
    """Unbiased per-item estimates and the task pass rate with a normal-approximation interval."""
    n = np.asarray(attempts, dtype=np.int64)
    k = np.asarray(passes, dtype=np.int64)
    if n.shape != k.shape or n.ndim != 1 or n.size == 0:
        raise ValueError(f"attempts {n.shape} and passes {k.shape} must be equal non-empty 1-D arrays")
    if np.any((k < 0) | (k > n) | (n < 1) | (n > max_attempts)) or np.any(k > target_passes):
        raise ValueError(
            f"need 0 <= passes <= min(attempts, target_passes={target_passes}) and 1 <= attempts <= "
            f"max_attempts={max_attempts}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    K = target_passes
    stopped = k == K
    # stopped at the K-th pass on attempt n: (K-1)/(n-1) (= 1 when n = K = 1); budget spent: k/B
    p = np.where(stopped, np.where(n > 1, (K - 1) / np.maximum(n - 1, 1), 1.0), k / max_attempts)
    m = len(p)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)  # (no scipy.stats: it costs every run 0.5 s to import)
    pt = (k + z * z / 2) / (n + z * z)
    var = float(np.sum(pt * (1 - pt) / n)) / m**2
    if m > 1:
        var = max(var, float(np.var(p, ddof=1)) / m)
    est = float(p.mean())
    se = math.sqrt(var)
    return PassRate(est, max(0.0, est - z * se), min(1.0, est + z * se), p, n, k)


def evaluate_pass_until(
    model: torch.nn.Module,
    task: Task,
    encode: Encode,
    decode: Decode,
    *,
    bos_id: int,
    eos_id: int | None = None,
    max_attempts: int = 64,
    target_passes: int = 2,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
    confidence: float = 0.95,
    autocast: Callable[[], Any] | None = None,
    sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TaskResult:
    """Per item: sample in rounds of ``batch_size`` until ``target_passes`` passes or ``max_attempts``
    samples; samples of the last round after the stopping point are discarded, so the result is that
    of one-at-a-time sequential sampling."""
    if max_attempts < 1 or target_passes < 1 or batch_size < 1:
        raise ValueError(
            f"max_attempts={max_attempts}, target_passes={target_passes}, batch_size={batch_size} must be >= 1"
        )
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    T = _model_seq_len(model)
    attempts, passes, records = [], [], []
    for it in task.items:
        assert isinstance(it, PassUntilItem)
        prompt = [bos_id, *encode(it.prompt)][-max(1, T - 1) :]
        n = k = 0
        first_pass: str | None = None
        while k < target_passes and n < max_attempts:
            r = min(batch_size, max_attempts - n)
            for toks in sample_continuations(
                model, prompt, r, max_new_tokens=max_new_tokens, temperature=temperature, eos_id=eos_id,
                generator=gen, autocast=autocast, sync=sync,
            ):  # fmt: skip
                n += 1
                text = decode(toks)
                if it.verifier(text):
                    k += 1
                    first_pass = text if first_pass is None else first_pass
                    if k == target_passes:
                        break
        attempts.append(n)
        passes.append(k)
        records.append({"id": it.id, "attempts": n, "passes": k, "first_pass": first_pass})
    pr = pass_rate_estimate(
        np.array(attempts), np.array(passes), target_passes=target_passes, max_attempts=max_attempts,
        confidence=confidence,
    )  # fmt: skip
    for rec, p in zip(records, pr.per_item):
        rec["p_hat"] = float(p)
    m = {
        "pass_rate": pr.estimate,
        "pass_rate_low": pr.low,
        "pass_rate_high": pr.high,
        "attempts": float(np.sum(attempts)),
        "passes": float(np.sum(passes)),
        "solved": float(np.mean(np.array(passes) > 0)),
        "n_items": float(len(task.items)),
    }
    return TaskResult(task.name, task.kind, m, records)


def evaluate_task(
    model: torch.nn.Module, task: Task, encode: Encode, decode: Decode, *, bos_id: int,
    eos_id: int | None = None, batch_size: int = 32, autocast: Callable[[], Any] | None = None,
    **pass_until: Any,
) -> TaskResult:  # fmt: skip
    """Dispatch on ``task.kind``; ``pass_until`` keywords go to ``evaluate_pass_until``."""
    was_training = model.training
    model.eval()
    try:
        if task.kind == "multiple_choice":
            return evaluate_multiple_choice(
                model, task, encode, bos_id=bos_id, batch_size=batch_size, autocast=autocast
            )
        if task.kind == "cloze":
            return evaluate_cloze(
                model, task, encode, bos_id=bos_id, batch_size=batch_size, autocast=autocast
            )
        return evaluate_pass_until(
            model, task, encode, decode, bos_id=bos_id, eos_id=eos_id, batch_size=batch_size,
            autocast=autocast, **pass_until,
        )  # fmt: skip
    finally:
        model.train(was_training)
