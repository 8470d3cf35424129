"""Every reference fit of lme4, REML and ML: objective, estimates, variance components, BLUPs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import CASES, get_fit, load_fit_reference


def _as_list(v):
    return v if isinstance(v, list) else [v]


PARAMS = [(case, crit) for case in CASES for crit in ("REML", "ML")]


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{c}-{k}" for c, k in PARAMS])
def pair(request):
    case, crit = request.param
    ref = load_fit_reference(case)
    fit = get_fit(ref["formula"], CASES[case], reml=(crit == "REML"))
    return fit, ref[crit], ref


def test_objective(pair):
    fit, r, _ = pair
    # equal within 1e-6 relative, or lower (a better optimum than lme4's)
    assert fit.objective <= r["objective"] + 1e-6 * abs(r["objective"])
    assert fit.objective == pytest.approx(r["objective"], rel=1e-6)
    assert fit.converged


def test_likelihood_summaries(pair):
    fit, r, _ = pair
    assert fit.loglik == pytest.approx(r["loglik"], rel=1e-6)
    assert fit.aic == pytest.approx(r["aic"], rel=1e-6)
    assert fit.bic == pytest.approx(r["bic"], rel=1e-6)
    assert fit.nobs == r["nobs"]
    assert fit.reml == r["reml"]


def test_fixed_effects(pair):
    fit, r, _ = pair
    assert list(fit.fixef.index) == _as_list(r["beta_names"])
    np.testing.assert_allclose(fit.fixef.to_numpy(), _as_list(r["beta"]), rtol=1e-4)
    np.testing.assert_allclose(fit.se.to_numpy(), _as_list(r["se"]), rtol=1e-3)
    assert fit.sigma == pytest.approx(r["sigma"], rel=1e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov.to_numpy())), fit.se.to_numpy(), rtol=1e-12)


def test_theta_and_singular(pair):
    fit, r, _ = pair
    assert fit.singular == r["singular"]
    np.testing.assert_allclose(fit.theta, _as_list(r["theta"]), rtol=1e-2, atol=1e-3)


def test_varcorr(pair):
    fit, r, _ = pair
    vc = r["varcorr"]
    ours = fit.varcorr
    assert list(ours.group) == vc["grp"]
    assert [None if pd.isna(x) else x for x in ours.term1] == vc["var1"]
    assert [None if pd.isna(x) else x for x in ours.term2] == vc["var2"]
    # variances on lme4's scale: within 1e-3 of the largest variance
    scale = max(abs(v) for v in vc["vcov"])
    np.testing.assert_allclose(ours.variance.to_numpy(), vc["vcov"], rtol=1e-3, atol=1e-3 * scale)
    np.testing.assert_allclose(ours.sd_cor.to_numpy(), vc["sdcor"], rtol=1e-3, atol=1e-3)


RANEF_PARAMS = [(c, k) for c, k in PARAMS if "ranef" in load_fit_reference(c)[k]]


@pytest.mark.parametrize("case,crit", RANEF_PARAMS, ids=[f"{c}-{k}" for c, k in RANEF_PARAMS])
def test_ranef(case, crit):
    ref_all = load_fit_reference(case)
    fit = get_fit(ref_all["formula"], CASES[case], reml=(crit == "REML"))
    re = ref_all[crit]["ranef"]
    ref = pd.DataFrame(
        {"group": re["grpvar"], "term": re["term"], "level": re["grp"], "value": re["condval"], "sd": re["condsd"]}
    )
    ours = fit.ranef
    merged = ref.merge(ours, on=["group", "term", "level"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    scale = max(1.0, float(np.abs(ref.value).max()))
    np.testing.assert_allclose(merged.value_y, merged.value_x, atol=1e-3 * scale)
    np.testing.assert_allclose(merged.cond_sd, merged.sd, atol=1e-3 * max(1.0, float(ref.sd.max())), rtol=1e-3)


def test_penalized_rss_identity(pair):
    """r^2 = |y - X beta - Z b|^2 + |u|^2 at the estimates (PLS, JSS 2015 eq. 15).

    Checks the conditional modes of every case, InstEval included, with no
    reference values needed: sigma^2 * (n - p) (REML) or sigma^2 * n (ML).
    """
    fit, _, _ = pair
    d = fit.design
    resid = fit.residuals()
    from jaxlmm.theta import relative_factors

    Ts = relative_factors(np.asarray(fit.theta), fit.products.term_dims)
    u2 = 0.0
    for T, b in zip(Ts, fit.b):
        T = np.asarray(T)
        # b = u T' per level; T may be singular on the boundary, where b = 0
        u = np.linalg.lstsq(T, b.T, rcond=None)[0].T if np.any(b) else np.zeros_like(b)
        u2 += float((u**2).sum())
    r2 = float(resid @ resid) + u2
    denom = d.n - d.p if fit.reml else d.n
    assert r2 == pytest.approx(fit.sigma**2 * denom, rel=1e-7)
