"""The data-pools panel: drawn only when the fitter's law is the pool law (runs train on data pools,
``sweep_law.json`` ``law == "data_pools"``; ``scaling_train/fitter/pools.py``).

Left: final held-out loss against epochs per pool or mix and model size, the runs as points and the fitted
pool law as lines; for a mix the x axis is the epochs of its most repeated pool. Right: each mix's loss at its
compute-optimal N against compute (``DataPoolsFit.optimal``): the lowest line is the predicted best mix; the
fitter's picks at the largest run's compute and 10x it with their 90% bootstrap intervals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling_train.laws import DataPoolsFit, PoolParams
from scaling_train.report.analysis import Analysis
from scaling_train.report.data import SweepData
from scaling_train.report.figures import Figure, NoData, fmt_n, png_bytes, pyplot

SHARED = ("E", "A", "alpha", "B", "beta")
POOL_KEYS = ("unique_tokens", "utility", "half_life", "floor", "max_epochs", "identified")


def fit_from_block(dp: dict[str, Any]) -> DataPoolsFit:
    """The fitter's ``sweep_law.json`` ``data_pools`` block as a ``DataPoolsFit`` (no bootstrap draws)."""
    missing = [k for k in SHARED if not isinstance(dp.get(k), (int, float))]
    pools = dp.get("pools")
    if missing or not isinstance(pools, dict) or not pools:
        raise NoData(
            f"sweep_law.json data_pools lacks {missing or ['pools']} ({dp.get('error', 'no error given')})"
        )
    try:
        params = {p: PoolParams(**{k: v[k] for k in POOL_KEYS}) for p, v in pools.items()}
    except (KeyError, TypeError) as e:
        raise NoData(
            f"sweep_law.json data_pools.pools is malformed ({e}); expected {list(POOL_KEYS)}"
        ) from None
    return DataPoolsFit(
        **{k: float(dp[k]) for k in SHARED}, reference=str(dp.get("reference", next(iter(pools)))),
        pools=params, objective=float(dp.get("objective", np.nan)), n_points=int(dp.get("n_points", 0)),
    )  # fmt: skip


def _mix_epochs(fit: DataPoolsFit, mix: str, D: np.ndarray) -> np.ndarray:
    """Epochs of the mix's most repeated pool after ``D`` tokens."""
    from scaling_train.laws.pools import as_mix

    return np.max([w * D / fit.pools[p].unique_tokens for p, w in as_mix(mix).items()], axis=0)


def data_pools(sweep: SweepData, an: Analysis) -> Figure:
    law = sweep.law or {}
    if law.get("law") != "data_pools":
        raise NoData(law.get("law_reason") or "no data-pools law in sweep_law.json")
    dp = law.get("data_pools") or {}
    fit = fit_from_block(dp)
    mixes, pts = _fitted_runs(dp)
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    col = {m: cmap(i % 10) for i, m in enumerate(mixes)}
    _draw_epochs(ax, fit, mixes, pts, col)
    picks = _draw_best(bx, fit, dp, mixes, pts, col)
    fig.tight_layout()
    return Figure(
        "data-pools",
        "Data pools: loss vs epochs per pool and the best mix against compute",
        png_bytes(fig),
        _caption(law, dp, fit, pts, picks),
    )


def _fitted_runs(dp: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(the block's mixes, its runs with a held-out loss on one of them); NoData when either is empty."""
    mixes = [m for m in dp.get("mixes", []) if isinstance(m, str)]
    pts = [
        r
        for r in dp.get("runs", [])
        if isinstance(r, dict) and r.get("eval_loss") is not None and r.get("mix") in mixes
    ]
    if not pts or not mixes:
        raise NoData("sweep_law.json data_pools has no finished run with a held-out loss on a fitted mix")
    return mixes, pts


def _draw_epochs(ax, fit: DataPoolsFit, mixes: list[str], pts: list[dict[str, Any]], col: dict) -> None:
    """Returns nothing: draws the left panel, loss against epochs per mix and size, runs and the law's lines."""
    sizes = sorted({float(r["N"]) for r in pts})
    marks = dict(zip(sizes, "osD^v<>p*"))
    styles = dict(zip(sizes, ["-", "--", ":", "-."] * 3))
    for m in mixes:
        for N in sizes:
            mine = sorted((r for r in pts if r["mix"] == m and float(r["N"]) == N), key=lambda r: r["D"])
            if not mine:
                continue
            D = np.array([float(r["D"]) for r in mine])
            ax.scatter(_mix_epochs(fit, m, D), [r["eval_loss"] for r in mine], color=col[m], marker=marks[N],
                       s=22, zorder=3, label=f"{m}, N={fmt_n(N)}")  # fmt: skip
            grid = np.geomspace(D.min() * 0.8, D.max() * 1.25, 60)
            ax.plot(_mix_epochs(fit, m, grid), fit.predict(m, N, grid), color=col[m], lw=1.1, ls=styles[N])
    ax.axvline(1.0, color="0.6", lw=0.8)
    ax.set(xscale="log", xlabel="epochs of the most repeated pool", ylabel="final validation loss",
           title="loss vs epochs per pool / mix: runs and the pool law")  # fmt: skip
    ax.legend(fontsize=6, ncol=2)


def _draw_best(
    bx, fit: DataPoolsFit, dp: dict[str, Any], mixes: list[str], pts: list[dict[str, Any]], col: dict
) -> list[str]:
    """Draws the right panel (each mix at its compute-optimal N against compute, the fitter's picks) and
    returns one caption phrase per pick."""
    best = [
        b for b in dp.get("best", []) if isinstance(b, dict) and isinstance(b.get("compute"), (int, float))
    ]
    flops = np.array([6.0 * float(r["N"]) * float(r["D"]) for r in pts])
    hi_c = max([flops.max()] + [float(b["compute"]) for b in best])
    C = np.geomspace(flops.min() / 3, hi_c * 3, 24)
    for m in mixes:
        bx.plot(C, [fit.optimal(m, float(c))[2] for c in C], color=col[m], lw=1.3, label=m)
    bx.scatter(flops, [r["eval_loss"] for r in pts], color=[col[r["mix"]] for r in pts], s=12, zorder=3,
               alpha=0.6, label="runs")  # fmt: skip
    picks = []
    for b in best:
        c = (b.get("candidates") or {}).get(b.get("best"), {})
        if not isinstance(c.get("loss"), (int, float)):
            continue
        lo, hi = c.get("low", c["loss"]), c.get("high", c["loss"])
        bx.errorbar([b["compute"]], [c["loss"]], yerr=[[c["loss"] - lo], [hi - c["loss"]]], fmt="*", ms=11,
                    color=col.get(b["best"], "k"), mec="k", capsize=3, zorder=4)  # fmt: skip
        bx.axvline(b["compute"], color="0.7", lw=0.8, ls=":")
        share = b.get("best_share")
        picks.append(
            f"at {b.get('scale', 'C')} (C={b['compute']:.3g}) {b['best']}: {c['loss']:.3f} [{lo:.3f}, {hi:.3f}]"
            + (f", first in {share:.0%} of bootstrap draws" if isinstance(share, (int, float)) else "")
        )
    bx.set(xscale="log", xlabel="training FLOPs C = 6ND", ylabel="loss at the compute-optimal N",
           title="predicted best pool / mix against compute (lowest line)")  # fmt: skip
    bx.legend(fontsize=7)
    return picks


def _caption(
    law: dict[str, Any], dp: dict[str, Any], fit: DataPoolsFit, pts: list[dict[str, Any]], picks: list[str]
) -> str:
    """The panel's caption: the law's numbers per pool, its error on the runs, the picks, how to read it."""
    pools = "; ".join(
        f"{p}: U={v.unique_tokens:.3g}, utility q={v.utility:.3g}, half-life {v.half_life:.3g} epochs"
        + ("" if v.identified else " (borrowed: never repeated past 1.5 epochs)")
        for p, v in fit.pools.items()
    )
    err = dp.get("fit_error") or {}
    err_txt = (
        f" The fit is off by {err['mean_abs']:.1%} on average (at most {err['max_abs']:.1%}) on its "
        f"{dp.get('n_points', len(pts))} runs."
        if isinstance(err.get("mean_abs"), (int, float)) and isinstance(err.get("max_abs"), (int, float))
        else ""
    )
    return (
        f"The sweep's law is the pool law ({law.get('law_reason', '')}): E={fit.E:.3g}, alpha={fit.alpha:.3g}, "
        f"beta={fit.beta:.3g}; per pool (utility in tokens of {fit.reference}; a pool's k-th pass is worth "
        f"2^(-(k-1)/half-life) of its first): {pools}.{err_txt} Predicted best: "
        + ("; ".join(picks) if picks else "none given")
        + ". Left: lines are the law per size (line style) and mix (colour); a mix's x is the epochs of its "
        "most repeated pool. Right: each mix at its compute-optimal N; stars are the fitter's picks with "
        "the law's 90% bootstrap interval."
    )
