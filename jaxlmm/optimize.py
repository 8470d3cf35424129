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
The Hessian policy is a :class:`Hessian`: ``EXACT`` at every iteration, or
``BFGS`` (forward differences of exact gradients at the start, then BFGS
updates, forward differences again where a stop on the bound needs true
curvature); each pass of the loop records how it got its Hessian as a
:class:`Mode`. The criterion's gradient (and, for ``EXACT``, its Hessian)
appears once in the compiled loop (and the criterion itself in the line
search): compilation time grows with the number of copies of the
criterion's derivatives in a program, and the ``BFGS`` loop holds no
Hessian of the criterion at all. The loop carries a
:class:`NewtonState`; one pass is ``_newton_pass`` (``_evaluate``, the
stopping tests, ``_direction`` and ``_line_search``).

L-BFGS (optax): unconstrained, on a sign-canonical parameterization. The
criterion depends on theta only through Lambda Lambda', which does not
change when a column of a relative factor changes sign, so
``canonical(theta)`` (each column multiplied by the sign of its diagonal)
maps any point to the feasible region with the same value.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .control import Hessian

ROUNDOFF = 1e-12  # relative rounding error of the criterion's value
GTOL = 1e-9  # Newton's aim: max|projected gradient| < GTOL (1 + |f|)


class OptResult(NamedTuple):
    theta: jax.Array
    fun: jax.Array
    grad: jax.Array  # projected gradient at theta
    n_iter: jax.Array
    converged: jax.Array  # first-order conditions and non-negative curvature (second_order)
    stuck: jax.Array  # per entry: at its bound with negative curvature there (a saddle)
    descent: jax.Array  # a direction of negative curvature at theta (zeros where there is none)
    hessian: jax.Array  # the criterion's exact Hessian at theta where the optimizer computed it, else NaN


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
    return _positive(lam), Q


def _positive(lam):
    scale = jnp.maximum(jnp.max(jnp.abs(lam)), 1.0)
    return jnp.maximum(jnp.abs(lam), 1e-8 * scale)


HALFWAY = 0.5
NEAR = 0.05
"""Where the Hessian has negative curvature, a Newton step goes at most HALFWAY of the way to the
bound in any entry more than NEAR above it (:func:`_direction`)."""


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


HESSIANS = (Hessian.EXACT.value, Hessian.BFGS.value)
"""The Hessians :func:`newton` takes (:class:`jaxlmm.control.Hessian`; ``"auto"`` is the fit's choice
between them, :meth:`jaxlmm.control.Control.newton_hessian`)."""


class Mode(enum.IntEnum):
    """How one pass of :func:`newton` gets its Hessian (:func:`_evaluate`)."""

    QUASI = 0  # the BFGS update of the previous pass's Hessian
    EXACT = 1  # grad_and_hessian (hessian="exact")
    START = 2  # forward differences of exact gradients, one column per pass (hessian="bfgs" starts
    # so, and measures so at the bound)


class Trial(NamedTuple):
    """A step proposed from NewtonState.theta (hessian="bfgs"). Where the last step was taken at
    full length, the next pass evaluates value and gradient at the full length of this one and
    takes it if Armijo's test holds there (``pending``), else backtracks by values alone from half
    its length; otherwise the next pass searches by values alone from full length (``search``)."""

    pending: jax.Array  # NewtonState.point is this untested full step
    search: jax.Array  # the next pass is the line search from theta, by values alone
    full: jax.Array  # the last step taken was of full length
    d: jax.Array  # the projected Newton direction at theta
    gf: jax.Array  # the gradient on the free set at theta (Armijo's predicted decrease)
    saddle: jax.Array  # per entry: escaping a saddle on the bound (the step must lower the criterion)


class NewtonState(NamedTuple):
    """The carry of :func:`newton`'s loop: the point the next pass evaluates and what the last pass found."""

    point: jax.Array  # where the next pass evaluates the criterion
    theta: jax.Array  # the last pass's point (after any column flip)
    f: jax.Array  # value at theta
    g: jax.Array  # gradient at theta
    H: jax.Array  # Hessian at theta (exact, finite-difference or BFGS, by last_mode)
    n_iter: jax.Array  # accepted steps
    done: jax.Array
    mode: jax.Array  # Mode of the next pass
    last_mode: jax.Array  # Mode of the last pass (how H was made)
    col: jax.Array  # in Mode.START: the column of H the next pass measures (-1: the base point)
    trial: Trial  # hessian="bfgs": whether point is a proposed step, and how to test it


def _no_trial(n: int) -> Trial:
    no = jnp.asarray(False)
    return Trial(no, no, no, jnp.zeros(n), jnp.zeros(n), jnp.zeros(n, dtype=bool))


class _Problem(NamedTuple):
    """What the helpers of :func:`newton` share: criterion, data, bounds and settings (not traced state)."""

    fun: Callable
    args: tuple
    lower: jax.Array
    column: Any  # see column_flip; None: no relative factors
    hessian: Hessian
    gtol: float
    max_iter: int
    max_step: float
    escape: float

    def vg(self, x):
        """(f, g) at x."""
        return jax.value_and_grad(self.fun)(x, *self.args)

    def fgh(self, x):
        """(f, g, H) at x, H exact."""
        return grad_and_hessian(self.fun)(x, *self.args)


class _LineSearch(NamedTuple):
    """The carry of the backtracking search: step length, value and point tried, passes made."""

    alpha: jax.Array
    value: jax.Array
    point: jax.Array
    k: jax.Array


def _flip(p: _Problem, theta, g, H):
    """(theta, g, H) moved by :func:`column_flip` where the problem has relative-factor columns."""
    return (theta, g, H) if p.column is None else column_flip(theta, g, H, p.lower, p.column)


def _fd_step(x):
    """The forward-difference steps of the start Hessian: feasible from a point on the lower bound."""
    return 1e-6 * (1.0 + jnp.abs(x))


def _gradient_pass(p: _Problem, s: NewtonState, x):
    """(f, g, H) at x from the gradient alone: in Mode.START the finite-difference column s.col
    of H at the base point s.theta (filled in s.H; symmetrized with the last column), else the
    BFGS update of |s.H| (eigenvalues made positive) for the step from s.theta."""
    f, g = p.vg(x)
    lam, Q = positive_eigh(s.H)  # the first Hessian may be indefinite away from the optimum
    quasi = bfgs_update((Q * lam) @ Q.T, x - s.theta, g - s.g)
    n = x.shape[0]
    col = jnp.maximum(s.col, 0)
    filled = s.H.at[col].set(jnp.where(s.col >= 0, (g - s.g) / _fd_step(s.theta)[col], s.H[col]))
    filled = jnp.where(s.col == n - 1, (filled + filled.T) / 2, filled)
    return f, g, jnp.where(s.mode == int(Mode.START), filled, quasi)


def _evaluate(p: _Problem, s: NewtonState):
    """(f, g, H) at s.point: exact for hessian="exact"; for hessian="bfgs" from the gradient alone
    (:func:`_gradient_pass`), so that the loop holds no copy of the criterion's Hessian."""
    if p.hessian is Hessian.EXACT:
        return p.fgh(s.point)
    return _gradient_pass(p, s, s.point)


def _direction(p: _Problem, theta, f, g, H):
    """The projected Newton direction -|H_F|^-1 g_F on the free set F, capped, saddles escaped: (d, g_F, saddle)."""
    saddle = boundary_saddle(theta, f, g, H, p.lower, p.gtol)
    active = (theta <= p.lower) & (g > 0) & ~saddle
    free = ~active
    both = free[:, None] & free[None, :]
    Hf = jnp.where(both, H, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
    gf = jnp.where(free, g, 0.0)
    lam, Q = jnp.linalg.eigh(Hf)
    d = -Q @ ((Q.T @ gf) / _positive(lam))
    big = jnp.max(jnp.abs(d))
    d = jnp.where(big > p.max_step, d * (p.max_step / big), d)
    # With negative curvature the step's length comes from |lambda|, not from the criterion: a step
    # that would put diagonal entries on their bound from afar (lme4's start for a random slope) lands
    # in the corner where a relative factor's column turns through its zero diagonal, a flat curved
    # valley Newton then creeps along. Such a step goes at most halfway to the bound.
    gap = theta - p.lower
    far = jnp.isfinite(gap) & (gap > NEAR) & (d < 0)
    room = jnp.where(far, HALFWAY * gap / jnp.maximum(-d, 1e-300), jnp.inf)
    d = jnp.where(jnp.min(lam) < 0, d * jnp.minimum(1.0, jnp.min(room, initial=jnp.inf)), d)
    d = jnp.where(saddle, jnp.maximum(d, p.escape), d)
    return d, gf, saddle


def _sufficient(theta, f, gf, saddle, point, value):
    """Armijo's test for the step from theta (value f, free gradient gf) to point (value ``value``)."""
    slack = ROUNDOFF * (1.0 + jnp.abs(f))
    decrease = jnp.vdot(gf, point - theta)
    # Near the optimum the predicted decrease falls below the criterion's
    # rounding error and Armijo's test cannot be met: a step whose
    # predicted and actual changes are both at that level ends the search.
    tiny = (-decrease <= slack) & (value <= f + slack)
    return ((value <= f + 1e-4 * decrease) | tiny) & ((value < f) | ~jnp.any(saddle))


def _line_search(p: _Problem, theta, f, gf, d, saddle, first=1.0, skip=False):
    """Armijo backtracking along max(theta + alpha d, lower), alpha = first, first / 2, ...:
    (accepted, point, alpha); none where ``skip`` (not accepted, theta)."""

    def cond(c: _LineSearch):
        return (c.k == 0) | (~_sufficient(theta, f, gf, saddle, c.point, c.value) & (c.k < 41))

    def body(c: _LineSearch):
        alpha = c.alpha * 0.5
        tn = jnp.maximum(theta + alpha * d, p.lower)
        return _LineSearch(alpha, p.fun(tn, *p.args), tn, c.k + 1)

    init = _LineSearch(2.0 * jnp.asarray(first, dtype=f.dtype), jnp.where(skip, jnp.inf, f), theta,
                       jnp.where(skip, 41, 0))
    end = lax.while_loop(cond, body, init)
    fn = jnp.where(jnp.isfinite(end.value), end.value, jnp.inf)
    return fn <= f, end.point, end.alpha


def _stop_tests(p: _Problem, s: NewtonState, x, f, g, H, measured):
    """(small, stalled): max|pg| < gtol (1 + |f|) and no boundary saddle; f and theta unchanged since the last pass."""
    pg = projected_gradient(x, g, p.lower)
    small = (jnp.max(jnp.abs(pg), initial=0.0) < p.gtol * (1.0 + jnp.abs(f))) & ~jnp.any(
        boundary_saddle(x, f, g, H, p.lower, p.gtol)
    )
    stalled = (s.n_iter > 0) & (jnp.abs(s.f - f) <= 1e-15 * jnp.abs(s.f)) & (
        jnp.max(jnp.abs(x - s.theta), initial=0.0) < 1e-12
    )
    if p.hessian is Hessian.BFGS:  # a measuring pass repeats the confirming pass's point
        stalled = stalled & ~measured
    return small, stalled


def _newton_pass(p: _Problem, s: NewtonState) -> NewtonState:
    """One pass: (f, g, H) at s.point, the stopping tests, and else a projected Newton step from there.

    With hessian="bfgs" the loop starts with n_theta + 1 gradient passes (Mode.START): the base
    point, then one finite-difference column of H per pass (:func:`_collect`); the last of them
    steps from the base point with the finished H. A step is tried at full length by the next
    pass's own value where the last step was of full length, else searched for by values alone
    first (:class:`Trial`, :func:`_backtrack`): the criterion's gradient and its value each appear
    once in the program."""
    if p.hessian is Hessian.EXACT:
        f, g, H = _evaluate(p, s)
        return _step(p, s, s.point, f, g, H)

    def evaluated():
        f, g, H = _evaluate(p, s)
        start = s.mode == int(Mode.START)
        measured = start & (s.col >= 0)  # act (if at all) at the base point, from its value and gradient
        x, f0, g0 = (jnp.where(measured, a, b) for a, b in ((s.theta, s.point), (s.f, f), (s.g, g)))
        collect = start & (s.col < s.point.shape[0] - 1)
        nxt = lax.cond(collect, lambda: _collect(s, x, f0, g0, H), lambda: _step(p, s, x, f0, g0, H))
        # a proposed step is taken where Armijo's test holds at the value just evaluated there and
        # the value is not above theta's; where the test holds only at rounding level (a value a
        # little above), the search ends there without a step, as _line_search's would
        sufficient = s.trial.pending & _sufficient(s.theta, s.f, s.trial.gf, s.trial.saddle, s.point, f)
        lower = f <= s.f
        return nxt, ~s.trial.pending | (sufficient & lower), sufficient & ~lower

    no = jnp.asarray(False)
    nxt, ok, ended = lax.cond(s.trial.search, lambda: (s, no, no), evaluated)
    return lax.cond(ok, lambda: nxt, lambda: _backtrack(p, s, ended))


def _collect(s: NewtonState, x, f, g, H) -> NewtonState:
    """A start pass that measured the base point or a column of H: the next pass measures the next
    column, at the base point x moved by its forward-difference step."""
    col = s.col + 1
    e = jnp.arange(x.shape[0]) == col
    point = x + jnp.where(e, _fd_step(x), 0.0)
    return NewtonState(point, x, f, g, H, s.n_iter, jnp.asarray(False), s.mode, s.mode, col, _no_trial(x.shape[0]))


def _step(p: _Problem, s: NewtonState, x, f, g, H) -> NewtonState:
    """The tests and the projected Newton step at x from (f, g, H) (see :func:`_newton_pass`)."""
    measured = s.mode != int(Mode.QUASI)  # H exact, or all its finite-difference columns measured at x
    x, g, H = _flip(p, x, g, H)
    n_iter = s.n_iter + s.trial.pending  # x is a proposed step, taken
    small, stalled = _stop_tests(p, s, x, f, g, H, measured)
    stop = small | stalled | (n_iter >= p.max_iter)
    d, gf, saddle = _direction(p, x, f, g, H)
    if p.hessian is Hessian.EXACT:
        accept, x_next, _ = _line_search(p, x, f, gf, d, saddle)
        moved = accept & ~stop
        return NewtonState(x_next, x, f, g, H, n_iter + moved, ~moved, s.mode, s.mode, jnp.asarray(-1), s.trial)
    # The step's full length is tried by the next pass, from the value and gradient it evaluates
    # anyway (_newton_pass; _backtrack where it fails Armijo's test). A BFGS Hessian cannot tell a
    # minimum on the bound from a saddle there (boundary_saddle; the final check needs true
    # curvature): a pass at a point on the bound that would end the loop (converged, stalled, out
    # of iterations; _backtrack: without a step), or that a step has just reached, measures H at x
    # by forward differences first (passes of Mode.START from its first column) and then steps or
    # stops from the measured H.
    arrived = jnp.any((x <= p.lower) & (s.theta > p.lower)) & (n_iter > 0)
    confirm = ~measured & (stop | arrived) & jnp.any(x <= p.lower)
    go = ~stop & ~confirm
    full = s.trial.full | s.trial.pending
    quasi = NewtonState(
        jnp.where(go & full, jnp.maximum(x + d, p.lower), x), x, f, g, H, n_iter, ~go & ~confirm,
        jnp.asarray(int(Mode.QUASI)), s.mode, jnp.asarray(-1), Trial(go & full, go & ~full, full, d, gf, saddle),
    )
    return _measure_if(confirm, quasi, s._replace(n_iter=n_iter), x, f, g, H)


def _measure_if(confirm, state: NewtonState, s: NewtonState, x, f, g, H) -> NewtonState:
    """``state``, or where ``confirm`` the passes that measure H at x by forward differences."""
    measure = _collect(s._replace(col=jnp.asarray(-1), mode=jnp.asarray(int(Mode.START))), x, f, g, H)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(confirm, a, b), measure, state)


def _backtrack(p: _Problem, s: NewtonState, ended) -> NewtonState:
    """The line search from s.theta by values alone: from full length (a search pass), or from half
    the length of a proposed step that failed Armijo's test (none where the search ``ended`` at
    it). The next pass evaluates the point found (a step taken); without one the loop ends at
    s.theta, or measures H there first where it is on the bound with a BFGS Hessian."""
    t = s.trial
    first = jnp.where(t.search, 1.0, 0.5)
    accept, x, alpha = _line_search(p, s.theta, s.f, t.gf, t.d, t.saddle, first=first, skip=ended)
    measured = s.last_mode != int(Mode.QUASI)  # how the pass at s.theta made H
    confirm = ~accept & ~measured & jnp.any(s.theta <= p.lower)
    found = NewtonState(
        jnp.where(accept, x, s.theta), s.theta, s.f, s.g, s.H, s.n_iter + accept, ~accept & ~confirm,
        s.mode, s.last_mode, jnp.asarray(-1),
        t._replace(pending=jnp.asarray(False), search=jnp.asarray(False), full=accept & (alpha == 1.0)),
    )
    return _measure_if(confirm, found, s, s.theta, s.f, s.g, s.H)


def _initial_state(p: _Problem, theta0) -> NewtonState:
    """The loop's start: the first pass evaluates at theta0, with the exact Hessian (hessian="exact")
    or as the base point of the finite-difference start (hessian="bfgs")."""
    n = theta0.shape[0]
    mode0 = int(Mode.EXACT) if p.hessian is Hessian.EXACT else int(Mode.START)
    return NewtonState(
        theta0, theta0, jnp.asarray(jnp.inf), jnp.zeros(n), jnp.eye(n), jnp.asarray(0), jnp.asarray(False),
        jnp.asarray(mode0), jnp.asarray(mode0), jnp.asarray(-1), _no_trial(n),
    )


def _newton_result(p: _Problem, theta, f, g, H, n_iter, conv_tol: float) -> OptResult:
    """The OptResult at theta: projected gradient, first- and second-order tests, entries stuck at a saddle."""
    pg = projected_gradient(theta, g, p.lower)
    first = jnp.max(jnp.abs(pg), initial=0.0) < conv_tol * (1.0 + jnp.abs(f))
    curv_ok, v = second_order(theta, f, g, H, p.lower, conv_tol)
    at = theta <= p.lower
    stuck = at & ((jnp.diagonal(H) < 0) | (jnp.abs(v) >= 0.1 * jnp.max(jnp.abs(v), initial=0.0)) & (v != 0))
    exact = H if p.hessian is Hessian.EXACT else jnp.full_like(H, jnp.nan)
    return OptResult(theta, f, pg, n_iter, first & curv_ok, stuck, v, exact)


def _problem(fun, args, lower, column=None, gtol: float = GTOL, max_iter: int = 200, max_step: float = 2.0,
             escape: float = 0.1, hessian: Hessian | str = "exact") -> _Problem:
    """The :class:`_Problem` of :func:`newton`'s arguments (``hessian`` checked)."""
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {HESSIANS}, not {hessian!r}")
    return _Problem(fun, args, lower, column, Hessian(hessian), gtol, max_iter, max_step, escape)


def newton(
    fun: Callable,
    theta0,
    lower,
    args: tuple = (),
    column=None,
    gtol: float = GTOL,
    max_iter: int = 200,
    max_step: float = 2.0,
    conv_tol: float = 1e-6,
    escape: float = 0.1,
    hessian: Hessian | str = "exact",
) -> OptResult:
    """Minimize ``fun(theta, *args)`` subject to ``theta >= lower`` by projected Newton.

    With ``hessian="exact"``, one evaluation of value, gradient and Hessian
    per iteration (:func:`grad_and_hessian`), plus the values of the line
    search. With ``hessian="bfgs"`` (for criteria whose Hessian costs many
    gradients: large Schur complements), every iteration evaluates value and
    exact gradient only; once steps of full length are being accepted, the
    next step's full length is tested by the next iteration's own value
    (:class:`Trial`: an accepted full step costs no separate line-search
    value). The first Hessian is made by forward differences of the gradient
    (n_theta more gradient passes of the loop), later ones are BFGS updates
    (:func:`bfgs_update`, from the previous Hessian made positive definite).
    At a point on the bound that would end the loop there (converged,
    stalled, out of iterations or without a step), or that a step has just
    reached, the Hessian is measured again by forward differences (n_theta
    gradient passes: the boundary saddle test and the final check need true
    curvature), from which the iteration stops or goes on. No pass evaluates
    the criterion's Hessian, so the compiled loop holds only its gradient.
    Not meant for ``vmap`` (its branches would all run). ``hessian`` is a
    :class:`Hessian` or its value.

    Variables stuck at a saddle on the bound (:func:`boundary_saddle`) are
    moved off it by a step of ``escape``; with ``column`` (see
    :func:`column_flip`), zero diagonal entries of relative factors are
    moved off their bound through the sign symmetry of their column.
    """
    theta0 = jnp.maximum(jnp.asarray(theta0, dtype=jnp.float64), lower)
    p = _problem(fun, args, lower, column, gtol, max_iter, max_step, escape, hessian)
    # The loop evaluates value, gradient and Hessian once per pass, at the point
    # the previous pass accepted (so they appear once in the compiled program).
    s = lax.while_loop(lambda s: ~s.done, lambda s: _newton_pass(p, s), _initial_state(p, theta0))
    return _newton_result(p, s.theta, s.f, s.g, s.H, s.n_iter, conv_tol)


class LbfgsState(NamedTuple):
    """The carry of :func:`lbfgs`'s loop: the unconstrained point, optax's state, and value and gradient there."""

    x: jax.Array
    opt_state: Any
    f: jax.Array
    g: jax.Array
    n_iter: jax.Array


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
    import optax  # here: a Newton fit (the common case) does not import it (50 ms)

    def f(x):
        return fun(canonical(x), *args)

    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)
    x0 = jnp.asarray(theta0, dtype=jnp.float64)

    def cond(state: LbfgsState):
        return (jnp.max(jnp.abs(state.g), initial=0.0) >= gtol * (1.0 + jnp.abs(state.f))) & (state.n_iter < max_iter)

    def body(state: LbfgsState):
        value, grad = vg(state.x, state=state.opt_state)
        updates, s = opt.update(grad, state.opt_state, state.x, value=value, grad=grad, value_fn=f)
        x = optax.apply_updates(state.x, updates)
        fx, g = jax.value_and_grad(f)(x)
        return LbfgsState(x, s, fx, g, state.n_iter + 1)

    s0 = opt.init(x0)
    f0, g0 = jax.value_and_grad(f)(x0)
    end = lax.while_loop(cond, body, LbfgsState(x0, s0, f0, g0, 0))
    x, g, it = end.x, end.g, end.n_iter
    theta = canonical(x)
    fval = fun(theta, *args)
    conv = jnp.max(jnp.abs(g), initial=0.0) < conv_tol * (1.0 + jnp.abs(fval))
    n = theta.shape[0]
    return OptResult(theta, fval, g, it, conv, jnp.zeros(n, dtype=bool), jnp.zeros(n), jnp.full((n, n), jnp.nan))


class _Ended(NamedTuple):
    """Where each problem of :func:`newton_lanes` ended: the loop state :func:`_newton_result` reads."""

    theta: jax.Array
    f: jax.Array
    g: jax.Array
    H: jax.Array
    n_iter: jax.Array


def newton_lanes(fun: Callable, theta0, lower, args: tuple, lanes: int, count=None, conv_tol: float = 1e-6,
                 **settings) -> OptResult:
    """:func:`newton` for N problems ``fun(theta, *args_i)`` from ``theta0[i]`` (``args``: arrays
    with a leading axis N), run ``lanes`` at a time, vectorized: a lane whose problem has ended
    takes up the next one, so a batch costs the iterations its problems need, not N / lanes times
    the most any of them needs (as ``vmap`` of :func:`newton` would). Each problem's iterates are
    exactly :func:`newton`'s with the same ``settings`` (its keywords ``column``, ``gtol``,
    ``max_iter``, ``max_step``, ``escape``, ``hessian``). Problems from ``count`` on (traced;
    default N) are skipped, their results zeros. The result has a leading axis N.
    """
    theta0 = jnp.maximum(jnp.asarray(theta0, dtype=jnp.float64), lower)
    n = theta0.shape[0]
    width = min(int(lanes), n)
    count = jnp.asarray(n if count is None else jnp.minimum(count, n))
    problem = lambda a: _problem(fun, a, lower, **settings)  # noqa: E731

    def take(i):
        return jax.tree.map(lambda x: x[jnp.clip(i, 0, n - 1)], args)

    def start(i):
        return jax.vmap(lambda t, a: _initial_state(problem(a), t))(theta0[jnp.clip(i, 0, n - 1)], take(i))

    def lanewise(mask, a, b):  # per lane: a where mask, else b
        return jax.tree.map(lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b)

    def body(c):
        states, idx, nxt, ended = c
        active = idx < count
        new = lanewise(active, jax.vmap(lambda s, a: _newton_pass(problem(a), s))(states, take(idx)), states)
        fin = active & new.done
        rows = jnp.where(fin, idx, n)  # row n is out of bounds: dropped
        ended = jax.tree.map(lambda e, v: e.at[rows].set(v, mode="drop"), ended,
                             _Ended(new.theta, new.f, new.g, new.H, new.n_iter))
        following = nxt + jnp.cumsum(fin) - 1
        idx = jnp.where(fin, jnp.where(following < count, following, n), idx)
        return lanewise(fin, start(idx), new), idx, nxt + jnp.sum(fin), ended

    k = theta0.shape[1]
    ended = _Ended(jnp.zeros((n, k)), jnp.zeros(n), jnp.zeros((n, k)), jnp.zeros((n, k, k)),
                   jnp.zeros(n, dtype=jnp.asarray(0).dtype))
    idx = jnp.arange(width)
    idx = jnp.where(idx < count, idx, n)
    carry = (start(idx), idx, jnp.minimum(count, width), ended)
    ended = lax.while_loop(lambda c: jnp.any(c[1] < count), body, carry)[3]
    p = problem(None)
    res = jax.vmap(lambda e: _newton_result(p, e.theta, e.f, e.g, e.H, e.n_iter, conv_tol))(ended)
    live = jnp.arange(n) < count
    return lanewise(live, res, jax.tree.map(jnp.zeros_like, res))
