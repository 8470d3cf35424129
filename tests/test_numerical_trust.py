"""A reported optimum is a minimum; profiles of singular fits are finite where lme4's are.

- the second-order check of the bound-constrained problem (the whole Hessian on
  the free and degenerate-bound coordinates), and Newton's report of a saddle;
- fit_theta's restarts along negative curvature and its L-BFGS fallback where
  Newton stalls (iteration cap);
- profile intervals of a singular fit, against lme4 (tests/reference/profile_singular.R).
"""

import json
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm.datasets import load
from jaxlmm.model import LinearMixedModel
from jaxlmm.optimize import newton, second_order
from jaxlmm.profile import ProfileWarning

REF = json.loads((Path(__file__).parent / "reference" / "profile_singular.json").read_text())


def test_second_order_sees_joint_negative_curvature():
    """Two entries at their bound with zero gradient: each curves upward, together downward."""
    H = jnp.array([[2.0, -3.0], [-3.0, 2.0]])
    ok, v = second_order(jnp.zeros(2), 1.0, jnp.zeros(2), H, jnp.zeros(2), 1e-6)
    assert not bool(ok)
    np.testing.assert_allclose(np.asarray(v), [np.sqrt(0.5)] * 2, rtol=1e-10)
    # a clearly positive gradient holds an entry at its bound: not part of the check
    ok, v = second_order(jnp.zeros(2), 1.0, jnp.array([1.0, 0.0]), H, jnp.zeros(2), 1e-6)
    assert bool(ok) and not np.any(np.asarray(v))
    ok, _ = second_order(jnp.ones(2), 1.0, jnp.zeros(2), jnp.eye(2), jnp.zeros(2), 1e-6)
    assert bool(ok)


def even(x):
    """Even in x0 (as the criterion in a zero diagonal theta entry): a saddle at x0 = 0."""
    return -x[0] ** 2 + x[0] ** 4 + (x[1] - 1.0) ** 2


def test_newton_reports_a_saddle_as_not_converged():
    # without the escape step Newton stays at x0 = 0, where the gradient vanishes by symmetry
    res = newton(even, jnp.zeros(2), jnp.zeros(2), escape=0.0)
    assert float(res.theta[0]) == 0.0 and abs(float(res.theta[1]) - 1.0) < 1e-8
    assert not bool(res.converged)
    assert bool(res.stuck[0]) and float(res.descent[0]) > 0
    res = newton(even, jnp.zeros(2), jnp.zeros(2))
    assert bool(res.converged)
    np.testing.assert_allclose(np.asarray(res.theta), [np.sqrt(0.5), 1.0], atol=1e-8)


def two_slopes(seed=0, groups=12, per=6):
    r = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    n = len(g)
    d = pd.DataFrame({f"x{i}": r.normal(size=n) for i in range(3)})
    d["z0"], d["z1"] = r.normal(size=n), r.normal(size=n)
    b0, b1 = r.normal(size=groups) * 0.8, r.normal(size=groups) * 2.0
    d["y"] = d.x0 + d.x1 - d.x2 + b0[g] * d.z0 + b1[g] * d.z1 + r.normal(size=n)
    d["g"] = [f"L{i:02d}" for i in g]
    return d


TWO_SLOPES = "y ~ 0 + x0 + x1 + x2 + (0 + z0 | g) + (0 + z1 | g)"


def best_lbfgs(model, reml, starts=4, seed=1):
    r = np.random.default_rng(seed)
    out = []
    for k in range(starts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(model.fit(reml=reml, method="lbfgs", theta0=None if k == 0 else r.uniform(0.05, 3, 2)).objective)
    return min(out)


def test_fit_from_a_saddle_reaches_the_minimum():
    """Started at theta = (0, t), where the criterion is stationary in theta_0 by symmetry."""
    m = LinearMixedModel(TWO_SLOPES, two_slopes())
    fit = m.fit(reml=True, theta0=[0.0, 1.9])
    assert fit.converged and fit.theta[0] > 0.1
    assert fit.objective <= best_lbfgs(m, True) + 1e-6 * abs(fit.objective)


def test_stalled_newton_falls_back_to_lbfgs():
    """At the iteration cap Newton is continued by L-BFGS and finished by Newton, not reported as failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxlmm.ConvergenceWarning)
        fit = jaxlmm.lmm("Reaction ~ Days + (Days | Subject)", load("sleepstudy"), max_iter=2)
    assert fit.converged
    assert abs(fit.objective - 1743.6282719585) < 1e-6


def sleep_z():
    d = load("sleepstudy").copy()
    d["z"] = ((np.arange(1, len(d) + 1) * 7919) % 97) / 97 - 0.5  # the rule of profile_singular.R
    return d


@pytest.mark.parametrize("case", range(len(REF["cases"])))
def test_singular_fit_matches_lme4(case):
    ref = REF["cases"][case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jaxlmm.lmm(ref["formula"], sleep_z(), reml=ref["reml"])
    assert abs(fit.objective - ref["objective"]) < 1e-5
    np.testing.assert_allclose(fit.theta, ref["theta"], atol=2e-4)


def singular_fit():
    ref = REF["cases"][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref, jaxlmm.lmm(ref["formula"], sleep_z(), reml=False)


def test_profile_of_a_singular_fit_is_finite():
    """Reaction ~ Days + (Days + z | Subject), z noise: the correlation matrix is singular.

    Every limit is finite (18 NaN before); the SD at the boundary has lower
    limit 0; sigma, the fixed effects and sd_(Intercept) agree with lme4.
    (lme4's own profile of sd_Days here excludes the estimate, and it gives
    +-1 or Inf where its profile never rises; those are checked against the
    estimate instead.)
    """
    ref, fit = singular_fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileWarning)
        ci = fit.confint(method="profile")
    lme4 = pd.DataFrame({"lower": ref["lower"], "upper": ref["upper"]}, index=ref["names"])
    assert np.all(np.isfinite(ci.to_numpy()))
    assert ci.loc["sd_z|Subject", "lower"] == 0.0
    for name in ["sigma", "(Intercept)", "Days"]:
        np.testing.assert_allclose(ci.loc[name].to_numpy(), lme4.loc[name].to_numpy(dtype=float), rtol=5e-4)
    np.testing.assert_allclose(
        ci.loc["sd_(Intercept)|Subject"].to_numpy(), lme4.loc["sd_(Intercept)|Subject"].to_numpy(dtype=float),
        rtol=3e-3,
    )
    est = fit.sdcor.to_dict()
    for name in ci.index[:6]:
        assert ci.loc[name, "lower"] <= est[name] <= ci.loc[name, "upper"]
        if name.startswith("cor_"):
            assert -1 <= ci.loc[name, "lower"] and ci.loc[name, "upper"] <= 1


def test_a_profile_that_fails_is_nan_with_a_warning_naming_it(monkeypatch):
    from jaxlmm.profile import Profiler

    _, fit = singular_fit()
    limit = Profiler.limit

    def failing(self, j, target, **kw):
        if self.names[j] == "sd_Days|Subject":
            raise jaxlmm.JaxLMMError("no bracket")
        return limit(self, j, target, **kw)

    monkeypatch.setattr(Profiler, "limit", failing)
    with pytest.warns(ProfileWarning, match="'sd_Days\\|Subject'"):
        ci = fit.confint(method="profile", which=["sd_Days|Subject", "Days"])
    assert ci.loc["sd_Days|Subject"].isna().all()
    assert np.all(np.isfinite(ci.loc["Days"].to_numpy()))


def test_profile_of_a_scalar_singular_term_matches_lme4():
    ref = REF["cases"][2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jaxlmm.lmm(ref["formula"], sleep_z(), reml=ref["reml"])
        ci = fit.confint(method="profile")
    np.testing.assert_allclose(ci["lower"].to_numpy(), np.array(ref["lower"], dtype=float), rtol=2e-4, atol=1e-8)
    np.testing.assert_allclose(ci["upper"].to_numpy(), np.array(ref["upper"], dtype=float), rtol=2e-4)


@pytest.mark.parametrize("c", [1e-80, 1e80])
def test_response_scale_does_not_change_the_fit(c):
    """y and c y: the same theta; sigma, fixef, se times c; the criterion shifted by m log(c^2)."""
    d = load("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    m0, m1 = LinearMixedModel(f, d), LinearMixedModel(f, d.assign(Reaction=d.Reaction * c))
    for reml in (True, False):
        a, b = m0.fit(reml=reml), m1.fit(reml=reml)
        assert b.converged
        np.testing.assert_allclose(b.theta, a.theta, rtol=1e-7)
        np.testing.assert_allclose(b.sigma / c, a.sigma, rtol=1e-7)
        np.testing.assert_allclose(b.fixef.to_numpy() / c, a.fixef.to_numpy(), rtol=1e-7)
        np.testing.assert_allclose(b.se.to_numpy() / c, a.se.to_numpy(), rtol=1e-6)
        mult = len(d) - (2 if reml else 0)  # n - p (REML) or n (ML)
        assert abs(b.objective - (a.objective + mult * np.log(c**2))) < 1e-6
        assert abs(b.objective - m1.deviance(b.theta, reml=reml)) < 1e-6


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


def test_bootstrap_redoes_replicates_that_did_not_converge():
    """The batched pass's replicates that failed the checks are finished one by one (replicates._first_pass_restarts)."""
    from jaxlmm.replicates import Refit, _first_pass_restarts

    theta = np.array([[0.5, 0.2], [0.0, 1.0], [0.7, 0.3], [0.4, 0.4]])
    res = Refit(
        objective=np.zeros(4), theta=theta, beta=np.zeros((4, 1)), sigma=np.ones(4),
        converged=np.array([True, False, False, True]), n_iter=np.array([3, 4, 8, 2]),
        stuck=np.array([[False, False], [True, False], [False, False], [False, False]]),
    )
    idx, start = _first_pass_restarts(res, 8, 0.1)
    assert idx.tolist() == [1, 2]  # a saddle on the bound; out of iterations
    assert start[1].tolist() == [0.1, 1.0] and start[2].tolist() == theta[2].tolist()
    res = res._replace(converged=np.array([True, False, True, False]), n_iter=np.array([3, 4, 2, 2]),
                       stuck=np.zeros((4, 2), dtype=bool))
    idx, _ = _first_pass_restarts(res, 8, 0.1)
    assert idx.tolist() == [1, 3]  # a failed line search or negative curvature away from the bound


def test_nearly_collinear_slopes_reach_the_lbfgs_optimum():
    """x2 = x1 + 1e-4 noise, (x1 + x2 | g): Newton alone stopped at its cap 4.2 units above the optimum."""
    r = np.random.default_rng(4)
    g = np.repeat(np.arange(20), 10)
    x1 = r.normal(size=200)
    x2 = x1 + 1e-4 * r.normal(size=200)
    b = r.normal(size=(20, 3)) * [1, 1, 0.5]
    y = 1 + x1 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2 + r.normal(size=200)
    m = LinearMixedModel("y ~ x1 + x2 + (x1 + x2 | g)", pd.DataFrame(dict(y=y, x1=x1, x2=x2, g=g)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxlmm.ConvergenceWarning)
        fit = m.fit()
    assert fit.converged
    rs = np.random.default_rng(0)
    others = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(3):
            start = None if k == 0 else np.where(m.lower == 0, rs.uniform(0.2, 2, 6), rs.normal(0, 0.5, 6))
            others.append(m.fit(method="lbfgs", theta0=start).objective)
    assert fit.objective <= min(others) + 1e-6 * abs(min(others))
    assert fit.objective < 632.7452  # Newton alone: 636.94


def test_correlation_limits_of_a_singular_fit_are_where_the_profile_crosses():
    """An independent check of the two finite correlation limits: at each, the ML deviance minimized
    over every other parameter (Nelder-Mead from several starts, on SDs and correlations, the
    correlation matrix allowed to be singular) is the minimum plus 1.96^2, as the limit's definition
    says (before, the correlations were profiled on a scale that cannot reach the singular boundary,
    and the lower limit sat where the profile was still 0.4 below the target)."""
    from scipy.optimize import minimize
    from scipy.stats import norm

    _, fit = singular_fit()
    name = "cor_Days.(Intercept)|Subject"
    ci = fit.confint(method="profile", which=[name])
    target = norm.ppf(0.975) ** 2
    L = np.zeros((3, 3))
    for v, (i, j) in zip(fit.theta, [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (2, 2)]):
        L[i, j] = v
    S0 = L @ L.T
    r0 = np.sqrt(np.diag(S0))

    def deviance(x, rho):
        r, c20, c21 = np.abs(x[:3]), np.tanh(x[3]), np.tanh(x[4])
        C = np.array([[1.0, rho, c20], [rho, 1.0, c21], [c20, c21, 1.0]])
        lam, Q = np.linalg.eigh(np.outer(r, r) * C)
        if lam.min() < -1e-10 * lam.max():
            return 1e10  # not a covariance matrix
        S = (Q * np.maximum(lam, 0.0)) @ Q.T + 1e-14 * np.eye(3)
        T = np.linalg.cholesky(S)
        return fit.criterion(T[np.tril_indices(3)[0], np.tril_indices(3)[1]][[0, 1, 3, 2, 4, 5]], reml=False)

    rng = np.random.default_rng(0)
    for side in ("lower", "upper"):
        rho = ci.loc[name, side]
        best = min(
            minimize(deviance, np.r_[r0 * rng.uniform(0.8, 1.3, 3), rng.uniform(-1.2, 1.2, 2)], args=(rho,),
                     method="Nelder-Mead", options=dict(maxiter=3000, xatol=1e-9, fatol=1e-10)).fun
            for _ in range(5)
        )
        assert best - fit.objective == pytest.approx(target, abs=2e-3), side


def test_sd_limits_of_a_singular_fit_are_where_the_profile_crosses():
    """sd_Days and sd_z, where lme4 and jaxlmm differ (lme4: [2.29, 4.67], excluding its own estimate
    5.7, and sd_z up to Inf): at each limit the ML deviance minimized over theta (Nelder-Mead from
    several starts; beta at its estimate, sigma = SD / |row of T|) is the minimum plus 1.96^2."""
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize
    from scipy.stats import norm

    from jaxlmm.likelihood import factor_parts

    _, fit = singular_fit()
    data = fit.products
    ci = fit.confint(method="profile", which=["sd_Days|Subject", "sd_z|Subject"])
    parts = jax.jit(lambda th: (lambda fp: (fp.logdet_L - data.ldw, fp.r2))(factor_parts(th, data)))
    rows = {"sd_Days|Subject": [1, 3], "sd_z|Subject": [2, 4, 5]}  # theta's entries of each row of T
    rng = np.random.default_rng(1)
    for name, side in [("sd_Days|Subject", "lower"), ("sd_Days|Subject", "upper"), ("sd_z|Subject", "upper")]:
        s = ci.loc[name, side]

        def deviance(th):
            nb2 = np.sum(th[rows[name]] ** 2)
            ld, r2 = parts(jnp.asarray(th))
            return float(ld + r2 * nb2 / s**2 + data.n * (np.log(2 * np.pi) + np.log(s**2 / nb2)))

        best = min(
            minimize(deviance, fit.theta * rng.uniform(0.7, 1.4, 6) + rng.normal(0, 0.05, 6), method="Nelder-Mead",
                     options=dict(maxiter=6000, xatol=1e-10, fatol=1e-10)).fun
            for _ in range(4)
        )
        assert best - fit.objective == pytest.approx(norm.ppf(0.975) ** 2, abs=2e-3), (name, side)
    assert 3.5 < ci.loc["sd_Days|Subject", "lower"] and ci.loc["sd_z|Subject", "upper"] < 30
