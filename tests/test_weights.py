"""Prior weights (lme4's ``weights=``) against lme4: tests/reference/weights.R writes weights.json.

Row i has residual variance sigma^2 / w_i; the criteria are lme4's, with its
-sum(log w) term. The weights were drawn in R and are read from the JSON.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import load_json

import jaxlmm

def _vectors(obj):
    """The JSON with R's length-one vectors (written as scalars by auto_unbox) as lists again."""
    if isinstance(obj, dict):
        return {k: (v if k in SCALARS or not isinstance(v, (int, float, str)) else [v]) if not isinstance(v, dict)
                else _vectors(v) for k, v in obj.items()}
    return obj


SCALARS = {"objective", "sigma", "nobs", "formula", "data", "chisq", "df", "p", "lme4_version"}
REF = _vectors(load_json("weights.json"))
CASES = REF["cases"]
INTERCEPT, SLOPE = CASES["intercept"]["formula"], CASES["slope"]["formula"]


def data_of(name: str) -> pd.DataFrame:
    """The bundled dataset with the reference weights as column ``w``."""
    return jaxlmm.datasets.load(name).assign(w=np.array(REF["weights"][name]))


_fits: dict = {}


def weighted_fit(case: str, crit: str):
    key = (case, crit)
    if key not in _fits:
        c = CASES[case]
        data = data_of(c["data"])
        _fits[key] = jaxlmm.lmm(c["formula"], data, reml=crit == "REML", weights=data["w"].to_numpy())
    return _fits[key]


def ref_sdcor(r: dict) -> np.ndarray:
    return np.array(r["varcorr"]["sdcor"])


PARAMS = [(case, crit) for case in CASES for crit in ("REML", "ML")]


@pytest.mark.parametrize("case,crit", PARAMS)
def test_weighted_fit_matches_lme4(case, crit):
    fit, r = weighted_fit(case, crit), CASES[case][crit]
    assert fit.converged
    assert fit.objective == pytest.approx(r["objective"], rel=1e-6)
    assert list(fit.fixef.index) == r["beta_names"]
    np.testing.assert_allclose(fit.fixef.to_numpy(), r["beta"], rtol=1e-4)
    np.testing.assert_allclose(fit.se.to_numpy(), r["se"], rtol=1e-4)
    assert fit.sigma == pytest.approx(r["sigma"], rel=1e-4)
    # variance components: SDs (and sigma) to 1e-3 relative, correlations to 1e-3
    vc = fit.varcorr
    assert list(vc["group"]) == r["varcorr"]["grp"]
    is_cor = vc["term2"].notna().to_numpy()
    np.testing.assert_allclose(vc["sd_cor"][~is_cor], ref_sdcor(r)[~is_cor], rtol=1e-3)
    np.testing.assert_allclose(vc["sd_cor"][is_cor], ref_sdcor(r)[is_cor], atol=1e-3)
    var = ~is_cor
    np.testing.assert_allclose(vc["variance"][var], np.array(r["varcorr"]["vcov"])[var], rtol=2e-3)


@pytest.mark.parametrize("case,crit", PARAMS)
def test_fitted_residuals_and_predictions_match_lme4(case, crit):
    fit, r = weighted_fit(case, crit), CASES[case][crit]
    scale = r["sigma"]
    # the conditional means to 1e-4 of sigma (the random-slope fit's optimum is flat: lme4 stops earlier)
    tol = 1e-4 * scale if case != "slope" else 2e-4 * scale
    np.testing.assert_allclose(fit.fitted, r["fitted"], rtol=0, atol=tol)
    np.testing.assert_allclose(fit.residuals(), r["resid_response"], rtol=0, atol=tol)
    w = np.array(REF["weights"][CASES[case]["data"]])
    pearson = fit.residuals(type="pearson")
    np.testing.assert_allclose(pearson, r["resid_pearson"], rtol=0, atol=tol * np.sqrt(w.max()))
    np.testing.assert_allclose(pearson, np.sqrt(w) * fit.residuals(), rtol=1e-12)
    np.testing.assert_allclose(fit.residuals(type="pearson", scaled=True), pearson / fit.sigma, rtol=1e-12)
    new = pd.DataFrame(REF["newdata"][CASES[case]["data"]])
    np.testing.assert_allclose(fit.predict(new), r["predict"], rtol=0, atol=tol)
    np.testing.assert_allclose(fit.predict(new, re=False), r["predict_population"], rtol=0, atol=tol)


@pytest.mark.parametrize("case,crit", [("crossed", "REML"), ("slope", "ML")])
def test_conditional_modes_and_variances_match_lme4(case, crit):
    fit, r = weighted_fit(case, crit), CASES[case][crit]
    ref = pd.DataFrame(r["ranef"]).rename(columns={"grp": "group"})
    ours = fit.ranef.merge(ref, on=["group", "term", "level"], suffixes=("", "_lme4"))
    assert len(ours) == len(ref) == len(fit.ranef)
    np.testing.assert_allclose(ours["value"], ours["value_lme4"], rtol=0, atol=2e-4 * r["sigma"])
    np.testing.assert_allclose(ours["cond_sd"], ours["cond_sd_lme4"], rtol=1e-3)


def test_satterthwaite_df_match_lmertest():
    for case in ("intercept", "slope"):
        fit = weighted_fit(case, "REML")
        np.testing.assert_allclose(fit.coef_table()["df"], CASES[case]["REML"]["satterthwaite_df"], rtol=1e-3)


def test_weights_as_text_and_their_scale():
    """weights="w" is the column; weights multiplied by c give the same likelihood, sigma * sqrt(c)."""
    data = data_of("sleepstudy")
    ref = weighted_fit("intercept", "REML")
    by_name = jaxlmm.lmm(INTERCEPT, data, weights="w")
    assert by_name.objective == pytest.approx(ref.objective, rel=1e-12)
    assert by_name.design.weights_arg == "w" and "Weights: w" in by_name.summary()
    doubled = jaxlmm.lmm(INTERCEPT, data, weights="2 * w")
    # -sum(log 2w) = -sum(log w) - n log 2 cancels the n log 2 of the doubled residual sum of squares
    assert doubled.objective == pytest.approx(ref.objective, rel=1e-10)
    assert doubled.sigma == pytest.approx(np.sqrt(2.0) * ref.sigma, rel=1e-6)
    np.testing.assert_allclose(doubled.fixef, ref.fixef, rtol=1e-7)
    unweighted = jaxlmm.lmm(INTERCEPT, data)
    assert abs(unweighted.objective - ref.objective) > 1.0  # the weights matter


def test_zero_weights_drop_rows_and_missing_weights_are_missing_data():
    z = REF["zero_weights"]
    data = data_of("sleepstudy")
    w0 = np.array(z["weights"])
    with pytest.warns(jaxlmm.MissingDataWarning, match="3 row.*weight zero"):
        fit = jaxlmm.lmm(z["formula"], data, weights=w0)
    assert fit.nobs == z["nobs"] == 177 and fit.n_dropped == 3
    assert fit.objective == pytest.approx(z["objective"], rel=1e-6)
    np.testing.assert_allclose(fit.fixef, z["beta"], rtol=1e-4)
    assert fit.sigma == pytest.approx(z["sigma"], rel=1e-4)
    missing = np.where(w0 == 0, np.nan, w0)
    with pytest.warns(jaxlmm.MissingDataWarning, match=r"weights= \(3\)"):
        again = jaxlmm.lmm(z["formula"], data, weights=missing)
    assert again.nobs == 177 and again.objective == pytest.approx(fit.objective, rel=1e-10)
    assert np.array_equal(again.design.rows, fit.design.rows)
    assert len(fit.fitted) == len(fit.residuals(type="pearson")) == 177


@pytest.mark.parametrize(
    "weights,error,match",
    [
        (-np.ones(180), jaxlmm.DataError, "weights=.*negative"),
        (np.r_[np.inf, np.ones(179)], jaxlmm.DataError, "weights=.*non-finite"),
        (np.ones(179), jaxlmm.DataError, "weights=.*one number per row"),
        (["a"] * 180, jaxlmm.DataError, "weights= must be numbers"),
        (np.zeros(180), jaxlmm.DataError, "weights= is zero for every row"),
        ("wt", jaxlmm.FormulaError, "'wt'"),
        ("w - 2", jaxlmm.DataError, "weights=.*negative"),
        ("log(w - 1)", jaxlmm.DataError, "weights=.*non-finite"),
    ],
)
def test_bad_weights_raise(weights, error, match):
    with pytest.raises(error, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        jaxlmm.LinearMixedModel(INTERCEPT, data_of("sleepstudy"), weights=weights)


def test_anova_of_weighted_fits_matches_lme4():
    a = REF["anova"]
    f0, f1 = weighted_fit("intercept", "REML"), weighted_fit("slope", "REML")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.JaxLMMWarning)
        tab = jaxlmm.anova(f0, f1)
    np.testing.assert_allclose(tab["deviance"], a["deviance"], rtol=1e-6)
    assert tab["Chisq"].iloc[1] == pytest.approx(a["chisq"], rel=1e-5)
    other = jaxlmm.lmm(SLOPE, data_of("sleepstudy"), weights="1 + 0 * w")
    with pytest.raises(jaxlmm.JaxLMMError, match="different prior weights"), warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.JaxLMMWarning)
        jaxlmm.anova(f0, other)
    with pytest.raises(jaxlmm.JaxLMMError, match="different prior weights"):
        jaxlmm.pb_test(f0, other, n=2, progress=False)


def test_profile_limits_of_fixed_effects_match_their_definition():
    p = REF["profile"]
    ci = weighted_fit("intercept", "REML").confint(method="profile", which=p["parameters"])
    np.testing.assert_allclose(ci["lower"], p["lower"], rtol=1e-6)
    np.testing.assert_allclose(ci["upper"], p["upper"], rtol=1e-6)


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


def test_bootstrap_replicates_are_weighted_refits():
    """Each replicate equals an ordinary weighted fit of the response it was simulated as."""
    fit = weighted_fit("intercept", "ML")
    boot = jaxlmm.bootstrap(fit, n=3, seed=2, progress=False)
    data = data_of("sleepstudy")
    for i, y in enumerate(fit.simulate(3, seed=2)):
        ref = jaxlmm.lmm(INTERCEPT, data.assign(Reaction=y), reml=False, weights="w")
        assert boot.table["objective"][i] == pytest.approx(ref.objective, rel=1e-8)
        assert boot.table["sigma"][i] == pytest.approx(ref.sigma, rel=1e-5)
        np.testing.assert_allclose(boot.table[["(Intercept)", "Days"]].iloc[i], ref.fixef, rtol=1e-6)
