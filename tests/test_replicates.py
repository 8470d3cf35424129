"""Simulated responses and batched refits (jaxlmm.replicates): the model's moments, replicates redone."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlmm.replicates import fit_params, rows_of, simulate
from models import get_fit
from oracle import DYE1


def test_simulation_matches_the_model_moments():
    """Mean and covariance of y* over many draws: X beta and sigma^2 (Z Lambda Lambda'Z' + I)."""
    fit = get_fit(DYE1, "dyestuff")
    keys = jax.random.split(jax.random.key(0), 20000)
    ys = np.asarray(jax.vmap(simulate, in_axes=(0, None, None))(keys, rows_of(fit.design), fit_params(fit)))
    sb2 = (fit.sigma * fit.theta[0]) ** 2
    assert ys.mean() == pytest.approx(fit.fixef.iloc[0], abs=4 * np.sqrt((sb2 + fit.sigma**2) / 20000))
    codes = fit.design.terms[0].codes
    same = codes[0] == codes[1]  # rows 0 and 1 share a batch
    cov01 = np.cov(ys[:, 0], ys[:, 1])
    assert same
    assert cov01[0, 0] == pytest.approx(sb2 + fit.sigma**2, rel=0.05)
    assert cov01[0, 1] == pytest.approx(sb2, rel=0.1)


def test_bootstrap_redoes_replicates_that_did_not_converge():
    """The batched pass's replicates that failed the checks are finished one by one (replicates._first_pass_restarts)."""
    from jaxlmm.replicates import Refit, _first_pass_restarts

    theta = np.array([[0.5, 0.2], [0.0, 1.0], [0.7, 0.3], [0.4, 0.4]])
    res = Refit(
        objective=np.zeros(4), theta=theta, beta=np.zeros((4, 1)), sigma=np.ones(4),
        converged=np.array([True, False, False, True]), n_iter=np.array([3, 4, 8, 2]),
        stuck=np.array([[False, False], [True, False], [False, False], [False, False]]),
    )
    idx, start = _first_pass_restarts(res, 8, 0.1)
    assert idx.tolist() == [1, 2]  # a saddle on the bound; out of iterations
    assert start[1].tolist() == [0.1, 1.0] and start[2].tolist() == theta[2].tolist()
    res = res._replace(converged=np.array([True, False, True, False]), n_iter=np.array([3, 4, 2, 2]),
                       stuck=np.zeros((4, 2), dtype=bool))
    idx, _ = _first_pass_restarts(res, 8, 0.1)
    assert idx.tolist() == [1, 3]  # a failed line search or negative curvature away from the bound
