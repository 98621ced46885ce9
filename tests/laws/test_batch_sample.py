import numpy as np
import pytest

from scaling_train.laws import (
    GradientNoiseScale,
    fit_critical_batch,
    fit_downstream,
    fit_pass_until,
    fit_pass_until_from_loglik,
    fit_steps_to_target,
    sample_scores,
)


def test_gradient_noise_scale_on_known_covariance():
    """Per-sample gradients g_i = G + xi_i, Cov(xi) = Sigma known: B_simple = tr(Sigma)/|G|^2."""
    rng = np.random.default_rng(0)
    dim = 50
    G = rng.normal(0, 1, dim)
    scales = rng.uniform(0.5, 3.0, dim)  # diagonal Sigma
    trace_sigma, g2 = float(np.sum(scales**2)), float(G @ G)
    gns = GradientNoiseScale(decay=0.995)
    for _ in range(3000):
        b_small, b_big = 8, 64
        noise = rng.normal(0, 1, (b_big, dim)) * scales
        g_small = G + noise[:b_small].mean(0)
        g_big = G + noise.mean(0)
        gns.update(float(g_small @ g_small), float(g_big @ g_big), b_small, b_big)
    assert gns.g2 == pytest.approx(g2, rel=0.1)
    assert gns.trace_sigma == pytest.approx(trace_sigma, rel=0.1)
    assert gns.b_simple == pytest.approx(trace_sigma / g2, rel=0.1)


def test_gradient_noise_scale_bad_input():
    gns = GradientNoiseScale()
    assert np.isnan(gns.b_simple)
    with pytest.raises(ValueError, match="b_small=64, b_big=8 must satisfy"):
        gns.update(1.0, 1.0, 64, 8)
    with pytest.raises(ValueError, match="sq_norm_big=nan"):
        gns.update(1.0, float("nan"), 8, 64)
    with pytest.raises(ValueError, match=r"decay=1.0 must be in \[0.0, 1.0\)"):
        GradientNoiseScale(decay=1.0)


def test_fit_critical_batch_recovers_kaplan_law():
    rng = np.random.default_rng(1)
    L = np.linspace(2.5, 4.0, 12)
    B_star, alpha_B = 2e8, 0.21
    bc = B_star / L ** (1 / alpha_B) * np.exp(rng.normal(0, 0.05, 12))
    fit = fit_critical_batch(L, bc)
    assert fit.alpha_B == pytest.approx(alpha_B, rel=0.1)
    assert fit.predict(3.0) == pytest.approx(B_star / 3.0 ** (1 / alpha_B), rel=0.1)
    with pytest.raises(ValueError, match=r"critical_batches\[0\]=-1.0 must be > 0"):
        fit_critical_batch([3.0, 2.0], [-1.0, 5.0])
    with pytest.raises(ValueError, match="must be < 0"):
        fit_critical_batch([3.0, 2.0], [1e6, 5e5])


def test_steps_to_target_gives_critical_batch():
    rng = np.random.default_rng(2)
    B = np.array([32, 64, 128, 256, 512, 1024, 2048], float)
    S = 1000 * (1 + 300 / B) * np.exp(rng.normal(0, 0.02, len(B)))
    fit = fit_steps_to_target(B, S)
    assert fit.B_crit == pytest.approx(300, rel=0.1)
    assert fit.S_min == pytest.approx(1000, rel=0.05)
    assert fit.E_min == pytest.approx(fit.S_min * fit.B_noise)
    with pytest.raises(ValueError, match="2 distinct batch sizes"):
        fit_steps_to_target([64, 64], [10, 12])


def test_downstream_law():
    rng = np.random.default_rng(3)
    L = np.linspace(2.2, 4.0, 20)
    err = 0.75 - 3.0 * np.exp(-1.2 * L)
    fit = fit_downstream(L, np.clip(err + rng.normal(0, 0.003, 20), 0, 1))
    assert fit.gamma == pytest.approx(1.2, rel=0.15)
    assert fit.predict(2.5) == pytest.approx(0.75 - 3.0 * np.exp(-3.0), abs=0.01)
    assert fit.loss_for_error(fit.predict(3.0)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"err\[0\]=1.5 must be in \[0, 1\]"):
        fit_downstream([3.0, 2.0, 1.0], [1.5, 0.5, 0.2])


def test_sample_scores_multiple_choice_and_exact_match():
    ll = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    s = sample_scores(ll, correct=np.array([0, 1]))
    np.testing.assert_allclose(s.p_correct, [0.7, 0.3])
    assert s.greedy_accuracy == 0.5 and s.expected_accuracy == pytest.approx(0.5)
    e = sample_scores(np.log([0.9, 0.2]))
    assert e.greedy_accuracy == 0.5 and e.expected_accuracy == pytest.approx(0.55)
    with pytest.raises(ValueError, match="must be finite and <= 0"):
        sample_scores(np.array([0.5]))
    with pytest.raises(ValueError, match=r"entries in \[0, 2\]"):
        sample_scores(ll, correct=np.array([0, 3]))


def test_pass_until_recovery_from_counts_and_loglik_chain():
    rng = np.random.default_rng(4)
    N = np.array([1e7, 3e7, 1e8, 3e8, 1e9, 3e9])
    c, alpha = np.log(200.0), 0.3
    p = np.exp(-np.exp(c) * N**-alpha)
    attempts = np.full(6, 20000)
    fit = fit_pass_until(N, passes=rng.binomial(attempts, p), attempts=attempts)
    assert fit.alpha == pytest.approx(alpha, abs=0.05)
    np.testing.assert_allclose(fit.predict(N), p, rtol=0.3, atol=1e-4)
    # chain: each model's per-sample answer log-likelihoods with mean p matching the law
    logliks = [np.log(np.clip(rng.beta(20 * pi, 20 * (1 - pi), 4000), 1e-300, 1)) for pi in p]
    chain = fit_pass_until_from_loglik(N, logliks)
    assert chain.alpha == pytest.approx(alpha, abs=0.05)
    with pytest.raises(ValueError, match=r"pass_rates\[0\]=1.0 must be in \(0, 1\)"):
        fit_pass_until(N[:2], pass_rates=[1.0, 0.5])
