"""jaxlmm's exceptions and warnings (jaxlmm.errors): the hierarchy, and warnings that point at the user's line."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import jaxlmm
from jaxlmm import DataError, FormulaError, JaxLMMError
from models import get_fit
from oracle import DYE0, DYE1


def test_exception_hierarchy():
    assert issubclass(FormulaError, JaxLMMError) and issubclass(DataError, JaxLMMError)
    assert issubclass(JaxLMMError, ValueError)


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


# ---- bad arguments end in a JaxLMMError naming them, not in a raw exception ----------------------


def _sleep_fit():
    return get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy")


def _bad_calls():
    import pandas as pd

    sleep = jaxlmm.datasets.load("sleepstudy")
    fit = _sleep_fit()
    return {
        "response column twice": (lambda: jaxlmm.lmm("Reaction ~ Days + (1 | Subject)",
                                                     pd.concat([sleep, sleep[["Reaction"]]], axis=1)),
                                  "appears more than once"),
        "max_iter past int32": (lambda: jaxlmm.Control(max_iter=10**30), "at most 2147483647"),
        "predict offset as text": (lambda: fit.predict(sleep.head(3), offset="Days"), "3 numbers"),
        "newdata column twice": (lambda: fit.predict(pd.concat([sleep.head(3), sleep.head(3)[["Days"]]], axis=1)),
                                 "more than once in newdata"),
        "grid_length 1": (lambda: jaxlmm.exact_rlrt(fit, nsim=10, grid_length=1), "at least 2"),
        "grid_length 0": (lambda: jaxlmm.exact_rlrt(fit, nsim=10, grid_length=0), "grid_length"),
        "log_range reversed": (lambda: jaxlmm.exact_rlrt(fit, nsim=10, log_range=(5, -5)), "log_range"),
        "profile n_points float": (lambda: jaxlmm.profile(fit, n_points=2.5), "n_points"),
        "profile n_points 0": (lambda: jaxlmm.profile(fit, n_points=0), "n_points"),
        "profile n_points huge": (lambda: jaxlmm.profile(fit, n_points=10**9), "at most 1000"),
        "icc boot not a bootstrap": (lambda: fit.icc(boot="x"), "boot must be"),
        "unknown model argument": (lambda: jaxlmm.LinearMixedModel("Reaction ~ Days + (1 | Subject)", sleep, foo=1),
                                   "'foo'"),
        "complex weights": (lambda: jaxlmm.lmm("Reaction ~ Days + (1 | Subject)", sleep,
                                               weights=np.ones(len(sleep)) + 1j), "real numbers"),
        "prediction past float64": (lambda: fit.predict(pd.DataFrame({"Days": [1e308], "Subject": ["308"]})),
                                    "overflow"),
    }


@pytest.mark.parametrize("case", [
    "response column twice", "max_iter past int32", "predict offset as text", "newdata column twice",
    "grid_length 1", "grid_length 0", "log_range reversed", "profile n_points float", "profile n_points 0",
    "profile n_points huge", "icc boot not a bootstrap", "unknown model argument", "complex weights",
    "prediction past float64",
])
def test_bad_arguments_are_named(case):
    call, words = _bad_calls()[case]
    with pytest.raises(JaxLMMError, match=words.replace("(", r"\(")):
        call()


def test_integer_column_names_are_text_as_in_r():
    import pandas as pd

    sleep = jaxlmm.datasets.load("sleepstudy")
    data = sleep.assign(**{"1": sleep["Days"] * 2.0}).rename(columns={"1": 1})
    fit = jaxlmm.lmm("Reaction ~ `1` + (1 | Subject)", data)
    assert list(fit.fixef.index) == ["(Intercept)", "`1`"]
    assert fit.fixef.iloc[1] == pytest.approx(_sleep_fit().fixef["Days"] / 2, rel=1e-6)
    np.testing.assert_allclose(fit.predict(pd.DataFrame(data.head(2))), fit.fitted[:2], rtol=1e-12)
