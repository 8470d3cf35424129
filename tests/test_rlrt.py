"""Exact (restricted) likelihood-ratio tests of a variance component (jaxlmm.rlrt) against RLRsim.

The reference values are written by tests/reference/varcomp.R (varcomp.json).
Null samples are compared with RLRsim's within Monte-Carlo error: both have
100,000 draws, so a share p differs by about sqrt(2 p (1 - p) / 1e5); the
tests allow 4.5 such standard errors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jaxlmm
from models import get_fit
from oracle import DYE, load_json

REF = load_json("varcomp.json")
EXACT = REF["exact"]


NSIM = 100_000


SLEEP_A = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"


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
