"""A new user's first hour: warnings at the user's line, lme4's spellings, lme4-like tables, tidy output."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import get_fit

import jaxlmm

SLOPE = "Reaction ~ Days + (Days | Subject)"
DYE0, DYE1 = "Yield ~ 1", "Yield ~ 1 + (1 | Batch)"


# ---- warnings point at the caller's line, not into the library --------------------------


def _only(record, category):
    hits = [w for w in record if issubclass(w.category, category)]
    assert len(hits) == 1, [str(w.message) for w in record]
    return hits[0]


def test_singular_fit_warning_points_at_the_user_line():
    data = jaxlmm.datasets.load("dyestuff2")
    with pytest.warns(jaxlmm.SingularFitWarning) as record:
        jaxlmm.lmm(DYE1, data)
    assert _only(record, jaxlmm.SingularFitWarning).filename == __file__
    model = jaxlmm.LinearMixedModel(DYE1, data)
    with pytest.warns(jaxlmm.SingularFitWarning) as record:
        line = sys._getframe().f_lineno + 1
        model.fit(reml=False)
    w = _only(record, jaxlmm.SingularFitWarning)
    assert (w.filename, w.lineno) == (__file__, line)


def test_data_warnings_point_at_the_user_line():
    dye = jaxlmm.datasets.load("dyestuff").copy()
    dye.loc[3, "Yield"] = np.nan
    with pytest.warns(jaxlmm.MissingDataWarning) as record:
        jaxlmm.LinearMixedModel(DYE1, dye)
    assert _only(record, jaxlmm.MissingDataWarning).filename == __file__
    sleep = jaxlmm.datasets.load("sleepstudy").assign(Days2=lambda d: 2 * d.Days)
    with pytest.warns(jaxlmm.RankDeficiencyWarning) as record:
        jaxlmm.LinearMixedModel("Reaction ~ Days + Days2 + (1 | Subject)", sleep)
    assert _only(record, jaxlmm.RankDeficiencyWarning).filename == __file__


def test_convergence_warning_points_at_the_user_line():
    with pytest.warns(jaxlmm.ConvergenceWarning) as record:
        jaxlmm.lmm("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"), method="lbfgs", max_iter=1)
    assert _only(record, jaxlmm.ConvergenceWarning).filename == __file__


def test_refit_warnings_of_anova_and_pb_test_point_at_the_user_line():
    f0, f1 = get_fit(DYE0, "dyestuff"), get_fit(DYE1, "dyestuff")
    with pytest.warns(jaxlmm.JaxLMMWarning, match="ML") as record:
        jaxlmm.anova(f0, f1)
    assert [w.filename for w in record] == [__file__]
    with pytest.warns(jaxlmm.JaxLMMWarning, match="ML") as record:
        jaxlmm.pb_test(f0, f1, n=10, seed=3, progress=False)
    assert {w.filename for w in record} == {__file__}


def test_bootstrap_failure_warning_points_at_the_user_line(monkeypatch):
    """A replicate reported as not converged: bootstrap's warning names this file."""
    module = sys.modules["jaxlmm.bootstrap"]
    table_of = module.replicate_table

    def one_failed(res, model):
        table = table_of(res, model)
        table.loc[0, "converged"] = False
        return table

    monkeypatch.setattr(module, "replicate_table", one_failed)
    with pytest.warns(jaxlmm.ConvergenceWarning, match="1 of 10") as record:
        res = jaxlmm.bootstrap(get_fit(DYE1, "dyestuff"), n=10, seed=3, progress=False)
    assert _only(record, jaxlmm.ConvergenceWarning).filename == __file__
    assert res.n_failed == 1 and res.n_used == 9


def test_every_warning_in_the_package_goes_through_the_helper():
    """No ``warnings.warn`` call with a hand-counted stacklevel is left in the package."""
    from pathlib import Path

    root = Path(jaxlmm.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "errors.py" and "warnings.warn(" in p.read_text()
    ]
    assert offenders == []


# ---- lme4's spellings -------------------------------------------------------------------


def test_lmm_keywords_reml_alias_weights_and_unknown():
    dye = jaxlmm.datasets.load("dyestuff")
    ml = get_fit(DYE1, "dyestuff", reml=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alias = jaxlmm.lmm(DYE1, dye, REML=False)
    assert alias.reml is False and alias.objective == pytest.approx(ml.objective, rel=1e-12)
    with pytest.raises(jaxlmm.JaxLMMError, match="not both"):
        jaxlmm.lmm(DYE1, dye, reml=False, REML=False)
    ones = jaxlmm.lmm(DYE1, dye, REML=False, weights=np.ones(30))  # lme4's weights=: all 1 is no weighting
    assert ones.objective == pytest.approx(ml.objective, rel=1e-10)
    with pytest.raises(jaxlmm.JaxLMMError, match="'methd'") as err:
        jaxlmm.lmm(DYE1, dye, methd="lbfgs")
    message = str(err.value)
    assert "Did you mean 'method'?" in message
    import inspect

    for name in list(inspect.signature(jaxlmm.LinearMixedModel.fit).parameters)[1:]:
        assert name in message  # reml, method, theta0, max_iter ...
    for bad in ("False", 0, "REML"):
        with pytest.raises(jaxlmm.JaxLMMError, match="reml must be True or False"):
            jaxlmm.lmm(DYE1, dye, reml=bad)
    with pytest.raises(jaxlmm.JaxLMMError, match="reml must be True or False"):
        jaxlmm.LinearMixedModel(DYE1, dye).fit(reml="False")


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


def test_summary_fixed_effects_correlation_matches_vcov_and_lme4(sleep_fit):
    from jaxlmm.summary import fixef_correlation

    v = sleep_fit.vcov.to_numpy()
    cor = fixef_correlation(sleep_fit)
    assert cor.loc["Days", "(Intercept)"] == pytest.approx(v[0, 1] / np.sqrt(v[0, 0] * v[1, 1]), rel=1e-12)
    assert round(cor.loc["Days", "(Intercept)"], 3) == -0.138  # lme4's summary
    text = sleep_fit.summary()
    assert text.splitlines()[0] == (
        "Linear mixed model fit by REML. t-tests use Satterthwaite's method [lmerModLmerTest]"
    )
    block = text.split("Correlation of Fixed Effects:\n")[1].splitlines()
    assert block == ["     (Intr)", "Days -0.138"]
    assert "Correlation" not in sleep_fit.summary(correlation=False)
    fixed = text.split("Fixed effects:\n")[1].splitlines()
    assert fixed[1].split()[3] == f"{sleep_fit.coef_table()['df'].iloc[0]:.2f}" == "17.00"


def test_correlation_block_lower_triangle_and_large_p():
    from types import SimpleNamespace

    from jaxlmm.summary import abbreviate, correlation_block

    assert abbreviate("(Intercept)", 6) == "(Intr)"  # R's abbreviate
    names = ["(Intercept)", "Days", "Days2"]
    cor = np.array([[1.0, -0.5, 0.25], [-0.5, 1.0, 0.125], [0.25, 0.125, 1.0]])
    sd = np.array([2.0, 1.0, 0.5])
    fake = SimpleNamespace(
        fixef=pd.Series(np.zeros(3), index=names), vcov=pd.DataFrame(cor * np.outer(sd, sd), index=names, columns=names)
    )
    assert correlation_block(fake)[1:] == [
        "Correlation of Fixed Effects:",
        "      (Intr) Days",
        "Days  -0.500",
        "Days2  0.250  0.125",
    ]
    names = [f"x{i}" for i in range(14)]
    big = SimpleNamespace(fixef=pd.Series(np.zeros(14), index=names), vcov=pd.DataFrame(np.eye(14), index=names, columns=names))
    assert "Correlation matrix not shown by default, as p = 14 > 12." in correlation_block(big)
    assert "Correlation of Fixed Effects:" in correlation_block(big, correlation=True)


@pytest.mark.parametrize(
    "formula, dataset",
    [(DYE1, "dyestuff"), (SLOPE, "sleepstudy"), ("Reaction ~ Days + (Days || Subject)", "sleepstudy")],
)
def test_fit_numbers_are_python_floats_and_missing_names_none(formula, dataset):
    fit = get_fit(formula, dataset)
    for name in ("aic", "bic", "loglik", "objective", "sigma", "deviance"):
        assert type(getattr(fit, name)) is float, name
    assert fit.aic == pytest.approx(fit.objective + 2 * fit.npar, rel=1e-14)
    assert fit.bic == pytest.approx(fit.objective + np.log(fit.nobs) * fit.npar, rel=1e-14)
    vc = fit.varcorr
    sd_rows = vc[vc["term2"].isna()]
    assert all(x is None for x in sd_rows["term2"])
    assert vc["term1"].iloc[-1] is None and vc["group"].iloc[-1] == "Residual"
    assert all(isinstance(x, str) for x in vc["term1"].iloc[:-1])


# ---- tidy output ------------------------------------------------------------------------

# lme4 1.1: lmer(Reaction ~ Days + (Days | Subject), sleepstudy) (REML)
LME4_SLEEP = {
    "fixef": [251.405105, 10.467286],
    "sd__(Intercept)": 24.740448,
    "sd__Days": 5.922133,
    "cor__(Intercept).Days": 0.06555,
    "sd__Observation": 25.591796,
}


def test_tidy_matches_the_fit_and_lme4(sleep_fit):
    from scipy import stats

    tab = sleep_fit.tidy()
    assert list(tab.columns) == ["effect", "group", "term", "estimate", "std_error", "statistic", "df", "p_value"]
    assert list(tab["effect"]) == ["fixed"] * 2 + ["ran_pars"] * 4
    assert list(tab["term"]) == ["(Intercept)", "Days", "sd__(Intercept)", "cor__(Intercept).Days", "sd__Days",
                                 "sd__Observation"]
    assert list(tab["group"]) == [None, None, "Subject", "Subject", "Subject", "Residual"]
    fixed, ran = tab.iloc[:2], tab.iloc[2:].set_index("term")
    ct = sleep_fit.coef_table()
    np.testing.assert_allclose(fixed["estimate"], sleep_fit.fixef, rtol=1e-14)
    np.testing.assert_allclose(fixed["std_error"], np.sqrt(np.diag(sleep_fit.vcov)), rtol=1e-14)
    np.testing.assert_allclose(fixed["statistic"], sleep_fit.fixef / sleep_fit.se, rtol=1e-14)
    np.testing.assert_allclose(fixed["df"], ct["df"], rtol=1e-14)
    np.testing.assert_allclose(fixed["p_value"], 2 * stats.t.sf(np.abs(fixed["statistic"]), fixed["df"]), rtol=1e-8)
    np.testing.assert_allclose(fixed["estimate"], LME4_SLEEP["fixef"], rtol=1e-6)
    for term in ("sd__(Intercept)", "sd__Days", "sd__Observation"):
        assert ran.loc[term, "estimate"] == pytest.approx(LME4_SLEEP[term], rel=2e-6)
    assert ran.loc["cor__(Intercept).Days", "estimate"] == pytest.approx(LME4_SLEEP["cor__(Intercept).Days"], abs=1e-4)
    # the same numbers by another path: varcorr's SDs and correlation
    vc = sleep_fit.varcorr
    assert ran.loc["sd__Days", "estimate"] == pytest.approx(
        np.sqrt(vc.query("term1 == 'Days' and term2.isna()", engine="python")["variance"].item()), rel=1e-12
    )
    assert ran.loc["cor__(Intercept).Days", "estimate"] == pytest.approx(vc["sd_cor"].iloc[2], rel=1e-12)
    assert ran.loc["sd__Observation", "estimate"] == pytest.approx(sleep_fit.sigma, rel=1e-14)
    assert ran[["std_error", "statistic", "df", "p_value"]].isna().all().all()


def test_tidy_wald_intervals_and_uncorrelated_terms(sleep_fit):
    from scipy import stats

    tab = sleep_fit.tidy(conf_int=True, conf_level=0.9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(tab["conf_low"].iloc[:2], sleep_fit.fixef - z * sleep_fit.se, rtol=1e-10)
    np.testing.assert_allclose(tab["conf_high"].iloc[:2], sleep_fit.fixef + z * sleep_fit.se, rtol=1e-10)
    assert tab["conf_low"].iloc[2:].isna().all()
    with pytest.raises(jaxlmm.JaxLMMError, match="method"):
        sleep_fit.tidy(conf_int=True, conf_method="bca")
    uncorr = get_fit("Reaction ~ Days + (Days || Subject)", "sleepstudy").tidy()
    ran = uncorr[uncorr["effect"] == "ran_pars"]
    assert list(zip(ran["group"], ran["term"])) == [
        ("Subject", "sd__(Intercept)"), ("Subject.1", "sd__Days"), ("Residual", "sd__Observation")
    ]


@pytest.mark.parametrize(
    "formula, dataset, reml",
    [(SLOPE, "sleepstudy", True), (DYE1, "dyestuff", False), ("Reaction ~ Days + (Days || Subject)", "sleepstudy", True)],
)
def test_to_dict_is_json_and_equals_the_fit(formula, dataset, reml):
    import json

    fit = get_fit(formula, dataset, reml=reml)
    d = fit.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert json.loads(fit.to_json()) == d
    assert d["formula"] == fit.formula and d["reml"] is reml and d["criterion"] == ("REML" if reml else "ML")
    for key in ("objective", "loglik", "aic", "bic", "sigma", "deviance"):
        assert type(d[key]) is float and d[key] == getattr(fit, key)
    assert (d["nobs"], d["npar"], d["converged"]) == (fit.nobs, fit.npar, fit.converged)
    assert d["ngroups"] == {t.name: t.nlevels for t in fit.terms}
    assert d["theta"] == list(fit.theta)
    assert d["fixef"] == dict(fit.fixef) and d["se"] == dict(fit.se)
    np.testing.assert_array_equal(np.array(d["vcov"]["matrix"]), fit.vcov.to_numpy())
    assert d["vcov"]["names"] == list(fit.fixef.index)
    assert [r["variance"] for r in d["varcorr"]] == list(fit.varcorr["variance"])
    assert [r["term2"] for r in d["varcorr"]] == list(fit.varcorr["term2"])
    ct = fit.coef_table()
    assert [r["df"] for r in d["coefficients"]] == list(ct["df"])
    assert [r["term"] for r in d["coefficients"]] == list(ct.index)
    assert [r["estimate"] for r in d["ran_pars"]] == list(fit.tidy()["estimate"].iloc[len(fit.fixef):])


def test_to_dict_of_sleepstudy_has_lme4_numbers(sleep_fit):
    d = sleep_fit.to_dict()
    assert [d["fixef"]["(Intercept)"], d["fixef"]["Days"]] == pytest.approx(LME4_SLEEP["fixef"], rel=1e-6)
    ran = {r["term"]: r["estimate"] for r in d["ran_pars"]}
    assert ran["sd__(Intercept)"] == pytest.approx(24.740448, rel=2e-6)
    assert d["sigma"] == pytest.approx(25.591796, rel=2e-6)


def test_repeated_calls_with_the_same_shapes_compile_nothing():
    """A second simulate, predict, bootstrap or Wald confint of the same shapes traces no new program
    (counted with JAX's monitoring events: every trace of a jitted function reports its duration)."""
    import collections

    import jax

    fit = get_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    newdata = jaxlmm.datasets.load("sleepstudy").head(7)
    calls = {
        "simulate": lambda seed: fit.simulate(4, seed=seed),
        "predict": lambda seed: fit.predict(newdata),
        "bootstrap": lambda seed: jaxlmm.bootstrap(fit, n=8, seed=seed, progress=False),
        "confint": lambda seed: fit.confint("wald"),
    }
    events = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.update([name]))
    for name, call in calls.items():
        call(1)
        events.clear()
        call(2)
        assert events["/jax/core/compile/jaxpr_trace_duration"] == 0, (name, dict(events))
    # the counter does see a trace: a new shape of simulate compiles
    fit.simulate(5, seed=3)
    assert events["/jax/core/compile/jaxpr_trace_duration"] >= 1
