"""Bad input raises jaxlmm's own exceptions, naming the offending formula part or column.

Every case asserts the exception class (FormulaError or DataError beneath
JaxLMMError, itself a ValueError) and that the message names the culprit;
none of them reaches the optimizer, so they cost no compilation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from conftest import get_model
from jaxlmm import DataError, FormulaError, JaxLMMError
from jaxlmm.design import build_design

SLEEP = jaxlmm.datasets.load("sleepstudy")
SLOPE = "Reaction ~ Days + (Days | Subject)"


def sleep(**columns) -> pd.DataFrame:
    """sleepstudy with extra or replaced columns."""
    d = SLEEP.copy()
    for k, v in columns.items():
        d[k] = v
    return d


def raises(exc, formula, data, *names):
    """Building the design raises ``exc``, and the message contains every one of ``names``."""
    with pytest.raises(exc) as info:
        build_design(formula, data)
    for name in names:
        assert name in str(info.value), (name, str(info.value))
    return str(info.value)


def test_exception_hierarchy():
    assert issubclass(FormulaError, JaxLMMError) and issubclass(DataError, JaxLMMError)
    assert issubclass(JaxLMMError, ValueError)


# ---- formula syntax --------------------------------------------------------
SYNTAX = [
    ("Reaction Days + (1 | Subject)", ["'~'"]),
    ("Reaction ~ Days ~ (1 | Subject)", ["'~'"]),
    ("Reaction ~ Days + (1 | Subject", ["Unbalanced", "not closed"]),
    ("Reaction ~ Days + 1 | Subject)", ["Unbalanced", "')'"]),
    ("Reaction ~ Days + 1 | Subject", ["bar '|' outside parentheses"]),
    ("Reaction ~ Days + ( | Subject)", ["Empty random-effect term", "( | Subject)"]),
    ("Reaction ~ Days + (1 | )", ["names no grouping factor", "(1 | )"]),
    ("Reaction ~ Days + ()", ["Empty parentheses"]),
    ("Reaction ~ Days + (1 | Subject | Days)", ["more than one bar"]),
    ("Reaction ~ Days + (1 | Subject + Days)", ["Grouping factor 'Subject + Days'"]),
    ("Reaction ~ Days $ Subject + (1 | Subject)", ["Unknown operator '$'", "Reaction ~ Days $ Subject"]),
    ("Reaction ~ Days + (Days ? 1 | Subject)", ["Unknown operator '?'", "Days ? 1"]),
    ("Reaction | Days ~ (1 | Subject)", ["response"]),
    (" ~ Days + (1 | Subject)", ["no response"]),
    ("Reaction ~ ", ["nothing right of '~'"]),
    ("Reaction ~ . + (1 | Subject)", ["'.' (all other columns)"]),
]


@pytest.mark.parametrize("formula,names", SYNTAX, ids=[s for s, _ in SYNTAX])
def test_formula_syntax_errors(formula, names):
    raises(FormulaError, formula, SLEEP, *names)


def test_formula_must_be_text():
    raises(FormulaError, 3, SLEEP, "string")


# ---- names -----------------------------------------------------------------
UNKNOWN = [
    ("Reaction ~ Dayz + (1 | Subject)", ["'Dayz'", "Did you mean 'Days'"]),
    ("Reacton ~ Days + (1 | Subject)", ["'Reacton'", "Did you mean 'Reaction'"]),
    ("Reaction ~ Days + (1 | Subjct)", ["'Subjct'", "(1 | Subjct)", "Did you mean 'Subject'"]),
    ("Reaction ~ Days + (Dys | Subject)", ["'Dys'", "Did you mean 'Days'"]),
    ("Reaction ~ Days + (1 | Subject/Nite)", ["'Nite'"]),
    ("Reaction ~ foo(Days) + (1 | Subject)", ["'foo'", "function"]),
]


@pytest.mark.parametrize("formula,names", UNKNOWN, ids=[s for s, _ in UNKNOWN])
def test_unknown_names_suggest_the_closest_column(formula, names):
    raises(FormulaError, formula, SLEEP, *names)


def test_dotted_column_names_as_in_r():
    d = sleep(**{"my.days": SLEEP.Days, "my.subject": SLEEP.Subject})
    for f in ("Reaction ~ my.days + (my.days | my.subject)", "Reaction ~ `my.days` + (`my.days` | my.subject)"):
        design = build_design(f, d)
        assert design.fixed_names == ("(Intercept)", "my.days")
        assert design.terms[0].colnames == ("(Intercept)", "my.days") and design.terms[0].name == "my.subject"
    raises(FormulaError, "Reaction ~ my.dayz + (1 | my.subject)", d, "'my", "Did you mean 'my.days'")


def test_columns_inside_stateful_transforms_are_used():
    """x in poly(x, 2) or center(x) is a column the formula uses: the rows where it is
    missing are dropped."""
    d = sleep(Days=SLEEP.Days.astype(float))
    d.loc[4, "Days"] = np.nan
    with pytest.warns(jaxlmm.MissingDataWarning, match="'Days' \\(1\\)"):
        design = build_design("Reaction ~ center(Days) + (poly(Days, 2) | Subject)", d)
    days = d.Days.dropna().to_numpy()
    assert design.n == 179
    np.testing.assert_allclose(design.X[:, 1], days - days.mean(), atol=1e-12)
    assert design.terms[0].colnames == ("(Intercept)", "poly(Days, 2)1", "poly(Days, 2)2")


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


# ---- arguments -------------------------------------------------------------
@pytest.fixture(scope="module")
def intercept_model():
    return get_model("Reaction ~ Days + (1 | Subject)", "sleepstudy")


def test_bad_method(intercept_model):
    with pytest.raises(JaxLMMError, match="'bfgs'"):
        intercept_model.fit(method="bfgs")


@pytest.mark.parametrize("theta,what", [([1.0, 2.0], "1 entries"), ([np.nan], "finite"), (["a"], "numbers")])
def test_bad_theta_for_deviance(intercept_model, theta, what):
    with pytest.raises(JaxLMMError, match=what):
        intercept_model.deviance(theta)
    with pytest.raises(JaxLMMError, match="theta0"):
        intercept_model.fit(theta0=theta)


@pytest.mark.parametrize("max_iter", [0, -3, 2.5, True])
def test_bad_max_iter(intercept_model, max_iter):
    with pytest.raises(JaxLMMError, match="max_iter"):
        intercept_model.fit(max_iter=max_iter)


def test_bad_residual_kind():
    from conftest import get_fit

    with pytest.raises(JaxLMMError, match="'pearson'"):
        get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy").residuals(kind="pearson")
