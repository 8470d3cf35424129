"""The optimizers (jaxlmm.optimize): derivatives, Newton's and BFGS-Newton's steps off saddles and corners,
the second-order check of the bound-constrained problem."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm
from jaxlmm.optimize import grad_and_hessian, newton, second_order
from models import get_fit, get_model


def test_grad_and_hessian_closed_form():
    """f = sum(a x^3) + x0 x1: gradient 3 a x^2 + (x1, x0), Hessian diag(6 a x) + offdiag 1."""
    a = jnp.array([1.0, 2.0])
    f = lambda x, a: jnp.sum(a * x**3) + x[0] * x[1]  # noqa: E731
    x = jnp.array([0.5, -1.5])
    v, g, H = grad_and_hessian(f)(x, a)
    assert float(v) == pytest.approx(0.125 - 6.75 - 0.75)
    np.testing.assert_allclose(g, [3 * 0.25 - 1.5, 3 * 2 * 2.25 + 0.5])
    np.testing.assert_allclose(H, [[3.0, 1.0], [1.0, -18.0]])


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


# ---- saddles and corners ----------------------------------------------------------------------


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


def test_newton_leaves_a_saddle_on_the_bound():
    """f = (x^2 - 1)^2 is even: x = 0 (the bound) is stationary but a maximum; the minimum is x = 1."""
    f = lambda x: jnp.sum((x**2 - 1.0) ** 2)  # noqa: E731
    res = newton(f, jnp.zeros(1), jnp.zeros(1))
    assert float(res.theta[0]) == pytest.approx(1.0, abs=1e-8)
    assert float(res.fun) == pytest.approx(0.0, abs=1e-14)
    assert bool(res.converged)


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


# ---- BFGS-Newton (hessian="bfgs") -------------------------------------------------------------


def test_bfgs_newton_leaves_a_saddle_on_the_bound():
    """The quasi-Newton variant confirms a stopping point on the bound with a measured Hessian: x = 0 is a saddle."""
    f = lambda x: jnp.sum((x**2 - 1.0) ** 2)  # noqa: E731
    res = newton(f, jnp.zeros(1), jnp.zeros(1), hessian="bfgs")
    assert float(res.theta[0]) == pytest.approx(1.0, abs=1e-8)
    assert bool(res.converged)


def test_bfgs_newton_measures_curvature_where_a_step_reaches_the_bound():
    """A BFGS pass whose point a step has just put on the bound measures H there by forward
    differences before stepping on; the measured column of f = (x0^2 - 1)^2 + (x1 - 2)^2 at
    x0 = 0 is f''(0) = -4 (a saddle), and the step after it leaves the bound."""
    from jaxlmm.optimize import Mode, NewtonState, _newton_pass, _no_trial, _Problem, _step
    from jaxlmm.control import Hessian

    f = lambda x: (x[0] ** 2 - 1.0) ** 2 + (x[1] - 2.0) ** 2  # noqa: E731
    p = _Problem(f, (), jnp.array([0.0, -10.0]), None, Hessian.BFGS, 1e-9, 200, 2.0, 0.1)
    prev, x = jnp.array([0.4, 1.0]), jnp.array([0.0, 1.5])
    v, g = jax.value_and_grad(f)(x)
    s = NewtonState(x, prev, f(prev), jax.grad(f)(prev), jnp.eye(2), jnp.asarray(3), jnp.asarray(False),
                    jnp.asarray(int(Mode.QUASI)), jnp.asarray(int(Mode.QUASI)), jnp.asarray(-1), _no_trial(2))
    nxt = _step(p, s, x, v, g, jnp.eye(2))  # BFGS's H says nothing of the saddle
    assert int(nxt.mode) == Mode.START and int(nxt.col) == 0 and not bool(nxt.done)
    assert int(nxt.n_iter) == 3  # no step taken
    np.testing.assert_array_equal(nxt.theta, x)
    assert float(nxt.point[0]) == pytest.approx(1e-6) and float(nxt.point[1]) == 1.5
    nxt = _newton_pass(p, nxt)  # column 0 measured: the next pass measures column 1
    assert int(nxt.col) == 1 and float(nxt.H[0, 0]) == pytest.approx(-4.0, rel=1e-6)
    nxt = _newton_pass(p, nxt)  # column 1: H complete, a step off the bound is searched for
    assert int(nxt.mode) == Mode.QUASI and bool(nxt.trial.search) and int(nxt.n_iter) == 3
    np.testing.assert_allclose(nxt.H, [[-4.0, 0.0], [0.0, 2.0]], rtol=1e-5, atol=1e-5)
    assert float(nxt.trial.d[0]) > 0.0
    nxt = _newton_pass(p, nxt)  # by values: the step is taken, the next pass evaluates its point
    assert int(nxt.n_iter) == 4 and float(nxt.point[0]) > 0.0 and f(nxt.point) < v


def test_bfgs_newton_backtracks_from_a_failed_full_step():
    """After a step of full length, the full step of a BFGS pass is tested at the next pass's own
    value; where Armijo's test fails there, values alone backtrack from half its length, the point
    found is taken, and the step after it is searched for by values from full length."""
    from jaxlmm.optimize import Mode, NewtonState, Trial, _newton_pass, _Problem
    from jaxlmm.control import Hessian

    f = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    p = _Problem(f, (), jnp.full(1, -10.0), None, Hessian.BFGS, 1e-9, 200, 2.0, 0.1)
    x = jnp.array([3.0])
    d = jnp.array([-5.0])  # to -2: value 9 against 4 at x
    s = NewtonState(x + d, x, f(x), jax.grad(f)(x), 2.0 * jnp.eye(1), jnp.asarray(2), jnp.asarray(False),
                    jnp.asarray(int(Mode.QUASI)), jnp.asarray(int(Mode.QUASI)), jnp.asarray(-1),
                    Trial(jnp.asarray(True), jnp.asarray(False), jnp.asarray(True), d, jax.grad(f)(x),
                          jnp.zeros(1, dtype=bool)))
    nxt = _newton_pass(p, s)
    np.testing.assert_allclose(nxt.point, [0.5])  # half the step
    assert not bool(nxt.trial.pending) and int(nxt.n_iter) == 3 and not bool(nxt.done)
    np.testing.assert_array_equal(nxt.theta, x)  # the base point is kept until the next pass
    nxt = _newton_pass(p, nxt)  # the point found, evaluated; its step was not of full length, so
    assert float(nxt.theta[0]) == 0.5 and float(nxt.f) == 0.25 and int(nxt.n_iter) == 3
    assert bool(nxt.trial.search) and not bool(nxt.trial.pending)  # the next is searched for by values
    nxt = _newton_pass(p, nxt)  # the full Newton step to 1 passes: the step after it is tried at full length
    assert float(nxt.point[0]) == 1.0 and bool(nxt.trial.full) and int(nxt.n_iter) == 4
    nxt = _newton_pass(p, nxt)
    assert float(nxt.theta[0]) == 1.0 and bool(nxt.done)


def test_bfgs_newton_on_a_curved_valley():
    """Rosenbrock's function (minimum 0 at (1, 1)) from (-1.2, 1), bounded below by -5."""
    f = lambda x: 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2  # noqa: E731
    res = newton(f, jnp.array([-1.2, 1.0]), jnp.full(2, -5.0), hessian="bfgs")
    np.testing.assert_allclose(np.asarray(res.theta), [1.0, 1.0], atol=1e-6)
    assert bool(res.converged)


@pytest.mark.parametrize(
    "case", ["penicillin_crossed", "sleepstudy_slope", "dyestuff2_singular"]
)
def test_bfgs_newton_reaches_lme4s_optimum(case):
    """hessian="bfgs" (used for large Schur complements) on small models: lme4's ML deviance and theta."""
    from oracle import CASES, load_fit_reference
    from jaxlmm.fitting import optimize_theta
    from jaxlmm.theta import canonical_theta

    ref = load_fit_reference(case)
    m = get_model(ref["formula"], CASES[case])
    opt = optimize_theta(
        jnp.asarray(m.theta0), jnp.asarray(m.lower), m.products, False, method="newton", hessian="bfgs"
    )
    r = ref["ML"]
    assert bool(opt.converged)
    assert float(opt.fun) == pytest.approx(r["objective"], rel=1e-8)
    theta = np.asarray(canonical_theta(opt.theta, m.term_dims))
    np.testing.assert_allclose(theta, np.atleast_1d(r["theta"]), rtol=1e-3, atol=1e-4)


def test_bfgs_newton_ends_where_a_full_step_rises_by_rounding_only():
    """A proposed step whose value is above the base's by rounding error (Armijo's test held only at
    that level) ends the loop at the base, as the search by values would."""
    from jaxlmm.optimize import Mode, NewtonState, Trial, _newton_pass, _Problem
    from jaxlmm.control import Hessian

    f = lambda x: jnp.sum((x - 1.0) ** 2) + 1.0  # noqa: E731
    p = _Problem(f, (), jnp.full(1, -10.0), None, Hessian.BFGS, 1e-9, 200, 2.0, 0.1)
    x = jnp.array([1.0])
    point = jnp.array([1.0 + 1e-7])  # value 1 + 1e-14: not lower, within the criterion's rounding
    assert float(f(point)) > float(f(x))
    s = NewtonState(point, x, f(x), jnp.zeros(1), 2.0 * jnp.eye(1), jnp.asarray(5), jnp.asarray(False),
                    jnp.asarray(int(Mode.QUASI)), jnp.asarray(int(Mode.QUASI)), jnp.asarray(-1),
                    Trial(jnp.asarray(True), jnp.asarray(False), jnp.asarray(True), point - x, jnp.zeros(1),
                          jnp.zeros(1, dtype=bool)))
    nxt = _newton_pass(p, s)
    assert bool(nxt.done) and int(nxt.n_iter) == 5
    np.testing.assert_array_equal(nxt.theta, x)
    assert float(nxt.f) == 1.0


def test_a_step_with_negative_curvature_goes_at_most_halfway_to_the_bound():
    """Where the Hessian is indefinite, the Newton step's length is not the criterion's: an entry more
    than NEAR above its bound moves at most halfway to it (the whole step scaled); with a positive
    definite Hessian, or for entries already near the bound, the step is the projected Newton step."""
    from jaxlmm.control import Hessian
    from jaxlmm.optimize import HALFWAY, _direction, _Problem

    p = _Problem(None, (), jnp.array([0.0, 0.0, -jnp.inf]), None, Hessian.EXACT, 1e-9, 200, 2.0, 0.1)
    theta, g = jnp.array([1.0, 0.5, 0.0]), jnp.array([3.0, 0.2, 1.0])
    H = jnp.diag(jnp.array([1.0, 1.0, -2.0]))  # negative curvature in the unbounded entry
    d, _, _ = _direction(p, theta, 0.0, g, H)
    newton = -g / jnp.array([1.0, 1.0, 2.0])  # -|H|^-1 g: (-3, -0.2, -0.5), capped at 2 -> scale 2/3
    newton = newton * (2.0 / 3.0)
    assert float(theta[0] + d[0]) == pytest.approx(theta[0] * (1 - HALFWAY))  # halfway to 0, not onto it
    np.testing.assert_allclose(d, newton * (HALFWAY * 1.0 / 2.0), rtol=1e-12)  # the whole step scaled
    d_pd, _, _ = _direction(p, theta, 0.0, g, jnp.eye(3))
    np.testing.assert_allclose(d_pd, -g * (2.0 / 3.0), rtol=1e-12)  # positive definite: capped Newton step
    near = jnp.array([0.04, 0.5, 0.0])  # within NEAR of the bound: may go onto it
    d_near, _, _ = _direction(p, near, 0.0, jnp.array([3.0, 0.0, 0.0]), H)
    assert float(near[0] + d_near[0]) < 0.0


@pytest.mark.parametrize("hessian", ["exact", "bfgs"])
def test_newton_lanes_are_newton_on_each_problem(hessian):
    """newton_lanes on 40 simulated sleepstudy responses, 8 lanes, the last 5 skipped: each problem's
    optimum, gradient, Hessian, iterations and verdict are vmap(newton)'s bit for bit (the lanes change
    which problems share a vectorized pass, not their iterates); skipped problems are zeros."""
    from jaxlmm.crossprod import with_response
    from jaxlmm.objective import deviance
    from jaxlmm.optimize import newton_lanes
    from jaxlmm.replicates import fit_params, simulate_products, target_of
    from jaxlmm.theta import theta_columns

    fit = get_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy", reml=False)
    tg = target_of(fit)
    n, count = 40, 35
    (parts,) = simulate_products(jax.random.split(jax.random.key(3), n), tg.rows, fit_params(fit), (tg.rows,))
    column = theta_columns(fit.products.term_dims)
    fun = lambda th, pt: deviance(th, with_response(fit.products, pt), False)  # noqa: E731
    starts = jnp.broadcast_to(tg.theta0, (n, 3)) * jnp.linspace(0.2, 2.0, n)[:, None]  # some far away
    each = jax.jit(jax.vmap(lambda t, pt: newton(fun, t, tg.lower, args=(pt,), column=column, hessian=hessian)))
    lanes = jax.jit(lambda s, pt, c: newton_lanes(fun, s, tg.lower, (pt,), lanes=8, count=c, column=column,
                                                  hessian=hessian))
    want, got = each(starts, parts), lanes(starts, parts, count)
    assert len(set(np.asarray(want.n_iter[:count]).tolist())) > 3  # problems of different lengths
    for a, b in zip(want, got):
        np.testing.assert_array_equal(np.asarray(b)[:count], np.asarray(a)[:count])
        assert not np.any(np.asarray(b)[count:])
