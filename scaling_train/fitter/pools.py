"""Data pools in the fitter (issue 18, Goyal et al. 2024): the sweep law of runs that train on data pools.

A run on data pools (``config.yaml`` ``resolved.pools``: per mixed pool its unique tokens ``U_p``, realised
weight ``w_p`` and epochs) has no single unique-token count: each pool repeats at its own rate. When any run of
the sweep trains on pools, ``sweep_law.json`` gets a ``data_pools`` block: ``laws.fit_data_pools`` over every
finished pooled run's (N, D, mix, final held-out loss)

    D' = sum_p q_p U_p g(w_p D / U_p; tau_p)         (g: the half-life worth of e_p = w_p D / U_p epochs)
    L(N, D; w) = E + A / N**alpha + B / D'**beta

with each pool's utility ``q_p`` (in tokens of the reference pool, the first declared) and half-life ``tau_p``
(epochs), the fit's error on its own runs, and at the largest compute of the sweep (C = 6 N D of its largest
pooled run) and 10x it the best of the mixes the sweep used, each at its compute-optimal N, with 90% bootstrap
intervals of the law. ``law`` becomes ``"data_pools"`` with a ``law_reason``; a failed fit (too few runs, no
finished run, inconsistent pools) is the block's ``error`` and the law stays what it was.

Block (``sweep_law.json`` ``data_pools``):

* ``loss_used``: ``eval_loss`` (a repeated token's training loss is memorisation); ``reference``; ``E``, ``A``,
  ``alpha``, ``B``, ``beta``, ``objective``, ``n_points``, ``confidence``, ``ci`` (bootstrap, per parameter);
* ``pools``: {pool: {unique_tokens, utility, half_life, floor, max_epochs, identified}};
* ``fit_error``: ``mean_abs``, ``max_abs`` (|predicted / observed - 1| over the fitted runs), ``rmse_log``;
* ``runs``: every pooled run: N, D, mix, epochs per pool (the last metrics row's ``epochs/<pool>``, else
  ``resolved.pools``), ``eval_loss`` (None until it finished), ``predicted`` (the law), ``fitted``;
* ``mixes``: the candidates (the mixes of the fitted runs); ``best``: per budget ``compute``, ``scale``,
  ``best``, ``best_share`` (the share of bootstrap draws that rank the same mix first at the candidates'
  allocations) and per candidate ``loss``, ``low``, ``high``, ``N``, ``D``, ``epochs``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from scaling_train.fitter.tail import RunTail

POOLS_BOOTSTRAP = 20  # draws for the intervals: ~1 s on the pools-cpu sweep's 24 runs, cached by the inputs
BUDGET_SCALES = ((1.0, "largest run"), (10.0, "10x the largest run"))
_ERRORS = (ValueError, RuntimeError, ArithmeticError, np.linalg.LinAlgError)


def mix_name(weights: Mapping[str, float]) -> str:
    """``{clean: 1}`` -> ``"clean"``; ``{clean: 0.5, noisy: 0.5}`` -> ``"clean:0.5+noisy:0.5"`` (4 digits)."""
    return next(iter(weights)) if len(weights) == 1 else "+".join(f"{k}:{v:.4g}" for k, v in weights.items())


def run_pools(t: RunTail) -> dict[str, dict[str, float]] | None:
    """{pool: {unique_tokens, weight, epochs}} of a run on data pools (``resolved.pools``; epochs from the
    last metrics row's ``epochs/<pool>`` when it has them), None for a run without pools. Raises ValueError on
    a malformed block."""
    raw = t.resolved.get("pools")
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{t.name}: config.yaml resolved.pools is {type(raw).__name__}, not a mapping")
    last = t.rows[max(t.rows)] if t.rows else {}
    out = {}
    for name, p in raw.items():
        try:
            u, w = float(p["unique_tokens"]), float(p["weight"])
            ep = last.get(f"epochs/{name}", p.get("epochs"))
            ep = float(ep) if ep is not None else None
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{t.name}: config.yaml resolved.pools.{name} = {p!r} lacks a number ({e}); "
                "expected unique_tokens, weight, epochs"
            ) from None
        if not (u > 0 and w > 0 and math.isfinite(u) and math.isfinite(w)):
            raise ValueError(f"{t.name}: resolved.pools.{name}: unique_tokens={u}, weight={w} must be > 0")
        out[str(name)] = {"unique_tokens": u, "weight": w, "epochs": ep}
    return out


def _declared(t: RunTail) -> list[str]:
    pools = ((t.config or {}).get("data") or {}).get("pools") or []
    return [str(p["name"]) for p in pools if isinstance(p, Mapping) and "name" in p]


def data_pools_law(
    tails: Mapping[str, RunTail], predictions: Mapping[str, dict[str, Any]], *, current: str = "chinchilla"
) -> dict[str, Any]:
    """``{}`` when no run trains on data pools; else ``{"data_pools": block, "law", "law_reason"}`` (the
    module docstring). When the pool law cannot be fitted the block holds ``error`` and the law stays
    ``current`` (its reason says why, unless ``current`` is another law than Chinchilla). Never raises on the
    runs' data."""
    runs, bad, order = [], [], []
    for name, t in sorted(tails.items()):
        try:
            pools = run_pools(t)
        except ValueError as e:
            bad.append(str(e))
            continue
        if pools is None:
            continue
        order += [p for p in _declared(t) + list(pools) if p not in order]
        p = predictions.get(name, {})
        ev = p.get("final_eval_loss") if p.get("status") == "done" else None
        ok = (
            t.diverged_at is None
            and isinstance(ev, (int, float))
            and math.isfinite(ev)
            and ev > 0
            and t.n_params
            and t.total_tokens
        )
        runs.append({
            "run": name, "N": t.n_params, "D": t.total_tokens,
            "mix": mix_name({k: v["weight"] for k, v in pools.items()}),
            "unique_tokens": {k: v["unique_tokens"] for k, v in pools.items()},
            "epochs": {k: v["epochs"] for k, v in pools.items()},
            "eval_loss": float(ev) if ok else None,
            "status": "diverged" if t.diverged_at is not None else p.get("status"),
        })  # fmt: skip
    if not runs and not bad:
        return {}
    block: dict[str, Any] = {"loss_used": "eval_loss", "malformed": bad}
    n_pooled = len(runs) + len(bad)
    try:
        block.update(_fit(runs, order))
    except _ERRORS as e:
        block["error"] = f"{type(e).__name__}: {e}"
        block["runs"] = [_public(r) for r in runs]
        out: dict[str, Any] = {"data_pools": block}
        if current == "chinchilla":
            out["law_reason"] = (
                f"{n_pooled} run(s) train on data pools, but the pool law could not be fitted ({e}); "
                "the Chinchilla fit ignores the pools and their repetition"
            )
        return out
    return {
        "data_pools": block,
        "law": "data_pools",
        "law_reason": (
            f"{n_pooled} run(s) train on data pools ({', '.join(block['pools'])}): each pool repeats at its own "
            "rate, so no single unique-token count fits them; the pool law (Goyal et al. 2024, "
            "laws.fit_data_pools) gives each pool a utility and a repetition half-life, fitted on the "
            "held-out loss"
        ),
    }


def _public(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("run", "N", "D", "mix", "epochs", "eval_loss", "status")}


def _fit(runs: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    """The block's fitted part; raises ValueError (with what to do) when it cannot be fitted."""
    sizes: dict[str, tuple[float, str]] = {}
    for r in runs:
        for p, u in r["unique_tokens"].items():
            if p in sizes and not math.isclose(sizes[p][0], u, rel_tol=1e-9):
                raise ValueError(
                    f"pool {p!r} holds {sizes[p][0]:.6g} unique tokens in run {sizes[p][1]} but {u:.6g} in run "
                    f"{r['run']}: one pool name must mean one slice (rename the pools of one of the runs)"
                )
            sizes.setdefault(p, (u, r["run"]))
    fit_runs = [r for r in runs if r["eval_loss"] is not None]
    if not fit_runs:
        raise ValueError(
            f"none of the {len(runs)} run(s) on data pools has finished with a held-out loss yet "
            "(DONE and an eval_loss in its last metrics row)"
        )
    used = {p for r in fit_runs for p in r["unique_tokens"]}
    pools = tuple((p, sizes[p][0]) for p in order if p in used)
    pts = tuple((r["N"], r["D"], r["mix"], r["eval_loss"]) for r in fit_runs)
    block, f = _fit_cached(pts, pools, max(6.0 * r["N"] * r["D"] for r in runs))
    out = copy.deepcopy(block)
    fitted = {r["run"] for r in fit_runs}
    out["runs"] = []
    for r in runs:
        row = {**_public(r), "fitted": r["run"] in fitted, "predicted": None}
        if all(p in f.pools for p in r["unique_tokens"]):
            row["predicted"] = float(f.predict(r["mix"], r["N"], r["D"]))
        out["runs"].append(row)
    return out


@functools.lru_cache(maxsize=8)  # a live sweep refits on every poll: the pool fit only when its inputs change
def _fit_cached(pts: tuple, pools: tuple, c_max: float) -> tuple[dict[str, Any], Any]:
    """(block, DataPoolsFit) of runs ``pts`` = ((N, D, mix, eval_loss), ...) on ``pools`` = ((name, U), ...),
    the first pool the reference; the best mix at ``c_max`` and 10x it."""
    from scaling_train.laws import fit_data_pools
    from scaling_train.laws.pools import as_mix

    N = np.array([p[0] for p in pts])
    D = np.array([p[1] for p in pts])
    mixes = [p[2] for p in pts]
    L = np.array([p[3] for p in pts])
    f = fit_data_pools(N, D, mixes, L, pools=dict(pools), reference=pools[0][0], n_bootstrap=POOLS_BOOTSTRAP)
    err = np.expm1(f.log_residuals)  # predicted / observed - 1 per fitted run
    out: dict[str, Any] = {
        "reference": f.reference,
        **{k: getattr(f, k) for k in ("E", "A", "alpha", "B", "beta", "objective", "n_points", "confidence")},
        "ci": {k: list(v) for k, v in f.ci.items()},
        "pools": {
            p: {k: getattr(v, k) for k in ("unique_tokens", "utility", "half_life", "floor", "max_epochs", "identified")}
            for p, v in f.pools.items()
        },
        "fit_error": {
            "mean_abs": float(np.mean(np.abs(err))),
            "max_abs": float(np.max(np.abs(err))),
            "rmse_log": float(np.sqrt(np.mean(f.log_residuals**2))),
        },
    }  # fmt: skip
    cands = sorted(set(mixes), key=lambda m: (m.count("+"), m))  # single pools first
    out["mixes"] = cands
    out["best"] = []
    for scale, label in BUDGET_SCALES:
        ch = f.best(scale * c_max, cands)
        per: dict[str, dict[str, Any]] = {}
        draws = []  # (candidates, B): every bootstrap draw's law at each candidate's allocation
        for m in cands:
            n, d = ch.N[m], ch.D[m]
            lo, hi = f.predict_interval(m, n, d, noise=False)
            per[m] = {
                "loss": ch.loss[m], "low": float(lo), "high": float(hi), "N": n, "D": d,
                "epochs": {p: w * d / f.pools[p].unique_tokens for p, w in as_mix(m).items()},
            }  # fmt: skip
            draws.append([float(g.predict(m, n, d)) for g in f.draws])
        share = float(np.mean(np.argmin(np.array(draws), axis=0) == cands.index(ch.best)))
        out["best"].append({
            "scale": label, "compute": scale * c_max, "best": ch.best, "best_share": share, "candidates": per,
        })  # fmt: skip
    return out, f
