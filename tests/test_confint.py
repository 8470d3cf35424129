"""Confidence intervals (jaxlmm.confint): profile, Wald and bootstrap against lme4; names and spellings."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from checks import raises
from jaxlmm.bootstrap import bootstrap
from models import get_fit, weighted_fit
from oracle import DYE, SLOPE, WEIGHTS, load_json

INF = load_json("inference/inference.json")
PEN = "diameter ~ 1 + (1 | plate) + (1 | sample)"
REF = WEIGHTS  # prior weights: lme4's values, from tests/reference/weights.R


def _ref_vec(v):
    return np.array([np.nan if x == "NA" else x for x in np.atleast_1d(v)], dtype=np.float64)


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


def test_bootstrap_confint_delegates():
    fit = get_fit(DYE, "dyestuff")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = fit.confint(method="bootstrap", n=16, seed=3, level=0.9)
        direct = bootstrap(fit, n=16, seed=3, progress=False).confint(level=0.9)
    pd.testing.assert_frame_equal(ours, direct)


def test_confint_which_unknown_or_not_a_name():
    fit = get_fit(SLOPE, "sleepstudy")
    for method in ("wald", "profile", "boot"):
        msg = raises(lambda: fit.confint(method, which="nope"), "'nope'", "which=")
        assert "sd_(Intercept)|Subject" in msg
    raises(lambda: fit.confint("wald", which=3), "which must be a parameter name")
    raises(lambda: fit.confint("wald", which=["Days", None]), "None")
    assert list(fit.confint("wald", which=["Days"]).index) == ["Days"]


def test_confint_method_spellings(sleep_fit):
    wald = sleep_fit.confint(method="wald")
    for spelling in ("Wald", "WALD"):
        pd.testing.assert_frame_equal(sleep_fit.confint(method=spelling), wald)
    z = 1.959963984540054
    np.testing.assert_allclose(
        wald.loc[["(Intercept)", "Days"], "lower"], sleep_fit.fixef - z * sleep_fit.se, rtol=1e-12
    )
    from jaxlmm.confint import confint_method

    assert confint_method("boot") == confint_method("Bootstrap") == "bootstrap"
    assert confint_method("Profile") == "profile"
    with pytest.raises(jaxlmm.JaxLMMError, match="method must be one of"):
        sleep_fit.confint(method="bca")


def test_profile_limits_of_fixed_effects_match_their_definition():
    p = REF["profile"]
    ci = weighted_fit("intercept", "REML").confint(method="profile", which=p["parameters"])
    np.testing.assert_allclose(ci["lower"], p["lower"], rtol=1e-6)
    np.testing.assert_allclose(ci["upper"], p["upper"], rtol=1e-6)
