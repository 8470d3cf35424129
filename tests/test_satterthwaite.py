"""Satterthwaite's degrees of freedom and F tests (jaxlmm.satterthwaite) against lmerTest and dense oracles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import jax
import jax.numpy as jnp

import jaxlmm
from jaxlmm.objective import deviance
from jaxlmm.satterthwaite import _derivatives, _from_profiled_hessian, satterthwaite_df
from models import get_fit, get_model, weighted_fit
from oracle import DYE, SLOPE, WEIGHTS, load_fit_reference

SATT_CASES = {
    "sleepstudy_slope": "sleepstudy",
    "dyestuff": "dyestuff",
    "dyestuff2_singular": "dyestuff2",
}
CASES = WEIGHTS["cases"]  # the weighted fits of tests/reference/weights.R


def _ref_vec(v):
    return np.array([np.nan if x == "NA" else x for x in np.atleast_1d(v)], dtype=np.float64)


@pytest.mark.parametrize("case", list(SATT_CASES))
def test_satterthwaite_df_matches_lmertest(case):
    ref = load_fit_reference(case)
    fit = get_fit(ref["formula"], SATT_CASES[case])
    df = satterthwaite_df(fit)
    # largest relative difference over all reference cases: 9e-5 (penicillin, not run here)
    np.testing.assert_allclose(df, _ref_vec(ref["REML"]["satterthwaite_df"]), rtol=1e-3)
    table = fit.coef_table()
    np.testing.assert_allclose(table["p"], _ref_vec(ref["REML"]["satterthwaite_p"]), rtol=5e-3)


def _dense_reml(y, X, Z, tau, sigma):
    """-2 REML log-likelihood from V = sigma^2 I + tau^2 Z Z' (the lecture notes' form)."""
    n, p = X.shape
    V = sigma**2 * np.eye(n) + tau**2 * Z @ Z.T
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    b = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ b
    return (
        np.linalg.slogdet(V)[1] + np.linalg.slogdet(XtViX)[1] + r @ Vi @ r + (n - p) * np.log(2 * np.pi)
    )


def test_satterthwaite_df_dense_finite_differences():
    """Dyestuff: df from a dense V, numerical derivatives in (tau, sigma) (parameterization-free)."""
    fit = get_fit(DYE, "dyestuff")
    data = jaxlmm.datasets.load("dyestuff")
    y = data.Yield.to_numpy(dtype=float)
    X = np.ones((len(y), 1))
    Z = pd.get_dummies(data.Batch).to_numpy(dtype=float)
    x0 = np.array([fit.sigma * fit.theta[0], fit.sigma])

    def var_mean(x):
        V = x[1] ** 2 * np.eye(len(y)) + x[0] ** 2 * Z @ Z.T
        return 1.0 / (X.T @ np.linalg.solve(V, X))[0, 0]

    h = 1e-3 * x0
    g = np.array([(var_mean(x0 + h[i] * e) - var_mean(x0 - h[i] * e)) / (2 * h[i]) for i, e in enumerate(np.eye(2))])
    H = np.zeros((2, 2))
    for i, ei in enumerate(np.eye(2)):
        for j, ej in enumerate(np.eye(2)):
            f = lambda a, b: _dense_reml(y, X, Z, *(x0 + a * h[i] * ei + b * h[j] * ej))  # noqa: E731
            H[i, j] = (f(1, 1) - f(1, -1) - f(-1, 1) + f(-1, -1)) / (4 * h[i] * h[j])
    df = 2 * var_mean(x0) ** 2 / (g @ (2 * np.linalg.inv(H)) @ g)
    assert satterthwaite_df(fit)[0] == pytest.approx(df, rel=1e-5)


def test_coef_table_residual_and_wald():
    fit = get_fit(SLOPE, "sleepstudy")
    t = fit.fixef / fit.se
    res = fit.coef_table(ddf="residual")
    np.testing.assert_allclose(res["df"], fit.nobs - 2)
    np.testing.assert_allclose(res["p"], 2 * st.t.sf(np.abs(t), fit.nobs - 2), rtol=1e-8)
    wald = fit.coef_table(ddf="wald")
    np.testing.assert_allclose(wald["p"], 2 * st.norm.sf(np.abs(t)), rtol=1e-8)
    np.testing.assert_allclose(wald["t"], t, rtol=1e-12)
    with pytest.raises(jaxlmm.JaxLMMError, match="ddf"):
        fit.coef_table(ddf="kenward")


def test_satterthwaite_df_do_not_depend_on_the_units_of_the_response_or_the_weights():
    """lmerTest's df of sleepstudy are 17 and 17 at any scale of y (its derivatives are taken in units
    of theta and sigma); a tiny sigma beside theta must not drop the theta directions of H."""
    base = satterthwaite_df(get_fit(SLOPE, "sleepstudy"))
    np.testing.assert_allclose(base, [17.0, 17.0], rtol=1e-3)
    sleep = jaxlmm.datasets.load("sleepstudy")
    for factor in (1e-6, 1e4):
        scaled = jaxlmm.lmm("y ~ Days + (Days | Subject)", sleep.assign(y=sleep["Reaction"] * factor))
        np.testing.assert_allclose(satterthwaite_df(scaled), base, rtol=1e-5)
    # constant weights only rescale sigma: the same df
    tiny = jaxlmm.lmm(SLOPE, sleep, weights=np.full(len(sleep), 1e-6))
    np.testing.assert_allclose(satterthwaite_df(tiny), base, rtol=1e-5)


def test_f_test():
    fit = get_fit(SLOPE, "sleepstudy")
    ct = fit.coef_table()
    one = fit.test([[0.0, 1.0]])
    assert one["F"][0] == pytest.approx(ct["t"]["Days"] ** 2, rel=1e-10)
    assert one["den_df"][0] == pytest.approx(ct["df"]["Days"], rel=1e-10)
    assert one["p"][0] == pytest.approx(ct["p"]["Days"], rel=1e-6)
    both = fit.test(np.eye(2))
    beta, V = fit.fixef.to_numpy(), fit.vcov.to_numpy()
    assert both["F"][0] == pytest.approx(beta @ np.linalg.solve(V, beta) / 2, rel=1e-10)
    assert both["num_df"][0] == 2
    # the two eigen-contrasts share nu = 17 here, so ddf is their mean (lmerTest)
    assert both["den_df"][0] == pytest.approx(17.0, rel=1e-3)
    assert both["p"][0] == pytest.approx(st.f.sf(both["F"][0], 2, both["den_df"][0]), rel=1e-6)
    named = fit.test(pd.DataFrame({"Days": [1.0]}), rhs=10.0)
    tt = (fit.fixef["Days"] - 10.0) / fit.se["Days"]
    assert named["F"][0] == pytest.approx(tt**2, rel=1e-10)
    with pytest.raises(jaxlmm.JaxLMMError, match="columns"):
        fit.test(np.eye(3))
    with pytest.raises(jaxlmm.JaxLMMError, match="Slope"):
        fit.test(pd.DataFrame({"Slope": [1.0]}))
    with pytest.raises(jaxlmm.JaxLMMError, match="rank zero"):
        fit.test([[0.0, 0.0]])
    # a contrast matrix with no rows tests nothing: no row, as lmerTest's contestMD
    none = fit.test(np.zeros((0, 2)))
    assert len(none) == 0 and list(none.columns) == list(one.columns)


def test_satterthwaite_df_match_lmertest():
    for case in ("intercept", "slope"):
        fit = weighted_fit(case, "REML")
        np.testing.assert_allclose(fit.coef_table()["df"], CASES[case]["REML"]["satterthwaite_df"], rtol=1e-3)


# ---- the two ways to the derivatives ------------------------------------------------------------

DERIVATIVE_FITS = {
    "slope-REML": lambda: get_fit(SLOPE, "sleepstudy"),
    "slope-ML": lambda: get_fit(SLOPE, "sleepstudy", reml=False),
    "crossed": lambda: get_fit("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
    "singular": lambda: get_fit("Yield ~ 1 + (1 | Batch)", "dyestuff2"),
    "weighted": lambda: weighted_fit("slope", "REML"),
}


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("name", list(DERIVATIVE_FITS))
def test_fit_hessian_is_the_criterions(name):
    """The Hessian Newton leaves on the fit (on theta's scale, whatever the optimizer's scale) is
    jax.hessian of the profiled criterion at fit.theta."""
    fit = DERIVATIVE_FITS[name]()
    want = jax.hessian(deviance)(jnp.asarray(fit.theta), fit.products, fit.reml)
    assert fit.hessian is not None and fit.hessian.shape == (len(fit.theta),) * 2
    assert _rel(fit.hessian, want) < 1e-9


@pytest.mark.parametrize("name", list(DERIVATIVE_FITS))
def test_derivatives_from_the_fit_hessian_equal_the_direct_ones(name):
    """V, dV/dphi and the Hessian of D(theta, sigma) assembled from the fit's profiled Hessian equal
    jax.jacfwd / jax.hessian of the unprofiled criterion (the path of fits without that Hessian)."""
    fit = DERIVATIVE_FITS[name]()
    varpar = jnp.asarray(np.append(fit.theta, fit.sigma))
    V0, J0, H0 = _derivatives(varpar, fit.products, bool(fit.reml))
    V1, J1, H1 = _from_profiled_hessian(fit)
    assert _rel(V1, V0) < 1e-10 and _rel(J1, J0) < 1e-10 and _rel(H1, H0) < 1e-10


def test_fits_without_an_exact_hessian_take_the_direct_derivatives():
    """BFGS Hessians (a further term at least bfgs_from wide) or L-BFGS leave no Hessian on the fit;
    the df come out the same."""
    crossed = "diameter ~ 1 + (1 | plate) + (1 | sample)"
    model = get_model(crossed, "penicillin")
    exact = get_fit(crossed, "penicillin")
    for fit in (model.fit(control=jaxlmm.Control(bfgs_from=1)), model.fit(method="lbfgs")):
        assert fit.hessian is None
        np.testing.assert_allclose(satterthwaite_df(fit), satterthwaite_df(exact), rtol=1e-5)
