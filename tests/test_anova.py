"""Model comparison (jaxlmm.anova): lme4's tables, boundary p-values, labels, errors, weighted fits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats as st

import jaxlmm
from models import data_of, get_fit, weighted_fit
from oracle import DYE, DYE0, DYE1, SLOPE, WEIGHTS, load_json

INF = load_json("inference/inference.json")
REF = WEIGHTS  # prior weights: lme4's values, from tests/reference/weights.R


def _ref_vec(v):
    return np.array([np.nan if x == "NA" else x for x in np.atleast_1d(v)], dtype=np.float64)


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


def test_anova_of_models_with_as_many_parameters_has_no_p_value():
    # the same model with its terms in another order: Chisq 0 on 0 df, which lme4 (1.1-31) leaves NA
    a = get_fit("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", "sleepstudy", reml=False)
    b = get_fit("Reaction ~ Days + (0 + Days | Subject) + (1 | Subject)", "sleepstudy", reml=False)
    table = jaxlmm.anova(a, b)
    assert list(table["npar"]) == [5, 5] and table["Df"].iloc[1] == 0
    assert table["Chisq"].iloc[1] == pytest.approx(0.0, abs=1e-8)
    assert np.isnan(table["Pr(>Chisq)"].iloc[1]) and np.isnan(table["p_boundary"].iloc[1])
    assert "Pr(>Chisq)" in table.to_text()


def test_anova_errors():
    a = get_fit(DYE, "dyestuff", reml=False)
    with pytest.raises(jaxlmm.JaxLMMError, match="at least two"):
        jaxlmm.anova(a)
    with pytest.raises(jaxlmm.JaxLMMError, match="same"):
        jaxlmm.anova(a, get_fit(DYE, "dyestuff2", reml=False))
    with pytest.raises(jaxlmm.JaxLMMError, match="not nested"):
        jaxlmm.anova(get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False),
                     get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy", reml=False))


# ---- tables that read like lme4's -------------------------------------------------------


def _anova_pair():
    return get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False), get_fit(SLOPE, "sleepstudy", reml=False)


def test_anova_labels_columns_and_80_columns():
    f0, f1 = _anova_pair()
    table = jaxlmm.anova(f1, f0, names=["m1", "m0"])
    assert list(table.index) == ["m0", "m1"]  # sorted by npar, labels follow their models
    assert list(table.columns[:8]) == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
    assert table.attrs["models"] == {"m0": f0.formula, "m1": f1.formula}
    # lme4: anova(m0, m1): AIC 1785.5 and 1763.9, Chisq 23.537 on 1 df, p 1.226e-06 (chi2_1 law)
    chisq = 2 * (f1.loglik - f0.loglik)
    assert table.loc["m1", "Chisq"] == pytest.approx(chisq, rel=1e-12) == pytest.approx(23.5365, abs=1e-3)
    text = str(table)
    assert text == repr(table)
    lines = text.splitlines()
    assert lines[:3] == ["Models:", f"m0: {f0.formula}", f"m1: {f1.formula}"]
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    header = next(line for line in lines if "npar" in line)
    for col in ("npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"):
        assert col in header
    m1_line = next(line for line in lines if line.startswith("m1 "))
    assert m1_line.split() == ["m1", "6", "1763.9", "1783.1", "-875.97", "1751.9", "23.537", "1",
                               f"{table.loc['m1', 'Pr(>Chisq)']:.4g}", "***"]
    assert "[" not in text and "..." not in text


def test_anova_keyword_form_default_labels_and_errors():
    f0, f1 = _anova_pair()
    keyword = jaxlmm.anova(small=f0, big=f1)
    positional = jaxlmm.anova(f0, f1)
    assert list(keyword.index) == ["small", "big"] and list(positional.index) == ["model1", "model2"]
    np.testing.assert_array_equal(keyword.to_numpy(), positional.to_numpy())
    with pytest.raises(jaxlmm.JaxLMMError, match="names= has 1 label"):
        jaxlmm.anova(f0, f1, names=["only"])
    with pytest.raises(jaxlmm.JaxLMMError, match="distinct"):
        jaxlmm.anova(f0, f1, names=["m", "m"])
    with pytest.raises(jaxlmm.JaxLMMError, match="unexpected keyword argument 'refitt'"):
        jaxlmm.anova(f0, f1, refitt=False)


def test_anova_boundary_column_and_note_fit_in_80_columns():
    table = jaxlmm.anova(get_fit(DYE0, "dyestuff", reml=False), get_fit(DYE1, "dyestuff", reml=False))
    text = str(table)
    assert "p_boundary" in text and "Note:" in text and "Chisq" in text
    assert f"{table['p_boundary'].iloc[1]:.4g}" in text
    assert all(len(line) <= 80 for line in text.splitlines())


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
