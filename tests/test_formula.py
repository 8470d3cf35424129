"""Formulas (jaxlmm.terms, jaxlmm.formula): R's meaning against lme4, syntax errors that name the culprit,
code never executed, names that never change a model.

lme4's values: tests/reference/formulas.json, written by tests/reference/formulas.R.
Bad formulas raise FormulaError (beneath JaxLMMError, itself a ValueError) naming
the offending part; none of them reaches the optimizer.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import DataError, FormulaError, JaxLMMError
from jaxlmm.design import build_design
from jaxlmm.formula import parse_formula
from checks import design_raises as raises
from checks import sleep_with as sleep
from oracle import load_json

REF = load_json("formulas.json")


SLEEP = jaxlmm.datasets.load("sleepstudy")


def synthetic() -> pd.DataFrame:
    d = pd.DataFrame(REF["synthetic"])
    d["f"] = pd.Categorical(d["f"], categories=["lo", "mid", "hi"])  # R's level order, not sorted
    return d


def cake() -> pd.DataFrame:
    """lme4's cake: temperature is an ordered factor (R's polynomial contrasts)."""
    d = pd.DataFrame(REF["cake"])
    d["temperature"] = pd.Categorical(d["temperature"], categories=REF["cake_temperature_levels"], ordered=True)
    return d


SYN = synthetic()


DATA = {"sleepstudy": SLEEP, "synthetic": SYN, "cake": cake()}


def newdata(name: str) -> pd.DataFrame:
    d = pd.DataFrame(REF["newdata"][name])
    if name == "synthetic":
        d["f"] = pd.Categorical(d["f"], categories=["lo", "mid", "hi"])
    if name == "cake":  # not ordered here: the fit's contrasts are used all the same
        d["temperature"] = d["temperature"].astype(str)
    return d


_fits: dict = {}


def fit_case(case: str, data=None):
    ref = REF["cases"][case]
    key = (case, id(data))
    if key not in _fits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxlmm.JaxLMMWarning)
            kw = {"offset": ref["offset"]} if ref.get("offset") else {}
            _fits[key] = jaxlmm.lmm(ref["formula"], DATA[ref["data"]] if data is None else data, **kw)
    return _fits[key]


@pytest.mark.parametrize("case", sorted(REF["cases"]))
def test_formula_matches_lme4(case):
    ref = REF["cases"][case]
    fit = fit_case(case)
    assert fit.converged
    assert list(fit.fixef.index) == ref["beta_names"]
    np.testing.assert_allclose(fit.objective, ref["objective"], rtol=1e-6)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref["beta"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fit.sigma, ref["sigma"], rtol=1e-4)
    np.testing.assert_allclose(fit.fitted[:5], ref["fitted_head"], rtol=1e-5)
    if not ref.get("predict"):  # lme4 cannot predict this one (its JSON: {})
        return
    nd = newdata(ref["newdata"])
    np.testing.assert_allclose(fit.predict(nd), ref["predict"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.predict(nd, re=False), ref["predict_population"], rtol=1e-5, atol=1e-6)


def test_square_of_an_integer_or_float_column_is_a_power():
    """I(Days^2): R's power, whether Days is stored as integers or as floats (not Python's XOR)."""
    ref = REF["cases"]["square_int"]
    assert SLEEP["Days"].dtype.kind == "i"
    as_float = SLEEP.assign(Days=SLEEP["Days"].astype(np.float64))
    for data in (SLEEP, as_float):
        design = build_design(ref["formula"], data)
        np.testing.assert_array_equal(design.X[:, 2], SLEEP["Days"].to_numpy(np.float64) ** 2)
        # R reads ** as ^: the same column, under R's name
        same = build_design("Reaction ~ Days + I(Days**2) + (Days | Subject)", data)
        assert same.fixed_names == design.fixed_names and np.array_equal(same.X, design.X)
    fit = fit_case("square_int", as_float)
    np.testing.assert_allclose(fit.objective, ref["objective"], rtol=1e-6)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref["beta"], rtol=1e-4)


def test_offset_in_formula_and_argument_agree_and_carry_through():
    """offset(log(t)) and offset='log(t)' fit the same model; fitted, simulate, bootstrap include it."""
    a, b = fit_case("offset_formula"), fit_case("offset_argument")
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-12)
    np.testing.assert_allclose(a.fitted, b.fitted, rtol=1e-10)
    off = np.log(SYN["t"].to_numpy())
    np.testing.assert_allclose(a.design.offset, off)
    # fitted = X beta + Z b + offset; residuals are y - fitted
    np.testing.assert_allclose(a.residuals(), SYN["y"].to_numpy() - a.fitted, atol=1e-12)
    # numbers for offset= (lme4's usual form) give the same fit, and predict needs them for new rows
    c = jaxlmm.lmm("y ~ x1 + x2 + (1 | g)", SYN, offset=off)
    np.testing.assert_allclose(c.objective, a.objective, rtol=1e-10)
    nd = newdata("synthetic")
    with pytest.raises(DataError, match="offset="):
        c.predict(nd)
    np.testing.assert_allclose(c.predict(nd, offset=np.log(nd["t"])), a.predict(nd), rtol=1e-10)
    # simulated responses are centred on X beta + offset
    sims = a.simulate(n=400, seed=3)
    np.testing.assert_allclose(sims.mean(axis=0).mean(), (a.design.fixed_mean(a.fixef.to_numpy())).mean(), atol=0.1)
    # the bootstrap refits the offset model: its replicates centre on the fit's estimates
    boot = jaxlmm.bootstrap(a, n=64, seed=1, progress=False)
    est = boot.table[["(Intercept)", "x1", "x2"]].mean().to_numpy()
    np.testing.assert_allclose(est, a.fixef.to_numpy(), atol=4 * a.se.to_numpy().max())


def test_tests_refuse_models_with_different_offsets():
    with_offset = fit_case("offset_formula")
    without = jaxlmm.lmm("y ~ x1 + (1 | g)", SYN, reml=False)
    with pytest.raises(JaxLMMError, match="different offsets"):
        jaxlmm.anova(without, with_offset)
    with pytest.raises(JaxLMMError, match="different offsets"):
        jaxlmm.pb_test(without, with_offset, n=8)


def test_wilkinson_operators_expand_as_r():
    design = build_design("y ~ (x1 + x2 + h)^3 - x1:x2:h + (1 | g)", SYN)
    assert design.fixed_names == ("(Intercept)", "x1", "x2", "hv", "x1:x2", "x1:hv", "x2:hv")
    design = build_design("y ~ x1 * x2 - 1 + (1 | g)", SYN)
    assert design.fixed_names == ("x1", "x2", "x1:x2")
    design = build_design("y ~ x1 %in% h + (1 | g)", SYN)
    assert design.fixed_names == ("(Intercept)", "x1:hu", "x1:hv")
    np.testing.assert_array_equal(design.X[:, 1], SYN["x1"] * (SYN["h"] == "u"))


def test_factor_levels_in_numeric_order():
    """factor(k) with k in {1, 2, 10, 20}: levels in numeric order, as R (not '1', '10', '2', '20')."""
    for k in (SYN["k"], SYN["k"].astype(np.int32)):
        design = build_design("y ~ factor(k) + (1 | g)", SYN.assign(k=k))
        assert design.fixed_names == ("(Intercept)", "factor(k)2", "factor(k)10", "factor(k)20")
        np.testing.assert_array_equal(design.X[:, 2], (SYN["k"] == 10).astype(float))


def test_integer_columns_become_float64_before_arithmetic():
    a = np.full(len(SYN), 70_000, dtype=np.int32) + np.arange(len(SYN), dtype=np.int32)
    d = SYN.assign(a=a, b=a)
    design = build_design("y ~ I(a * b) + (1 | g)", d)
    np.testing.assert_array_equal(design.X[:, 1], a.astype(np.float64) ** 2)
    assert design.X[:, 1].min() > 2**32  # an int32 product would have wrapped around


# ---- formula syntax --------------------------------------------------------


SYNTAX = [
    ("Reaction Days + (1 | Subject)", ["'~'"]),
    ("Reaction ~ Days ~ (1 | Subject)", ["'~'"]),
    ("Reaction ~ Days + (1 | Subject", ["Unbalanced", "not closed"]),
    ("Reaction ~ Days + 1 | Subject)", ["Unbalanced", "')'"]),
    ("Reaction ~ Days + (1 | Subject) + Days | Subject", ["A bar '|' in the random-effect term"]),
    ("Reaction ~ Days + 1 | Subject + Days", ["Grouping factor 'Subject + Days'"]),
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


def test_a_bar_outside_parentheses_binds_loosest_as_in_r():
    """y ~ x + 1 | g is y ~ 1 + (x + 1 | g) (lme4's values in formulas.json); a warning says where x went."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = parse_formula("Reaction ~ 1|Subject")  # nothing lost: no warning
    assert plain.fixed == "1" and [(t.expr, t.name) for t in plain.random] == [("1", "Subject")]
    with pytest.warns(jaxlmm.JaxLMMWarning, match=r"Reaction ~ Days \+ \(0 \+ Days \| Subject\)"):
        slope = parse_formula("Reaction ~ 0 + Days | Subject")
    assert slope.fixed == "1" and [t.expr for t in slope.random] == ["0 + Days"]
    with pytest.warns(jaxlmm.JaxLMMWarning, match=r"x1 as fixed effects too"):
        double = parse_formula("y ~ x1 || g")
    assert [t.expr for t in double.random] == ["1", "0 + x1"]


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


# ---- a formula is never executed ---------------------------------------------------


PAYLOADS = [
    "I(np.__builtins__['exec']('open(SENTINEL, \"w\")') is None)",
    "__import__('os').system('touch SENTINEL')",
    "I((lambda: open(SENTINEL, 'w'))())",
    "exec('open(SENTINEL, \"w\")')",
    "eval('open(SENTINEL, \"w\")')",
    "I(x1.__class__.__bases__[0].__subclasses__())",
    "I(open(SENTINEL, 'w'))",
    "I([open(SENTINEL, 'w') for _ in x1])",
    "I(getattr(x1, 'sum')())",
    "log(x1).__globals__",
    "I(x1); open(SENTINEL, 'w')",
    "I(pd.read_csv(SENTINEL))",
    "C(x1, open(SENTINEL, 'w'))",
    "poly(x1, degree = open(SENTINEL, 'w'))",
]


def _placements(payload: str):
    yield f"y ~ x1 + {payload} + (1 | g)"
    yield f"{payload} ~ x1 + (1 | g)"
    yield f"y ~ x1 + ({payload} | g)"
    yield f"y ~ x1 + (1 | {payload})"
    yield f"y ~ x1 + ({payload} || g)"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_code_in_a_formula_is_refused_and_never_runs(payload, tmp_path):
    sentinel = tmp_path / "ran"
    text = payload.replace("SENTINEL", repr(str(sentinel))[1:-1])
    for formula in _placements(text):
        with pytest.raises(FormulaError):
            jaxlmm.lmm(formula, SYN)
        with pytest.raises(FormulaError):
            jaxlmm.LinearMixedModel(formula, SYN)
    with pytest.raises(FormulaError):
        jaxlmm.lmm("y ~ x1 + (1 | g)", SYN, offset=text)
    assert not sentinel.exists()


def test_code_in_a_cli_formula_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "ran"
    formula = (
        "Reaction ~ Days + (1|Subject) + "
        f"I(np.__builtins__['exec']('open({str(sentinel)!r}, \"w\")') is None)"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlmm.cli", "fit", formula, "--data", "sleepstudy"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Unknown operator '['" in proc.stderr
    assert not sentinel.exists()


def test_code_in_new_data_is_only_data(tmp_path):
    """Text in predict's new data is a level, never code: an unseen fixed-effect level is refused."""
    fit = fit_case("nested_fixed")
    sentinel = tmp_path / "ran"
    nd = newdata("synthetic").astype({"f": object})
    nd.loc[0, "f"] = f"__import__('os').system('touch {sentinel}')"
    with pytest.raises(DataError, match="not seen"):
        fit.predict(nd)
    assert not sentinel.exists()


def test_refused_pieces_are_named_before_any_evaluation():
    cases = {
        "y ~ x1 + os.system(1) + (1 | g)": "'os.system'",
        "y ~ x1[1] + (1 | g)": "Unknown operator '['",
        "y ~ x1$a + (1 | g)": "Unknown operator '$'",
        "y ~ x1 + {x2} + (1 | g)": "Unknown operator '{'",
        "y ~ sum(x1) + (1 | g)": "'sum'",
        "y ~ x1 + ns(x2, 3) + (1 | g)": "'ns'",
        "y ~ I(x1, x2) + (1 | g)": "at most 1 argument",
        "y ~ log(x1, bse = 2) + (1 | g)": "no argument 'bse'",
        "y ~ poly(x1, x2) + (1 | g)": "must be a constant",
        "y ~ x1 + 2 + (1 | g)": "not a term",
        "y ~ x1^1.5 + (1 | g)": "positive integer",
        "y ~ x1 + (offset(x2) | g)": "offsets belong in the fixed part",
    }
    for formula, text in cases.items():
        with pytest.raises(FormulaError) as info:
            jaxlmm.parse_formula(formula)
        assert text in str(info.value), (formula, str(info.value))


# ---- names never change a model ----------------------------------------------------


def test_a_column_named_intercept_is_a_predictor():
    z = np.linspace(-1, 1, len(SYN))
    base = build_design("y ~ z + (1 | g)", SYN.assign(z=z))
    for name, written in (("Intercept", "Intercept"), ("(Intercept)", "`(Intercept)`"), ("1", "`1`")):
        design = build_design(f"y ~ {written} + (1 | g)", SYN.assign(**{name: z}))
        assert design.fixed_names[0] == "(Intercept)" and len(design.fixed_names) == 2
        assert design.fixed_names[1] == written
        np.testing.assert_array_equal(design.X, base.X)


def test_coefficient_names_are_unique_and_predict_maps_by_position():
    """A factor f with level 'b' beside a column 'fb': two columns named fb in R; here fb and fb.1."""
    rng = np.random.default_rng(0)
    d = SYN.assign(ff=np.where(np.arange(len(SYN)) % 3 == 0, "a", np.where(np.arange(len(SYN)) % 3 == 1, "b", "c")),
                   ffb=rng.normal(size=len(SYN)) * 50)
    with pytest.warns(jaxlmm.JaxLMMWarning, match="'ffb' -> 'ffb.1'"):
        fit = jaxlmm.lmm("y ~ ff + ffb + (1 | g)", d)
    assert list(fit.fixef.index) == ["(Intercept)", "ffb", "ffc", "ffb.1"]
    np.testing.assert_allclose(fit.predict(d), fit.fitted, rtol=1e-10)
    assert len(set(fit.coef_table().index)) == 4


def test_predict_refuses_what_it_cannot_encode():
    fit = fit_case("nested_fixed")  # y ~ f/x1 + (1 | g), f a factor
    nd = newdata("synthetic")
    ok = fit.predict(nd)
    unseen = nd.astype({"f": object})
    unseen.loc[1, "f"] = "extreme"
    with pytest.raises(DataError, match="'f'.*'extreme'"):
        fit.predict(unseen)
    with pytest.raises(DataError, match="'f'.*numeric"):
        fit.predict(nd.assign(f=[1.0, 2.0, 3.0]))
    with pytest.raises(DataError, match="'x1'"):
        fit.predict(nd.assign(x1=[0.0, np.inf, 1.0]))
    with pytest.raises(DataError, match="'x1'"):
        fit.predict(nd.assign(x1=[0.0, np.nan, 1.0]))
    num = fit_case("square_int")
    with pytest.raises(DataError, match="'Days'.*factor"):
        num.predict(newdata("sleepstudy").assign(Days=["a", "b", "c"]))
    # an unseen grouping level goes to the population level
    pop = fit.predict(nd, re=False)
    assert nd["g"].iloc[2] not in set(SYN["g"])
    np.testing.assert_allclose(ok[2], pop[2], rtol=1e-12)
    assert not np.isclose(ok[0], pop[0])


def test_unicode_and_spaced_column_names():
    d = SYN.assign(**{"my x": SYN["x1"], "größe": SYN["x2"]})
    design = build_design("y ~ `my x` + größe + (1 | g)", d)
    assert design.fixed_names == ("(Intercept)", "`my x`", "größe")
    np.testing.assert_array_equal(design.X[:, 1:], SYN[["x1", "x2"]].to_numpy())


def test_formula_errors_are_jaxlmm_errors():
    with pytest.raises(JaxLMMError):
        jaxlmm.lmm("y ~ x1 + (1 | g)", SYN, offset=[1.0, 2.0])


def test_logical_values_and_text_comparisons_as_r():
    """Comparisons are R's logicals: I(x > 0) is a factor column 'I(x1 > 0)TRUE', 0/1 in arithmetic;
    f == "hi" compares a factor's labels."""
    design = build_design('y ~ I(x1 > 0) + I((x1 > 0) * x2) + I(f == "hi") + (1 | g)', SYN)
    assert design.fixed_names == ("(Intercept)", "I(x1 > 0)TRUE", "I((x1 > 0) * x2)", 'I(f == "hi")TRUE')
    pos = (SYN["x1"] > 0).to_numpy()
    np.testing.assert_array_equal(design.X[:, 1], pos.astype(float))
    np.testing.assert_array_equal(design.X[:, 2], np.where(pos, SYN["x2"], 0.0))
    np.testing.assert_array_equal(design.X[:, 3], (SYN["f"] == "hi").to_numpy().astype(float))


def test_random_text_never_escapes_as_another_exception():
    """Any text, formula-like or not, builds a design or raises a JaxLMMError: never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pieces = st.sampled_from(
        ["y", "x1", "x2", "f", "g", "h", "k", "t", "1", "0", "2.5", "+", "-", "*", "/", ":", "^", "~", "|",
         "||", "(", ")", ",", "I(", "log(", "poly(", "factor(", "offset(", "%in%", "==", ">", '"a"', "`x 1`",
         "[", "]", ".", "$", "=", "__class__", "lambda", "\\", "'", "#", "\n", " "]
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(pieces, min_size=1, max_size=14), st.booleans())
    def check(parts, prefix):
        text = ("y ~ " if prefix else "") + " ".join(parts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                build_design(text, SYN)
            except JaxLMMError:
                pass

    check()


# ---- R's reading where Python's would differ ---------------------------------------------------


def _frame(n=60, seed=7):
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({"x": rng.normal(size=n), "g": np.repeat([f"g{i}" for i in range(6)], n // 6)})
    d["y"] = 1 + d.x + rng.normal(size=n) + np.repeat(rng.normal(size=6), n // 6)
    return d


def test_t_and_f_are_columns_where_the_data_has_them_and_true_false_otherwise():
    d = _frame()
    d["T"], d["F"] = np.linspace(-1, 1, len(d)), np.cos(np.arange(len(d)))
    design = build_design("y ~ T + F + (1 | g)", d)  # R reads the columns, not TRUE and FALSE
    assert design.fixed_names == ("(Intercept)", "T", "F")
    np.testing.assert_array_equal(design.X[:, 1:], d[["T", "F"]].to_numpy())
    product = build_design("y ~ I(x * T) + (1 | g)", d)
    assert product.fixed_names == ("(Intercept)", "I(x * T)")
    np.testing.assert_array_equal(product.X[:, 1], d.x * d["T"])
    plain = d.drop(columns=["T", "F"])
    assert np.array_equal(build_design("y ~ I(x * T) + (1 | g)", plain).X[:, 1], plain.x)  # T is TRUE
    raw = build_design("y ~ poly(x, 2, raw = T) + (1 | g)", plain)
    assert raw.fixed_names[1:] == ("poly(x, 2, raw = T)1", "poly(x, 2, raw = T)2")
    assert build_design("y ~ poly(x, 2, raw = TRUE) + (1 | g)", plain).fixed_names[1] == "poly(x, 2, raw = TRUE)1"
    raises(FormulaError, "y ~ x + T + (1 | g)", plain, "Column 'T'")  # a term needs the column
    # R's terms(): TRUE and FALSE are 1 and 0, the intercept kept or removed
    assert build_design("y ~ x + TRUE + (1 | g)", plain).fixed_names == ("(Intercept)", "x")
    assert build_design("y ~ x + FALSE + (1 | g)", plain).fixed_names == ("x",)
    fit = jaxlmm.lmm("y ~ I(x * T) + (1 | g)", plain)
    np.testing.assert_allclose(fit.predict(plain.head(3)), fit.fitted[:3], rtol=1e-12)  # no column T needed


@pytest.mark.parametrize("formula,words", [
    ("y ~ x<-1 + (1 | g)", ["'<-'", "assignment"]),
    ("y ~ I(x:x) + (1 | g)", ["':'", "sequence operator"]),
    ("y ~ log(x:x) + (1 | g)", ["':'", "sequence operator"]),
    ("y ~ x + I((1 | g))", ["A bar '|'"]),
    ("y ~ scale(x, scale = 0) + (1 | g)", ["'scale'", "other than 0"]),
])
def test_r_syntax_with_no_meaning_in_a_model_is_refused(formula, words):
    raises(FormulaError, formula, _frame(), *words)


def test_comparison_with_a_negative_number_is_not_an_assignment():
    d = _frame()
    design = build_design("y ~ I(x < -1) + (1 | g)", d)
    np.testing.assert_array_equal(design.X[:, 1], (d.x < -1).astype(float))


def test_spaces_inside_backticks_and_quotes_are_kept():
    d = _frame()
    d["a b"], d["a  b"], d["q"] = 1.0 * np.arange(len(d)), np.sin(np.arange(len(d))), np.tile(["u v", "u  v"], 30)
    assert np.array_equal(build_design("y ~ `a  b` + (1 | g)", d).X[:, 1], d["a  b"])
    assert np.array_equal(build_design("y  ~  `a b` +\t(1 |  g)", d).X[:, 1], d["a b"])
    assert np.array_equal(build_design("y ~ I(q == 'u  v') + (1 | g)", d).X[:, 1], (d.q == "u  v").astype(float))


def test_numbers_that_print_alike_are_one_level_and_whole_numbers_keep_every_digit():
    d = _frame()
    d["fx"] = np.tile([0.1 + 0.2, 0.3, 0.5], 20)  # R: factor(c(0.1 + 0.2, 0.3, 0.5)) has levels 0.3, 0.5
    design = build_design("y ~ factor(fx) + (1 | g)", d)
    assert design.fixed_names == ("(Intercept)", "factor(fx)0.5")
    d["id"] = np.repeat(10**16 + np.arange(6, dtype=np.int64), 10)  # int64 identifiers beyond 2^53
    fit = jaxlmm.lmm("y ~ x + (1 | id)", d)
    assert fit.terms[0].nlevels == 6 and len(set(fit.ranef.level)) == 6
    np.testing.assert_allclose(fit.predict(d), fit.fitted, rtol=1e-12)  # each row finds its own group


def test_nested_grouping_names_and_factor_calls_as_lme4():
    assert [t.name for t in parse_formula("y ~ 1 + (1 | a/b/c/d)").random] == ["a", "b:a", "c:(b:a)", "d:(c:(b:a))"]
    assert [t.factors for t in parse_formula("y ~ 1 + (1 | a/b/c)").random][-1] == ("c", "b", "a")
    grouped = parse_formula("y ~ 1 + (1 | factor(g)) + (1 | as.factor(h):k)").random
    assert [(t.factors, t.name) for t in grouped] == [(("g",), "factor(g)"), (("h", "k"), "as.factor(h):k")]
