"""Repetition on the CPU (issue 18): does the data-constrained law, fitted on runs of <= 2 epochs, predict the
4- and 8-epoch runs better than Chinchilla (repetition ignored)?

Run the sweep first (about 5 min on 2 idle cores), then this script on its folder:

    scaling-train sweep configs/sweeps/repeat-cpu.yaml
    PYTHONPATH=. python benchmarks/bench_repetition.py runs/repeat-cpu > benchmarks/results/repetition.md

Points: the fitter's ``sweep_law.json`` (N non-embedding, D, U, final validation loss of every finished run).
Fit set: runs with D / U <= 2 (the fresh U = 4e5 runs and the 1- and 2-epoch U = 5e4 runs); test set: the
others (4 and 8 epochs). Both laws are fitted on the same runs; errors are predicted / observed - 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from scaling_train.laws import fit_chinchilla, fit_data_constrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--max-fit-epochs", type=float, default=2.05)
    a = ap.parse_args()
    law = json.loads((a.sweep_dir / "sweep_law.json").read_text())
    pts = [p for p in law["points"] if p.get("source") == "observed" and p.get("U")]
    if len(pts) < 8:
        sys.exit(
            f"{a.sweep_dir}: {len(pts)} finished runs with U in sweep_law.json; run the whole sweep first"
        )
    pts = [p for p in pts if p.get("eval_loss") is not None]  # held-out loss: repeated tokens are memorised
    N, D, U, L = (np.array([float(p[k]) for p in pts]) for k in ("N", "D", "U", "eval_loss"))
    ep = D / U
    fit = ep <= a.max_fit_epochs
    test = ~fit
    ch = fit_chinchilla(N[fit], D[fit], L[fit])
    dc = fit_data_constrained(N[fit], D[fit], U[fit], L[fit], n_bootstrap=100)  # rho: the law's own rule
    p_ch, p_dc = ch.predict(N, D), dc.predict(N, D, U)
    lo, hi = dc.predict_interval(N, D, U)
    print("# Repetition on the CPU: data-constrained law vs Chinchilla, fitted on <= 2 epochs\n")
    print(f"Command: `scaling-train sweep configs/sweeps/repeat-cpu.yaml && PYTHONPATH=. python "
          f"benchmarks/bench_repetition.py {a.sweep_dir}`; machine: 2-core CPU (shared).\n")  # fmt: skip
    print(f"{len(pts)} finished runs: sizes {sorted({f'{n:.3g}' for n in N})}, data limits U "
          f"{sorted({f'{u:.3g}' for u in U})}; fitted on the {int(fit.sum())} runs of <= {a.max_fit_epochs:g} epochs, "
          f"tested on the {int(test.sum())} others. Error = predicted / observed - 1 (final validation loss).\n")  # fmt: skip
    print(
        "| run | N | U | epochs | observed | data-constrained [90% PI] | error | Chinchilla | error | split |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    order = np.lexsort((ep, U, N))
    for i in order:
        print(
            f"| {pts[i]['run']} | {N[i]:.3g} | {U[i]:.3g} | {ep[i]:.2f} | {L[i]:.4f} | {p_dc[i]:.4f} "
            f"[{lo[i]:.4f}, {hi[i]:.4f}] | {p_dc[i] / L[i] - 1:+.2%} | {p_ch[i]:.4f} | {p_ch[i] / L[i] - 1:+.2%} | "
            f"{'fit' if fit[i] else 'test'} |"
        )
    e_dc, e_ch = p_dc[test] / L[test] - 1, p_ch[test] / L[test] - 1
    cover = np.mean((lo[test] <= L[test]) & (L[test] <= hi[test]))
    print("\n| test runs (> 2 epochs) | MAE | bias | max abs | 90% PI coverage |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| data-constrained | {np.mean(np.abs(e_dc)):.2%} | {np.mean(e_dc):+.2%} | {np.max(np.abs(e_dc)):.2%} | "
          f"{cover:.2f} |")  # fmt: skip
    print(f"| Chinchilla (repetition ignored) | {np.mean(np.abs(e_ch)):.2%} | {np.mean(e_ch):+.2%} | "
          f"{np.max(np.abs(e_ch)):.2%} | |")  # fmt: skip
    print(
        f"\nMAE ratio data-constrained / Chinchilla: {np.mean(np.abs(e_dc)) / np.mean(np.abs(e_ch)):.2f}.\n"
    )
    print(f"Data-constrained fit: E={dc.E:.4g}, A={dc.A:.4g}, B={dc.B:.4g}, alpha={dc.alpha:.3g}, beta={dc.beta:.3g}, "
          f"R_D*={dc.R_D_star:.3g}, R_N*={dc.R_N_star:.3g}; excluded as diverged: "
          f"{[pts[int(np.flatnonzero(fit)[d.index])]['run'] for d in dc.diverged] or 'none'}. "
          f"Chinchilla: E={ch.E:.4g}, A={ch.A:.4g}, B={ch.B:.4g}, alpha={ch.alpha:.3g}, beta={ch.beta:.3g}.")  # fmt: skip


if __name__ == "__main__":
    main()
