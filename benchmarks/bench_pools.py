"""Data pools on the CPU (issue 18, part 3): does the pool law (scaling_train.laws.fit_data_pools), fitted on
single-pool runs, predict the mixed runs it never saw, and does it pick the observed best pool per budget?

Run the sweep first (about 8 min on 2 idle cores; ~25 min on the shared machine), then this script on its folder:

    scaling-train sweep configs/sweeps/pools-cpu.yaml
    PYTHONPATH=. python benchmarks/bench_pools.py runs/pools-cpu > benchmarks/results/pools.md

Points: every finished run folder (config.yaml: non-embedding N, total tokens D, data.mix, resolved.pools;
DONE: final validation loss, on the whole corpus's held-out text for every run). Fit set: the runs on one pool
(clean, noisy); test set: the half-half mixes. Baseline for the mixes: the mean of the clean and the noisy
run's observed losses at the same (N, D) (no law, but it sees the test points' neighbours).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from scaling_train.laws import fit_data_pools


def load_runs(sweep_dir: Path) -> list[dict]:
    out = []
    for d in sorted(sweep_dir.glob("N*")):
        if not (d / "DONE").is_file():
            continue
        done = json.loads((d / "DONE").read_text())
        conf = yaml.safe_load((d / "config.yaml").read_text())
        mix = conf["data"]["mix"]
        name = next(iter(mix)) if len(mix) == 1 else "+".join(f"{k}:{v:g}" for k, v in mix.items())
        out.append({
            "run": d.name, "N": float(conf["resolved"]["params"]["non_embedding"]),
            "D": float(conf["resolved"]["total_tokens"]), "mix": name, "loss": done["final_eval_loss"],
            "epochs": {k: v["epochs"] for k, v in conf["resolved"]["pools"].items()},
            "pools": {p["name"]: (p["tokens"] // conf["model"]["seq_len"]) * conf["model"]["seq_len"]
                      for p in conf["data"]["pools"]},
        })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--bootstrap", type=int, default=100)
    a = ap.parse_args()
    runs = [r for r in load_runs(a.sweep_dir) if r["loss"] is not None]
    if len(runs) < 12:
        sys.exit(f"{a.sweep_dir}: {len(runs)} finished runs; run the whole sweep first")
    pools = runs[0]["pools"]
    N, D, L = (np.array([r[k] for r in runs]) for k in ("N", "D", "loss"))
    mixes = [r["mix"] for r in runs]
    single = np.array(["+" not in m for m in mixes])
    fits = {}
    for floor in (True, False):
        fits[floor] = fit_data_pools(N[single], D[single], [m for m, s in zip(mixes, single) if s], L[single],
                                     pools=pools, reference="clean", floor=floor, n_bootstrap=a.bootstrap)  # fmt: skip
    fit, alt = fits[False], fits[True]  # default: no floors (with floors q and delta trade off here)
    pred = np.array([float(fit.predict(m, n, d)) for m, n, d in zip(mixes, N, D)])
    lo, hi = zip(*(fit.predict_interval(m, n, d) for m, n, d in zip(mixes, N, D)))
    lo, hi = np.array(lo, dtype=float), np.array(hi, dtype=float)
    obs = {(r["mix"], r["N"], r["D"]): r["loss"] for r in runs}
    print(
        "# Data pools on the CPU: the pool law fitted on single pools, tested on mixes and on the best pick\n"
    )
    print(f"Command: `scaling-train sweep configs/sweeps/pools-cpu.yaml && PYTHONPATH=. python "
          f"benchmarks/bench_pools.py {a.sweep_dir}`; machine: 2-core CPU (shared).\n")  # fmt: skip
    print(f"{len(runs)} finished runs; pools (unique tokens): {pools}; clean = plain text, noisy = 25% of every "
          f"sequence's tokens replaced by tokens drawn from the pool. Fitted on the {int(single.sum())} single-pool "
          f"runs, tested on the {int((~single).sum())} half-half mixes. Loss = final validation loss on the whole "
          "corpus's held-out split; error = predicted / observed - 1.\n")  # fmt: skip
    print("| run | N | D | mix | epochs per pool | observed | law [90% PI] | error | split |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i in np.lexsort((D, [m for m in mixes], N)):
        ep = ", ".join(f"{k} {v:.2f}" for k, v in runs[i]["epochs"].items())
        print(f"| {runs[i]['run']} | {N[i]:.3g} | {D[i]:.3g} | {mixes[i]} | {ep} | {L[i]:.4f} | {pred[i]:.4f} "
              f"[{lo[i]:.4f}, {hi[i]:.4f}] | {pred[i] / L[i] - 1:+.2%} | {'fit' if single[i] else 'test'} |")  # fmt: skip
    test = ~single
    e = pred[test] / L[test] - 1
    base = np.array([
        0.5 * (obs.get(("clean", n, d), np.nan) + obs.get(("noisy", n, d), np.nan))
        for n, d in zip(N[test], D[test])
    ])  # fmt: skip
    eb = base / L[test] - 1
    cover = np.mean((lo[test] <= L[test]) & (L[test] <= hi[test]))
    e_alt = np.array(
        [float(alt.predict(m, n, d)) for m, n, d in zip(np.array(mixes)[test], N[test], D[test])]
    )
    e_alt = e_alt / L[test] - 1
    print("\n| held-out mixes | MAE | bias | max abs | 90% PI coverage |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| pool law (default: no floors) | {np.mean(np.abs(e)):.2%} | {np.mean(e):+.2%} | {np.max(np.abs(e)):.2%} | {cover:.2f} |"
    )
    print(
        f"| pool law, floor=True | {np.mean(np.abs(e_alt)):.2%} | {np.mean(e_alt):+.2%} | {np.max(np.abs(e_alt)):.2%} | |"
    )
    print(f"| mean of the clean and noisy runs' observed losses | {np.nanmean(np.abs(eb)):.2%} | {np.nanmean(eb):+.2%} | "
          f"{np.nanmax(np.abs(eb)):.2%} | |")  # fmt: skip
    # the best pick at every (N, D) grid point: same N, same D, so the same compute for all three candidates
    cands = sorted(set(mixes), key=lambda m: (m.count("+"), m))
    print(
        "\n| N | D | observed losses ("
        + ", ".join(cands)
        + ") | observed best | law's best | law's pick costs |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    agree = agree_alt = total = 0
    regret = []
    for n in sorted(set(N)):
        for d in sorted(set(D[N == n])):
            have = {m: obs[(m, n, d)] for m in cands if (m, n, d) in obs}
            if len(have) < len(cands):
                continue
            seen = min(have, key=have.get)
            pick = fit.best(6 * n * d, cands, N=n).best
            agree += pick == seen
            agree_alt += alt.best(6 * n * d, cands, N=n).best == seen
            total += 1
            regret.append(have[pick] - have[seen])
            print(f"| {n:.3g} | {d:.3g} | {', '.join(f'{have[m]:.3f}' for m in cands)} | {seen} | {pick} | "
                  f"{have[pick] - have[seen]:+.3f} nats |")  # fmt: skip
    print(f"\nThe law picks the observed best of {len(cands)} choices at {agree} of {total} (N, D) points "
          f"(mean regret {np.mean(regret):.3f} nats; floor=True: {agree_alt} of {total}).\n")  # fmt: skip
    for n in sorted(set(N)):
        ds = sorted(set(D[N == n]))
        flip = [
            d
            for d in ds
            if ("noisy", n, d) in obs and obs[("noisy", n, d)] < obs.get(("clean", n, d), np.inf)
        ]
        print(f"- N = {n:.3g}, observed: noisy beats clean first at D = {flip[0]:.3g} tokens "
              f"({flip[0] / pools['clean']:.2f} clean epochs)." if flip else
              f"- N = {n:.3g}, observed: clean beats noisy at every budget (up to D = {ds[-1]:.3g}).")  # fmt: skip
        c = fit.crossover("clean", "noisy", lo=6 * n * 1e3, hi=6 * n * 1e8, N=n)
        cd = (
            f"D = {c / (6 * n):.3g} tokens ({c / (6 * n) / pools['clean']:.2f} clean epochs)" if c else "none"
        )
        print(
            f"- N = {n:.3g}, law: clean stops beating noisy at C = {c:.3g} FLOPs, {cd}."
            if c
            else f"- N = {n:.3g}, law: no crossover."
        )
    p = fit.pools
    print(f"\nFit (no floors): E={fit.E:.4g}, A={fit.A:.4g}, alpha={fit.alpha:.3g}, B={fit.B:.4g}, beta={fit.beta:.3g}; "
          f"noisy: utility q={p['noisy'].utility:.3g} {_ci(fit, 'utility[noisy]')}; clean half-life tau={p['clean'].half_life:.3g} epochs {_ci(fit, 'half_life[clean]')}; "
          f"noisy half-life {'fitted' if p['noisy'].identified else 'borrowed (never repeated past 1.5 epochs)'}. "
          f"floor=True: noisy q={alt.pools['noisy'].utility:.3g} {_ci(alt, 'utility[noisy]')}, floor "
          f"{alt.pools['noisy'].floor:+.3g} nats {_ci(alt, 'floor[noisy]')}, clean tau={alt.pools['clean'].half_life:.3g}.")  # fmt: skip


def _ci(fit, key: str) -> str:
    return f"[{fit.ci[key][0]:.3g}, {fit.ci[key][1]:.3g}]" if key in fit.ci else ""


if __name__ == "__main__":
    main()
