"""Benchmark of fit_data_constrained on the datablations runs (Muennighoff et al. 2023): held-out errors
by size group against a Chinchilla fit that ignores repetition, bias, interval coverage, diverged runs.

Run:  . .venv/bin/activate && PYTHONPATH=. python benchmarks/bench_data_constrained.py > benchmarks/results/data_constrained.md
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.fixtures

from scaling_train.laws import find_diverged, fit_chinchilla, fit_data_constrained  # noqa: E402
from scaling_train.laws.data_constrained import (  # noqa: E402
    _LOG_RSTAR_RANGE,
    PARAM_NAMES,
    DataConstrainedFit,
    _terms,
    _to_natural,
    _to_theta,
)
from tests.fixtures.laws import GPT2_VOCAB, HELD_OUT_N, SIZE_GROUPS, datablations  # noqa: E402

N_BOOTSTRAP = 200
# (label, fit on N below, size groups to predict: label -> [lo, hi) in parameters)
SPLITS = [
    ("fit < 500M (tested split)", HELD_OUT_N, SIZE_GROUPS),
    ("fit < 250M", 2.5e8, {"280M-421M": (2.5e8, 5e8), **SIZE_GROUPS}),
]


def pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def split_rows(d, split_n, groups, excluded):
    train = d["N"] < split_n
    t0 = time.perf_counter()
    fit = fit_data_constrained(
        d["N"][train],
        d["D"][train],
        d["U"][train],
        d["L"][train],
        vocab_size=GPT2_VOCAB,
        n_bootstrap=N_BOOTSTRAP,
    )
    seconds = time.perf_counter() - t0
    kept = np.flatnonzero(train)[np.setdiff1d(np.arange(train.sum()), [r.index for r in fit.diverged])]
    chin = fit_chinchilla(d["N"][kept], d["D"][kept], d["L"][kept])
    multi = d["D"] > 1.01 * d["U"]
    rows = []
    masks = {
        name: ~train & ~excluded & multi & (d["N"] >= lo) & (d["N"] < hi) for name, (lo, hi) in groups.items()
    }
    masks["all held out"] = np.any(list(masks.values()), axis=0)
    for name, m in masks.items():
        N, D, U, L = d["N"][m], d["D"][m], d["U"][m], d["L"][m]
        e = fit.predict(N, D, U) / L - 1
        ec = chin.predict(N, D) / L - 1
        lo, hi = fit.predict_interval(N, D, U)
        plo, phi = fit.predict_interval(N, D, U, noise=False)
        cov = np.mean((L >= lo) & (L <= hi))
        pcov = np.mean((L >= plo) & (L <= phi))
        rows.append(
            f"| {name} | {m.sum()} | {100 * np.mean(np.abs(e)):.2f}% | {pct(np.mean(e))} | {100 * np.max(np.abs(e)):.2f}% "
            f"| {100 * np.mean(np.abs(ec)):.2f}% | {pct(np.mean(ec))} | {np.mean(np.abs(e)) / np.mean(np.abs(ec)):.2f} "
            f"| {cov:.2f} | {pcov:.2f} |"
        )
    return fit, chin, seconds, rows


def param_table(fit) -> list[str]:
    out = ["| parameter | fit | 90% bootstrap interval |", "| --- | --- | --- |"]
    for name in PARAM_NAMES:
        lo, hi = fit.ci[name]
        out.append(f"| {name} | {getattr(fit, name):.4g} | [{lo:.4g}, {hi:.4g}] |")
    return out


def main() -> None:
    d = datablations()
    found = find_diverged(d["N"], d["D"], d["U"], d["L"], vocab_size=GPT2_VOCAB)
    excluded = np.zeros(len(d["L"]), dtype=bool)
    excluded[[r.index for r in found]] = True
    print("# scaling_train.laws.fit_data_constrained (datablations runs)\n")
    print(
        "Command: `PYTHONPATH=. python benchmarks/bench_data_constrained.py > benchmarks/results/data_constrained.md`; "
        f"machine: 2-core CPU (shared); {N_BOOTSTRAP} bootstrap replicates.\n"
    )
    print(
        "Data: `tests/data/laws/datablations/final_losses.csv`, 175 runs of 7M-2.2B parameters, up to 9000 epochs "
        "(Muennighoff et al. 2023, Apache-2.0). Errors are `predicted / observed - 1` on the final validation loss "
        "of held-out *multi-epoch* runs (D > 1.01 U) that are not diverged; MAE = mean |error|, bias = mean error. "
        "Chinchilla = `fit_chinchilla` on (N, D) of the same fitted runs, repetition ignored. Coverage = share of "
        "held-out losses inside the 90% interval: `predict_interval` (bootstrap curve x fit residuals) and, "
        "`curve only`, with `noise=False`.\n"
    )
    for k, (label, split_n, groups) in enumerate(SPLITS):
        fit, chin, seconds, rows = split_rows(d, split_n, groups, excluded)
        print(
            f"## {label}: {fit.n_points} runs fitted, {len(fit.diverged)} excluded as diverged; fit {seconds:.1f} s\n"
        )
        print(
            "| held-out group | runs | MAE | bias | max abs | Chinchilla MAE | Chinchilla bias | MAE ratio "
            "| 90% coverage | curve-only coverage |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows) + "\n")
        print("\n".join(param_table(fit)) + "\n")
        print(
            f"Chinchilla on the same runs: E={chin.E:.3f}, A={chin.A:.4g}, B={chin.B:.4g}, alpha={chin.alpha:.3f}, "
            f"beta={chin.beta:.3f}.\n"
        )
        if k == 0:
            print(
                "Reading: the issue's targets are <= 5% mean error and <= half of Chinchilla's error; on these runs "
                "(all below 2.5B, not the issue's 2.8B-8.7B) both hold with the repetition half-life R_D*(N) "
                "shortening with the model size (rho; the paper's law with one R_D* for every size: 4.60%, ratio "
                "0.63, next table). Both laws still predict too low on average, most in the largest groups: those "
                "models over-fit repeated data (loss rises with epochs), which a law non-increasing in D and U "
                "cannot follow. R_N* is not identified (clipped at "
                f"e^30 = {np.exp(30):.3g}: no excess-parameter penalty): the runs that would show one end worse "
                "than smaller ones and are excluded by the diverged rule, and a larger model on the same "
                "repeated data is otherwise better here (at 15 epochs of 1e8 tokens the loss falls with N up to "
                "619M). From the runs below 250M (second table) the law extrapolates 4-9x in N less well "
                "(ratio 0.65, coverage 0.81): rho and the base law's E are both less pinned. Where rho costs: "
                "it makes the loss rise with N at many epochs, but too early at the smallest U (all 155 runs "
                "fitted: at 15 epochs of 1e8 tokens the 421M-1.1B runs are predicted 6.6-10.9% too high, the "
                "paper's law 2.0-4.4%), while its in-sample MAE over all runs is 2.12% against 3.17%.\n"
            )
    print_procedures(d, excluded)
    fit = fit_data_constrained(d["N"], d["D"], d["U"], d["L"], vocab_size=GPT2_VOCAB)
    print("## all 175 runs\n")
    print(
        f"Fit on all {fit.n_points} non-diverged runs: "
        + ", ".join(f"{k}={getattr(fit, k):.4g}" for k in PARAM_NAMES)
        + " (the paper reports R_D* = 15.4, R_N* = 5.3 from its own fitting procedure).\n"
    )
    print(
        f"### Diverged runs ({len(found)} of 175; rule: loss >= 0.9 ln(50257) = {0.9 * np.log(GPT2_VOCAB):.2f}, "
        "or > 10% above a run with no more N, D and U)\n"
    )
    print("| run | N | D | U | epochs | loss | reason |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in found:
        why = r.reason
        if why.startswith("worse-than-run-"):
            j = int(why.rsplit("-", 1)[1])
            why = f"worse than {d['key'][j]} ({d['L'][j]:.3f})"
        print(
            f"| {d['key'][r.index]} | {r.N:.3g} | {r.D:.3g} | {r.U:.3g} | {r.D / r.U:.0f} | {r.loss:.3f} | {why} |"
        )


# ------------------------------------------------------------------ other fitting procedures (issue 18)
INNER = (2.5e8, {"280M-421M": (2.5e8, 5e8)})  # choose a procedure here: fit < 250M, validate on 250M-500M
OUTER = (HELD_OUT_N, SIZE_GROUPS)  # report here only: fit < 500M, test on 574M-2.2B


def _huber(r: np.ndarray, delta: float) -> float:
    a = np.abs(r)
    return float(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum())


def _refit_r_star(base: np.ndarray, idx: np.ndarray, d, rho: float, delta: float = 1e-3) -> np.ndarray:
    """(log R_D*, log R_N*) minimising the Huber objective on runs ``idx`` with the base terms of ``base``
    (a, b, e, alpha, beta) and ``rho`` fixed: Nelder-Mead from a 6 x 6 grid."""
    log_x = np.column_stack([np.log(d["N"][idx]), np.log(d["D"][idx]), np.log(d["U"][idx])])
    ly = np.log(d["L"][idx])

    def obj(r: np.ndarray) -> float:
        return _huber(logsumexp(_terms(np.concatenate([base, r, [rho]]), log_x), axis=-1) - ly, delta)

    grid = itertools.product(np.log([1, 2, 5, 15, 50, 200]), np.log([1, 2, 5, 15, 50, 1e4]))
    res = [
        minimize(obj, list(g), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-12}) for g in grid
    ]
    return np.clip(min(res, key=lambda r: r.fun).x, *_LOG_RSTAR_RANGE)


def procedure(name: str, d, split_n: float):
    """(law, Chinchilla) of one fitting procedure on the runs below ``split_n`` (diverged ones excluded)."""
    train = d["N"] < split_n
    delta = float(name.rsplit("delta=", 1)[1]) if "delta=" in name else 1e-3
    fit_rho = not (name.startswith("paper's law") or name.startswith("two-stage"))
    j = fit_data_constrained(
        d["N"][train], d["D"][train], d["U"][train], d["L"][train], vocab_size=GPT2_VOCAB, delta=delta,
        fit_rho=fit_rho,
    )  # fmt: skip
    keep = np.flatnonzero(train)[np.setdiff1d(np.arange(train.sum()), [r.index for r in j.diverged])]
    chin = fit_chinchilla(d["N"][keep], d["D"][keep], d["L"][keep])
    if "delta=" in name:
        return j, chin
    single = keep[d["D"][keep] <= 1.0001 * d["U"][keep]]
    rep = keep[d["D"][keep] > 1.0001 * d["U"][keep]]
    if name == "joint, then R* refitted on the multi-epoch runs":
        base, rho = _to_theta(j.params)[:5], j.rho
    else:  # Muennighoff et al.: base on single-epoch runs, then R_D*, R_N* on the repeated ones
        c = fit_chinchilla(d["N"][single], d["D"][single], d["L"][single])
        base, rho = np.array([np.log(c.A), np.log(c.B), np.log(c.E), c.alpha, c.beta]), 0.0
    nat = _to_natural(np.concatenate([base, _refit_r_star(base, rep, d, rho), [rho]]))
    named = dict(zip(PARAM_NAMES, map(float, nat)))
    return DataConstrainedFit(**named, objective=np.nan, n_points=len(keep), n_starts=36), chin


PROCEDURES = (
    "joint, delta=1e-3",
    "joint, delta=1e-2",
    "joint, delta=3e-2",
    "joint, delta=1e-1",
    "paper's law (rho = 0), joint, delta=1e-3",
    "paper's law (rho = 0), joint, delta=3e-2",
    "joint, then R* refitted on the multi-epoch runs",
    "two-stage (Muennighoff et al.): Chinchilla on single-epoch runs, then R_D*, R_N* on the repeated ones",
)


def procedures_table(d, excluded) -> list[str]:
    multi = d["D"] > 1.01 * d["U"]
    near_uniform = d["L"] >= 0.9 * np.log(GPT2_VOCAB)
    out = [
        "| procedure | inner: MAE (fit < 250M, 250M-500M) | inner ratio | outer: MAE (fit < 500M, 574M-2.2B) "
        "| outer bias | outer ratio | outer ratio, over-fitting runs included | R_D* | R_N* | rho |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in PROCEDURES:
        cells = []
        for split_n, groups in (INNER, OUTER):
            fit, chin = procedure(name, d, split_n)
            in_groups = np.any([(d["N"] >= lo) & (d["N"] < hi) for lo, hi in groups.values()], axis=0)
            row = []
            for m in (
                ~(d["N"] < split_n) & ~excluded & multi & in_groups,
                ~(d["N"] < split_n) & ~near_uniform & multi & in_groups,
            ):
                e = fit.predict(d["N"][m], d["D"][m], d["U"][m]) / d["L"][m] - 1
                ec = chin.predict(d["N"][m], d["D"][m]) / d["L"][m] - 1
                row.append((np.mean(np.abs(e)), np.mean(e), np.mean(np.abs(e)) / np.mean(np.abs(ec))))
            cells.append((*row[0], row[1][2], fit))
        (mi, _, ri, _, _), (mo, bo, ro, rx, fo) = cells
        out.append(
            f"| {name} | {100 * mi:.2f}% | {ri:.2f} | {100 * mo:.2f}% | {pct(bo)} | {ro:.2f} | {rx:.2f} | "
            f"{fo.R_D_star:.3g} | {fo.R_N_star:.3g} | {fo.rho:.3g} |"
        )
    return out


def print_procedures(d, excluded) -> None:
    print("## Other fitting procedures (issue 18's target: outer ratio <= 0.5)\n")
    print(
        "Chosen on the inner split only (fit < 250M, validate on the 250M-500M multi-epoch runs), reported on "
        "the outer one (the tested split above); nothing is tuned on 574M-2.2B. Ratio = MAE / MAE of "
        "Chinchilla (repetition ignored, fitted on the same runs).\n"
    )
    print("\n".join(procedures_table(d, excluded)) + "\n")
    print(
        "Reading: the size exponent rho of the repetition half-life, R_D*(N) = R_D* (N / 1e8)^-rho, is what "
        "moves the ratio: it was adopted on the inner split (0.79 -> 0.46 at the default Huber threshold), "
        "and the outer split, never used for a choice, goes 0.63 -> 0.39. Among the thresholds the inner "
        "split would pick delta = 1e-2 (inner 0.44): outer 0.41. Why it helps: on these runs the number of "
        "epochs after which more repetition stops paying falls with the size (at 1e8 unique tokens ~60 "
        "epochs at 146M, ~27 at 421M, ~15 at 619M); with one R_D* for all sizes the fit lets the large "
        "models gain too much from repeats and, to fit the small ones, makes the base law too flat in N "
        "(the paper's law predicts the outer groups' single-epoch runs +3.1% high on average, the fitted rho "
        "-2.4%). The column with the over-fitting runs included (every multi-epoch run of the outer groups "
        "not near ln(vocab), 46 instead of 31: losses up to 6.7 where the law cannot rise) shows the same "
        "order: 0.59 against 0.78. Refitting R_D*, R_N* on the multi-epoch runs alone returns the joint fit. "
        "Muennighoff et al.'s two-stage procedure is worse than Chinchilla here: the runs below 500M hold "
        "only ~13 single-epoch runs, too few to pin the base law, and the error of a poor base carries into "
        "every repeated run. Probe (2026-12-02, paper's law): keeping the over-fitting runs in the fit (the "
        "diverged rule's rise tolerance at 0.2 or 0.5 instead of 0.1: 1 run excluded instead of 3) gives outer "
        "MAE 4.45%, bias -1.22%, ratio 0.64. Probe (2026-12-02, not kept): an additive over-fitting penalty "
        "C (N/U)^a R_D^b, which lets the loss rise with epochs, fitted jointly: inner ratio 0.79, outer "
        "0.64 on the runs the rule keeps, and 1.44 on the outer split when the over-fitting runs are fitted "
        "too (it extrapolates the rise far beyond the fitted sizes).\n"
    )


if __name__ == "__main__":
    main()
