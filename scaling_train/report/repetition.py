"""The repeated-data panel: drawn only when the fitter's law is the data-constrained one (some run repeats its
training data, ``sweep_law.json`` ``law == "data_constrained"``).

Left: final loss against epochs (D / U) per model size and data limit U, the runs as points, the fitted
data-constrained law (solid) and the same law with every token fresh (dashed: what a fit that ignores
repetition would promise). Right: the compute-optimal model size against compute, without a data limit (the
law's base Chinchilla optimum) and with each data limit of the sweep (``DataConstrainedFit.optimal``), with the
runs placed at their (C, N).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling_train.laws import DataConstrainedFit
from scaling_train.laws.data_constrained import PARAM_NAMES
from scaling_train.report.analysis import Analysis
from scaling_train.report.data import SweepData
from scaling_train.report.figures import Figure, NoData, fmt_n, png_bytes, pyplot, size_colors


def fit_from_law(dc: dict[str, Any]) -> DataConstrainedFit:
    """The fitter's ``sweep_law.json`` ``data_constrained`` block as a ``DataConstrainedFit`` (no bootstrap)."""
    # rho is absent from laws written before it existed: those are the paper's law, rho = 0
    missing = [k for k in PARAM_NAMES if k != "rho" and not isinstance(dc.get(k), (int, float))]
    if missing:
        raise NoData(f"sweep_law.json data_constrained lacks {missing} ({dc.get('error', 'no error given')})")
    return DataConstrainedFit(
        **{k: float(dc.get(k, 0.0)) for k in PARAM_NAMES}, objective=float(dc.get("objective", np.nan)),
        n_points=int(dc.get("n_points", 0)), n_starts=0,
    )  # fmt: skip


def dc_rho_reason(law: dict[str, Any]) -> str:
    """Why rho was fitted or held at 0, from ``sweep_law.json`` (older laws: held at 0, no reason given)."""
    return str((law.get("data_constrained") or {}).get("rho_reason", "held at 0"))


def repetition(sweep: SweepData, an: Analysis) -> Figure:
    law = sweep.law or {}
    if law.get("law") != "data_constrained":
        raise NoData(law.get("law_reason") or "no data-constrained law in sweep_law.json")
    fit = fit_from_law(law.get("data_constrained") or {})
    key = law.get(
        "loss_used", "loss"
    )  # the fitter fits held-out loss: a repeated token's training loss is memorised
    pts = [p for p in law.get("points", []) if p.get("U") and p.get(key) is not None]
    if not pts:
        raise NoData(f"sweep_law.json has no points with a unique-token count U and {key}")
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({float(p["N"]) for p in pts})
    limits = sorted({float(p["U"]) for p in pts})
    col = size_colors(sizes)
    marks = dict(zip(limits, "osD^v<>"))
    for N in sizes:
        for U in limits:
            mine = sorted((p for p in pts if p["N"] == N and p["U"] == U), key=lambda p: p["D"])
            if not mine:
                continue
            ep = np.array([p["D"] / U for p in mine])
            ax.scatter(ep, [p[key] for p in mine], color=col[N], marker=marks[U], s=22, zorder=3,
                       label=f"N={fmt_n(N)}, U={U:.3g}")  # fmt: skip
            grid = np.geomspace(ep.min() * 0.8, max(ep.max(), 1.0) * 1.25, 60)
            ax.plot(grid, fit.predict(N, grid * U, U), color=col[N], lw=1.2)
            ax.plot(
                grid, fit.predict(N, grid * U, grid * U), color=col[N], lw=0.8, ls="--"
            )  # U = D: all fresh
    ax.axvline(1.0, color="0.6", lw=0.8)
    ax.set(xscale="log", xlabel="epochs D / U", ylabel=f"final {'validation' if key == 'eval_loss' else 'training'} loss",
           title="loss vs epochs: law (solid), every token fresh (dashed)")  # fmt: skip
    ax.legend(fontsize=7)
    flops = np.array([6.0 * p["N"] * p["D"] for p in pts])
    C = np.geomspace(flops.min() / 3, flops.max() * 100, 40)
    n_free, _, _, _ = fit.optimal(C, np.full(len(C), 1e30))
    bx.plot(C, n_free, color="k", lw=1.4, label="no data limit")
    for U in limits:
        n_u, _, ep_u, _ = fit.optimal(C, np.full(len(C), U))
        bx.plot(C, n_u, lw=1.2, ls="--", label=f"U={U:.3g} (epochs at 100x: {ep_u[-1]:.3g})")
    bx.scatter(flops, [p["N"] for p in pts], color="0.3", s=14, zorder=3, label="runs")
    bx.set(xscale="log", yscale="log", xlabel="training FLOPs C = 6ND", ylabel="compute-optimal N",
           title="compute-optimal frontier with and without the data limit")  # fmt: skip
    bx.legend(fontsize=7)
    fig.tight_layout()
    rep = law.get("repeating_runs", [])
    cap = (
        f"The sweep's law is the data-constrained one ({law.get('law_reason', '')}): E={fit.E:.3g}, "
        f"alpha={fit.alpha:.3g}, beta={fit.beta:.3g}, R_D*={fit.R_D_star:.3g} x (N/1e8)^-{fit.rho:.3g} (the k-th "
        f"repetition of a token is worth exp(-k/R_D*(N)) of a fresh one; rho: {dc_rho_reason(law)}), "
        f"R_N*={fit.R_N_star:.3g}; {len(rep)} of {len(pts)} runs repeat their "
        "data. Dashed (left): the same law with every token fresh, what a fit that ignores repetition would "
        "promise. Right: N minimising the law's loss at C = 6ND with unlimited data and with each data limit."
    )
    return Figure(
        "repetition", "Repeated data: loss vs epochs and the data-limited frontier", png_bytes(fig), cap
    )
