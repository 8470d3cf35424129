"""The objective itself: lme4's values at fixed theta, the dense textbook formula,
finite-difference derivatives, and the two optimizers reaching one optimum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import get_fit, get_model, load_json
from jaxlmm.objective import deviance
from jaxlmm.theta import relative_factors

OBJ = load_json("objective_at_theta.json")
DATASET = {
    "sleepstudy_slope": "sleepstudy",
    "dyestuff": "dyestuff",
    "penicillin_crossed": "penicillin",
    "pastes_nested": "pastes",
}
POINTS = [(case, i) for case in OBJ for i in range(len(OBJ[case]["points"]))]


def _formula(case):
    f = OBJ[case]["formula"]
    return f[0] if isinstance(f, list) else f


def _scalar(v):
    return v[0] if isinstance(v, list) else v


@pytest.mark.parametrize("case,i", POINTS, ids=[f"{c}-{i}" for c, i in POINTS])
def test_objective_at_theta_matches_lme4(case, i):
    """lme4's profiled criterion at given theta, boundary points included."""
    pt = OBJ[case]["points"][i]
    model = get_model(_formula(case), DATASET[case])
    value = model.deviance(np.atleast_1d(pt["theta"]), reml=bool(_scalar(pt["reml"])))
    assert value == pytest.approx(_scalar(pt["value"]), rel=1e-9)


def dense_criterion(model, theta, reml):
    """The lecture notes' textbook form with V0 = Z Lambda Lambda' Z' + I built explicitly.

    -2 l_R = log|V0| + log|X'V0^{-1}X| + (n-p)(1 + log(2 pi r^2/(n-p))), with
    r^2 = (y - X b)' V0^{-1} (y - X b) at the GLS b; ML drops log|X'V0^{-1}X| and uses n.
    """
    d = model.design
    n, p = d.n, d.p
    cols, lam = [], []
    for t, T in zip(d.terms, relative_factors(jnp.asarray(theta), model.products.term_dims)):
        Zt = np.zeros((n, t.nlevels * t.k))
        for c in range(t.k):
            Zt[np.arange(n), t.codes * t.k + c] = t.X[:, c]
        cols.append(Zt)
        lam.append(np.kron(np.eye(t.nlevels), np.asarray(T)))
    Z = np.hstack(cols)
    Lam = np.zeros((Z.shape[1], Z.shape[1]))
    lo = 0
    for blk in lam:
        Lam[lo : lo + blk.shape[0], lo : lo + blk.shape[0]] = blk
        lo += blk.shape[0]
    ZL = Z @ Lam
    V0 = ZL @ ZL.T + np.eye(n)
    Vi = np.linalg.inv(V0)
    XtViX = d.X.T @ Vi @ d.X
    b = np.linalg.solve(XtViX, d.X.T @ Vi @ d.y)
    e = d.y - d.X @ b
    r2 = e @ Vi @ e
    logdetV = np.linalg.slogdet(V0)[1]
    if reml:
        return logdetV + np.linalg.slogdet(XtViX)[1] + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
    return logdetV + n * (1 + np.log(2 * np.pi * r2 / n))


SMALL = [
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
    ("strength ~ 1 + (1 | batch/cask)", "pastes"),
    ("Reaction ~ Days + (Days || Subject)", "sleepstudy"),
]


def _random_theta(model, rng):
    th = rng.uniform(0.1, 2.0, size=model.theta0.size)
    off = ~np.isfinite(model.lower)
    th[off] = rng.uniform(-0.8, 0.8, size=off.sum())
    return th


@pytest.mark.parametrize("formula,dataset", SMALL)
def test_fast_objective_equals_dense_textbook(formula, dataset):
    model = get_model(formula, dataset)
    rng = np.random.default_rng(1)
    for _ in range(3):
        th = _random_theta(model, rng)
        for reml in (True, False):
            fast = model.deviance(th, reml=reml)
            assert fast == pytest.approx(dense_criterion(model, th, reml), rel=1e-8)


@pytest.mark.parametrize("formula,dataset", SMALL[:3])
def test_gradient_and_hessian_match_finite_differences(formula, dataset):
    model = get_model(formula, dataset)
    f = jax.jit(deviance)
    g = jax.jit(jax.grad(deviance))
    H = jax.jit(jax.hessian(deviance))
    th = _random_theta(model, np.random.default_rng(7))
    h = 1e-5
    for reml in (True, False):
        ga = np.asarray(g(jnp.asarray(th), model.products, reml))
        Ha = np.asarray(H(jnp.asarray(th), model.products, reml))
        gfd, Hfd = np.zeros_like(th), np.zeros((th.size, th.size))
        for i in range(th.size):
            e = np.zeros_like(th)
            e[i] = h
            gfd[i] = (float(f(th + e, model.products, reml)) - float(f(th - e, model.products, reml))) / (2 * h)
            Hfd[:, i] = (
                np.asarray(g(jnp.asarray(th + e), model.products, reml)) - np.asarray(g(jnp.asarray(th - e), model.products, reml))
            ) / (2 * h)
        np.testing.assert_allclose(ga, gfd, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(Ha, Hfd, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "formula,dataset",
    [SMALL[0], SMALL[1], ("Yield ~ 1 + (1 | Batch)", "dyestuff2")],
)
def test_newton_and_lbfgs_reach_the_same_optimum(formula, dataset):
    nt = get_fit(formula, dataset, reml=True, method="newton")
    lb = get_fit(formula, dataset, reml=True, method="lbfgs")
    assert nt.converged and lb.converged
    assert lb.objective == pytest.approx(nt.objective, rel=1e-8)
    np.testing.assert_allclose(lb.theta, nt.theta, atol=2e-4)
    np.testing.assert_allclose(lb.fixef.to_numpy(), nt.fixef.to_numpy(), rtol=1e-5)


def test_deviance_is_jittable_and_vmappable():
    """The objective is a pure function of (theta, data): vmap over theta equals a loop."""
    model = get_model(*SMALL[0])
    thetas = np.stack([_random_theta(model, np.random.default_rng(s)) for s in range(4)])
    batched = jax.vmap(deviance, in_axes=(0, None, None))(jnp.asarray(thetas), model.products, True)
    looped = [model.deviance(t) for t in thetas]
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-12)
