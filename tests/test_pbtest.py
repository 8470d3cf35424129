"""The parametric bootstrap LRT (jaxlmm.pbtest) against pbkrtest, closed forms and anova."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import stats

import jaxlmm
from checks import raises
from models import get_fit
from oracle import DYE0, DYE1, REF, simulated_responses

SLEEP = "Reaction ~ Days + (Days | Subject)"


def test_pb_test_sleepstudy_days_matches_pbkrtest():
    ref = json.loads((REF / "inference" / "inference.json").read_text())["anova_fixed_days"]
    f0 = get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False)
    f1 = get_fit(SLEEP, "sleepstudy", reml=False)
    res = jaxlmm.pb_test(f0, f1, n=256, seed=0, progress=False)
    assert res.lrt == pytest.approx(ref["chisq"][1], rel=1e-6)
    assert res.df == ref["df"][1] == 1
    assert res.p_chisq == pytest.approx(ref["p"][1], rel=1e-5)
    # pbkrtest: p ~ 0.001; with 256 replicates at most 1 exceedance is expected (p <= 2/257)
    assert res.n_used == 256 and res.n_failed == 0
    assert res.p_value <= 0.01
    assert res.p_value == pytest.approx((1 + np.sum(res.table["lrt"] >= res.lrt)) / 257)
    # under H0 (away from the boundary) LRT* is close to chi^2(1): median 0.455, SE ~0.07 at B = 256
    assert 0.25 < np.median(res.table["lrt"]) < 0.75
    # the alternative contains the null: its refit is never worse (some first refits end at a
    # local optimum and are refitted from the null's optimum)
    assert res.table["lrt"].min() >= -1e-6


def test_pb_test_variance_component_with_a_null_without_random_effects():
    f0 = get_fit(DYE0, "dyestuff", reml=False)
    f1 = get_fit(DYE1, "dyestuff", reml=False)
    ml_ref = json.loads((REF / "fits" / "dyestuff.json").read_text())["ML"]
    y = f0.design.y
    dev0 = len(y) * (1 + np.log(2 * np.pi * np.sum((y - y.mean()) ** 2) / len(y)))
    res = jaxlmm.pb_test(f0, f1, n=256, seed=2, progress=False)
    assert res.lrt == pytest.approx(dev0 - ml_ref["objective"], rel=1e-6)
    # the null refits are closed form: n (1 + log(2 pi RSS/n)) of each simulated response
    ys = simulated_responses(f0, 256, seed=2)
    dev0_star = [len(v) * (1 + np.log(2 * np.pi * np.sum((v - v.mean()) ** 2) / len(v))) for v in ys]
    np.testing.assert_allclose(res.table["deviance_null"], dev0_star, rtol=1e-10)
    # H0 on the boundary: LRT* is 0 with probability ~1/2 or more; the chi^2(1) p-value is conservative
    zero = np.mean(res.table["lrt"] < 1e-6)
    assert 0.35 < zero < 0.85
    assert res.p_value < res.p_chisq
    k = np.sum(res.table["lrt"] >= res.lrt)
    assert res.p_value == pytest.approx((1 + k) / 257)
    assert stats.binomtest(int(k), 256, 0.5 * res.p_chisq).pvalue > 1e-3  # near half the chi^2 p


def test_pb_test_refits_reml_fits_by_ml_and_checks_its_models():
    f0 = get_fit(DYE0, "dyestuff", reml=True)
    f1 = get_fit(DYE1, "dyestuff", reml=True)
    with pytest.warns(jaxlmm.JaxLMMWarning, match="refitting"):
        res = jaxlmm.pb_test(f0, f1, n=256, seed=2, progress=False)
    ml = jaxlmm.pb_test(get_fit(DYE0, "dyestuff", reml=False), get_fit(DYE1, "dyestuff", reml=False), n=256, seed=2, progress=False)
    assert res.lrt == pytest.approx(ml.lrt, rel=1e-8) and res.p_value == ml.p_value
    with pytest.raises(jaxlmm.JaxLMMError, match="fewer parameters"):
        jaxlmm.pb_test(f1, f0, n=10, progress=False)
    other = get_fit("Yield ~ 1 + (1 | Batch)", "dyestuff2")
    with pytest.raises(jaxlmm.JaxLMMError, match="same rows and response"):
        jaxlmm.pb_test(f0, other, n=10, progress=False)


def test_pb_test_refuses_non_nested_models_as_anova_does():
    small = get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy", reml=False)
    other = get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False)
    pb = raises(lambda: jaxlmm.pb_test(small, other, n=3, progress=False), "is not nested in")
    an = raises(lambda: jaxlmm.anova(small, other), "is not nested in")
    assert pb == an  # one check (jaxlmm.anova.require_nested) for both
    res = jaxlmm.pb_test(small, other, n=3, progress=False, check_nested=False)
    assert res.df == other.npar - small.npar


def test_pb_test_replicates_equal_separate_ml_refits():
    """Each replicate's two deviances are those of lmm fitting its simulated response alone (ML), the
    alternative's first refit having started at its null's optimum (same random-effect terms)."""
    f0 = get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False)
    f1 = get_fit(SLEEP, "sleepstudy", reml=False)
    res = jaxlmm.pb_test(f0, f1, n=48, seed=5, progress=False)
    frame = jaxlmm.datasets.load("sleepstudy")
    for i, y in enumerate(simulated_responses(f0, 48, seed=5)[:12]):
        alone = frame.assign(Reaction=y)
        for formula, column in (("Reaction ~ 1 + (Days | Subject)", "deviance_null"), (SLEEP, "deviance_alt")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
                single = jaxlmm.lmm(formula, alone, reml=False)
            assert res.table[column].iloc[i] == pytest.approx(single.objective, rel=1e-8)
