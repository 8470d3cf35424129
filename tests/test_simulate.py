"""Simulated responses (jaxlmm.simulate) against a dense oracle; prior weights."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxlmm
from models import get_fit, weighted_fit
from oracle import SLOPE


def test_simulate_dense_oracle():
    """Sleepstudy: the draws equal X beta + Z (sigma u T') + sigma eps with dense Z and the same keys."""
    fit = get_fit(SLOPE, "sleepstudy")
    ys = fit.simulate(3, seed=7)
    assert ys.shape == (3, fit.nobs)
    d = fit.design
    t = d.terms[0]
    T = np.array([[fit.theta[0], 0.0], [fit.theta[1], fit.theta[2]]])
    Z = np.zeros((fit.nobs, t.nlevels * 2))
    for r, c in enumerate(t.codes):
        Z[r, 2 * c : 2 * c + 2] = t.X[r]
    for i, key in enumerate(jax.random.split(jax.random.key(7), 3)):
        k_eps, k_u = jax.random.split(key, 2)
        eps = np.asarray(jax.random.normal(k_eps, (fit.nobs,)))
        u = np.asarray(jax.random.normal(k_u, (t.nlevels, 2)))
        y = d.X @ fit.fixef.to_numpy() + Z @ (fit.sigma * u @ T.T).ravel() + fit.sigma * eps
        np.testing.assert_allclose(ys[i], y, rtol=1e-10)
    with pytest.raises(jaxlmm.JaxLMMError, match="positive"):
        fit.simulate(0)


def test_simulated_residual_variance_scales_as_one_over_w():
    """y_i - y_j of two rows of one subject (random intercept): variance sigma^2 (1/w_i + 1/w_j)."""
    fit = weighted_fit("intercept", "REML")
    ys = fit.simulate(4000, seed=5)
    w = fit.design.weights
    d = ys[:, 0::2] - ys[:, 1::2]  # rows 2k and 2k+1: the same subject (10 rows each)
    codes = fit.design.terms[0].codes
    assert np.array_equal(codes[0::2], codes[1::2])
    ratio = d.var(axis=0) / (fit.sigma**2 * (1 / w[0::2] + 1 / w[1::2]))
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)  # 90 pairs, each with SD ~0.022
    assert np.all(np.abs(ratio - 1) < 0.12)


@pytest.mark.parametrize("seed", [0, 7, 2**32 + 5, 2**63 - 1])
def test_replicate_keys_are_the_split_keys(seed):
    """The keys compiled in one program (replicate_keys) are jax.random.split(key(seed), n) bit for bit,
    and a large seed's simulated responses are the draws from those keys."""
    from jaxlmm._config import on_device
    from jaxlmm.replicates import replicate_keys

    for n in (1, 5):
        got = np.asarray(replicate_keys(on_device(np.int64(seed)), n))
        want = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed), n)))
        assert got.dtype == want.dtype and np.array_equal(got, want)
    fit = get_fit(SLOPE, "sleepstudy")
    ys = fit.simulate(2, seed=seed)
    from jaxlmm.replicates import fit_params, rows_of, simulate

    rows, params = rows_of(fit.design), fit_params(fit)
    for i, key in enumerate(jax.random.split(jax.random.key(seed), 2)):
        np.testing.assert_allclose(ys[i], np.asarray(simulate(key, rows, params)), rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_simulate_given_the_fitted_random_effects(weighted):
    """use_u (lme4's use.u = TRUE): fitted + sigma eps / sqrt(w), eps the residual draw of the same
    seed's unconditional responses (the first sub-key of each replicate's key)."""
    fit = weighted_fit("slope", "REML") if weighted else get_fit(SLOPE, "sleepstudy")
    ys = fit.simulate(4, seed=11, use_u=True)
    assert ys.shape == (4, fit.nobs) and ys.seed == 11
    w = fit.design.prior_weights
    n_sub = len(fit.design.terms) + 1
    for i, key in enumerate(jax.random.split(jax.random.key(11), 4)):
        eps = np.asarray(jax.random.normal(jax.random.split(key, n_sub)[0], (fit.nobs,)))
        np.testing.assert_allclose(ys[i], fit.fitted + fit.sigma * eps / np.sqrt(w), rtol=1e-12)
    # many draws: the standardized residuals have mean 0 and SD 1
    if not weighted:
        many = fit.simulate(400, seed=3, use_u=True)
        z = (many - fit.fitted) / fit.sigma
        assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.std() - 1) < 4 / np.sqrt(2 * z.size)
    with pytest.raises(jaxlmm.JaxLMMError, match="use_u"):
        fit.simulate(2, use_u="yes")
