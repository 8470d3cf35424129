"""Minimizers of the profiled criterion: bounded Newton and optax L-BFGS.

Both are written with ``lax.while_loop`` and take the objective's data as an
argument, so they compile once per shape and can be ``vmap``-ped over data
(the parametric bootstrap refits a batch of responses this way).

Newton (projected, active set; Bertsekas, "Projected Newton methods for
optimization problems with simple constraints", SIAM J. Control Optim. 1982):
variables at their lower bound with a positive gradient are held fixed; on
the free ones the exact Hessian is made positive definite by replacing its
eigenvalues with max(|lambda|, delta), and a backtracking (Armijo) search
along the projected path gives the step. Convergence is judged on the
projected gradient, relative to the criterion's size: the iteration aims at
max|g| < ``gtol`` (1 + |f|) and stops early only when no further decrease is
possible; the fit is reported converged when max|g| < ``conv_tol`` (1 + |f|).

L-BFGS (optax): unconstrained, on a sign-canonical parameterization. The
criterion depends on theta only through Lambda Lambda', which does not
change when a column of a relative factor changes sign, so
``canonical(theta)`` (each column multiplied by the sign of its diagonal)
maps any point to the feasible region with the same value.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

ROUNDOFF = 1e-12  # relative rounding error of the criterion's value


class OptResult(NamedTuple):
    theta: jax.Array
    fun: jax.Array
    grad: jax.Array  # projected gradient at theta
    n_iter: jax.Array
    converged: jax.Array  # first-order conditions and non-negative curvature (second_order)
    stuck: jax.Array  # per entry: at its bound with negative curvature there (a saddle)
    descent: jax.Array  # a direction of negative curvature at theta (zeros where there is none)


def projected_gradient(theta, g, lower):
    """Zero the components held at their lower bound with a positive gradient."""
    at_bound = (theta <= lower) & (g > 0)
    return jnp.where(at_bound, 0.0, g)


def grad_and_hessian(fun: Callable) -> Callable:
    """``(theta, *args) -> (f, g, H)``: value, gradient and exact Hessian of ``fun``.

    Column i of H is the forward-mode derivative of the gradient along e_i
    (a Hessian-vector product, forward over reverse); the columns are
    computed one after another with ``lax.map``. Batching them with ``vmap``
    (as ``jax.hessian`` does) turns the scatter-adds of the criterion into
    batched scatters, which XLA on CPU runs orders of magnitude slower
    (InstEval: minutes instead of seconds). The gradient is the primal
    output of the same products, so it costs nothing extra.
    """
    vg = jax.value_and_grad(fun)

    def run(theta, *args):
        def column(v):
            (f, g), (_, hv) = jax.jvp(lambda t: vg(t, *args), (theta,), (v,))
            return f, g, hv

        eye = jnp.eye(theta.shape[0], dtype=theta.dtype)
        f, g, H = lax.map(column, eye)
        return f[0], g[0], H.T

    return run


def boundary_saddle(theta, f, g, H, lower, gtol):
    """Variables at their bound where the criterion is stationary but curves downward.

    The profiled criterion is even in each column of a relative factor, so
    at a zero diagonal entry its derivative vanishes: a stationary point of
    the projected problem that can be a saddle (InstEval's ``dept`` term).
    A negative diagonal Hessian entry there means moving off the bound
    lowers the criterion.
    """
    return (theta <= lower) & (g <= gtol * (1.0 + jnp.abs(f))) & (jnp.diagonal(H) < 0)


CURVATURE_TOL = 1e-7
"""Eigenvalues of the restricted Hessian below -CURVATURE_TOL * max(1, max|eigenvalue|) count as negative."""


def second_order(theta, f, g, H, lower, tol):
    """The second-order condition of the bound-constrained minimum: (holds, direction).

    The Hessian is restricted to the coordinates that are free (above their
    bound) or degenerate (at the bound with a gradient below ``tol`` (1 +
    |f|): moving off the bound changes the criterion only at second order).
    Only coordinates at the bound with a clearly positive gradient are held.
    At a minimum the restricted Hessian is positive semi-definite; otherwise
    its eigenvector of the most negative eigenvalue, restricted to those
    coordinates with its degenerate bound entries made non-negative, is a
    feasible direction along which the criterion decreases. The whole matrix,
    not only its diagonal, is checked: two degenerate entries (or one and a
    free one) can curve downward together while each alone curves upward.
    """
    gt = tol * (1.0 + jnp.abs(f))
    at = theta <= lower
    keep = ~at | (jnp.abs(g) <= gt)
    both = keep[:, None] & keep[None, :]
    Hs = jnp.where(both, H, 0.0) + jnp.diag(jnp.where(keep, 0.0, 1.0))
    Hs = (Hs + Hs.T) / 2
    lam, Q = jnp.linalg.eigh(Hs)
    scale = jnp.maximum(jnp.max(jnp.abs(lam), initial=0.0), 1.0)
    ok = ~(lam[0] < -CURVATURE_TOL * scale) | ~jnp.all(jnp.isfinite(lam))
    v = jnp.where(keep, Q[:, 0], 0.0)
    # orient it into the feasible set: the entries at the bound move up
    sgn = jnp.where(jnp.sum(jnp.where(at, v, 0.0)) < 0, -1.0, 1.0)
    v = sgn * v
    v = jnp.where(at, jnp.abs(v), v)
    return ok, jnp.where(ok, 0.0, v)


def column_flip(theta, g, H, lower, column):
    """Move from a corner of the bound where the criterion only seems to be minimal.

    ``column[i]`` is the index of the diagonal entry of entry i's column of
    its relative factor. The criterion is unchanged when a whole column of a
    relative factor changes sign (D theta, D = diag(+-1)), so at D theta the
    gradient is D g and the Hessian D H D. At a zero diagonal entry whose
    column holds nonzero entries below it, flipping that column changes the
    sign of the diagonal entry's derivative: a positive derivative, which
    holds the entry at its bound, becomes a descent direction off it (the
    random slopes of a replicate can otherwise stop at a perfectly correlated
    fit, deviance units above the optimum). Such columns are flipped, with no
    new evaluation of the criterion.
    """
    idx = jnp.arange(theta.shape[0])
    diag = column == idx
    below = (column[None, :] == idx[:, None]) & ~diag[None, :]  # below[i, e]: e under diagonal i
    has_below = jnp.any(below & (theta[None, :] != 0), axis=1)
    flip = diag & (theta <= lower) & (g > 0) & has_below
    s = jnp.where(flip[column], -1.0, 1.0)
    return s * theta, s * g, H * s[:, None] * s[None, :]


def positive_eigh(H):
    """Eigenvalues and vectors of the symmetric H with each eigenvalue replaced by max(|lambda|, delta)."""
    lam, Q = jnp.linalg.eigh(H)
    scale = jnp.maximum(jnp.max(jnp.abs(lam)), 1.0)
    return jnp.maximum(jnp.abs(lam), 1e-8 * scale), Q


def bfgs_update(H, s, y):
    """The BFGS update of the Hessian approximation H for the step s and gradient change y.

    Skipped (H kept) when the curvature s'y is not clearly positive, which keeps H
    positive definite (Nocedal & Wright, "Numerical Optimization", 2nd ed., eq. 6.19).
    """
    sy = jnp.vdot(s, y)
    Hs = H @ s
    sHs = jnp.vdot(s, Hs)
    ok = (sy > 1e-10 * jnp.sqrt(jnp.vdot(s, s) * jnp.vdot(y, y))) & (sHs > 0)
    new = H - jnp.outer(Hs, Hs) / jnp.where(ok, sHs, 1.0) + jnp.outer(y, y) / jnp.where(ok, sy, 1.0)
    return jnp.where(ok, (new + new.T) / 2, H)


HESSIANS = ("exact", "bfgs")
START, QUASI, EXACT = 0, 1, 2  # how a pass of newton(hessian="bfgs") gets its Hessian


def newton(
    fun: Callable,
    theta0,
    lower,
    args: tuple = (),
    column=None,
    gtol: float = 1e-9,
    max_iter: int = 200,
    max_step: float = 2.0,
    conv_tol: float = 1e-6,
    escape: float = 0.1,
    hessian: str = "exact",
) -> OptResult:
    """Minimize ``fun(theta, *args)`` subject to ``theta >= lower`` by projected Newton.

    With ``hessian="exact"``, one evaluation of value, gradient and Hessian
    per iteration (:func:`grad_and_hessian`), plus the values of the line
    search. With ``hessian="bfgs"`` (for criteria whose Hessian costs many
    gradients: large Schur complements), every iteration evaluates value and
    exact gradient only: the first Hessian is made by forward differences of
    the gradient (n_theta more gradients), later ones by BFGS updates
    (:func:`bfgs_update`, from the previous Hessian made positive definite).
    A point on the bound that passes the convergence test there is confirmed
    with the exact Hessian (the boundary saddle test below needs true
    curvature), from which the iteration goes on if it is not the minimum.
    Not meant for ``vmap`` (its branches would all run).

    Variables stuck at a saddle on the bound (:func:`boundary_saddle`) are
    moved off it by a step of ``escape``; with ``column`` (see
    :func:`column_flip`), zero diagonal entries of relative factors are
    moved off their bound through the sign symmetry of their column.
    """
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {HESSIANS}, not {hessian!r}")
    fgh = grad_and_hessian(fun)
    vg = jax.value_and_grad(fun)
    theta0 = jnp.maximum(jnp.asarray(theta0, dtype=jnp.float64), lower)

    def flip(theta, g, H):
        return (theta, g, H) if column is None else column_flip(theta, g, H, lower, column)

    def step(theta, f, g, H):
        """The projected, modified Newton direction and its backtracking search: (accepted, point)."""
        saddle = boundary_saddle(theta, f, g, H, lower, gtol)
        active = (theta <= lower) & (g > 0) & ~saddle
        free = ~active
        both = free[:, None] & free[None, :]
        Hf = jnp.where(both, H, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
        gf = jnp.where(free, g, 0.0)
        lam, Q = positive_eigh(Hf)
        d = -Q @ ((Q.T @ gf) / lam)
        big = jnp.max(jnp.abs(d))
        d = jnp.where(big > max_step, d * (max_step / big), d)
        d = jnp.where(saddle, jnp.maximum(d, escape), d)
        slack = ROUNDOFF * (1.0 + jnp.abs(f))

        def ls_cond(c):
            alpha, fn, tn, k = c
            decrease = jnp.vdot(gf, tn - theta)
            # Near the optimum the predicted decrease falls below the criterion's
            # rounding error and Armijo's test cannot be met: a step whose
            # predicted and actual changes are both at that level ends the search.
            tiny = (-decrease <= slack) & (fn <= f + slack)
            ok = ((fn <= f + 1e-4 * decrease) | tiny) & ((fn < f) | ~jnp.any(saddle))
            return (k == 0) | ((~ok) & (k < 41))

        def ls_body(c):
            alpha, _, _, k = c
            alpha = alpha * 0.5  # the first pass tries the full step
            tn = jnp.maximum(theta + alpha * d, lower)
            return alpha, fun(tn, *args), tn, k + 1

        _, fn, tn, _ = lax.while_loop(ls_cond, ls_body, (2.0, f, theta, 0))
        fn = jnp.where(jnp.isfinite(fn), fn, jnp.inf)
        return fn <= f, tn

    # The Hessian of a pass: EXACT (grad_and_hessian), or for hessian="bfgs" START
    # (forward differences of exact gradients, the first pass) and QUASI (the BFGS update).
    def start(x):
        f, g = vg(x, *args)
        h = 1e-6 * (1.0 + jnp.abs(x))  # forward steps: feasible from a point on the lower bound
        rows = lax.map(lambda i: vg(x + h[i] * (jnp.arange(x.shape[0]) == i), *args)[1], jnp.arange(x.shape[0]))
        H = (rows - g) / h[:, None]
        return f, g, (H + H.T) / 2

    def evaluate(x, mode, theta_prev, g_prev, H_prev):
        if hessian == "exact":
            return fgh(x, *args)

        def quasi(x):
            f, g = vg(x, *args)
            lam, Q = positive_eigh(H_prev)  # the first Hessian may be indefinite away from the optimum
            return f, g, bfgs_update((Q * lam) @ Q.T, x - theta_prev, g - g_prev)

        return lax.switch(mode, [start, quasi, lambda x: fgh(x, *args)], x)

    # The loop evaluates value, gradient and Hessian once per pass, at the point
    # the previous pass accepted (so they appear once in the compiled program).
    def cond(state):
        return ~state[6]  # done

    def body(state):
        x, theta_prev, f_prev, g_prev, H_prev, it, _, mode, _ = state
        f, g, H = evaluate(x, mode, theta_prev, g_prev, H_prev)
        exact = mode == EXACT
        x, g, H = flip(x, g, H)
        pg = projected_gradient(x, g, lower)
        small = (jnp.max(jnp.abs(pg), initial=0.0) < gtol * (1.0 + jnp.abs(f))) & ~jnp.any(
            boundary_saddle(x, f, g, H, lower, gtol)
        )
        stalled = (it > 0) & (jnp.abs(f_prev - f) <= 1e-15 * jnp.abs(f_prev)) & (
            jnp.max(jnp.abs(x - theta_prev), initial=0.0) < 1e-12
        )
        if hessian == "bfgs":  # an exact pass repeats the confirming pass's point
            stalled = stalled & ~exact
        # a pass without the exact Hessian that would stop at the bound: confirm at the same
        # point with it (only there can the stopping point be a saddle, boundary_saddle)
        confirm = ~exact & (small | stalled) & (it < max_iter) & jnp.any(x <= lower)
        stop = (small | stalled | (it >= max_iter)) & ~confirm
        accept, x_next = step(x, f, g, H)
        moved = accept & ~stop & ~confirm
        x_next = jnp.where(moved, x_next, x)
        mode_next = EXACT if hessian == "exact" else jnp.where(confirm, EXACT, QUASI)
        return x_next, x, f, g, H, it + moved, ~moved & ~confirm, mode_next, mode

    n = theta0.shape[0]
    mode0 = EXACT if hessian == "exact" else START
    init = (
        theta0, theta0, jnp.asarray(jnp.inf), jnp.zeros(n), jnp.eye(n), 0, jnp.asarray(False),
        jnp.asarray(mode0), jnp.asarray(mode0),
    )
    _, theta, f, g, H, it, _, _, used = lax.while_loop(cond, body, init)
    if hessian == "bfgs":
        # The check at the end needs the true curvature at a point on the bound (where the
        # criterion's symmetry makes the gradient vanish whatever the curvature): one exact
        # Hessian, unless the last pass had it (the confirming pass). An interior point that a
        # descent method reached with a small gradient keeps the BFGS matrix: measured on
        # InstEval, an exact Hessian there costs a quarter of the fit (5.3 s against 4.3 s).

        def exact_at(x):
            fx, gx, Hx = fgh(x, *args)
            x, gx, Hx = flip(x, gx, Hx)
            return x, fx, gx, Hx

        keep = (used == EXACT) | ~jnp.any(theta <= lower)
        theta, f, g, H = lax.cond(keep, lambda x: (x, f, g, H), exact_at, theta)
    pg = projected_gradient(theta, g, lower)
    first = jnp.max(jnp.abs(pg), initial=0.0) < conv_tol * (1.0 + jnp.abs(f))
    curv_ok, v = second_order(theta, f, g, H, lower, conv_tol)
    at = theta <= lower
    stuck = at & ((jnp.diagonal(H) < 0) | (jnp.abs(v) >= 0.1 * jnp.max(jnp.abs(v), initial=0.0)) & (v != 0))
    return OptResult(theta, f, pg, it, first & curv_ok, stuck, v)


def lbfgs(
    fun: Callable,
    theta0,
    canonical: Callable,
    args: tuple = (),
    gtol: float = 1e-9,
    max_iter: int = 500,
    conv_tol: float = 1e-6,
) -> OptResult:
    """Minimize ``fun(canonical(x), *args)`` over unconstrained x with optax's L-BFGS."""

    def f(x):
        return fun(canonical(x), *args)

    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)
    x0 = jnp.asarray(theta0, dtype=jnp.float64)

    def cond(state):
        x, s, fx, g, it = state
        return (jnp.max(jnp.abs(g), initial=0.0) >= gtol * (1.0 + jnp.abs(fx))) & (it < max_iter)

    def body(state):
        x, s, _, _, it = state
        value, grad = vg(x, state=s)
        updates, s = opt.update(grad, s, x, value=value, grad=grad, value_fn=f)
        x = optax.apply_updates(x, updates)
        fx, g = jax.value_and_grad(f)(x)
        return x, s, fx, g, it + 1

    s0 = opt.init(x0)
    f0, g0 = jax.value_and_grad(f)(x0)
    x, _, _, g, it = lax.while_loop(cond, body, (x0, s0, f0, g0, 0))
    theta = canonical(x)
    fval = fun(theta, *args)
    conv = jnp.max(jnp.abs(g), initial=0.0) < conv_tol * (1.0 + jnp.abs(fval))
    return OptResult(theta, fval, g, it, conv, jnp.zeros(theta.shape, dtype=bool), jnp.zeros(theta.shape))
