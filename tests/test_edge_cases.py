"""Numerical edge cases: each asserts the warning and the fitted numbers against an oracle.

Oracles: lme4's reference fits, the same fit on data cleaned by hand, exact
change-of-units identities, and the dense textbook criterion. The datasets
keep the shapes of the reference fits, so no new compilation is needed
except for one short non-converging run.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from conftest import get_fit, get_model, load_fit_reference
from jaxlmm import (
    ConvergenceWarning,
    JaxLMMWarning,
    MissingDataWarning,
    RankDeficiencyWarning,
    SingularFitWarning,
)
from test_objective import dense_criterion

SLEEP = jaxlmm.datasets.load("sleepstudy")
SLOPE = "Reaction ~ Days + (Days | Subject)"
N, P = 180, 2


def fit_quietly(formula, data, **kw):
    """Fit and return (fit, list of the warnings raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = jaxlmm.lmm(formula, data, **kw)
    return fit, caught


def of_type(caught, cls):
    return [w for w in caught if issubclass(w.category, cls)]


def assert_same_fit(a, b, rtol=1e-7):
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    np.testing.assert_allclose(a.theta, b.theta, rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rtol)
    assert list(a.fixef.index) == list(b.fixef.index)
    assert a.sigma == pytest.approx(b.sigma, rel=rtol)


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


# ---- units -------------------------------------------------------------------
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("c", [1e8, 1e-8])
def test_response_in_huge_or_tiny_units(c, reml):
    """y -> c y: r^2 -> c^2 r^2 at every theta, so the criterion shifts by 2 (n - p) log c
    (REML) or 2 n log c (ML); theta is unchanged; beta, sigma and the SDs scale by c."""
    ref = get_fit(SLOPE, "sleepstudy", reml=reml)
    fit, caught = fit_quietly(SLOPE, SLEEP.assign(Reaction=SLEEP.Reaction * c), reml=reml)
    assert not caught and fit.converged
    shift = 2 * (N - P if reml else N) * np.log(c)
    assert fit.objective == pytest.approx(ref.objective + shift, abs=1e-7 * abs(ref.objective))
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fit.fixef.to_numpy(), c * ref.fixef.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(fit.se.to_numpy(), c * ref.se.to_numpy(), rtol=1e-5)
    assert fit.sigma == pytest.approx(c * ref.sigma, rel=1e-7)
    sd = fit.varcorr.sd_cor.to_numpy()
    sd_ref = ref.varcorr.sd_cor.to_numpy()
    is_sd = fit.varcorr.term2.isna().to_numpy()
    np.testing.assert_allclose(sd[is_sd], c * sd_ref[is_sd], rtol=1e-5)
    np.testing.assert_allclose(sd[~is_sd], sd_ref[~is_sd], rtol=1e-4)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("c", [1e6, 1e-6])
def test_random_slope_predictor_in_huge_or_tiny_units(c, reml):
    """Days -> c Days: theta entries of the Days row scale by 1/c, beta_Days by 1/c; the REML
    criterion gains log|R_X|^2 -> + 2 log c, the ML deviance is unchanged."""
    ref = get_fit(SLOPE, "sleepstudy", reml=reml)
    fit, caught = fit_quietly(SLOPE, SLEEP.assign(Days=SLEEP.Days * c), reml=reml)
    assert not caught and fit.converged
    shift = 2 * np.log(c) if reml else 0.0
    assert fit.objective == pytest.approx(ref.objective + shift, abs=1e-7 * abs(ref.objective))
    np.testing.assert_allclose(fit.theta, ref.theta * np.array([1, 1 / c, 1 / c]), rtol=1e-5)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref.fixef.to_numpy() * [1, 1 / c], rtol=1e-6)
    assert fit.sigma == pytest.approx(ref.sigma, rel=1e-6)
    np.testing.assert_allclose(fit.fitted, ref.fitted, rtol=1e-6)


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


def test_float64_mode_switched_off_by_the_user():
    """jaxlmm switches float64 back on (with a warning) and the fit is unchanged."""
    ref = get_fit(SLOPE, "sleepstudy")
    jax.config.update("jax_enable_x64", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = jaxlmm.LinearMixedModel(SLOPE, SLEEP)
            fit = model.fit()
        assert len(of_type(caught, JaxLMMWarning)) == 1
        assert "jax_enable_x64" in str(caught[0].message)
        assert jax.config.jax_enable_x64
        assert fit.theta.dtype == np.float64
        assert_same_fit(fit, ref, rtol=1e-9)
        jax.config.update("jax_enable_x64", False)
        with pytest.warns(JaxLMMWarning, match="jax_enable_x64"):
            value = model.deviance(ref.theta)
        assert value == pytest.approx(ref.objective, rel=1e-12)
    finally:
        jax.config.update("jax_enable_x64", True)


# ---- optimizer outcomes --------------------------------------------------------
DYE = "Yield ~ 1 + (1 | Batch)"
SLEEP_SLOPES = "Reaction ~ Days + (Days | Subject)"


def test_fit_that_does_not_converge_is_reported_and_warned():
    model = get_model(SLEEP_SLOPES, "sleepstudy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = model.fit(method="lbfgs", max_iter=1)  # L-BFGS: 5 iterations, no fallback
    (w,) = of_type(caught, ConvergenceWarning)
    assert "did not converge in 5 iterations" in str(w.message)
    assert fit.converged is False and fit.n_iter == 5
    ref = load_fit_reference("sleepstudy_slope")["REML"]
    assert fit.objective > ref["objective"] + 1e-6
    assert np.max(np.abs(fit.gradient)) > 1e-6 * (1 + abs(fit.objective))
    # restarting from where it stopped reaches lme4's optimum
    again = model.fit(theta0=fit.theta)
    assert again.converged and again.objective == pytest.approx(ref["objective"], rel=1e-9)


def test_newton_at_its_iteration_cap_falls_back_and_converges():
    """Newton stopped by max_iter is continued by L-BFGS and finished by Newton (fitting.fit_theta)."""
    model = get_model(DYE, "dyestuff")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit = model.fit(max_iter=1)
    ref = load_fit_reference("dyestuff")["REML"]
    assert fit.converged and fit.objective == pytest.approx(ref["objective"], rel=1e-9)


def test_singular_fit_is_flagged_and_warned_once():
    ref = load_fit_reference("dyestuff2_singular")["REML"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = get_model(DYE, "dyestuff2").fit()
    assert [w.category for w in caught] == [SingularFitWarning]
    assert "singular" in str(caught[0].message)
    assert fit.singular and ref["singular"] and fit.converged
    assert fit.theta[0] == pytest.approx(0.0, abs=1e-8)
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-9)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-7)


def test_regular_fit_is_not_flagged():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = get_model(DYE, "dyestuff").fit()
    assert not caught and not fit.singular


def test_between_subject_numeric_slope_is_identifiable_and_fitted():
    """x constant within subjects but taking 18 values: the subject variance
    v' Sigma v with v = (1, x) is a quadratic in x, so Sigma is identified and
    lme4 fits it; the criterion at the optimum equals the dense textbook one."""
    d = SLEEP.assign(x=SLEEP.Subject.cat.codes.astype(float) / 17.0)
    fit, caught = fit_quietly("Reaction ~ Days + (x | Subject)", d)
    assert fit.converged and not of_type(caught, ConvergenceWarning)
    assert fit.objective == pytest.approx(dense_criterion(fit, fit.theta, True), rel=1e-9)
    rng = np.random.default_rng(3)
    for _ in range(5):
        th = np.maximum(fit.theta + rng.normal(scale=1e-3, size=3), fit.lower)
        assert fit.criterion(th) >= fit.objective - 1e-9


def _cache_dir_in_child(env_extra: dict, tmp_path) -> str:
    """The compilation cache folder JAX uses after ``import jaxlmm`` in a fresh process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "JAXLMM_CACHE_DIR")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), **env_extra)
    code = "import jax, jaxlmm; print(jax.config.jax_compilation_cache_dir or '')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_compilation_cache_default_choice_and_off(tmp_path):
    """Compiled programs go to ~/.cache/jaxlmm/xla (XDG), a chosen folder, JAX's own setting, or nowhere."""
    default = tmp_path / "xdg" / "jaxlmm" / "xla"
    assert _cache_dir_in_child({}, tmp_path) == str(default) and default.is_dir()
    assert _cache_dir_in_child({"JAXLMM_CACHE_DIR": str(tmp_path / "mine")}, tmp_path) == str(tmp_path / "mine")
    assert _cache_dir_in_child({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}, tmp_path) == str(tmp_path / "jax")
    assert _cache_dir_in_child({"JAXLMM_CACHE_DIR": "off"}, tmp_path) == ""


def test_newton_leaves_a_corner_where_a_correlated_column_has_a_zero_diagonal():
    """At theta_11 = 0 with theta_21 != 0 and d f / d theta_11 > 0, flipping the column's sign is a descent.

    The data: a response simulated from the ML fit of ``Reaction ~ 1 + (Days | Subject)``
    (replicate 96 of seed 1, as the bootstrap draws it). Started at the corner (a local
    optimum of the theta parameterization, 4.3 deviance units above the optimum), Newton
    reaches the optimum that L-BFGS finds from lme4's start.
    """
    from jaxlmm.replicates import fit_params, rows_of, simulate

    sleep = jaxlmm.datasets.load("sleepstudy")
    null = get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False)
    key = jax.random.split(jax.random.key(1), 1000)[96]
    frame = sleep.copy()
    frame["Reaction"] = np.asarray(simulate(key, rows_of(null.design), fit_params(null)))
    model = jaxlmm.LinearMixedModel("Reaction ~ Days + (Days | Subject)", frame)
    corner = np.array([0.0, 0.37891048, 0.01250314])
    from jaxlmm.objective import deviance

    g = np.asarray(jax.grad(deviance)(jax.numpy.asarray(corner), model.products, False))
    assert g[0] > 0  # held at its bound by the projected gradient, without the flip
    ref = model.fit(reml=False, method="lbfgs")
    fit = model.fit(reml=False, theta0=corner)
    assert fit.converged
    assert fit.objective == pytest.approx(ref.objective, rel=1e-10)
    assert model.deviance(corner, reml=False) > ref.objective + 4


def _blas_threads_in_child(env_extra: dict) -> dict:
    """{library file: threads} of the BLAS libraries loaded after ``import jaxlmm`` in a fresh process."""
    import json as _json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("JAXLMM_LAPACK_THREADS", "OPENBLAS_NUM_THREADS")}
    env.update(env_extra)
    code = (
        "import json, numpy, threadpoolctl as t\n"
        "before = {d['filepath']: d['num_threads'] for d in t.threadpool_info()}\n"
        "import jaxlmm, scipy.linalg\n"
        "after = {d['filepath']: d['num_threads'] for d in t.threadpool_info()}\n"
        "print(json.dumps([before, after]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return _json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("setting,expected", [(None, 1), ("2", 2), ("off", None)])
def test_lapack_threads_of_scipy_only(setting, expected):
    """scipy's OpenBLAS (behind JAX's CPU LAPACK) gets the chosen threads; numpy's is left alone."""
    before, after = _blas_threads_in_child({} if setting is None else {"JAXLMM_LAPACK_THREADS": setting})
    numpy_libs = set(before)
    scipy_libs = [f for f in after if f not in numpy_libs]
    assert scipy_libs  # scipy brings its own OpenBLAS in the wheels this project installs
    for f in numpy_libs:
        assert after[f] == before[f]
    # left alone, scipy's OpenBLAS starts with the same default as numpy's (the cores it may use)
    default = max(before.values())
    for f in scipy_libs:
        assert after[f] == (default if expected is None else expected)
