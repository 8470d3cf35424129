"""Likelihood profiles (jaxlmm.profile): traces, and profiles of singular fits that are finite where lme4's are.

Singular fits against lme4: tests/reference/profile_singular.R writes profile_singular.json.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import jaxlmm
from jaxlmm.profile import ProfileWarning, profile
from models import get_fit
from oracle import DYE, load_json, sleep_z

REF = load_json("profile_singular.json")


def test_profile_traces():
    """zeta is 0 at the ML estimate, increasing, and reaches +-z at the confint limits."""
    fit = get_fit(DYE, "dyestuff")
    tr = profile(fit, level=0.95, n_points=4)
    assert list(dict.fromkeys(tr["parameter"])) == ["sd_(Intercept)|Batch", "sigma", "(Intercept)"]
    ci = fit.confint(method="profile")
    ml = get_fit(DYE, "dyestuff", reml=False)
    z = st.norm.ppf(0.975)
    for name, sub in tr.groupby("parameter", sort=False):
        assert np.all(np.diff(sub["zeta"].to_numpy()) > 0)
        ends = sub.iloc[[0, -1]]
        np.testing.assert_allclose(ends["zeta"], [-z, z], rtol=1e-5)
        np.testing.assert_allclose(ends["value"], ci.loc[name], rtol=1e-6)
    pd.testing.assert_frame_equal(fit.confint(which=["sigma"]), ci.loc[["sigma"]], rtol=1e-8)
    with pytest.raises(jaxlmm.JaxLMMError, match="sd_x"):
        fit.confint(which="sd_x")
    mid = tr[tr["zeta"] == 0.0].set_index("parameter")["value"]
    assert mid["(Intercept)"] == pytest.approx(ml.fixef.iloc[0], rel=1e-10)
    assert mid["sigma"] == pytest.approx(ml.sigma, rel=1e-10)


# ---- singular fits ----------------------------------------------------------------------------


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
