"""Tests of the random-effect terms (jaxlmm.ranova) against lmerTest's ranova.

The reference values are written by tests/reference/varcomp.R (varcomp.json).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jaxlmm
from jaxlmm.distributions import chi2_sf
from models import get_fit
from oracle import DYE, load_json

REF = load_json("varcomp.json")
EXACT, RANOVA = REF["exact"], REF["ranova"]


SLEEP_A = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"


def _fit(formula, dataset, reml=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
        return get_fit(formula, dataset, reml=reml)


@pytest.mark.parametrize(
    "case,dataset", [("sleepstudy_slope", "sleepstudy"), ("penicillin", "penicillin"), ("sleepstudy_uncorr", "sleepstudy")]
)
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
    # ... which is the (1 | Subject) already there: one term, one variance fewer (lmerTest's npar 4, Df 1)
    assert table.attrs["models"]["Days in (0 + Days | Subject)"] == "Reaction ~ Days + (1 | Subject)"
    assert list(table["npar"]) == [5, 4, 4] and list(table["Df"].iloc[1:]) == [1, 1]
    one = jaxlmm.ranova(_fit(DYE, "dyestuff"))
    assert list(one.index) == ["<none>", "(1 | Batch)"]
    assert one["LRT"].iloc[1] == pytest.approx(EXACT["dyestuff"]["statistic"], abs=1e-6)


def test_ranova_merges_a_reduced_term_with_its_twin_in_three_terms():
    ref = RANOVA["sleepstudy_three"]
    table = jaxlmm.ranova(_fit(ref["formula"], "sleepstudy"))
    assert list(table.index) == ref["rows"]
    np.testing.assert_array_equal(table["npar"], ref["npar"])
    np.testing.assert_array_equal(table["Df"].iloc[1:], ref["Df"][1:])
    assert table.attrs["models"]["Days in (0 + Days | Subject)"] == (
        "Reaction ~ Days + (1 | Subject) + (0 + I(Days^2) | Subject)"
    )
    # lme4 warned of unfinished convergence on two of these four fits (max|grad| 0.004 and 0.027):
    # ours reach its likelihood or a higher one, and match it on the other two
    gain = table["logLik"].to_numpy() - np.array(ref["logLik"])
    assert np.all(gain > -1e-6) and np.all(gain < 1e-3)
    assert np.sum(np.abs(gain) < 1e-6) >= 2
