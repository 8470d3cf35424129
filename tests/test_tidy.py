"""Tidy output (jaxlmm.tidy): broom.mixed's table and the fit as a dict or JSON, with lme4's numbers."""

from __future__ import annotations

import numpy as np
import pytest

import jaxlmm
from models import get_fit
from oracle import DYE1, SLOPE


# lme4 1.1: lmer(Reaction ~ Days + (Days | Subject), sleepstudy) (REML)
LME4_SLEEP = {
    "fixef": [251.405105, 10.467286],
    "sd__(Intercept)": 24.740448,
    "sd__Days": 5.922133,
    "cor__(Intercept).Days": 0.06555,
    "sd__Observation": 25.591796,
}


def test_tidy_matches_the_fit_and_lme4(sleep_fit):
    from scipy import stats

    tab = sleep_fit.tidy()
    assert list(tab.columns) == ["effect", "group", "term", "estimate", "std_error", "statistic", "df", "p_value"]
    assert list(tab["effect"]) == ["fixed"] * 2 + ["ran_pars"] * 4
    assert list(tab["term"]) == ["(Intercept)", "Days", "sd__(Intercept)", "cor__(Intercept).Days", "sd__Days",
                                 "sd__Observation"]
    assert list(tab["group"]) == [None, None, "Subject", "Subject", "Subject", "Residual"]
    fixed, ran = tab.iloc[:2], tab.iloc[2:].set_index("term")
    ct = sleep_fit.coef_table()
    np.testing.assert_allclose(fixed["estimate"], sleep_fit.fixef, rtol=1e-14)
    np.testing.assert_allclose(fixed["std_error"], np.sqrt(np.diag(sleep_fit.vcov)), rtol=1e-14)
    np.testing.assert_allclose(fixed["statistic"], sleep_fit.fixef / sleep_fit.se, rtol=1e-14)
    np.testing.assert_allclose(fixed["df"], ct["df"], rtol=1e-14)
    np.testing.assert_allclose(fixed["p_value"], 2 * stats.t.sf(np.abs(fixed["statistic"]), fixed["df"]), rtol=1e-8)
    np.testing.assert_allclose(fixed["estimate"], LME4_SLEEP["fixef"], rtol=1e-6)
    for term in ("sd__(Intercept)", "sd__Days", "sd__Observation"):
        assert ran.loc[term, "estimate"] == pytest.approx(LME4_SLEEP[term], rel=2e-6)
    assert ran.loc["cor__(Intercept).Days", "estimate"] == pytest.approx(LME4_SLEEP["cor__(Intercept).Days"], abs=1e-4)
    # the same numbers by another path: varcorr's SDs and correlation
    vc = sleep_fit.varcorr
    assert ran.loc["sd__Days", "estimate"] == pytest.approx(
        np.sqrt(vc.query("term1 == 'Days' and term2.isna()", engine="python")["variance"].item()), rel=1e-12
    )
    assert ran.loc["cor__(Intercept).Days", "estimate"] == pytest.approx(vc["sd_cor"].iloc[2], rel=1e-12)
    assert ran.loc["sd__Observation", "estimate"] == pytest.approx(sleep_fit.sigma, rel=1e-14)
    assert ran[["std_error", "statistic", "df", "p_value"]].isna().all().all()


def test_tidy_wald_intervals_and_uncorrelated_terms(sleep_fit):
    from scipy import stats

    tab = sleep_fit.tidy(conf_int=True, conf_level=0.9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(tab["conf_low"].iloc[:2], sleep_fit.fixef - z * sleep_fit.se, rtol=1e-10)
    np.testing.assert_allclose(tab["conf_high"].iloc[:2], sleep_fit.fixef + z * sleep_fit.se, rtol=1e-10)
    assert tab["conf_low"].iloc[2:].isna().all()
    with pytest.raises(jaxlmm.JaxLMMError, match="method"):
        sleep_fit.tidy(conf_int=True, conf_method="bca")
    uncorr = get_fit("Reaction ~ Days + (Days || Subject)", "sleepstudy").tidy()
    ran = uncorr[uncorr["effect"] == "ran_pars"]
    assert list(zip(ran["group"], ran["term"])) == [
        ("Subject", "sd__(Intercept)"), ("Subject.1", "sd__Days"), ("Residual", "sd__Observation")
    ]


@pytest.mark.parametrize(
    "formula, dataset, reml",
    [(SLOPE, "sleepstudy", True), (DYE1, "dyestuff", False), ("Reaction ~ Days + (Days || Subject)", "sleepstudy", True)],
)
def test_to_dict_is_json_and_equals_the_fit(formula, dataset, reml):
    import json

    fit = get_fit(formula, dataset, reml=reml)
    d = fit.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert json.loads(fit.to_json()) == d
    assert d["formula"] == fit.formula and d["reml"] is reml and d["criterion"] == ("REML" if reml else "ML")
    for key in ("objective", "loglik", "aic", "bic", "sigma", "deviance"):
        assert type(d[key]) is float and d[key] == getattr(fit, key)
    assert (d["nobs"], d["npar"], d["converged"]) == (fit.nobs, fit.npar, fit.converged)
    assert d["ngroups"] == {t.name: t.nlevels for t in fit.terms}
    assert d["theta"] == list(fit.theta)
    assert d["fixef"] == dict(fit.fixef) and d["se"] == dict(fit.se)
    np.testing.assert_array_equal(np.array(d["vcov"]["matrix"]), fit.vcov.to_numpy())
    assert d["vcov"]["names"] == list(fit.fixef.index)
    assert [r["variance"] for r in d["varcorr"]] == list(fit.varcorr["variance"])
    assert [r["term2"] for r in d["varcorr"]] == list(fit.varcorr["term2"])
    ct = fit.coef_table()
    assert [r["df"] for r in d["coefficients"]] == list(ct["df"])
    assert [r["term"] for r in d["coefficients"]] == list(ct.index)
    assert [r["estimate"] for r in d["ran_pars"]] == list(fit.tidy()["estimate"].iloc[len(fit.fixef):])


def test_to_dict_of_sleepstudy_has_lme4_numbers(sleep_fit):
    d = sleep_fit.to_dict()
    assert [d["fixef"]["(Intercept)"], d["fixef"]["Days"]] == pytest.approx(LME4_SLEEP["fixef"], rel=1e-6)
    ran = {r["term"]: r["estimate"] for r in d["ran_pars"]}
    assert ran["sd__(Intercept)"] == pytest.approx(24.740448, rel=2e-6)
    assert d["sigma"] == pytest.approx(25.591796, rel=2e-6)
