"""Testing and sizing variance components against R: RLRsim, lmerTest's ranova, performance.

The reference values are written by tests/reference/varcomp.R (varcomp.json).
Null samples are compared with RLRsim's within Monte-Carlo error: both have
100,000 draws, so a share p differs by about sqrt(2 p (1 - p) / 1e5); the
tests allow 4.5 such standard errors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import get_fit, load_json

import jaxlmm
from jaxlmm.distributions import chi2_sf
from jaxlmm.icc import variance_parts

REF = load_json("varcomp.json")
EXACT, RANOVA, SHARES = REF["exact"], REF["ranova"], REF["shares"]
NSIM = 100_000

SLEEP_A = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"
DYE = "Yield ~ 1 + (1 | Batch)"


def _fit(formula, dataset, reml=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
        return get_fit(formula, dataset, reml=reml)


def _close_share(share, ref_share, n=NSIM):
    se = np.sqrt(2 * max(ref_share * (1 - ref_share), 1.0 / n) / n)
    assert abs(share - ref_share) < 4.5 * se, (share, ref_share, se)


def _check_null(test, ref):
    """The null sample against RLRsim's: mass at zero and the tail beyond RLRsim's quantiles."""
    s = test.sample
    assert s.shape == (NSIM,) and np.all(s >= 0)
    _close_share(np.mean(s == 0), ref["null_mass_at_zero"])
    for prob, q in zip(ref["null_probs"], ref["null_quantiles"]):
        if q > 0:
            _close_share(np.mean(s > q), 1 - prob)


@pytest.fixture(scope="module")
def tests():
    """Every exact test of the reference, 100,000 draws each."""
    sleep_ml = _fit("Reaction ~ Days + (1 | Subject)", "sleepstudy", reml=False)
    return {
        "sleepstudy_slope": jaxlmm.exact_rlrt(_fit(SLEEP_A, "sleepstudy"), term="Subject.Days", nsim=NSIM),
        "dyestuff": jaxlmm.exact_rlrt(_fit(DYE, "dyestuff"), nsim=NSIM),
        "dyestuff2": jaxlmm.exact_rlrt(_fit(DYE, "dyestuff2"), nsim=NSIM),
        "dyestuff_ml": jaxlmm.exact_lrt(_fit(DYE, "dyestuff", reml=False), nsim=NSIM),
        "sleepstudy_intercept_ml_q1": jaxlmm.exact_lrt(
            sleep_ml, null=_fit("Reaction ~ 1", "sleepstudy", reml=False), nsim=NSIM
        ),
    }


@pytest.mark.parametrize("case", list(EXACT))
def test_exact_statistic_and_eigenvalues_equal_rlrsim(tests, case):
    t, ref = tests[case], EXACT[case]
    assert t.method == ("RLRT" if ref["reml"] else "LRT")
    assert t.statistic == pytest.approx(ref["statistic"], abs=1e-6)
    np.testing.assert_allclose(t.mu, ref["mu"], atol=1e-10)
    if not ref["reml"]:
        np.testing.assert_allclose(t.xi, ref["xi"], atol=1e-10)
        assert t.q == ref["q"]
    assert t.formula_null == {
        "sleepstudy_slope": "Reaction ~ Days + (1 | Subject)",
        "dyestuff_ml": "Yield ~ 1",
        "sleepstudy_intercept_ml_q1": "Reaction ~ 1",
    }.get(case, "Yield ~ 1")


@pytest.mark.parametrize("case", list(EXACT))
def test_exact_null_sample_and_p_value_within_monte_carlo_error(tests, case):
    t, ref = tests[case], EXACT[case]
    _check_null(t, ref)
    if t.statistic > 0:
        assert ref["nsim"] == NSIM
        _close_share(t.p_value, ref["p_value"])
        assert t.p_value == np.mean(t.sample > t.statistic)
    else:
        # Dyestuff2's fit is singular: the statistic is 0 and P(RLRT >= 0) = 1. RLRsim's 5.7e-14
        # (rounding) gives it P(RLRT > 5.7e-14), the null law's mass above zero.
        assert case == "dyestuff2" and t.p_value == 1.0
        _close_share(np.mean(t.sample > ref["statistic"]), ref["p_value"])


def test_exact_rlrt_names_the_term_in_several_ways_and_is_reproducible():
    fit = _fit(SLEEP_A, "sleepstudy")
    a = jaxlmm.exact_rlrt(fit, term="(0 + Days | Subject)", nsim=1000, seed=3)
    b = jaxlmm.exact_rlrt(fit, term="0+Days|Subject", nsim=1000, seed=3)
    c = jaxlmm.exact_rlrt(fit, term=1, nsim=9000, seed=3)
    assert a.term == "(0 + Days | Subject)" and a.statistic == b.statistic == c.statistic
    np.testing.assert_array_equal(a.sample, b.sample)
    np.testing.assert_array_equal(a.sample, c.sample[:1000])  # draw i depends on the seed and i only
    d = jaxlmm.exact_rlrt(fit, term="Subject.(Intercept)", nsim=1000, seed=4)
    assert d.term == "(1 | Subject)" and not np.array_equal(d.sample, a.sample)
    # the intercept tested with the slope in both models: the null fit keeps the slope
    assert d.formula_null == "Reaction ~ Days + (0 + Days | Subject)"
    null = get_fit("Reaction ~ Days + (0 + Days | Subject)", "sleepstudy")
    assert d.statistic == pytest.approx(2 * (fit.loglik - null.loglik), abs=1e-9)


def test_exact_tests_refuse_what_they_cannot_test():
    fit = _fit(SLEEP_A, "sleepstudy")
    with pytest.raises(jaxlmm.JaxLMMError, match="name the one to test"):
        jaxlmm.exact_rlrt(fit)
    with pytest.raises(jaxlmm.JaxLMMError, match="is not a random-effect term"):
        jaxlmm.exact_rlrt(fit, term="(1 | Days)")
    with pytest.raises(jaxlmm.JaxLMMError, match="nsim"):
        jaxlmm.exact_rlrt(fit, term=0, nsim=0)
    with pytest.raises(jaxlmm.JaxLMMError, match="one random-effect term"):
        jaxlmm.exact_lrt(fit)
    slope = get_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    with pytest.raises(jaxlmm.JaxLMMError, match="one variance"):
        jaxlmm.exact_rlrt(slope)


def test_exact_rlrt_refits_an_ml_fit_by_reml():
    ml = _fit(DYE, "dyestuff", reml=False)
    with pytest.warns(jaxlmm.JaxLMMWarning, match="refitting the model by REML"):
        t = jaxlmm.exact_rlrt(ml, nsim=10)
    assert t.statistic == pytest.approx(EXACT["dyestuff"]["statistic"], abs=1e-6)


# ---- ranova ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case,dataset", [("sleepstudy_slope", "sleepstudy"), ("penicillin", "penicillin")])
def test_ranova_equals_lmertest(case, dataset):
    ref = RANOVA[case]
    table = jaxlmm.ranova(get_fit(ref["formula"], dataset))
    assert list(table.index) == ref["rows"]
    np.testing.assert_array_equal(table["npar"], ref["npar"])
    np.testing.assert_allclose(table["logLik"], ref["logLik"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(table["AIC"], ref["AIC"], rtol=0, atol=2e-6)
    lrt = np.array(ref["LRT"][1:], dtype=float)
    np.testing.assert_allclose(table["LRT"].iloc[1:], lrt, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(table["Df"].iloc[1:], ref["Df"][1:])
    np.testing.assert_allclose(table["Pr(>Chisq)"].iloc[1:], np.array(ref["p"][1:], dtype=float), rtol=1e-5)
    assert table.iloc[0, 3:].isna().all()
    # each row removes one variance (with its covariance): the 50:50 mixture of chi2_{df-1} and chi2_df
    for x, df, pb in zip(lrt, ref["Df"][1:], table["p_boundary"].iloc[1:]):
        assert pb == pytest.approx(0.5 * float(chi2_sf(x, df - 1)) + 0.5 * float(chi2_sf(x, df)), rel=1e-6)
        assert pb < float(chi2_sf(x, df))


def test_ranova_reduces_and_removes_terms_as_lmertest():
    table = jaxlmm.ranova(_fit(SLEEP_A, "sleepstudy"))
    # (0 + Days | Subject) becomes (1 | Subject), as lmerTest's get_newforms does
    assert list(table.index) == ["<none>", "(1 | Subject)", "Days in (0 + Days | Subject)"]
    assert table.attrs["models"]["(1 | Subject)"] == "Reaction ~ Days + (0 + Days | Subject)"
    assert table.attrs["models"]["Days in (0 + Days | Subject)"] == "Reaction ~ Days + (1 | Subject) + (1 | Subject)"
    assert np.isnan(table["p_boundary"].iloc[2]) and table["Df"].iloc[2] == 0
    one = jaxlmm.ranova(_fit(DYE, "dyestuff"))
    assert list(one.index) == ["<none>", "(1 | Batch)"]
    assert one["LRT"].iloc[1] == pytest.approx(EXACT["dyestuff"]["statistic"], abs=1e-6)


# ---- icc and r2 -----------------------------------------------------------------------------

SHARE_DATA = {"sleepstudy_slope": "sleepstudy", "sleepstudy_intercept": "sleepstudy", "penicillin": "penicillin"}
LME4_FITS = {"sleepstudy_slope": "sleepstudy_slope", "sleepstudy_intercept": "sleepstudy_intercept",
             "penicillin": "penicillin_crossed"}


@pytest.mark.parametrize("case", list(SHARES))
def test_variance_parts_at_lme4s_estimates_equal_insight(case):
    from conftest import load_fit_reference

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
