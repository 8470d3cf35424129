"""Invariances of the criterion and the fit, checked on random data with hypothesis.

For y = X beta + Z b + e (Bates et al., JSS 2015, eqs. 2-3), at any fixed theta:

- y -> y + c (with an intercept in X): the GLS residuals do not change, so
  neither does the profiled criterion; the fit moves the intercept by c only.
  The cross-products [Z X y]'[Z X y] lose about (c / sd(y))^2 eps of
  relative precision to cancellation (as lme4's), so c is drawn within a
  hundred standard deviations of y;
- y -> c y: r^2 -> c^2 r^2, so the REML criterion gains 2 (n - p) log|c| and
  the ML deviance 2 n log|c|; the fit scales beta by c, sigma and every SD
  by |c|, and leaves theta and the correlations alone;
- permuting the rows, renaming the levels of a grouping factor or reordering
  its categories permutes Z's rows or columns: the criterion is unchanged.

The data keep one shape (18 groups, lme4's sleepstudy layout), so the
compiled criterion and optimizer are shared with the reference fits; the
values vary, drawn from a seeded generator, and hypothesis varies the seed,
theta and the transformation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxlmm

G, R = 18, 3
N = G * R
LABELS = [f"s{i:02d}" for i in range(G)]
SLOPE = "y ~ x + (x | g)"
INTERCEPT = "y ~ x + (1 | g)"
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(0, 2**32 - 1)
thetas = st.tuples(st.floats(0.0, 3.0), st.floats(-2.0, 2.0), st.floats(0.0, 3.0))
factors = st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3)
shifts = st.floats(-100.0, 100.0)  # in standard deviations of y


def make_data(seed: int) -> pd.DataFrame:
    """18 groups of 3 rows, a predictor and a response with group intercepts and slopes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=N) * rng.uniform(0.5, 5.0)
    b = rng.normal(size=(G, 2)) * rng.uniform(0.0, 3.0, size=2)
    codes = np.repeat(np.arange(G), R)
    y = 10 + 2 * x + b[codes, 0] + b[codes, 1] * x + rng.normal(size=N) * rng.uniform(0.2, 3.0)
    g = pd.Categorical(np.array(LABELS)[codes], categories=LABELS)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def deviances(data, theta, formula=SLOPE):
    model = jaxlmm.LinearMixedModel(formula, data)
    th = np.asarray(theta)[: model.theta0.size]
    return model.deviance(th, reml=True), model.deviance(th, reml=False)


def quiet_fit(data, formula=INTERCEPT):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
        return jaxlmm.lmm(formula, data)


def close(a, b, rel=1e-9):
    np.testing.assert_allclose(a, b, rtol=rel, atol=rel * 10)


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, shifts)
def test_shifting_the_response_leaves_the_criterion_unchanged(seed, theta, c):
    d = make_data(seed)
    close(deviances(d.assign(y=d.y + c * d.y.std()), theta), deviances(d, theta))


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, factors)
def test_scaling_the_response_shifts_the_criterion_by_log_c(seed, theta, c):
    d = make_data(seed)
    reml, ml = deviances(d, theta)
    reml_c, ml_c = deviances(d.assign(y=d.y * c), theta)
    shift = 2 * np.log(abs(c))
    close([reml_c, ml_c], [reml + (N - 2) * shift, ml + N * shift])


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, st.permutations(range(N)))
def test_permuting_rows_leaves_the_criterion_unchanged(seed, theta, perm):
    d = make_data(seed)
    close(deviances(d.iloc[list(perm)], theta), deviances(d, theta))


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, st.permutations(range(G)), st.sampled_from(["", "grp_", "9", "Z"]))
def test_relabelling_levels_leaves_the_criterion_unchanged(seed, theta, perm, prefix):
    """New names in a new (sorted) order: a plain text column, R's factor() rule."""
    d = make_data(seed)
    names = {old: f"{prefix}{LABELS[j]}" for old, j in zip(LABELS, perm)}
    relabelled = d.assign(g=d.g.astype(str).map(names))
    close(deviances(relabelled, theta), deviances(d, theta))


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, st.permutations(LABELS))
def test_reordering_categories_leaves_the_criterion_unchanged(seed, theta, order):
    d = make_data(seed)
    reordered = d.assign(g=d.g.cat.reorder_categories(list(order)))
    close(deviances(reordered, theta), deviances(d, theta))


@settings(max_examples=60, **SETTINGS)
@given(seeds, shifts, factors)
def test_fit_under_shift_and_scale_of_the_response(seed, c, s):
    """y -> s y + c: intercept -> s b0 + c, slope -> s b1, sigma and SDs -> |s| ...; theta unchanged."""
    d = make_data(seed)
    c = c * abs(s) * d.y.std()
    ref = quiet_fit(d)
    fit = quiet_fit(d.assign(y=s * d.y + c))
    assert fit.converged and ref.converged
    # theta is fixed by the data only down to the criterion's rounding: a shift of up to 100 SDs
    # rounds the criterion at about 1e-13 relative, where a flat optimum leaves theta free by about
    # 1e-4 relative (seed 6272, c = 29, s = -1: 4e-5 apart, criteria 1.3e-11 apart). So: each fit's
    # theta is optimal for the other's data to the criterion's rounding, and close.
    f = ref.objective
    assert ref.criterion(fit.theta) - f <= 1e-10 * (1 + abs(f))
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-3, atol=1e-6)
    b0, b1 = ref.fixef.to_numpy()
    scale = abs(s) * ref.sigma
    np.testing.assert_allclose(fit.fixef.to_numpy(), [s * b0 + c, s * b1], rtol=1e-5, atol=1e-5 * (scale + abs(c)))
    assert fit.sigma == pytest.approx(abs(s) * ref.sigma, rel=1e-5)
    sd, sd_ref = fit.varcorr.sd_cor.to_numpy(), ref.varcorr.sd_cor.to_numpy()
    np.testing.assert_allclose(sd, abs(s) * sd_ref, rtol=1e-3, atol=1e-5 * scale)
    shift = 2 * (ref.nobs - 2) * np.log(abs(s))
    assert fit.objective == pytest.approx(ref.objective + shift, abs=1e-7 * (1 + abs(ref.objective)))
