"""Matplotlib figures of the report, each returned as PNG bytes (embedded base64 in the HTML).

Every function takes the loaded sweep and its analysis and returns ``Figure`` (png bytes + caption)
or raises ``NoData`` with the reason a panel is empty. Axes: tokens, FLOPs, parameters, log scales.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scaling_train.report.analysis import AT_FRACTION, Analysis, flops_per_token_fn, standing_at
from scaling_train.report.data import SweepData


class NoData(Exception):  # noqa: N818 - a reason, not an error
    """The panel has nothing to draw; the message says why."""


@dataclass
class Figure:
    key: str
    title: str
    png: bytes
    caption: str


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def size_colors(sizes: list[float]) -> dict[float, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = max(len(sizes) - 1, 1)
    return {N: cmap(0.9 * i / n) for i, N in enumerate(sizes)}


def fmt_n(N: float) -> str:
    return f"{N / 1e9:.3g}B" if N >= 1e9 else f"{N / 1e6:.3g}M" if N >= 1e6 else f"{N / 1e3:.3g}k"


# ----------------------------------------------------------------------------------- loss curves
def loss_curves(sweep: SweepData, an: Analysis) -> Figure:
    runs = [r for r in sweep.runs if r.rows]
    if not runs:
        raise NoData("no run has metrics rows yet")
    plt = pyplot()
    col = size_colors(sweep.sizes)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    n_pred = n_early = 0
    ylabel = "validation loss" if all(r.law_column == "eval_loss" for r in runs) else "training loss"
    for ax, xkey, xlabel in ((axes[0], "tokens", "training tokens"), (axes[1], "flops", "training FLOPs")):
        seen = set()
        for r in runs:
            x = r.tokens if xkey == "tokens" else r.flops
            y = r.column(r.law_column)
            ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
            if not ok.any():
                continue
            c = col.get(r.N, "gray")
            lab = fmt_n(r.N) if r.N and r.N not in seen else None
            seen.add(r.N)
            ax.plot(x[ok], y[ok], color=c, lw=1.2, alpha=0.9, label=lab)
            if r.status == "diverged":
                ax.plot(x[ok][-1], y[ok][-1], "x", color="red", ms=8)
            elif r.status == "done":
                ax.plot(x[ok][-1], y[ok][-1], "o", color=c, ms=4)
            p = r.prediction
            # the fitter's live record (predictions.jsonl) standing at AT_FRACTION, with its predicted curve
            early = standing_at([h for h in r.history if h.get("curve")]) if r.status == "done" else None
            if early is not None and r.tokens_per_step:  # what the fitter said at ~40% vs what happened
                cur = early["curve"]
                cs = np.asarray(cur["step"], float) * r.tokens_per_step
                cx = cs if xkey == "tokens" else cs * (r.flops_per_token or 6 * r.N)
                ax.plot(cx, cur["loss"], ":", color=c, lw=1)
                ax.fill_between(cx, cur["low"], cur["high"], color=c, alpha=0.10, lw=0)
                ax.errorbar(
                    [cx[-1]], [early["loss"]], yerr=[[early["loss"] - early["low"]], [early["high"] - early["loss"]]],
                    fmt="D", color=c, mfc="white", ms=5, capsize=3, lw=1,
                )  # fmt: skip
                n_early += xkey == "tokens"
            if r.status in ("partial", "stopped") and p and p.get("loss") and r.D:
                x_end = r.D if xkey == "tokens" else r.D * (r.flops_per_token or 6 * r.N)
                lo, hi = p.get("low") or p["loss"], p.get("high") or p["loss"]
                # dotted from the point the prediction was made at (it may lag the curve by a poll)
                at = r.steps[ok] <= (p.get("step") or r.last_step)
                i = int(np.flatnonzero(at)[-1]) if at.any() else -1
                cur = p.get("curve") or {}
                if len(cur.get("step") or ()) >= 2 and r.tokens_per_step:
                    # the fitter's predicted remaining curve and its 90% band
                    cs = np.asarray(cur["step"], float) * r.tokens_per_step
                    cx = cs if xkey == "tokens" else cs * (r.flops_per_token or 6 * r.N)
                    ax.plot(cx, cur["loss"], ":", color=c, lw=1)
                    ax.fill_between(cx, cur["low"], cur["high"], color=c, alpha=0.12, lw=0)
                else:
                    ax.plot([x[ok][i], x_end], [y[ok][i], p["loss"]], ":", color=c, lw=1)
                ax.errorbar(
                    [x_end], [p["loss"]], yerr=[[p["loss"] - lo], [hi - p["loss"]]], fmt="D", color=c,
                    mfc="white", ms=6, capsize=4, lw=1.5,
                )  # fmt: skip
                n_pred += xkey == "tokens"
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{ylabel} (nats/token)")
        ax.yaxis.set_minor_formatter(plt.matplotlib.ticker.FormatStrFormatter("%.1f"))
    axes[0].legend(title="non-embedding N", fontsize=8)
    axes[0].set_title("loss vs tokens")
    axes[1].set_title("loss vs FLOPs")
    cap = (
        f"{ylabel.capitalize()} per run (the loss its laws use, metrics.law_loss), coloured by model size. ● finished run's final loss; ◇ with bars: the "
        f"fitter's predicted final loss and 90% interval at the run's planned end ({n_pred} unfinished "
        "run(s)), with its predicted remaining curve (dotted) and 90% band from the step the prediction was "
        "made at; × diverged."
    )
    if n_early:
        cap += (
            f" For {n_early} finished run(s) the dotted curve, band and ◇ are what the online fitter predicted at "
            f"about {AT_FRACTION:.0%} of the run (its live record, predictions.jsonl), drawn over what happened."
        )
    return Figure("loss", "Loss vs tokens and FLOPs per model size", png_bytes(fig), cap)


# ----------------------------------------------------------------------------------- history
def prediction_history(sweep: SweepData, an: Analysis) -> Figure:
    hist = {k: v for k, v in an.history.items() if v}
    if not hist:
        done = len(sweep.by_status("done"))
        raise NoData(
            f"{done} finished run(s); none has enough rows (>= 3 before 90% of its steps) and an LR "
            "schedule to replay the prediction on its prefixes"
            if done
            else "no finished runs yet"
        )
    plt = pyplot()
    col = size_colors(sweep.sizes)
    runs = {r.name: r for r in sweep.runs}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    errs_at = {}
    for name, h in sorted(hist.items(), key=lambda kv: (runs[kv[0]].N or 0, runs[kv[0]].D or 0)):
        r = runs[name]
        final = r.final_loss
        if final is None or not math.isfinite(final):
            continue
        f = np.array([p["fraction"] for p in h])
        y = np.array([p["loss"] for p in h])
        lo = np.array([p["low"] if p["low"] is not None else p["loss"] for p in h])
        hi = np.array([p["high"] if p["high"] is not None else p["loss"] for p in h])
        c = col.get(r.N, "gray")
        lab = f"{fmt_n(r.N)} D={r.D:.2g}" if r.N and r.D else name
        axes[0].plot(f, y, "o-", color=c, ms=3, lw=1, label=lab)
        axes[0].fill_between(f, lo, hi, color=c, alpha=0.12)
        axes[0].plot([1.0], [final], "*", color=c, ms=9)
        rel = 100 * (y - final) / final
        axes[1].plot(f, rel, "o-", color=c, ms=3, lw=1)
        axes[1].fill_between(f, 100 * (lo - final) / final, 100 * (hi - final) / final, color=c, alpha=0.12)
        inside = (lo <= final) & (final <= hi) & (np.abs(rel) <= 2)
        # earliest fraction from which every later prediction is within 2% and covers the final loss
        ok_from = next((float(f[i]) for i in range(len(f)) if inside[i:].all()), None)
        errs_at[name] = ok_from
    axes[0].set_xlabel("fraction of the run done (steps / planned steps)")
    axes[0].set_ylabel("predicted final loss (nats/token)")
    axes[0].set_title("predicted final loss and 90% interval (★ = observed)")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].axhspan(-2, 2, color="green", alpha=0.08)
    axes[1].set_xlabel("fraction of the run done (steps / planned steps)")
    axes[1].set_ylabel("prediction error (% of final loss)")
    axes[1].set_title("error of the prediction (green: within ±2%)")
    for ax in axes:
        ax.set_xlim(0, 1.05)
    src = {p["source"] for h in hist.values() for p in h}
    how = (
        "from the fitter's prediction history"
        if src == {"fitter"}
        else "replayed with laws.predict_final_loss on each run's own prefix (no reference runs)"
    )
    good = [v for v in errs_at.values() if v is not None]
    summary = (
        f" Median fraction of the run after which the prediction stays within 2% and its interval covers "
        f"the final loss: {np.median(good):.0%} ({len(good)} of {len(errs_at)} runs get there)."
        if good
        else f" No run's prediction settles within 2% with an interval covering the final loss ({len(errs_at)} runs)."
    )
    return Figure(
        "history", "How early was the prediction right", png_bytes(fig), f"Finished runs, {how}.{summary}"
    )


# ----------------------------------------------------------------------------------- isoflop
@dataclass
class _Columns:
    """The analysis points as arrays, one entry per run, and FLOPs per token as a function of N."""

    N: np.ndarray  # non-embedding parameters
    D: np.ndarray  # training tokens
    L: np.ndarray  # final loss (observed or predicted)
    C: np.ndarray  # training FLOPs (real: attention and LM head included)
    obs: np.ndarray  # bool: the final loss is observed, not predicted
    fpt: Callable[[np.ndarray], np.ndarray]  # N -> FLOPs per token, to place fitted optima at real FLOPs


def _columns(pts: list) -> _Columns:
    """The points' N, D, loss, C and observed flag as arrays, with their FLOPs-per-token function."""
    return _Columns(
        N=np.array([p.N for p in pts]),
        D=np.array([p.D for p in pts]),
        L=np.array([p.loss for p in pts]),
        C=np.array([p.C for p in pts]),
        obs=np.array([p.source == "observed" for p in pts]),
        fpt=flops_per_token_fn(pts),
    )


def isoflop(sweep: SweepData, an: Analysis) -> Figure:
    pts = an.points
    if not pts:
        raise NoData("no finished or predicted final losses")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    col = _columns(pts)
    _isoflop_profiles(fig, axes[0], an, col)
    _isoflop_contours(fig, axes[1], an, col)
    _isoflop_frontier(axes[2], an, col)
    fig.tight_layout()
    return Figure(
        "isoflop",
        "IsoFLOP curves, L(N, D) contours and the compute-optimal frontier",
        png_bytes(fig),
        _isoflop_caption(an, col),
    )


def _isoflop_profiles(fig, ax, an: Analysis, col: _Columns) -> None:
    """Returns nothing: draws panel (1), the IsoFLOP profiles (loss vs N per budget, parabola, optimum)."""
    N, L, C, obs = col.N, col.L, col.C, col.obs
    iso = an.isoflop
    if iso is not None:
        import matplotlib

        cmap = matplotlib.colormaps["plasma"]
        for i, par in enumerate(iso.parabolas):
            c = cmap(0.85 * i / max(len(iso.parabolas) - 1, 1))
            m = np.abs(np.log(C / par.C)) < np.log1p(0.05) + 1e-9
            ax.scatter(N[m], L[m], color=c, s=22, label=f"C={par.C:.2g}")
            xs = np.geomspace(N[m].min() / 1.3, N[m].max() * 1.3, 100)
            lx = np.log(xs)
            ax.plot(xs, par.c2 * lx**2 + par.c1 * lx + par.c0, color=c, lw=1)
            ax.plot(par.N_opt, par.L_opt, "*", color=c, ms=12, mec="k")
        ax.legend(title="FLOP budget", fontsize=7)
    else:
        sc = ax.scatter(N, L, c=np.log10(C), cmap="plasma", s=22)
        fig.colorbar(sc, ax=ax, label="log10 training FLOPs")
        ax.text(0.5, 0.97, "no IsoFLOP fit (see caption)", transform=ax.transAxes, ha="center", va="top",
                fontsize=8, color="firebrick")  # fmt: skip
    ax.scatter(N[~obs], L[~obs], facecolors="none", edgecolors="k", s=60, label="predicted")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final loss (nats/token)")
    ax.set_title("IsoFLOP profiles (★ = optimum)")


def _isoflop_contours(fig, ax, an: Analysis, col: _Columns) -> None:
    """Returns nothing: draws panel (2), L(N, D) contours with the runs, the budgets' real-FLOP lines and
    the compute-optimal allocation of both fits."""
    N, D, L, C, obs, fpt = col.N, col.D, col.L, col.C, col.obs, col.fpt
    iso, chin = an.isoflop, an.chinchilla
    nx = np.geomspace(N.min() / 3, N.max() * 3, 120)
    dx = np.geomspace(D.min() / 3, D.max() * 3, 120)
    if chin is not None:
        G_N, G_D = np.meshgrid(nx, dx)
        Z = chin.predict(G_N, G_D)
        cs = ax.contour(G_N, G_D, Z, levels=12, cmap="viridis", linewidths=0.8)
        ax.clabel(cs, fontsize=6, fmt="%.2f")
    else:
        ax.text(0.5, 0.97, "no Chinchilla fit (see caption)", transform=ax.transAxes, ha="center", va="top",
                fontsize=8, color="firebrick")  # fmt: skip
    sc = ax.scatter(N, D, c=L, cmap="viridis", s=30, edgecolors=np.where(obs, "k", "r"))
    fig.colorbar(sc, ax=ax, label="final loss")
    for c in np.unique(np.round(np.log10(C), 1)):  # the budgets' real-FLOP lines D = C / fpt(N)
        ax.plot(nx, 10**c / fpt(nx), "--", color="gray", lw=0.6)
    if chin is not None:
        try:  # the optimum at real FLOPs fpt(N) * D, the budgets the IsoFLOP runs were planned at
            n_o, d_o, _ = chin.optimal_under(np.geomspace(C.min() / 10, C.max() * 10, 50), fpt)
            ax.plot(n_o, d_o, "r-", lw=1.5, label="compute-optimal (Chinchilla fit)")
        except ValueError:
            pass
    if iso is not None:
        n_opt = np.array([p.N_opt for p in iso.parabolas])
        d_opt = np.array([p.C for p in iso.parabolas]) / fpt(n_opt)  # D = C / FLOPs-per-token(N_opt)
        ax.plot(n_opt, d_opt, "k*", ms=10, label="IsoFLOP optima")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(nx[0], nx[-1])
    ax.set_ylim(dx[0], dx[-1])
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("training tokens D")
    ax.set_title("fitted L(N, D) contours (dashed: iso-FLOP lines)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")


def _isoflop_frontier(ax, an: Analysis, col: _Columns) -> None:
    """Returns nothing: draws panel (3), the compute-optimal frontier N_opt(C) of both fits and the runs."""
    N, C, fpt = col.N, col.C, col.fpt
    iso, chin = an.isoflop, an.chinchilla
    cs_line = np.geomspace(C.min() / 3, C.max() * 3, 50)
    drew = False
    if iso is not None:
        ax.plot(
            [p.C for p in iso.parabolas],
            [p.N_opt for p in iso.parabolas],
            "k*",
            ms=10,
            label="IsoFLOP optima",
        )
        ax.plot(cs_line, iso.predict_N_opt(cs_line), "k--", lw=1, label=f"IsoFLOP: N_opt ∝ C^{iso.a:.2f}")
        drew = True
    if chin is not None:
        try:
            # argmin of the fitted law at real FLOPs fpt(N) * D (not 6 N D: at small N the head and attention
            # cost more than 6 N per token), so it is comparable with the IsoFLOP optima
            n_o, _, _ = chin.optimal_under(cs_line, fpt)
            s = chin.beta / (chin.alpha + chin.beta)
            ax.plot(cs_line, n_o, "r-", lw=1.5, label=f"Chinchilla fit (large-N slope {s:.2f})")
            drew = True
        except ValueError:
            pass
    ax.scatter(C, N, c="lightgray", s=12, label="runs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("compute-optimal parameters N_opt")
    ax.set_title("compute-optimal frontier" + ("" if drew else " (no fit)"))
    ax.legend(fontsize=7)


def _isoflop_caption(an: Analysis, col: _Columns) -> str:
    """The IsoFLOP figure's caption: run counts, what each panel shows, and the laws that were not fitted."""
    n_pred = int((~col.obs).sum())
    cap = (
        f"{len(an.points)} runs ({n_pred} with a predicted final loss, circled/red-edged). Left: final loss per "
        "FLOP budget with the fitted parabola in log N and its optimum. Middle: contours of the fitted Chinchilla "
        "law over (N, D) with the compute-optimal allocation. Right: N_opt against compute from both methods. "
        "Compute is real training FLOPs (attention and the LM head included, as the budgets were planned), so "
        "the fitted law's frontier is its minimum along each real-FLOP line, not the 6 N D formula."
    )
    for row in an.laws[:2]:
        if row.error:
            cap += f" {row.law} not fitted: {row.error}."
    return cap


# ----------------------------------------------------------------------------------- GNS
def noise_scale(sweep: SweepData, an: Analysis) -> Figure:
    runs = [r for r in sweep.runs if r.rows and np.isfinite(r.column("gns_b_simple")).any()]
    if not runs:
        raise NoData(
            "no gns_b_simple in any metrics.jsonl (the noise scale needs grad accumulation >= 2: set "
            "train.micro_batch_size below train.batch_size, or DDP)"
        )
    plt = pyplot()
    col = size_colors(sweep.sizes)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    seen = set()
    for r in runs:
        b, t = r.column("gns_b_simple"), r.tokens
        ok = np.isfinite(b) & (b > 0) & np.isfinite(t)
        lab = fmt_n(r.N) if r.N and r.N not in seen else None
        seen.add(r.N)
        axes[0].plot(t[ok], b[ok], color=col.get(r.N, "gray"), lw=1, label=lab)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("training tokens")
    axes[0].set_ylabel("gradient noise scale B_simple (tokens)")
    axes[0].set_title("gradient noise scale over training")
    axes[0].legend(title="non-embedding N", fontsize=8)
    lo, bs = an.gns_points
    ax = axes[1]
    if len(lo):
        ax.scatter(lo, bs, s=6, alpha=0.35, c="tab:blue", label=f"gns_b_simple (noise scale), {len(lo)} rows")
    f = an.critical_batch
    if f is not None:
        xs = np.geomspace(lo.min() * 0.95, lo.max() * 1.05, 50)
        ax.plot(xs, f.predict(xs), "b--", lw=1, label=f"B_simple law {f.B_star:.3g} / L^(1/{f.alpha_B:.3g})")
    else:
        ax.text(0.5, 0.97, "no B_simple(L) fit (see caption)", transform=ax.transAxes, ha="center", va="top",
                fontsize=8, color="firebrick")  # fmt: skip
    cap_cbs = _draw_cbs(ax, sweep.law or {})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training loss (nats/token)")
    ax.set_ylabel("batch (tokens)")
    ax.set_title("noise scale, measured and predicted critical batch vs loss")
    ax.legend(fontsize=7)
    cap = (
        "gns_b_simple = tr(Σ)/|G|² in tokens from the gradient-noise-scale probe, with Kaplan et al.'s law "
        "B_simple(L) through it (rows past 20% of each run); it is not the critical batch. " + cap_cbs
    )
    if an.laws[2].error:
        cap += f" B_simple(L) not fitted: {an.laws[2].error}."
    return Figure("gns", "Gradient noise scale and the critical batch size", png_bytes(fig), cap)


def _draw_cbs(ax, law: dict) -> str:
    """cbs_measured (batch sweeps: squares, branches: triangles, 90% intervals as bars; an open end, or a lower
    bound that is only the smallest batch measured, as an arrow) and cbs_predicted (the calibrated law with its
    band) from sweep_law.json; returns the caption."""
    measured = law.get("cbs_measured") or []
    for src, marker, color in (("batch_sweep", "s", "tab:green"), ("branches", "^", "tab:orange")):
        ms = [m for m in measured if m.get("source") == src]
        if not ms:
            continue
        x = np.array([m["loss"] for m in ms], dtype=float)
        v = np.array([float(m["value"]) for m in ms])
        lo = np.array([float(m["low"]) for m in ms])
        hi = np.array([float(m["high"]) for m in ms])
        top = np.where(np.isfinite(hi), hi, v * 4)  # open-ended: drawn to 4x with an arrow
        ax.errorbar(x, v, yerr=[v - np.clip(lo, v * 1e-3, v), top - v], fmt=marker, color=color, ms=5, capsize=2,
                    lw=1, label=f"cbs_measured ({src}), {len(ms)}")  # fmt: skip
        for xi, ti, hf in zip(x, top, np.isfinite(hi)):
            if not hf:
                ax.annotate(
                    "", xy=(xi, ti * 1.5), xytext=(xi, ti), arrowprops={"arrowstyle": "->", "color": color}
                )
        for xi, li, m in zip(x, lo, ms):  # a lower bound that is only the smallest batch measured: open below
            if m.get("low_is_reference"):
                ax.annotate(
                    "", xy=(xi, li / 1.5), xytext=(xi, li), arrowprops={"arrowstyle": "->", "color": color}
                )
    pred = law.get("cbs_predicted") or {}
    curve = pred.get("curve") or {}
    g = law.get("gns_b_simple_law") or {}
    if "B_star" in g and curve.get("loss"):
        x = np.asarray(curve["loss"], dtype=float)
        ax.plot(x, g["B_star"] / x ** (1.0 / g["alpha_B"]), "b:", lw=1.5,
                label="B_simple(L) over pooled windows (used by cbs_predicted)")  # fmt: skip
    if curve.get("loss"):
        x = np.asarray(curve["loss"], dtype=float)
        ax.plot(x, curve["value"], "r-", lw=1.5, label="cbs_predicted (calibrated noise scale)")
        ax.fill_between(x, curve["low"], curve["high"], color="red", alpha=0.12, lw=0, label="90% interval")
        runs = pred.get("runs") or {}
        if runs:
            ax.scatter([r["loss"] for r in runs.values()], [r["value"] for r in runs.values()], marker="x",
                       c="darkred", s=25, label="cbs_predicted at each run's (predicted) final loss")  # fmt: skip
    cap_scaling = _draw_cbs_scaling(ax, law.get("cbs_scaling") or {})
    cal = law.get("cbs_calibration") or {}
    if not measured:
        return "No measured critical batch yet (scaling-train cbs, a spec cbs block, or grid.batch_sizes)."
    if "error" in cal:
        return f"{len(measured)} measured critical batches; no calibration: {cal['error']}. {cap_scaling}"
    c = cal.get("coef") or []
    law_txt = (
        f"ratio = {np.exp(c[0]):.3g} (L / {cal['l_ref']:.3g})^{c[1]:.2f}" if cal.get("form") == "loss" and len(c) > 1
        else f"ratio = {np.exp(c[0]):.3g}" if c else "?"
    )  # fmt: skip
    return (
        f"cbs_measured: {len(measured)} critical batches measured directly (batch sweeps: B_noise of "
        "S(B) = S_min (1 + B_noise/B); branches: scaling-train cbs), 90% intervals"
        + (
            f" ({n_open} with a lower bound that is only the smallest batch measured: arrow down, not calibrated on)"
            if (n_open := sum(bool(m.get("low_is_reference")) for m in measured))
            else ""
        )
        + ". cbs_predicted = "
        f"ratio(L) x B_simple(L) (the noise scale's law over pooled windows of rows), the ratio measured / "
        f"B_simple(L) fitted on {cal.get('n_points')} "
        f"measurements ({', '.join(cal.get('sources', []))}): {law_txt}, log-sd {cal.get('sigma_log', 0):.2f}. "
        + cap_scaling
    )


def _draw_cbs_scaling(ax, block: dict) -> str:
    """sweep_law.json's cbs_scaling (the batch sweeps' law across sizes): a diamond with its 90% interval at
    each run's (predicted) final loss, the largest planned run ringed; returns its caption sentence."""
    if not block:
        return ""
    if "error" in block:
        return f"cbs_scaling (batch-sweep law across sizes) not fitted: {block['error']}."
    runs = [e for e in (block.get("runs") or {}).values() if "value" in e]
    if runs:
        x = np.array([e["loss"] for e in runs], dtype=float)
        v = np.array([e["value"] for e in runs], dtype=float)
        lo = np.array([e["low"] for e in runs], dtype=float)
        hi = np.array([e["high"] for e in runs], dtype=float)
        ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt="D", color="purple", ms=4, capsize=2, lw=1, alpha=0.8,
                    label=f"cbs_predicted by the batch-sweep law ({block.get('form')}), {len(runs)} runs")  # fmt: skip
    big = block.get("largest") or {}
    if "value" in big:
        ax.scatter([big["loss"]], [big["value"]], s=120, facecolors="none", edgecolors="purple", lw=1.5,
                   label=f"largest planned run (N={fmt_n(big['N'])})")  # fmt: skip
    ex = ", ".join(f"{k}^{v:.2f}" for k, v in (block.get("exponents") or {}).items())
    txt = (
        f"cbs_scaling (diamonds): the law of the batch sweeps across sizes, {block.get('law')} with {ex}, "
        f"chosen among {len(block.get('loso_rmse') or {})} forms by held-out error "
        f"(leave-one-size-out rmse of log B_crit {block.get('held_out_rmse_log', float('nan')):.3f}), "
        f"on {block.get('n_sweeps')} sweeps over {len(block.get('sizes') or [])} sizes, 90% intervals"
    )
    if "value" in big:
        txt += (
            f"; the largest planned run {big['run']} ({big.get('at')}, L = {big['loss']:.3g}): "
            f"{big['value_sequences']:.3g} sequences [{big['low_sequences']:.3g}, {big['high_sequences']:.3g}]"
        )
    elif big.get("error"):
        txt += f"; the largest planned run {big['run']}: {big['error']}"
    return txt + "."


# ----------------------------------------------------------------------------------- samples
def sample_loglik(sweep: SweepData, an: Analysis) -> Figure:
    runs = [r for r in sweep.runs if r.samples and r.N]
    if not runs:
        raise NoData("no per-sample records (no samples.jsonl or evals.jsonl records in any run folder)")
    plt = pyplot()
    # task -> N -> per-token sample log-likelihoods at each run's last recorded step of that task
    data: dict[str, dict[float, list[float]]] = {}
    for r in runs:
        tasks = {str(s.get("task", "samples")) for s in r.samples}
        for task in tasks:
            recs = [s for s in r.samples if str(s.get("task", "samples")) == task]
            last = max(int(s.get("step", 0)) for s in recs)
            for s in recs:
                if int(s.get("step", 0)) != last:
                    continue
                ll = float(s["loglik"]) if "loglik" in s else -float(s["nll_sum"])
                n = max(int(s.get("tokens") or 1), 1)
                if math.isfinite(ll):
                    data.setdefault(task, {}).setdefault(r.N, []).append(ll / n)
    if not data:
        raise NoData("per-sample records exist but none has a finite log-likelihood")
    tasks = sorted(data, key=lambda t: -sum(len(v) for v in data[t].values()))[:3]
    sizes = sorted({n for t in tasks for n in data[t]})
    col = size_colors(sizes)
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.2 * (len(tasks) + 1), 4.2), squeeze=False)
    axes = axes[0]
    for ax, task in zip(axes, tasks):
        ns = [n for n in sizes if data[task].get(n)]
        parts = ax.violinplot([data[task][n] for n in ns], positions=range(len(ns)), showmedians=True)
        for body, n in zip(parts["bodies"], ns):
            body.set_facecolor(col[n])
        ax.set_xticks(range(len(ns)), [fmt_n(n) for n in ns])
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("sample log-likelihood per token (nats)")
        ax.set_title(f"{task}: per-sample log-likelihood")
    ax = axes[-1]
    for n in sizes:
        v = np.sort(data[tasks[0]].get(n, []))
        if len(v):
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), color=col[n], label=fmt_n(n))
    ax.set_xlabel("sample log-likelihood per token (nats)")
    ax.set_ylabel("fraction of samples ≤ x")
    ax.set_title(f"{tasks[0]}: empirical CDF")
    ax.legend(title="N", fontsize=8)
    fig.tight_layout()
    counts = "; ".join(
        f"{t}: " + ", ".join(f"{fmt_n(n)} {len(v)}" for n, v in sorted(data[t].items())) for t in tasks
    )
    more = f" ({len(data) - len(tasks)} more task(s) not shown)" if len(data) > len(tasks) else ""
    cap = (
        "Per-sample (per-item) log-likelihood divided by its token count, at each run's last recorded step; "
        f"samples.jsonl and evals.jsonl records. Samples per size: {counts}{more}."
    )
    return Figure("samples", "Per-sample log-likelihood distributions per model size", png_bytes(fig), cap)


def token_nll_hist(sweep: SweepData, an: Analysis) -> Figure:
    """Fallback when there are no per-sample records: the token-NLL histogram of each size's last row."""
    plt = pyplot()
    by_n: dict[float, tuple[list[float], float, float]] = {}  # N -> (histogram, tokens seen, nll_max)
    for r in sweep.runs:
        rows = [x for x in r.rows if isinstance(x.get("tok_nll_hist"), list)]
        if not rows or not r.N or r.status in ("diverged", "broken"):
            continue
        nll_max = float(((r.config.get("metrics") or {}).get("nll_max")) or 16.0)
        tokens = float(r.tokens[-1])
        if r.N not in by_n or tokens > by_n[r.N][1]:
            by_n[r.N] = (rows[-1]["tok_nll_hist"], tokens, nll_max)
    if not by_n:
        raise NoData("no per-sample records and no tok_nll_hist in metrics.jsonl")
    col = size_colors(sorted(by_n))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for n in sorted(by_n):
        h, _, nll_max = by_n[n]
        w = nll_max / len(h)
        ax.step(np.arange(len(h)) * w, h, where="post", color=col[n], label=fmt_n(n))
    ax.set_xlabel("token NLL (nats)")
    ax.set_ylabel("fraction of tokens")
    ax.set_title("token-NLL distribution at each size's longest run, last logged row")
    ax.legend(title="N", fontsize=8)
    cap = "No per-sample records in the run folders; shown instead: the per-token NLL histogram from the fused loss."
    return Figure(
        "tokens", "Token NLL distribution per model size (no per-sample records)", png_bytes(fig), cap
    )


FIGURES = (loss_curves, prediction_history, isoflop, noise_scale, sample_loglik)
