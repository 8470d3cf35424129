"""Argument and data checks (jaxlmm.validate): every bad argument is a JaxLMMError naming it; predictors
too small for float64 and collinear slopes are refused.

Fits come from ``models.get_fit`` (shared by the session); none is new.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jaxlmm
from checks import raises
from jaxlmm import JaxLMMError, JaxLMMWarning
from jaxlmm.datasets import load
from models import dye_fit, get_fit, get_model
from oracle import DYE, SLOPE


@pytest.mark.parametrize("seed", [2**70, 2**63, -1, "1", 1.5, True, np.float64(3.0)])
def test_seeds_out_of_range_or_not_integers(seed):
    fit = dye_fit()
    for call in (lambda: fit.simulate(2, seed=seed), lambda: jaxlmm.bootstrap(fit, n=3, seed=seed, progress=False),
                 lambda: fit.confint("boot", n=3, seed=seed)):
        raises(call, "seed must be an integer in 0 .. 2**63 - 1")


def test_seed_none_is_random_and_recorded():
    fit = dye_fit()
    y = fit.simulate(3, seed=None)
    assert isinstance(y.seed, int) and 0 <= y.seed < 2**63
    np.testing.assert_array_equal(fit.simulate(3, seed=y.seed), y)
    assert fit.simulate(1, seed=7).seed == 7
    boot = jaxlmm.bootstrap(fit, n=4, seed=None, progress=False)
    assert isinstance(boot.seed, int)
    again = jaxlmm.bootstrap(fit, n=4, seed=boot.seed, progress=False)
    np.testing.assert_array_equal(again.table["objective"], boot.table["objective"])
    pb = jaxlmm.pb_test(get_fit("Yield ~ 1", "dyestuff", reml=False), get_fit(DYE, "dyestuff", reml=False),
                        n=4, seed=None, progress=False)
    assert isinstance(pb.seed, int)
    ci = fit.confint("boot", n=4, seed=None)
    assert isinstance(ci.attrs["seed"], int)
    exact = jaxlmm.exact_rlrt(get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy"), nsim=100, seed=None)
    assert isinstance(exact.seed, int) and 0 <= exact.seed < 2**63


@pytest.mark.parametrize("bad", [3, "fit", None, np.zeros(3)])
def test_a_non_fit_is_named(bad):
    fit = dye_fit()
    raises(lambda: jaxlmm.anova(fit, bad), "anova: model 2", "must be a fitted model", type(bad).__name__)
    raises(lambda: jaxlmm.anova(bad, fit), "anova: model 1")
    raises(lambda: jaxlmm.pb_test(bad, fit, n=3), "pb_test: null_fit must be a fitted model")
    raises(lambda: jaxlmm.pb_test(fit, bad, n=3), "pb_test: alt_fit must be a fitted model")
    raises(lambda: jaxlmm.bootstrap(bad, n=3), "bootstrap: fit must be a fitted model")
    from jaxlmm.confint import confint
    from jaxlmm.simulate import simulate

    raises(lambda: simulate(bad), "simulate: fit must be a fitted model")
    raises(lambda: confint(bad), "confint: fit must be a fitted model")


def test_reml_must_be_a_bool_everywhere():
    model = get_model(SLOPE, "sleepstudy")
    for bad in ("False", 0, None, 0.5):
        raises(lambda: model.deviance([1, 0, 1], reml=bad), "reml must be True or False")
        raises(lambda: model.fit(reml=bad), "reml must be True or False")


# ---- an audit of the public functions ---------------------------------------------------------


def _cases():
    fit = lambda: get_fit(SLOPE, "sleepstudy")  # noqa: E731
    dye = dye_fit
    boot = lambda: jaxlmm.bootstrap(dye(), n=4, progress=False)  # noqa: E731
    ml0 = lambda: get_fit("Yield ~ 1", "dyestuff", reml=False)  # noqa: E731
    ml1 = lambda: get_fit(DYE, "dyestuff", reml=False)  # noqa: E731
    one = lambda: get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy")  # noqa: E731
    out = []
    for bad in ("a", None, -1, 0, float("nan"), 1.5, float("inf"), True):
        out.append((f"bootstrap n={bad!r}", lambda b=bad: jaxlmm.bootstrap(dye(), n=b), "n (the number of bootstrap"))
        out.append((f"pb_test n={bad!r}", lambda b=bad: jaxlmm.pb_test(ml0(), ml1(), n=b), "n (the number of bootstrap"))
        out.append((f"simulate n={bad!r}", lambda b=bad: dye().simulate(b), "n (the number of simulated"))
        out.append((f"chunk_size={bad!r}", lambda b=bad: jaxlmm.bootstrap(dye(), n=3, chunk_size=b), "chunk_size")
                   if bad is not None else None)
    for bad in ("0.9", None, 0, 1, -0.5, float("nan"), 95, True):
        out.append((f"confint level={bad!r}", lambda b=bad: fit().confint("wald", level=b), "level"))
        out.append((f"boot.confint level={bad!r}", lambda b=bad: boot().confint(level=b), "level"))
        out.append((f"tidy level={bad!r}", lambda b=bad: fit().tidy(conf_int=True, conf_level=b), "level"))
    for bad in ("yes", None, 1, 0.0):
        out.append((f"progress={bad!r}", lambda b=bad: jaxlmm.bootstrap(dye(), n=3, progress=b), "progress"))
        out.append((f"pb progress={bad!r}", lambda b=bad: jaxlmm.pb_test(ml0(), ml1(), n=3, progress=b), "progress"))
        out.append((f"predict re={bad!r}", lambda b=bad: fit().predict(re=b), "re must be True, False"))
        out.append((f"scaled={bad!r}", lambda b=bad: fit().residuals(scaled=b), "scaled"))
        out.append((f"refit={bad!r}", lambda b=bad: jaxlmm.anova(ml0(), ml1(), refit=b), "refit"))
        out.append((f"check_nested={bad!r}", lambda b=bad: jaxlmm.anova(ml0(), ml1(), check_nested=b), "check_nested"))
        out.append((f"pb check_nested={bad!r}", lambda b=bad: jaxlmm.pb_test(ml0(), ml1(), check_nested=b), "check_nested"))
        if bad is not None:
            out.append((f"correlation={bad!r}", lambda b=bad: fit().summary(correlation=b), "correlation"))
    out += [
        ("names=3", lambda: jaxlmm.anova(ml0(), ml1(), names=3), "names must be a list"),
        ("L text", lambda: fit().test("a"), "contrast matrix L"),
        ("L shape", lambda: fit().test(np.eye(3)), "needs 2 columns"),
        ("rhs text", lambda: fit().test(np.eye(2), rhs="x"), "rhs must be"),
        ("rhs nan", lambda: fit().test(np.eye(2), rhs=np.nan), "rhs must be finite"),
        ("method", lambda: fit().confint(method=None), "method must be one of"),
        ("boot method", lambda: boot().confint(method="bca"), "method must be one of"),
        ("theta wrong shape", lambda: get_model(SLOPE, "sleepstudy").deviance([1, 2]), "theta must have 3"),
        ("theta text", lambda: get_model(SLOPE, "sleepstudy").deviance("abc"), "theta must be"),
        ("max_iter", lambda: get_model(SLOPE, "sleepstudy").fit(max_iter=0), "max_iter"),
        ("predict text", lambda: fit().predict("abc"), "data must be"),
        ("formula None", lambda: jaxlmm.lmm(None, jaxlmm.datasets.load("dyestuff")), "formula must be a string"),
        ("data None", lambda: jaxlmm.lmm(DYE, None), "data must be a pandas DataFrame"),
        ("oneway data", lambda: jaxlmm.oneway_anova(None, "Yield", "Batch"), "data must be"),
        ("dataset name", lambda: jaxlmm.datasets.load(None), "No bundled dataset"),
        ("exact_rlrt seed", lambda: jaxlmm.exact_rlrt(one(), nsim=10, seed=2**70), "seed must be an integer"),
        ("exact_rlrt fit", lambda: jaxlmm.exact_rlrt("fit"), "exact_rlrt: fit must be a fitted model"),
        ("exact_rlrt nsim", lambda: jaxlmm.exact_rlrt(one(), nsim=10**12), "nsim must be a positive integer (at most 2147483647)"),
        ("exact_lrt null", lambda: jaxlmm.exact_lrt(one(), null=3), "exact_lrt: null must be a fitted model"),
        ("ranova fit", lambda: jaxlmm.ranova("x"), "ranova: fit must be a fitted model"),
        ("icc conf_level", lambda: one().icc(conf_int=True, conf_level="x"), "conf_level must be a number"),
        ("r2 conf_int", lambda: one().r2(conf_int="x"), "conf_int must be True or False"),
    ]
    return [c for c in out if c is not None]


CASES = _cases()


@pytest.mark.parametrize("label,call,words", CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_are_jaxlmm_errors_naming_them(label, call, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JaxLMMWarning)
        raises(call, words)


# ---- arguments of a model's fit and deviance ----------------------------------


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


# ---- predictors the criterion cannot use ------------------------------------------


def test_tiny_predictor_is_refused_as_too_small():
    d = load("sleepstudy")
    with pytest.raises(jaxlmm.JaxLMMError, match="'Days' has values of at most .* too small"):
        jaxlmm.lmm("Reaction ~ Days + (Days | Subject)", d.assign(Days=d.Days * 1e-170))


def test_collinear_slopes_are_refused_as_collinear():
    d = load("sleepstudy")
    d = d.assign(D2=d.Days + 1e-7 * np.sin(np.arange(len(d))))
    with pytest.raises(jaxlmm.JaxLMMError, match="columns 'Days', 'D2' of the term are collinear") as err:
        jaxlmm.lmm("Reaction ~ Days + (Days + D2 | Subject)", d)
    assert "not vary" not in str(err.value)
