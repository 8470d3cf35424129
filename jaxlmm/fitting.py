"""The fit driver: minimize the profiled criterion over theta, with the checks that make an optimum a minimum.

:func:`minimize_theta` is one traceable pass of the optimizer (Newton or
L-BFGS, :mod:`jaxlmm.optimize`) over the criterion of
:mod:`jaxlmm.objective`, on the rescaled parameters phi = theta * scale
(:func:`jaxlmm.theta.theta_scales`); :data:`optimize_theta` is that pass
compiled, once per data shape; :func:`fit_theta` runs passes until the
answer is a minimum (restarts at saddles, a second look at boundary optima,
an L-BFGS fallback) under the settings of a :class:`~jaxlmm.control.Control`.
The response may be rescaled by a power of two first
(:func:`response_scale`): theta does not depend on the response's units.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import ahead
from ._config import lean_jit, on_device
from .control import Control
from .crossprod import CrossProducts
from .objective import deviance
from .optimize import OptResult, lbfgs, newton
from .theta import canonical_theta, theta_columns

METHODS = ("newton", "lbfgs")


def _scaled_deviance(phi, data: CrossProducts, reml, scale):
    """The criterion in the rescaled parameters phi = theta * scale (:func:`jaxlmm.theta.theta_scales`)."""
    return deviance(phi / scale, data, reml)


def minimize_theta(
    theta0, lower, data: CrossProducts, reml, method: str = "newton", max_iter: int = 200, scale=None,
    hessian: str = "exact", conv_tol=Control.convergence_tol,
):
    """Minimize the profiled criterion over theta (traceable: ``max_iter`` may be traced).

    The optimizer works on phi = theta * scale (positive, per entry; ones by
    default); the result is mapped back to theta, the gradient too.
    ``hessian`` is the Newton optimizer's (:func:`jaxlmm.optimize.newton`).
    :data:`optimize_theta` is this function jit-compiled, once per data shape.
    """
    if data.n_theta == 0:  # no random-effect term: the criterion is closed form
        z = jnp.zeros(jnp.shape(theta0))
        return OptResult(theta0, deviance(theta0, data, reml), theta0, 0, True, z.astype(bool), z, z[:, None] * z)
    if scale is None:
        fun, w, args = deviance, 1.0, (data, reml)
    else:
        fun, w, args = _scaled_deviance, scale, (data, reml, scale)
    if method == "newton":
        opt = newton(
            fun, theta0 * w, lower * w, args=args, max_iter=max_iter, column=theta_columns(data.term_dims),
            hessian=hessian, conv_tol=conv_tol,
        )
    elif method == "lbfgs":
        canon = partial(canonical_theta, term_dims=data.term_dims)
        opt = lbfgs(fun, theta0 * w, canon, args=args, max_iter=max_iter * 5, conv_tol=conv_tol)
    else:  # pragma: no cover (checked by the callers)
        raise ValueError(method)
    w = jnp.broadcast_to(w, opt.theta.shape)
    return opt._replace(theta=opt.theta / w, grad=opt.grad * w, descent=opt.descent / w,
                        hessian=opt.hessian * jnp.outer(w, w))


optimize_theta = lean_jit(minimize_theta, static_argnames=("method", "max_iter", "hessian"))

deviance_jit = lean_jit(deviance)


def second_is_better(fa, fb, ca, cb) -> np.ndarray:
    """Whether optimum b (criterion ``fb``, converged ``cb``) is better than a, elementwise: the lower
    finite criterion, and at a tie within the criterion's rounding level (1e-10 relative) the converged one."""
    fa, fb = np.asarray(fa, dtype=np.float64), np.asarray(fb, dtype=np.float64)
    ca, cb = np.asarray(ca, dtype=bool), np.asarray(cb, dtype=bool)
    tie = np.abs(fa - fb) <= 1e-10 * (1.0 + np.abs(fa))
    with np.errstate(invalid="ignore"):
        pick = np.where(tie & (ca != cb), cb, fb < fa)
    return np.isfinite(fb) & (~np.isfinite(fa) | pick)


def moved_start(phi, v, step: float, low) -> np.ndarray:
    """phi moved along ``v`` by ``step`` relative to max(1, |phi|), kept above ``low``: where a restart
    along a direction of negative curvature begins (the last axis is the parameter's)."""
    size = step * np.maximum(1.0, np.max(np.abs(phi), axis=-1, keepdims=True))
    return np.maximum(phi + size * v / np.max(np.abs(v), axis=-1, keepdims=True), low)


def first_order(fun, grad, tol: float) -> np.ndarray:
    """The first-order test of :func:`jaxlmm.optimize.newton`: max|grad| < tol (1 + |fun|), finite."""
    g = np.abs(np.asarray(grad, dtype=np.float64))
    return np.all(np.isfinite(g), axis=-1) & (np.max(g, axis=-1, initial=0.0) < tol * (1.0 + np.abs(fun)))


def _better(a: OptResult, b: OptResult) -> OptResult:
    """The better optimum of two (:func:`second_is_better`)."""
    return b if bool(second_is_better(float(a.fun), float(b.fun), bool(a.converged), bool(b.converged))) else a


def is_below(fa, fb, rel: float = 1e-10) -> np.ndarray:
    """Criterion ``fa`` below ``fb`` by more than its rounding level (``rel`` relative), elementwise."""
    fb = np.asarray(fb, dtype=np.float64)
    return np.asarray(fa, dtype=np.float64) < fb - rel * (1.0 + np.abs(fb))


def has_direction(v) -> np.ndarray:
    """Whether ``v`` (the last axis) is a usable direction of negative curvature: finite, not zero."""
    v = np.asarray(v)
    return np.any(v != 0, axis=-1) & np.all(np.isfinite(v), axis=-1)


def _below(a: OptResult, b: OptResult, rel: float = 1e-10) -> bool:
    """``a``'s criterion is below ``b``'s by more than its rounding level (:func:`is_below`)."""
    return bool(is_below(float(a.fun), float(b.fun), rel))


@dataclasses.dataclass
class _Run:
    """One minimization problem, and the Newton iterations spent on it so far."""

    lower: jax.Array
    data: CrossProducts
    reml: bool
    w: np.ndarray  # phi = theta * w
    low: np.ndarray  # the lower bounds on the scale phi
    kw: dict
    n_iter: int = 0

    def run(self, start, method: str = "newton") -> OptResult:
        """One compiled pass from ``start`` (theta); its iterations are counted."""
        args, kw = (on_device(start), self.lower, self.data, self.reml), dict(method=method, **self.kw)
        if ahead.pending():  # trace and lower first, then let the programs after the fit compile beside it
            optimize_theta.lower(*args, **kw)
            ahead.release()
        opt = optimize_theta(*args, **kw)
        self.n_iter += int(opt.n_iter)
        return opt

    def moved(self, opt: OptResult, v, step: float) -> np.ndarray:
        """theta moved from ``opt`` along ``v`` (on the scale phi) by ``step`` relative to
        max(1, |phi|), kept feasible: where a restart begins."""
        return moved_start(np.asarray(opt.theta) * self.w, v, step, self.low) / self.w

    def at_bound(self, opt: OptResult) -> np.ndarray:
        return np.asarray(opt.theta) * self.w <= self.low

    def first_order(self, opt: OptResult) -> bool:
        """The first-order test of :func:`jaxlmm.optimize.newton` on the scale phi."""
        return bool(first_order(float(opt.fun), np.asarray(opt.grad) / self.w, self.kw["conv_tol"]))

    def direction(self, opt: OptResult):
        """The direction of negative curvature at ``opt`` on the scale phi, or None."""
        v = np.asarray(opt.descent) * self.w
        return v if has_direction(v) else None


def fit_theta(start, lower, data: CrossProducts, reml, method: str = "newton", scale=None,
              control: Control | None = None) -> OptResult:
    """:data:`optimize_theta`, with the rules that make a reported optimum a minimum.

    A Newton fit is ``converged`` only where the first-order conditions of
    the bound-constrained problem hold and the Hessian restricted to the free
    and degenerate-bound coordinates has no negative eigenvalue
    (:func:`jaxlmm.optimize.second_order`). Otherwise:

    - at negative curvature (a saddle: the criterion is even in a zero
      diagonal theta entry, so its gradient vanishes there whatever the
      curvature), Newton restarts from the point moved along the direction
      of negative curvature (the entries at their bound become small positive
      values), up to ``control.max_restarts`` times (:func:`_saddle_restarts`);
    - at a converged optimum on the boundary (a zero diagonal entry: a
      singular fit), Newton runs once more from those entries at their start
      value, and the better optimum is kept (``control.boundary_restart``,
      :func:`_boundary_restart`);
    - where Newton stalls (its line search fails, or the iteration cap), L-BFGS
      continues from the best point so far and Newton finishes from there
      (:func:`_lbfgs_fallback`);
    - where the first-order conditions hold but the curvature test fails,
      probes decide between a way down and a numerically flat valley
      (:func:`_probe_flat`).

    The lowest criterion wins. Each further pass reuses the compiled fit
    (L-BFGS compiles once, when first needed); a fit that converges at once
    costs nothing more.
    """
    control = Control() if control is None else control
    kw = dict(max_iter=control.max_iter, scale=scale, hessian=control.newton_hessian(data.q_rest).value,
              conv_tol=control.convergence_tol)
    w = np.ones(np.shape(start)) if scale is None else np.asarray(scale)
    run = _Run(lower, data, reml, w, np.asarray(lower) * w, kw)
    start = on_device(start)
    best = run.run(start, method)
    if method != "newton" or data.n_theta == 0:
        return best
    if bool(best.converged) and not (control.boundary_restart and np.any(run.at_bound(best))):
        return best
    best = _saddle_restarts(run, best, control)
    if control.boundary_restart:
        best = _boundary_restart(run, best, np.asarray(start))
    if not bool(best.converged):
        best = _lbfgs_fallback(run, best)
    if not bool(best.converged) and run.first_order(best):
        best = _probe_flat(run, best, control)
    return best._replace(n_iter=on_device(run.n_iter))


def _saddle_restarts(run: _Run, best: OptResult, control: Control) -> OptResult:
    """Restart a non-converged Newton fit along its direction of negative curvature, while that helps."""
    for _ in range(control.max_restarts):
        v = run.direction(best)
        if bool(best.converged) or v is None:
            break
        again = run.run(run.moved(best, v, control.restart_step))
        stalled = not _below(again, best) and not bool(again.converged)
        best = _better(best, again)
        if stalled:
            break
    return best


def _boundary_restart(run: _Run, best: OptResult, start: np.ndarray) -> OptResult:
    """A boundary optimum may be a local one: the criterion is even in a zero diagonal entry, so
    Newton can reach it from one side and stop. Once more from those entries at their start value
    (1 on the optimizer's scale), keeping the better converged optimum."""
    at = run.at_bound(best)
    if not (bool(best.converged) and np.any(at)):
        return best
    new = np.where(at, 1.0 / run.w, np.asarray(best.theta))
    if np.array_equal(new, start):  # from the fit's own start it would repeat itself
        return best
    again = run.run(new)
    return again if bool(again.converged) and _below(again, best) else best


def _lbfgs_fallback(run: _Run, best: OptResult) -> OptResult:
    """L-BFGS from the best point so far, then Newton from its end (which carries the second-order check)."""
    lb = run.run(best.theta, "lbfgs")
    if not np.all(np.isfinite(np.asarray(lb.theta))):
        return best
    again = run.run(lb.theta)
    return _better(best, _better(again, lb._replace(converged=on_device(False))))


def _probe_flat(run: _Run, best: OptResult, control: Control) -> OptResult:
    """First-order conditions hold but the curvature test fails: probe along the direction of
    negative curvature (or, from an L-BFGS point, Newton's own). Where no probe lowers the criterion
    beyond its rounding level (1e-9 relative), the negative eigenvalue is that of a numerically flat
    valley (nearly collinear columns), not a way down: converged."""
    v = run.direction(best)
    probes = [run.run(best.theta)]
    if v is not None:
        probes.append(run.run(run.moved(best, v, control.restart_step)))
    if not any(_below(p, best, 1e-9) for p in probes):
        return best._replace(converged=on_device(True))
    return min([best] + probes, key=lambda p: float(p.fun))


RESPONSE_RANGE = 2.0**10
"""Responses whose standard deviation lies outside [1/RESPONSE_RANGE, RESPONSE_RANGE] are optimized rescaled."""


def response_scale(y) -> float:
    """A power of two c that brings the standard deviation of ``y`` near 1, or 1 if it is near already.

    theta does not depend on the response's units: multiplying y by c
    multiplies r^2 by c^2, so the profiled criterion changes by the constant
    m log(c^2) (m = n - p for REML, n for ML) and its minimizer does not.
    The criterion's size does: at y ~ 1e-80 it is about -n 368, and the
    optimizer's tolerances, relative to 1 + |criterion|, would stop it near
    its start. A power of two scales the cross-products exactly.
    """
    y = np.asarray(y, dtype=np.float64)
    s = float(np.std(y)) if y.size else 0.0
    if not np.isfinite(s) or s == 0 or 1 / RESPONSE_RANGE <= s <= RESPONSE_RANGE:
        return 1.0
    return float(2.0 ** -np.round(np.log2(s)))


def scale_response(data: CrossProducts, c: float) -> CrossProducts:
    """The cross-products of the response c y (``c`` a power of two: exact)."""
    if c == 1.0:
        return data
    return dataclasses.replace(data, response=data.response.scaled(c), beta0=data.beta0 * c)


def criterion_shift(data: CrossProducts, c: float, reml: bool) -> float:
    """The profiled criterion of c y less that of y: m log(c^2), m = n - p (REML) or n (ML)."""
    m = float(data.n) - (data.p if reml else 0)
    return m * 2.0 * float(np.log(c))


def minimize(data: CrossProducts, y, start, lower, scale, reml: bool, method: str, control: Control) -> OptResult:
    """:func:`fit_theta` on the response rescaled by :func:`response_scale`; the criterion reported on y's scale."""
    c = response_scale(y)  # theta is optimized on the response c y
    opt = fit_theta(
        on_device(start), on_device(lower), scale_response(data, c), bool(reml), method=method,
        scale=None if np.all(scale == 1) else on_device(scale), control=control,
    )
    if c != 1.0:
        opt = opt._replace(fun=opt.fun - criterion_shift(data, c, bool(reml)))
    return opt
