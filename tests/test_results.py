"""The fitted model (jaxlmm.results): lme4's estimates and likelihood summaries, the singular flag and
its warning, numbers as Python floats, checked starts, and weighted fits against lme4.

The reference fits (fixture ``pair``, every case REML and ML) and the weighted
fits (tests/reference/weights.R writes weights.json) are shared by the session.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from checks import raises
from jaxlmm import JaxLMMError, SingularFitWarning
from models import get_fit, get_model, weighted_fit
from oracle import DYE, DYE1, SLOPE, WEIGHTS, load_fit_reference

REF = WEIGHTS  # prior weights: lme4's values, from tests/reference/weights.R
CASES = REF["cases"]
PARAMS = [(case, crit) for case in CASES for crit in ("REML", "ML")]


def _as_list(v):
    return v if isinstance(v, list) else [v]


def test_theta0_that_overflows_names_theta0():
    model = get_model(SLOPE, "sleepstudy")
    msg = raises(lambda: model.fit(theta0=[1e8, 0, 1e8]), "theta0=[100000000.0, 0.0, 100000000.0]")
    assert "lme4's default theta0" in msg


# ---- every reference fit of lme4, REML and ML ------------------------------------------------


def test_likelihood_summaries(pair):
    fit, r, _ = pair
    assert fit.loglik == pytest.approx(r["loglik"], rel=1e-6)
    assert fit.aic == pytest.approx(r["aic"], rel=1e-6)
    assert fit.bic == pytest.approx(r["bic"], rel=1e-6)
    assert fit.nobs == r["nobs"]
    assert fit.reml == r["reml"]


def test_fixed_effects(pair):
    fit, r, _ = pair
    assert list(fit.fixef.index) == _as_list(r["beta_names"])
    np.testing.assert_allclose(fit.fixef.to_numpy(), _as_list(r["beta"]), rtol=1e-4)
    np.testing.assert_allclose(fit.se.to_numpy(), _as_list(r["se"]), rtol=1e-3)
    assert fit.sigma == pytest.approx(r["sigma"], rel=1e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov.to_numpy())), fit.se.to_numpy(), rtol=1e-12)


# ---- flags, warnings, types ------------------------------------------------------------------


def test_singular_fit_is_flagged_and_warned_once():
    ref = load_fit_reference("dyestuff2_singular")["REML"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = get_model(DYE, "dyestuff2").fit()
    assert [w.category for w in caught] == [SingularFitWarning]
    assert "singular" in str(caught[0].message)
    assert fit.singular and ref["singular"] and fit.converged
    assert fit.theta[0] == pytest.approx(0.0, abs=1e-8)
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-9)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-7)


def test_regular_fit_is_not_flagged():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = get_model(DYE, "dyestuff").fit()
    assert not caught and not fit.singular


@pytest.mark.parametrize(
    "formula, dataset",
    [(DYE1, "dyestuff"), (SLOPE, "sleepstudy"), ("Reaction ~ Days + (Days || Subject)", "sleepstudy")],
)
def test_fit_numbers_are_python_floats_and_missing_names_none(formula, dataset):
    fit = get_fit(formula, dataset)
    for name in ("aic", "bic", "loglik", "objective", "sigma", "deviance"):
        assert type(getattr(fit, name)) is float, name
    assert fit.aic == pytest.approx(fit.objective + 2 * fit.npar, rel=1e-14)
    assert fit.bic == pytest.approx(fit.objective + np.log(fit.nobs) * fit.npar, rel=1e-14)
    vc = fit.varcorr
    sd_rows = vc[vc["term2"].isna()]
    assert all(x is None for x in sd_rows["term2"])
    assert vc["term1"].iloc[-1] is None and vc["group"].iloc[-1] == "Residual"
    assert all(isinstance(x, str) for x in vc["term1"].iloc[:-1])


def test_bad_residual_kind():
    from models import get_fit

    with pytest.raises(JaxLMMError, match="'pearson'"):
        get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy").residuals(kind="pearson")


# ---- prior weights -------------------------------------------------------------


def ref_sdcor(r: dict) -> np.ndarray:
    return np.array(r["varcorr"]["sdcor"])


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
    # lme4's other names for a linear mixed model's residuals
    np.testing.assert_allclose(fit.residuals(type="working"), r["resid_working"], rtol=0, atol=tol)
    np.testing.assert_allclose(fit.residuals(type="deviance"), r["resid_deviance"], rtol=0, atol=tol * np.sqrt(w.max()))
    np.testing.assert_array_equal(fit.residuals(type="deviance"), pearson)
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


# ---- refit to a new response (lme4's refit(fit, newresp)) --------------------------------------


def test_refit_to_a_new_response_is_the_fit_of_that_response():
    import jaxlmm

    dye = get_fit(DYE, "dyestuff")
    y2 = jaxlmm.datasets.load("dyestuff2")["Yield"]
    ref = load_fit_reference("dyestuff2_singular")["REML"]  # lme4's refit(fm1, Dyestuff2$Yield)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        new = dye.refit(y2.to_numpy())
        ml = dye.refit(y2.to_list(), reml=False)
    assert new.objective == pytest.approx(ref["objective"], rel=1e-10)
    assert new.theta[0] == pytest.approx(0.0, abs=1e-6) and new.singular
    assert new.fixef.iloc[0] == pytest.approx(ref["beta"], rel=1e-10)
    assert ml.objective == pytest.approx(load_fit_reference("dyestuff2_singular")["ML"]["objective"], rel=1e-10)
    assert dye.fixef.iloc[0] == pytest.approx(1527.5, rel=1e-12)  # the original fit is untouched
    # a Series is read by the fit's row labels, whatever its order; numbers by position
    sleep = get_fit(SLOPE, "sleepstudy")
    y = jaxlmm.datasets.load("sleepstudy")["Reaction"] * 2.0
    shuffled = y.sample(frac=1.0, random_state=1)
    by_label, in_order = sleep.refit(shuffled), sleep.refit(y.to_numpy())
    assert by_label.objective == pytest.approx(in_order.objective, rel=1e-12)
    np.testing.assert_allclose(by_label.fixef, 2.0 * sleep.fixef.to_numpy(), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)  # the shuffled numbers hold no subjects
        assert sleep.refit(shuffled.to_numpy()).objective != pytest.approx(in_order.objective, rel=1e-3)
    # the fit's own response gives the fit back (weights and offset stay the fit's)
    w = weighted_fit("slope", "REML")
    same = w.refit(w.design.y)
    assert same.objective == pytest.approx(w.objective, rel=1e-10)
    np.testing.assert_allclose(same.theta, w.theta, rtol=1e-6)


def test_refit_refuses_a_response_that_does_not_fit():
    dye = get_fit(DYE, "dyestuff")
    raises(lambda: dye.refit(np.ones(29)), "one number per row of the fit (30)")
    raises(lambda: dye.refit(False), "refit(reml=...)")
    raises(lambda: dye.refit(np.r_[np.nan, np.arange(29.0)]), "non-finite")
    raises(lambda: dye.refit(np.full(30, 3.0)), "constant")
    raises(lambda: dye.refit(pd.Series(np.arange(10.0))), "lacks the fit's row(s)")
    raises(lambda: dye.refit(["a"] * 30), "must be 30 numbers")
