"""Benchmark of fit_data_constrained on the datablations runs (Muennighoff et al. 2023): held-out errors
by size group against a Chinchilla fit that ignores repetition, bias, interval coverage, diverged runs.

Run:  . .venv/bin/activate && PYTHONPATH=. python benchmarks/bench_data_constrained.py > benchmarks/results/data_constrained.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.fixtures

from scaling_train.laws import find_diverged, fit_chinchilla, fit_data_constrained  # noqa: E402
from scaling_train.laws.data_constrained import PARAM_NAMES  # noqa: E402
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
                "(all below 2.5B, not the issue's 2.8B-8.7B) the first holds and the second does not (ratio above). "
                "Both laws predict too low on average: the largest models over-fit repeated data (loss rises with "
                "epochs), which a law non-increasing in N, D and U cannot follow. R_N* is poorly identified "
                f"(clipped at e^30 = {np.exp(30):.3g} means no excess-parameter penalty at all): the runs that "
                "show the penalty end worse than smaller ones and are excluded by the diverged rule.\n"
            )
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


if __name__ == "__main__":
    main()
