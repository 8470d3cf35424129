"""theta's layout and starts (jaxlmm.theta): the method-of-moments start of large crossed fits."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm
import jaxlmm.synthetic
from jaxlmm.theta import MOMENT_RANGE, dims_of, moment_start, theta_start


def _design(formula, data, **kw):
    return jaxlmm.LinearMixedModel(formula, data, **kw).design


def _start(design):
    return moment_start(design, theta_start(dims_of(design.terms)))


def test_moment_start_recovers_known_components():
    """Simulated crossed data with known SDs (user 0.8, item 0.4, residual 1; an x slope term of SD
    0.3): the moment start is within 15% of sigma_m / sigma for each scalar term; the weights of a
    weighted fit are accounted for (rows of weight w have residual variance sigma^2 / w)."""
    rng = np.random.default_rng(7)
    n, nu, ni = 60_000, 600, 300
    u, i = rng.integers(nu, size=n), rng.integers(ni, size=n)
    x = rng.standard_normal(n)
    w = rng.choice([0.5, 1.0, 4.0], size=n)
    bu, bi, bx = 0.8 * rng.standard_normal(nu), 0.4 * rng.standard_normal(ni), 0.3 * rng.standard_normal(nu)
    mean = 2.0 + 0.5 * x + bu[u] + bi[i] + bx[u] * x
    frame = pd.DataFrame({"u": u, "i": i, "x": x, "w": w})
    frame["y"] = mean + rng.standard_normal(n)
    design = _design("y ~ x + (1 | u) + (1 | i) + (0 + x | u)", frame)
    want = {("u", "(Intercept)"): 0.8, ("i", "(Intercept)"): 0.4, ("u", "x"): 0.3}
    np.testing.assert_allclose(_start(design), [want[t.name, t.colnames[0]] for t in design.terms], rtol=0.15)
    frame["yw"] = mean + rng.standard_normal(n) / np.sqrt(w)
    start = _start(_design("yw ~ x + (1 | u) + (1 | i)", frame, weights="w"))
    np.testing.assert_allclose(start, [0.8, 0.4], rtol=0.15)


def test_moment_start_keeps_lme4s_start_where_it_has_nothing_to_say():
    """Vector terms keep lme4's start; a term without variance starts at the bottom of MOMENT_RANGE; a
    response the fixed effects fit exactly leaves lme4's start."""
    sleep = jaxlmm.datasets.load("sleepstudy")
    start = _start(_design("Reaction ~ Days + (Days | Subject) + (1 | Days)", sleep))
    assert start[:3].tolist() == [1.0, 0.0, 1.0] and MOMENT_RANGE[0] <= start[3] <= MOMENT_RANGE[1]
    flat = sleep.assign(Reaction=1.0 + 2.0 * sleep.Days)
    assert _start(_design("Reaction ~ Days + (1 | Subject)", flat)).tolist() == [1.0]
    noise = sleep.assign(Reaction=np.random.default_rng(1).standard_normal(len(sleep)))
    assert _start(_design("Reaction ~ 1 + (1 | Subject)", noise))[0] == pytest.approx(MOMENT_RANGE[0], abs=0.2)


def test_fits_with_bfgs_hessians_start_from_the_moments_and_reach_the_same_optimum():
    """Where Newton uses BFGS Hessians (here forced by bfgs_from=1 on a crossed synthetic model), the fit
    starts at the moment start: fewer iterations than from lme4's start, the same optimum (1e-10)."""
    data = jaxlmm.synthetic.crossed(20_000, (2000, 1000), seed=3, bounds=((1, 900), (1, 1900)))
    model = jaxlmm.LinearMixedModel("rating ~ 1 + (1 | user) + (1 | movie)", data,
                                    control=jaxlmm.Control(bfgs_from=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moments = model.fit(reml=False)
        lme4s = model.fit(reml=False, theta0=theta_start(model.term_dims))
    assert moments.converged and lme4s.converged
    assert moments.objective == pytest.approx(lme4s.objective, rel=1e-10)
    np.testing.assert_allclose(moments.theta, lme4s.theta, rtol=1e-4)
    assert moments.n_iter < lme4s.n_iter
