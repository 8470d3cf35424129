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
