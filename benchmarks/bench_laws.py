"""Benchmark of scaling_train.laws: fit latencies and final-loss prediction errors on real curves.

Run:  . .venv/bin/activate && PYTHONPATH=. python benchmarks/bench_laws.py [--full-grid] > benchmarks/results/laws.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: tests.fixtures, tests.laws
from scaling_train.laws import Curve, fit_chinchilla, predict_final_loss  # noqa: E402
from tests.fixtures.laws import chinchilla_synthetic  # noqa: E402
from tests.fixtures.realdata import (  # noqa: E402
    MP_REFERENCES,
    MP_TARGETS,
    cooldown_curve,
    gemstone_cooldowns,
    gemstone_hot,
    multipower_curve,
)


def timed(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full-grid", action="store_true", help="also run all 4500 starts (slow, ~1-2 min)")
    args = ap.parse_args()
    print("# scaling_train.laws\n")
    print(
        f"Command: `PYTHONPATH=. python benchmarks/bench_laws.py{' --full-grid' if args.full_grid else ''}`; "
        "machine: 2-core CPU, numpy/scipy.\n"
    )
    print("## fit_chinchilla (245 synthetic points, Hoffmann grid of 4500 inits)\n")
    N, D, L = chinchilla_synthetic()
    fit, dt = timed(lambda: fit_chinchilla(N, D, L), 3)
    print(
        f"- pruned grid ({fit.n_starts} BFGS starts): best of 3 = {dt:.2f} s, objective {fit.objective:.10g}"
    )
    if args.full_grid:
        full, dtf = timed(lambda: fit_chinchilla(N, D, L, n_best=None), 1)
        same = abs(full.objective - fit.objective) <= 1e-9 * full.objective
        print(
            f"- full grid (4500 starts): {dtf:.1f} s, objective {full.objective:.10g}; pruned == full: {same}"
        )
        print(f"  (alpha {fit.alpha:.6f} vs {full.alpha:.6f}, beta {fit.beta:.6f} vs {full.beta:.6f})")

    print("\n## predict_final_loss on multipower_25m\n")
    print(
        f"References: {', '.join(MP_REFERENCES)}; targets: {', '.join(MP_TARGETS)}. Relative error of the predicted"
    )
    print("last-step loss; coverage = fraction of targets inside the 90% interval.\n")
    print("| observed | references | mean abs rel err | max abs rel err | 90% coverage | mean ms/call |")
    print("| --- | --- | --- | --- | --- | --- |")
    refs = [multipower_curve(n) for n in MP_REFERENCES]
    detail = []
    for frac in (0.25, 0.5):
        for use in (True, False):
            errs, cov, ms = [], 0, []
            for name in MP_TARGETS:
                c = multipower_curve(name)
                predict_final_loss(c.truncated(frac), refs if use else ())  # warm the reference cache
                p, dt = timed(
                    lambda c=c, use=use, frac=frac: predict_final_loss(
                        c.truncated(frac), refs if use else ()
                    ),
                    3,
                )
                e = p.loss / c.losses[-1] - 1
                errs.append(abs(e))
                cov += p.low <= c.losses[-1] <= p.high
                ms.append(dt * 1e3)
                detail.append((frac, use, name, p, c.losses[-1], e))
            print(f"| first {frac:.0%} | {'yes' if use else 'no'} | {100 * np.mean(errs):.3f}% | {100 * np.max(errs):.3f}% "
                  f"| {cov}/{len(MP_TARGETS)} | {np.mean(ms):.1f} |")  # fmt: skip
    print("\n<details><summary>per target</summary>\n")
    print("| observed | refs | target | predicted [90% interval] | true | rel err |")
    print("| --- | --- | --- | --- | --- | --- |")
    for frac, use, name, p, true, e in detail:
        print(
            f"| {frac:.0%} | {'yes' if use else 'no'} | {name} | {p.loss:.4f} [{p.low:.4f}, {p.high:.4f}] | {true:.4f} | {100 * e:+.2f}% |"
        )
    print("\n</details>\n")

    print("## predict_final_loss on Gemstone cooldowns\n")
    print(
        "Target: a run's constant-LR curve up to the cooldown start, schedule = constant then linear decay to 0"
    )
    print(
        "over the cooldown (assumed shape), predict the loss after the cooldown (`cool_end`). With references ="
    )
    print("up to 3 earlier cooldowns of the same model (their end loss observed); targets without an earlier")
    print("cooldown are skipped in that row.\n")
    print("| references | n | mean abs rel err | mean rel err (bias) | 90% coverage | mean ms/call |")
    print("| --- | --- | --- | --- | --- | --- |")
    cds, hot = gemstone_cooldowns(), gemstone_hot()
    for use in (True, False):
        errs, cov, ms = [], 0, []
        for cd in cds:
            refs_g = [
                cooldown_curve(c, hot, observed_end=True)
                for c in cds
                if c.run == cd.run and c.end_step < cd.begin_step
            ][-3:]
            if use and not refs_g:
                continue
            t0 = time.perf_counter()
            p = predict_final_loss(cooldown_curve(cd, hot, observed_end=False), refs_g if use else ())
            ms.append((time.perf_counter() - t0) * 1e3)
            errs.append(p.loss / cd.loss_end - 1)
            cov += p.low <= cd.loss_end <= p.high
        e = np.array(errs)
        print(
            f"| {'yes' if use else 'no'} | {len(e)} | {100 * np.abs(e).mean():.3f}% | {100 * e.mean():+.3f}% | {cov / len(e):.1%} | {np.mean(ms):.1f} |"
        )

    print("\n## predict_final_loss latency, 500-point curve (T = 50,000)\n")
    lr = np.r_[np.linspace(0, 1, 300)[1:], 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.linspace(0, 1, 49_701)))]
    steps = np.linspace(300, 25_000, 500).round()
    area = np.cumsum(lr)[steps.astype(int) - 1]
    rng = np.random.default_rng(1)
    y = 3.0 + 0.9 * area**-0.45 + rng.normal(0, 0.01, 500)
    _, dt = timed(lambda: predict_final_loss(Curve(steps, y, lr)), 10)
    print(f"- no references, best of 10: {dt * 1e3:.1f} ms per call")
    # 5 finished references of other sizes (500 points each) with n_params / tokens_per_step: all candidates
    full = np.linspace(300, 50_000, 500).round()
    af = np.cumsum(lr)[full.astype(int) - 1]
    refs = [
        Curve(full, 2.8 + 0.2 * k + 0.9 * af**-0.45 + rng.normal(0, 0.01, 500), lr, f"r{k}",
              n_params=1e8 / 2**k, tokens_per_step=65536)
        for k in range(5)
    ]  # fmt: skip
    tgt = Curve(steps, y, lr, "t", n_params=1e8, tokens_per_step=65536)
    p, dt = timed(lambda: predict_final_loss(tgt, refs), 10)
    print(f"- 5 references (modes {p.mode}), best of 10: {dt * 1e3:.1f} ms per call")
    _, dt = timed(lambda: predict_final_loss(tgt, refs, curve_points=32), 10)
    print(f"- the same with the remaining curve (32 points), best of 10: {dt * 1e3:.1f} ms per call")
    print("\nPer-group accuracy, bias and coverage on the shared real data: benchmarks/results/prediction.md")


if __name__ == "__main__":
    main()
