"""Rows to model matrices (jaxlmm.design): bad data named, missing values, rank deficiency,
column types, prior weights.

Bad data raise DataError (beneath JaxLMMError) naming the column; the fits
with dropped rows or columns equal the fits of the data cleaned by hand.
Prior weights (lme4's ``weights=``) against lme4: tests/reference/weights.R
writes weights.json.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from checks import assert_same_fit, fit_quietly, of_type
from jaxlmm import DataError, MissingDataWarning, RankDeficiencyWarning
from models import data_of, get_fit, weighted_fit
from checks import design_raises as raises
from checks import sleep_with as sleep
from oracle import SLOPE, WEIGHTS

SLEEP = jaxlmm.datasets.load("sleepstudy")
N = 180
REF = WEIGHTS  # prior weights: lme4's values, from tests/reference/weights.R
INTERCEPT = REF["cases"]["intercept"]["formula"]


# ---- the data --------------------------------------------------------------


def test_duplicated_column():
    d = pd.concat([SLEEP, SLEEP[["Days"]]], axis=1)
    raises(DataError, SLOPE, d, "'Days'", "more than once")


def test_data_must_be_a_data_frame():
    for bad in ([1, 2, 3], SLEEP.to_numpy(), "sleepstudy"):
        raises(DataError, SLOPE, bad, "DataFrame")
    raises(DataError, SLOPE, {"Reaction": [1.0, 2.0], "Days": [1.0]}, "dict of columns")
    raises(DataError, SLOPE, SLEEP.iloc[:0], "no rows")


def test_response_must_be_numeric():
    raises(DataError, "s ~ Days + (1 | Subject)", sleep(s=SLEEP.Subject.astype(str)), "'s'", "numeric")
    raises(DataError, "Subject ~ Days + (1 | Subject)", SLEEP, "'Subject'", "numeric")
    raises(DataError, "r ~ Days + (1 | Subject)", sleep(r=SLEEP.Reaction.astype(str)), "'r'", "to_numeric")
    raises(DataError, "Reaction + Days ~ (1 | Subject)", SLEEP, "'Reaction + Days'")


def test_all_missing_columns():
    raises(DataError, "r ~ Days + (1 | Subject)", sleep(r=np.nan), "'r'", "only missing")
    raises(DataError, "Reaction ~ x + (1 | Subject)", sleep(x=np.nan), "'x'", "only missing")


def test_empty_after_dropping_missing_rows():
    odd = np.arange(len(SLEEP)) % 2 == 1
    d = sleep(Reaction=np.where(odd, np.nan, SLEEP.Reaction), x=np.where(odd, 1.0, np.nan))
    msg = raises(DataError, "Reaction ~ x + (1 | Subject)", d, "No rows are left", "'Reaction' (90)", "'x' (90)")
    assert "Days" not in msg


@pytest.mark.parametrize("column", ["Reaction", "Days"])
def test_infinite_values(column):
    d = sleep(**{column: SLEEP[column].astype(float)})
    d.loc[3, column] = -np.inf
    raises(DataError, SLOPE, d, f"'{column}'", "infinite")


def test_non_finite_after_a_transform():
    """log of zero or of a negative number: named, never a NaN fit (lme4: 'NA/NaN/Inf in x')."""
    raises(DataError, "Reaction ~ log(Days) + (1 | Subject)", SLEEP, "'log(Days)'", "non-finite")
    raises(DataError, "Reaction ~ 1 + (log(Days) | Subject)", SLEEP, "'log(Days)'", "(log(Days) | Subject)")
    d = sleep(Reaction=SLEEP.Reaction - 300)
    raises(DataError, "log(Reaction) ~ Days + (1 | Subject)", d, "'log(Reaction)'", "non-finite")


def test_values_too_large_for_float64():
    raises(DataError, SLOPE, sleep(Reaction=SLEEP.Reaction * 1e160), "'Reaction'", "rescale")
    raises(DataError, SLOPE, sleep(Days=SLEEP.Days * 1e200), "'Days'", "rescale")
    raises(DataError, SLOPE, sleep(Reaction=SLEEP.Reaction * 1e-160), "'Reaction'", "rescale")


def test_unsupported_column_types():
    start = pd.Timestamp("2020-01-01")
    raises(DataError, "Reaction ~ t + (1 | Subject)", sleep(t=start + pd.to_timedelta(SLEEP.Days, "D")), "'t'", "date")
    raises(DataError, "Reaction ~ t + (1 | Subject)", sleep(t=pd.to_timedelta(SLEEP.Days, "D")), "'t'", "time")
    raises(DataError, "Reaction ~ Days + (1 | Subject)", sleep(Reaction=SLEEP.Reaction + 1j), "'Reaction'", "complex")
    # numbers in an object column: neither silently a factor with levels '0', '1', ... nor numbers
    raises(DataError, "Reaction ~ Days + (1 | Subject)", sleep(Days=SLEEP.Days.astype(object)), "'Days'", "to_numeric")
    # ... while a categorical of numbers is a factor, as R's factor of numbers
    cat = jaxlmm.lmm("Reaction ~ D + (1 | S)", sleep(D=pd.Categorical(SLEEP.Days), S=pd.Categorical(SLEEP.Subject.astype(int))))
    plain = jaxlmm.lmm("Reaction ~ factor(Days) + (1 | Subject)", SLEEP)
    assert cat.objective == pytest.approx(plain.objective, rel=1e-10) and len(cat.fixef) == 10


def test_constant_response():
    raises(DataError, SLOPE, sleep(Reaction=5.0), "'Reaction'", "constant")


def test_grouping_factor_with_one_level():
    raises(DataError, "Reaction ~ Days + (1 | g)", sleep(g="a"), "'g'", "1 level")
    # one level left after the rows with a missing value are dropped
    g = np.where(SLEEP.Days == 0, "a", None)
    with pytest.warns(jaxlmm.MissingDataWarning):
        raises(DataError, "Reaction ~ 1 + (1 | g)", sleep(g=g), "'g'", "1 level")


def test_grouping_factor_with_a_level_per_observation():
    """lme4: 'number of levels of each grouping factor must be < number of observations'."""
    msg = raises(DataError, "Reaction ~ Days + (1 | g)", sleep(g=np.arange(len(SLEEP))), "'g'", "180 levels")
    assert "less than the number of observations" in msg
    # per term: the other, valid term does not hide it
    raises(DataError, "Reaction ~ Days + (1 | Subject) + (1 | g)", sleep(g=np.arange(180)), "'g'")


def test_more_random_effects_than_observations():
    """lme4's check.nobs.vs.nRE: a term needs levels x columns < n."""
    d = sleep(g=np.arange(180) // 2)  # 90 levels x 2 columns = 180 random effects
    raises(DataError, "Reaction ~ Days + (Days | g)", d, "'g'", "90 x 2 = 180")


def test_between_group_factor_as_random_slope():
    """A factor constant within each subject cannot carry a random slope (covariance not identifiable)."""
    treat = np.where(SLEEP.Subject.cat.codes % 2 == 0, "A", "B")
    raises(DataError, "Reaction ~ treat + (treat | Subject)", sleep(treat=treat), "'treatB'", "(treat | Subject)")
    raises(DataError, "Reaction ~ (0 + z | Subject)", sleep(z=0.0), "'z'")


def test_too_few_observations_for_the_fixed_effects():
    d = SLEEP.iloc[:4].copy()
    d["Subject"] = ["a", "a", "b", "b"]
    d["x"] = [1.0, 3.0, 2.0, 7.0]
    d["z"] = [1.0, 5.0, 3.0, 4.0]
    d["w"] = [2.0, 1.0, 0.0, 1.0]
    with pytest.warns(jaxlmm.RankDeficiencyWarning, match="w"):
        raises(DataError, "Reaction ~ Days + x + z + w + (1 | Subject)", d, "4 observations", "fixed-effect")


# ---- missing values ----------------------------------------------------------


def test_missing_values_are_dropped_counted_and_warned():
    d = SLEEP.copy()
    d["Subject"] = d["Subject"].astype(object)
    d.loc[[0, 5], "Reaction"] = np.nan
    d.loc[7, "Days"] = np.nan
    d.loc[9, "Subject"] = None
    fit, caught = fit_quietly(SLOPE, d)
    (w,) = of_type(caught, MissingDataWarning)
    for part in ("4 row(s)", "'Reaction' (2)", "'Days' (1)", "'Subject' (1)"):
        assert part in str(w.message)
    assert fit.n_dropped == 4 and fit.nobs == N - 4
    clean = d.dropna()
    clean["Subject"] = pd.Categorical(clean["Subject"], categories=SLEEP.Subject.cat.categories)
    ref, caught = fit_quietly(SLOPE, clean)
    assert not of_type(caught, MissingDataWarning)
    assert_same_fit(fit, ref)


def test_nullable_integer_column_with_missing_value():
    d = SLEEP.copy()
    d["Days"] = d["Days"].astype("Int64")
    d.loc[3, "Days"] = pd.NA
    fit, caught = fit_quietly(SLOPE, d)
    assert len(of_type(caught, MissingDataWarning)) == 1 and fit.n_dropped == 1
    assert_same_fit(fit, fit_quietly(SLOPE, SLEEP.drop(index=3))[0])


# ---- rank deficiency ---------------------------------------------------------


def test_collinear_column_is_dropped_and_fit_equals_fit_without_it():
    """lme4: 'fixed-effect model matrix is rank deficient so dropping 1 column / coefficient'."""
    d = SLEEP.assign(x=2.0 * SLEEP.Days + 3.0)
    fit, caught = fit_quietly("Reaction ~ Days + x + (Days | Subject)", d)
    (w,) = of_type(caught, RankDeficiencyWarning)
    assert "dropping 1 column(s): x" in str(w.message)
    assert fit.design.dropped_columns == ("x",)
    assert_same_fit(fit, get_fit(SLOPE, "sleepstudy"))


def test_the_later_collinear_column_is_the_one_dropped():
    """With x first, Days is dropped: Days = (x - 3)/2 gives beta_x = beta_D/2, b0' = b0 - 3 beta_D/2."""
    d = SLEEP.assign(x=2.0 * SLEEP.Days + 3.0)
    fit, caught = fit_quietly("Reaction ~ x + Days + (Days | Subject)", d)
    assert "dropping 1 column(s): Days" in str(of_type(caught, RankDeficiencyWarning)[0].message)
    ref = get_fit(SLOPE, "sleepstudy")
    b0, bd = ref.fixef["(Intercept)"], ref.fixef["Days"]
    assert list(fit.fixef.index) == ["(Intercept)", "x"]
    np.testing.assert_allclose(fit.fixef.to_numpy(), [b0 - 1.5 * bd, bd / 2], rtol=1e-7)
    # X -> X A with det A = 2: log|R_X|^2 gains 2 log 2
    assert fit.objective == pytest.approx(ref.objective + 2 * np.log(2.0), rel=1e-10)


# ---- column types ------------------------------------------------------------


def test_float32_and_integer_columns_are_fitted_in_float64():
    d = SLEEP.assign(Reaction=SLEEP.Reaction.astype(np.float32), Days=SLEEP.Days.astype(np.int16))
    fit, caught = fit_quietly(SLOPE, d)
    assert not caught
    assert fit.design.y.dtype == np.float64 and fit.theta.dtype == np.float64
    same = SLEEP.assign(Reaction=d.Reaction.astype(np.float64), Days=d.Days.astype(np.float64))
    assert_same_fit(fit, fit_quietly(SLOPE, same)[0])
    # the float32 rounding moves the fit by no more than float32's precision
    assert fit.objective == pytest.approx(get_fit(SLOPE, "sleepstudy").objective, rel=1e-6)


def test_boolean_predictor_and_integer_grouping_codes():
    """bool is R's logical: a factor FALSE/TRUE as a term, 0/1 in arithmetic; integer group codes are a factor."""
    formula = "Reaction ~ late + (1 | g)"
    late = (SLEEP.Days > 4).to_numpy()
    codes = SLEEP.Subject.cat.codes.to_numpy() * 7 + 100
    fit, _ = fit_quietly(formula, SLEEP.assign(late=late, g=codes))
    ref, _ = fit_quietly(formula, SLEEP.assign(late=np.where(late, "TRUE", "FALSE"), g=SLEEP.Subject))
    assert_same_fit(fit, ref)
    assert list(fit.fixef.index) == ["(Intercept)", "lateTRUE"]
    arith, _ = fit_quietly("Reaction ~ I(1 * late) + (1 | g)", SLEEP.assign(late=late, g=codes))
    np.testing.assert_allclose(arith.fixef.to_numpy(), fit.fixef.to_numpy(), rtol=1e-8)
    assert list(fit.ranef.level) == [str(c) for c in np.unique(codes)]


# ---- prior weights -------------------------------------------------------------


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
        (["a"] * 180, jaxlmm.DataError, "weights= must be real numbers"),
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
