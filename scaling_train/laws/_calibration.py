"""Interval-calibration constants of ``predict_final_loss`` -- GENERATED, do not edit by hand.

Written by ``PYTHONPATH=. python benchmarks/calibrate_laws.py`` (procedure in its docstring) from the
CALIBRATION split only: Gemstone cooldowns of the 10 runs with an even index in the sorted run names
(tests/data/laws/gemstone) and the three multipower_25m reference runs cosine_24000, constant_24000,
wsdcon_9 observed for 25% / 50% (tests/data/laws/multipower_25m). Held-out coverage (Gemstone odd-index
runs, the six multipower_25m target runs) is reported in benchmarks/results/laws.md.

Calibration cases: {'no_refs': 105, 'with_refs': 95}.
"""

# no-reference prior mean of the annealing amplitude B (fraction of the loss level): empirical Bayes
NO_REF_B_REL = 0.0434105
# (its sd keeps the a-priori ratio b_rel_sd / b_rel = 0.02 / 0.035 of the weak prior: it sets how much
# the target's own points can move B, not the interval)
# no-reference prior mean of log C (the annealing-response rate): empirical Bayes
NO_REF_LOG_C = -4.23663
# per mode: s0, s1, r (Gaussian ML), q_lo, q_hi (split-conformal 5% / 95% quantiles of e / u)
INTERVAL = {
    "no_refs": {"s0": 8.21344e-10, "s1": 0.00445163, "r": 0.101555, "q_lo": -1.85261, "q_hi": 1.8417},
    "with_refs": {"s0": 0.00168043, "s1": 0.00492605, "r": 0, "q_lo": -1.54613, "q_hi": 1.82594},
}
