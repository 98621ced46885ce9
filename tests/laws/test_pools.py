"""fit_data_pools (issue 18, part 3): recovery on synthetic pools with known truth, the crossover compute,
bootstrap intervals, input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaling_train.laws import DataPoolsFit, PoolParams, fit_data_pools
from scaling_train.laws.pools import half_life_worth

U_CLEAN, U_NOISY = 5e8, 2e10
MIX = "clean:0.5+noisy:0.5"


def truth(*, floor: float = 0.05) -> DataPoolsFit:
    """Chinchilla-like base law; a small clean pool (half-life 1.5 epochs) and a 40x larger noisy one worth
    0.4 clean tokens per token with a 0.05-nat floor."""
    pools = {
        "clean": PoolParams(U_CLEAN, 1.0, 1.5, 0.0, 0.0, True),
        "noisy": PoolParams(U_NOISY, 0.4, 3.0, floor, 0.0, False),
    }
    return DataPoolsFit(1.7, 400.0, 0.34, 410.0, 0.28, "clean", pools, 0.0, 0)


def runs(law: DataPoolsFit, *, sd: float = 0.005, seed: int = 0):
    """4 sizes x 6 budgets (0.5..16 clean epochs) x {clean, noisy, half-half}, multiplicative noise sd."""
    grid = [
        (n, d, m)
        for n in (1e7, 3e7, 1e8, 3e8)
        for d in (2.5e8, 5e8, 1e9, 2e9, 4e9, 8e9)
        for m in ("clean", "noisy", MIX)
    ]
    N, D = np.array([g[0] for g in grid]), np.array([g[1] for g in grid])
    M = [g[2] for g in grid]
    L = np.array([float(law.predict(m, n, d)) for n, d, m in grid])
    return N, D, M, L * np.exp(np.random.default_rng(seed).normal(0.0, sd, len(L)))


def test_half_life_worth_is_fresh_then_halves_every_half_life():
    assert half_life_worth(0.5, 2.0) == pytest.approx(0.5)
    assert half_life_worth(1.0, 2.0) == pytest.approx(1.0)
    # the second pass is worth 2**(-x / tau) per epoch: integral from 0 to 1 of that at tau=1 -> 1/(2 ln 2)
    assert half_life_worth(2.0, 1.0) == pytest.approx(1.0 + 0.5 / math.log(2.0))
    assert half_life_worth(1e6, 3.0) == pytest.approx(1.0 + 3.0 / math.log(2.0))  # saturates at 1 + tau/ln2


def test_recovers_utility_half_life_floor_and_predicts_held_out_mixes():
    law = truth()
    N, D, M, L = runs(law, sd=0.002)  # at sd 0.5% the half-life scatters 1.4..1.9 over seeds
    single = np.array([m != MIX for m in M])
    fit = fit_data_pools(N[single], D[single], [m for m, s in zip(M, single) if s], L[single],
                         pools={"clean": U_CLEAN, "noisy": U_NOISY}, floor=True)  # fmt: skip
    assert fit.reference == "clean" and fit.pools["clean"].utility == 1.0 and fit.pools["clean"].floor == 0.0
    assert fit.pools["noisy"].utility == pytest.approx(0.4, rel=0.15)
    assert fit.pools["clean"].half_life == pytest.approx(1.5, rel=0.2)
    assert fit.pools["noisy"].floor == pytest.approx(0.05, abs=0.05)
    assert fit.pools["clean"].identified and not fit.pools["noisy"].identified  # noisy never past 0.4 epochs
    assert fit.pools["noisy"].half_life == fit.pools["clean"].half_life  # borrowed
    # the mixes were never fitted: predicted from the pools' parameters alone
    pred = np.array([float(fit.predict(m, n, d)) for n, d, m in zip(N, D, M)])
    err = np.abs(pred[~single] / L[~single] - 1.0)
    assert err.mean() < 0.01 and err.max() < 0.025


def test_best_pool_changes_with_compute_at_the_true_crossover():
    law = truth()
    N, D, M, L = runs(law)
    fit = fit_data_pools(N, D, M, L, pools={"clean": U_CLEAN, "noisy": U_NOISY}, floor=True)
    c_true = law.crossover("clean", "noisy", lo=1e15, hi=1e22)
    c_fit = fit.crossover("clean", "noisy", lo=1e15, hi=1e22)
    assert c_true is not None and c_fit is not None and 1 / 1.5 < c_fit / c_true < 1.5
    for c in (c_true / 10, c_true * 10):
        choice = fit.best(c, ["clean", "noisy", MIX])
        assert choice.best == law.best(c, ["clean", "noisy", MIX]).best
        assert set(choice.loss) == {"clean", "noisy", MIX} and choice.N[choice.best] > 0
    assert fit.best(c_true / 10).best == "clean" and fit.best(c_true * 10).best == "noisy"
    # at a fixed size too: D = C / (6 N)
    many = fit.best([1e16, 1e21], N=1e8)
    assert [c.best for c in many] == ["clean", "noisy"] and many[0].D["clean"] == pytest.approx(1e16 / 6e8)
    # a held-out mix at its own optimum: within 1% of the truth
    n, d, loss = fit.optimal(MIX, 1e19)
    assert loss == pytest.approx(float(law.predict(MIX, n, d)), rel=0.01) and n * d * 6 == pytest.approx(1e19)


def test_no_floor_fit_and_bootstrap_intervals_cover_the_truth():
    law = truth(floor=0.0)
    N, D, M, L = runs(law, seed=1)
    fit = fit_data_pools(N, D, M, L, pools={"clean": U_CLEAN, "noisy": U_NOISY}, n_bootstrap=30)  # no floors
    assert fit.pools["noisy"].floor == 0.0 and "floor[noisy]" not in fit.ci
    lo, hi = fit.ci["utility[noisy]"]
    assert lo <= 0.4 <= hi and hi / lo < 1.5
    lo, hi = fit.ci["half_life[clean]"]
    assert lo <= 1.5 <= hi
    plo, phi = fit.predict_interval(MIX, [1e7, 3e8], [2.5e8, 8e9])
    true = law.predict(MIX, np.array([1e7, 3e8]), np.array([2.5e8, 8e9]))
    assert np.all(plo <= true) and np.all(true <= phi) and np.all(phi / plo < 1.1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"mixes": ["clean", "dirty"]}, r"mixes\[1\]='dirty': pool\(s\) \['dirty'\] not in pools \['clean', 'noisy'\]"),
        ({"mixes": ["clean", "clean:0"]}, r"mixes\[1\]='clean:0': .* every weight finite and > 0"),
        ({"pools": {"clean": 0.0, "noisy": 1.0}}, r"pools=\{'clean': 0.0\}: every pool's unique tokens must be finite and > 0"),
        ({"reference": "other"}, r"reference='other' must be a pool some run trains on; pools used: \['clean', 'noisy'\]"),
        ({"L": [1.0, -1.0]}, r"L\[1\]=-1.0 must be > 0"),
        ({"N": [1e7]}, r"lengths differ"),
        ({}, r"2 runs for 6 parameters \(E, A, alpha, B, beta, utility\[noisy\]\); give more runs"),
        ({"floor": True}, r"2 runs for 7 parameters \(E, A, alpha, B, beta, utility\[noisy\], floor\[noisy\]\)"),
    ],
)  # fmt: skip
def test_input_errors_name_the_argument_and_value(kw, match):
    args = {"N": [1e7, 1e7], "D": [1e8, 1e8], "mixes": ["clean", "noisy"], "L": [3.0, 3.1]}
    args.update({k: v for k, v in kw.items() if k in args})
    opts = {"pools": {"clean": U_CLEAN, "noisy": U_NOISY}, **{k: v for k, v in kw.items() if k not in args}}
    with pytest.raises(ValueError, match=match):
        fit_data_pools(args["N"], args["D"], args["mixes"], args["L"], **opts)


def test_predict_names_unfitted_pools():
    with pytest.raises(
        ValueError, match=r"pool\(s\) \['web'\] were not fitted; fitted pools: \['clean', 'noisy'\]"
    ):
        truth().predict("clean:0.5+web:0.5", 1e8, 1e9)


@pytest.mark.slow
def test_end_to_end_tiny_runs_on_pools_of_the_builtin_corpus(tmp_path):
    """12 tiny runs (0.2M params): a clean pool of 1e4 tokens, a noisy one of 1.6e5 tokens with half of every
    sequence's tokens shuffled in, and their half-half mix, at 1..8 clean epochs. The noise costs at one epoch;
    the law fitted on the 8 single-pool runs predicts the 4 mixed runs and picks the observed best pool at the
    smallest and the largest budget."""
    import yaml

    from scaling_train.train import train
    from tests.fixtures.runs import tiny_config

    pools = "[{name: clean, tokens: 10240}, {name: noisy, tokens: 163840, noise: 0.5}]"
    rows = []
    for steps in (20, 40, 80, 160):  # x 8 x 64 tokens: D = 1e4 .. 8.2e4
        for mix in ("clean", "noisy", MIX):
            d = tmp_path / f"{mix}-{steps}"
            cfg = tiny_config(d, **{"data.pools": pools, "data.mix": mix, "train.max_steps": steps,
                                    "train.eval_every": 0, "train.eval_batches": 8, "train.ckpt_every": 0,
                                    "train.log_every": 20})  # fmt: skip
            res = train(cfg, log=lambda s: None)
            conf = yaml.safe_load((d / "config.yaml").read_text())
            rows.append(
                (mix, float(conf["resolved"]["params"]["non_embedding"]), steps * 512, res.final_eval_loss)
            )
    obs = {(m, D): loss for m, _, D, loss in rows}
    assert obs[("clean", 10240)] < obs[("noisy", 10240)]  # fresh clean text beats half-shuffled text
    N = np.array([r[1] for r in rows])
    D = np.array([float(r[2]) for r in rows])
    L = np.array([r[3] for r in rows])
    mixes = [r[0] for r in rows]
    single = np.array([m != MIX for m in mixes])
    fit = fit_data_pools(N[single], D[single], [m for m, s in zip(mixes, single) if s], L[single],
                         pools={"clean": 10240, "noisy": 163840})  # fmt: skip
    pred = np.array([float(fit.predict(m, n, d)) for m, n, d in zip(mixes, N, D)])
    err = pred / L - 1.0
    assert np.abs(err[single]).mean() < 0.02, err
    assert np.abs(err[~single]).mean() < 0.04, err  # mixes never fitted
    for D_ in (10240, 81920):
        seen = min(("clean", "noisy"), key=lambda m: obs[(m, D_)])
        assert fit.best(6 * N[0] * D_, ["clean", "noisy"], N=N[0]).best == seen
