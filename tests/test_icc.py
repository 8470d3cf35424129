"""ICC and R-squared (jaxlmm.icc) against the R package performance (insight's variance parts).

The reference values are written by tests/reference/varcomp.R (varcomp.json).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jaxlmm
from jaxlmm.icc import variance_parts
from models import get_fit
from oracle import DYE, load_json

REF = load_json("varcomp.json")
SHARES = REF["shares"]


def _fit(formula, dataset, reml=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
        return get_fit(formula, dataset, reml=reml)


SHARE_DATA = {"sleepstudy_slope": "sleepstudy", "sleepstudy_intercept": "sleepstudy", "penicillin": "penicillin"}


LME4_FITS = {"sleepstudy_slope": "sleepstudy_slope", "sleepstudy_intercept": "sleepstudy_intercept",
             "penicillin": "penicillin_crossed"}


@pytest.mark.parametrize("case", list(SHARES))
def test_variance_parts_at_lme4s_estimates_equal_insight(case):
    from oracle import load_fit_reference

    ref, lme4 = SHARES[case], load_fit_reference(LME4_FITS[case])["REML"]
    fit = get_fit(ref["formula"], SHARE_DATA[case])
    parts = variance_parts(np.atleast_1d(lme4["beta"]), np.atleast_1d(lme4["theta"]), lme4["sigma"], fit.design)
    row = parts.iloc[0]
    for ours, theirs in (("fixed", "var_fixed"), ("random", "var_random"), ("residual", "var_residual")):
        assert row[ours] == pytest.approx(ref[theirs], rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("case", list(SHARES))
def test_icc_and_r2_equal_performance(case):
    # jaxlmm's optimum is lme4's to about 1e-5 in theta (its criterion is as low or lower), so
    # the shares agree to a few 1e-6; at lme4's own estimates they agree to 1e-12 (test above).
    ref = SHARES[case]
    fit = get_fit(ref["formula"], SHARE_DATA[case])
    icc, r2 = fit.icc(), fit.r2()
    assert list(icc.index) == ["adjusted", "conditional"] and list(r2.index) == ["marginal", "conditional"]
    assert icc["adjusted"] == pytest.approx(ref["icc_adjusted"], abs=5e-6)
    assert icc["conditional"] == pytest.approx(ref["icc_conditional"], abs=5e-6)
    assert r2["marginal"] == pytest.approx(ref["r2_marginal"], abs=5e-6)
    assert r2["conditional"] == pytest.approx(ref["r2_conditional"], abs=5e-6)


def test_icc_of_a_singular_fit_is_nan_with_a_warning():
    fit = _fit(DYE, "dyestuff2")
    with pytest.warns(jaxlmm.JaxLMMWarning, match="singular"):
        icc = fit.icc()
    assert icc.isna().all()


def test_icc_and_r2_intervals_are_percentiles_of_the_bootstrap_replicates():
    fit = get_fit(SHARES["sleepstudy_intercept"]["formula"], "sleepstudy")
    boot = jaxlmm.bootstrap(fit, n=40, seed=5, progress=False)
    icc = fit.icc(boot=boot, conf_level=0.9)
    r2 = fit.r2(conf_int=True, boot=boot, conf_level=0.9)
    assert list(icc.columns) == ["estimate", "lower", "upper"]
    assert icc["estimate"].to_dict() == pytest.approx(fit.icc().to_dict())
    ok = boot.table[boot.table["converged"]]
    beta = ok[list(fit.fixef.index)].to_numpy()
    parts = variance_parts(beta, ok[["theta_Subject.(Intercept)"]].to_numpy(), ok["sigma"].to_numpy(),
                           fit.design)
    adjusted = parts["random"] / (parts["random"] + parts["residual"])
    marginal = parts["fixed"] / parts.sum(axis=1)
    assert icc.loc["adjusted", ["lower", "upper"]].tolist() == pytest.approx(np.quantile(adjusted, [0.05, 0.95]))
    assert r2.loc["marginal", ["lower", "upper"]].tolist() == pytest.approx(np.quantile(marginal, [0.05, 0.95]))
    assert (icc["lower"] < icc["estimate"]).all() and (icc["estimate"] < icc["upper"]).all()
