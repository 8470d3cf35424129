"""Inference on fitted models against lme4/lmerTest, closed forms and dense oracles."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import jaxlmm
from conftest import get_fit, load_fit_reference, load_json
from jaxlmm.bootstrap import bootstrap
from jaxlmm.profile import profile
from jaxlmm.satterthwaite import satterthwaite_df

INF = load_json("inference/inference.json")
SLOPE = "Reaction ~ Days + (Days | Subject)"
DYE = "Yield ~ 1 + (1 | Batch)"
PEN = "diameter ~ 1 + (1 | plate) + (1 | sample)"
SATT_CASES = {
    "sleepstudy_slope": "sleepstudy",
    "dyestuff": "dyestuff",
    "dyestuff2_singular": "dyestuff2",
}


def _ref_vec(v):
    return np.array([np.nan if x == "NA" else x for x in np.atleast_1d(v)], dtype=np.float64)


# ---- Satterthwaite ------------------------------------------------------------------


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


def test_summary_shows_df_and_p():
    text = get_fit(SLOPE, "sleepstudy").summary()
    assert "df" in text and "Pr(>|t|)" in text
    assert "17.00 " in text and "17.000" not in text  # df with 2 decimals, as lmerTest


# ---- models without random effects; anova ---------------------------------------------


def test_no_random_effect_closed_forms():
    y = jaxlmm.datasets.load("dyestuff").Yield.to_numpy(dtype=float)
    n, rss = len(y), np.sum((y - y.mean()) ** 2)
    ml = get_fit("Yield ~ 1", "dyestuff", reml=False)
    assert ml.objective == pytest.approx(n * (1 + np.log(2 * np.pi * rss / n)), rel=1e-12)
    reml = get_fit("Yield ~ 1", "dyestuff")
    closed = (n - 1) * (1 + np.log(2 * np.pi * rss / (n - 1))) + np.log(n)  # log|X'X| = log n
    assert reml.objective == pytest.approx(closed, rel=1e-12)
    assert reml.sigma == pytest.approx(np.sqrt(rss / (n - 1)), rel=1e-12)
    assert reml.npar == 2 and ml.converged


@pytest.mark.parametrize("key", ["anova_random_slope", "anova_fixed_days"])
def test_anova_matches_lme4(key):
    ref = INF[key]
    fits = [get_fit(f, "sleepstudy") for f in reversed(ref["models"])]  # order must not matter
    with pytest.warns(jaxlmm.JaxLMMWarning, match="ML"):
        table = jaxlmm.anova(*fits)
    assert list(table.attrs["models"].values()) == ref["models"]
    assert list(table.index) == ["model2", "model1"]  # labels by argument position, rows by npar
    assert list(table["npar"]) == ref["npar"]
    columns = {"AIC": "aic", "BIC": "bic", "logLik": "loglik", "deviance": "deviance", "Chisq": "chisq",
               "Df": "df", "Pr(>Chisq)": "p"}
    for col, ref_col in columns.items():
        np.testing.assert_allclose(table[col], _ref_vec(ref[ref_col]), rtol=1e-3)
    if key == "anova_random_slope":
        chisq = table["Chisq"].iloc[1]
        mix = 0.5 * st.chi2.sf(chisq, 1) + 0.5 * st.chi2.sf(chisq, 2)
        assert table["p_boundary"].iloc[1] == pytest.approx(mix, rel=1e-8)
        assert "conservative" in table.attrs["note"]
    else:
        assert np.isnan(table["p_boundary"]).all() and "note" not in table.attrs


def test_anova_variance_component_against_none():
    m0 = get_fit("Yield ~ 1", "dyestuff", reml=False)
    m1 = get_fit(DYE, "dyestuff", reml=False)
    table = jaxlmm.anova(m1, m0)
    chisq = m0.objective - m1.objective
    assert table["Chisq"].iloc[1] == pytest.approx(chisq, rel=1e-10)
    assert table["Pr(>Chisq)"].iloc[1] == pytest.approx(st.chi2.sf(chisq, 1), rel=1e-8)
    assert table["p_boundary"].iloc[1] == pytest.approx(0.5 * st.chi2.sf(chisq, 1), rel=1e-8)
    assert "note" in table.attrs


def test_anova_errors():
    a = get_fit(DYE, "dyestuff", reml=False)
    with pytest.raises(jaxlmm.JaxLMMError, match="at least two"):
        jaxlmm.anova(a)
    with pytest.raises(jaxlmm.JaxLMMError, match="same"):
        jaxlmm.anova(a, get_fit(DYE, "dyestuff2", reml=False))
    with pytest.raises(jaxlmm.JaxLMMError, match="not nested"):
        jaxlmm.anova(get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False),
                     get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy", reml=False))


# ---- confidence intervals --------------------------------------------------------------


CI_CASES = {"sleepstudy_slope": (SLOPE, "sleepstudy"), "dyestuff": (DYE, "dyestuff"), "penicillin": (PEN, "penicillin")}


@pytest.mark.parametrize("case", list(CI_CASES))
def test_profile_confint_matches_lme4(case):
    ref = INF["confint"][case]["profile"]
    fit = get_fit(*CI_CASES[case])
    ci = fit.confint(method="profile")
    assert list(ci.index) == ref["names"]
    # lme4 interpolates its profile by splines; largest relative difference 1.7e-4
    np.testing.assert_allclose(ci["lower"], ref["lower"], rtol=1e-3)
    np.testing.assert_allclose(ci["upper"], ref["upper"], rtol=1e-3)


def test_wald_confint_matches_lme4():
    ref = INF["confint"]["sleepstudy_slope"]["wald"]
    ci = get_fit(SLOPE, "sleepstudy").confint(method="wald")
    assert list(ci.index) == ref["names"]
    np.testing.assert_allclose(ci["lower"], _ref_vec(ref["lower"]), rtol=1e-6)
    np.testing.assert_allclose(ci["upper"], _ref_vec(ref["upper"]), rtol=1e-6)
    with pytest.raises(jaxlmm.JaxLMMError, match="method"):
        get_fit(SLOPE, "sleepstudy").confint(method="exact")
    with pytest.raises(jaxlmm.JaxLMMError, match="level"):
        get_fit(SLOPE, "sleepstudy").confint(method="wald", level=1.5)


def test_profile_traces():
    """zeta is 0 at the ML estimate, increasing, and reaches +-z at the confint limits."""
    fit = get_fit(DYE, "dyestuff")
    tr = profile(fit, level=0.95, n_points=4)
    assert list(dict.fromkeys(tr["parameter"])) == ["sd_(Intercept)|Batch", "sigma", "(Intercept)"]
    ci = fit.confint(method="profile")
    ml = get_fit(DYE, "dyestuff", reml=False)
    z = st.norm.ppf(0.975)
    for name, sub in tr.groupby("parameter", sort=False):
        assert np.all(np.diff(sub["zeta"].to_numpy()) > 0)
        ends = sub.iloc[[0, -1]]
        np.testing.assert_allclose(ends["zeta"], [-z, z], rtol=1e-5)
        np.testing.assert_allclose(ends["value"], ci.loc[name], rtol=1e-6)
    pd.testing.assert_frame_equal(fit.confint(which=["sigma"]), ci.loc[["sigma"]], rtol=1e-8)
    with pytest.raises(jaxlmm.JaxLMMError, match="sd_x"):
        fit.confint(which="sd_x")
    mid = tr[tr["zeta"] == 0.0].set_index("parameter")["value"]
    assert mid["(Intercept)"] == pytest.approx(ml.fixef.iloc[0], rel=1e-10)
    assert mid["sigma"] == pytest.approx(ml.sigma, rel=1e-10)


def test_bootstrap_confint_delegates():
    fit = get_fit(DYE, "dyestuff")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = fit.confint(method="bootstrap", n=16, seed=3, level=0.9)
        direct = bootstrap(fit, n=16, seed=3, progress=False).confint(level=0.9)
    pd.testing.assert_frame_equal(ours, direct)


# ---- prediction and simulation ----------------------------------------------------------


def test_predict_matches_lme4():
    ref = INF["predict"]
    fit = get_fit(SLOPE, "sleepstudy")
    new = pd.DataFrame(ref["newdata"])
    np.testing.assert_allclose(fit.predict(new), ref["conditional"], rtol=1e-6)
    np.testing.assert_allclose(fit.predict(new, re=False), ref["population"], rtol=1e-6)
    fr = INF["fitted_residuals_sleepstudy"]
    np.testing.assert_allclose(fit.predict()[:10], fr["fitted_head"], rtol=1e-6)
    np.testing.assert_allclose(fit.residuals()[:10], fr["resid_head"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.predict(jaxlmm.datasets.load("sleepstudy")), fit.fitted, rtol=1e-12)
    with pytest.raises(jaxlmm.DataError, match="Subject"):
        fit.predict(pd.DataFrame({"Days": [1.0]}))
    with pytest.raises(jaxlmm.DataError, match="Days"):
        fit.predict(pd.DataFrame({"Days": [np.nan], "Subject": ["308"]}))


def test_predict_crossed_terms_dense():
    """Penicillin: prediction on the training rows equals X beta + Z b with dense Z."""
    fit = get_fit(PEN, "penicillin")
    data = jaxlmm.datasets.load("penicillin")
    b = fit.ranef.set_index(["group", "level"])["value"]
    dense = fit.fixef.iloc[0] + b.loc["plate"].loc[data.plate.astype(str)].to_numpy()
    dense = dense + b.loc["sample"].loc[data["sample"].astype(str)].to_numpy()
    np.testing.assert_allclose(fit.predict(data), dense, rtol=1e-12)


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
