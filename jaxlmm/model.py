"""The model object: a formula and data turned into cross-products, ready to fit.

``LinearMixedModel(formula, data)`` parses and builds the design once
(lme4's ``lFormula`` + ``mkLmerDevfun``); ``.deviance(theta, reml)`` is the
pure objective at any theta, and ``.fit(reml, method)`` optimizes it
(``optimizeLmer``) and returns a frozen :class:`~jaxlmm.results.LmmFit`
(``mkMerMod``). ``lmm(formula, data)`` does both in one call.
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ._config import ensure_x64, uses_float64
from .crossprod import CrossProducts, cross_products
from .design import Design, build_design, theta_scales
from .validate import as_theta, check_bool, check_max_iter
from .errors import ConvergenceWarning, JaxLMMError, SingularFitWarning, closest_name, warn
from .objective import deviance as _deviance
from .objective import theta_layout, theta_lower_bounds, theta_start
from .optimize import OptResult, lbfgs, newton

METHODS = ("newton", "lbfgs")


def theta_columns(term_dims) -> np.ndarray:
    """For each theta entry, the index of the diagonal entry of its column (see ``column_flip``)."""
    out, i = [], 0
    for rows, cols in theta_layout(term_dims):
        diag_pos = np.array([np.flatnonzero((rows == c) & (cols == c))[0] for c in cols])
        out.append(i + diag_pos)
        i += len(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def canonical_theta(x, term_dims):
    """Multiply each column of every relative factor by the sign of its diagonal.

    Lambda Lambda' is unchanged, so the criterion is too; the result has a
    non-negative diagonal (lme4's parameterization).
    """
    return x * jnp.where(x[theta_columns(term_dims)] < 0, -1.0, 1.0)


def _scaled_deviance(phi, data: CrossProducts, reml, scale):
    """The criterion in the rescaled parameters phi = theta * scale (design.theta_scales)."""
    return _deviance(phi / scale, data, reml)


def newton_hessian(data: CrossProducts) -> str:
    """The Newton optimizer's Hessian for ``data``: ``"exact"``, or ``"bfgs"`` for a large Schur complement.

    The exact Hessian costs n_theta Hessian-vector products, each several
    times a gradient; when the dense Schur complement of the further terms is
    large (InstEval: q2 = 1,142; MovieLens-1M: 3,706) those products, through
    its Cholesky factor, dominate the fit, and quasi-Newton updates from exact
    gradients are cheaper overall (``benchmarks/RESULTS.md``).
    """
    return "bfgs" if data.q_rest >= BFGS_FROM else "exact"


BFGS_FROM = 1000
"""Schur complements of this size and more use ``hessian="bfgs"`` (:func:`newton_hessian`)."""


def minimize_theta(
    theta0, lower, data: CrossProducts, reml, method: str = "newton", max_iter: int = 200, scale=None,
    hessian: str = "exact",
):
    """Minimize the profiled criterion over theta (traceable: ``max_iter`` may be traced).

    The optimizer works on phi = theta * scale (positive, per entry; ones by
    default); the result is mapped back to theta, the gradient too.
    ``hessian`` is the Newton optimizer's (:func:`jaxlmm.optimize.newton`).
    :func:`optimize_theta` is this function jit-compiled, once per data shape.
    """
    if data.n_theta == 0:  # no random-effect term: the criterion is closed form
        z = jnp.zeros(jnp.shape(theta0))
        return OptResult(theta0, _deviance(theta0, data, reml), theta0, 0, True, z.astype(bool), z)
    if scale is None:
        fun, w, args = _deviance, 1.0, (data, reml)
    else:
        fun, w, args = _scaled_deviance, scale, (data, reml, scale)
    if method == "newton":
        opt = newton(
            fun, theta0 * w, lower * w, args=args, max_iter=max_iter, column=theta_columns(data.term_dims),
            hessian=hessian,
        )
    elif method == "lbfgs":
        canon = partial(canonical_theta, term_dims=data.term_dims)
        opt = lbfgs(fun, theta0 * w, canon, args=args, max_iter=max_iter * 5)
    else:  # pragma: no cover (checked by fit)
        raise ValueError(method)
    return opt._replace(theta=opt.theta / w, grad=opt.grad * w, descent=opt.descent / w)


optimize_theta = jax.jit(minimize_theta, static_argnames=("method", "max_iter", "hessian"))

RESTART_STEP = 0.1
"""Length (largest entry, on the optimizer's scale phi, relative to max(1, |phi|)) of the move
along a direction of negative curvature from which :func:`fit_theta` restarts."""
MAX_RESTARTS = 3


def _better(a: OptResult, b: OptResult) -> OptResult:
    """The lower optimum of two; a converged one wins a tie at the criterion's rounding level."""
    fa, fb = float(a.fun), float(b.fun)
    if not np.isfinite(fb):
        return a
    if not np.isfinite(fa):
        return b
    tie = 1e-10 * (1.0 + abs(fa))
    if abs(fa - fb) <= tie and bool(a.converged) != bool(b.converged):
        return a if bool(a.converged) else b
    return a if fa <= fb else b


def fit_theta(start, lower, data: CrossProducts, reml, method: str = "newton", max_iter: int = 200, scale=None,
              hessian: str = "exact", boundary_restart: bool = True) -> OptResult:
    """:func:`optimize_theta`, with the rules that make a reported optimum a minimum.

    A Newton fit is ``converged`` only where the first-order conditions of
    the bound-constrained problem hold and the Hessian restricted to the free
    and degenerate-bound coordinates has no negative eigenvalue
    (:func:`jaxlmm.optimize.second_order`). Otherwise:

    - at negative curvature (a saddle: the criterion is even in a zero
      diagonal theta entry, so its gradient vanishes there whatever the
      curvature), Newton restarts from the point moved along the direction
      of negative curvature (the entries at their bound become small positive
      values), up to ``MAX_RESTARTS`` times;
    - at a converged optimum on the boundary (a zero diagonal entry: a
      singular fit), Newton runs once more from those entries at their start
      value, and the better optimum is kept (``boundary_restart``): the
      criterion is even in such an entry, so its vanishing derivative there
      is no evidence, and a path that reached 0 may have passed a better
      optimum of the other entries (the fit could depend on the order of the
      levels);
    - where Newton stalls (its line search fails, or the iteration cap), L-BFGS
      continues from the best point so far and Newton finishes from there
      (its end carries the second-order check).

    The lowest criterion wins. Each further pass reuses the compiled fit
    (L-BFGS compiles once, when first needed); a fit that converges at once
    costs nothing more.
    """
    kw = dict(max_iter=max_iter, scale=scale, hessian=hessian)
    start = jnp.asarray(start)
    best = optimize_theta(start, lower, data, reml, method=method, **kw)
    w = np.ones(np.shape(start)) if scale is None else np.asarray(scale)
    low = np.asarray(lower) * w
    at_bound = np.any(np.asarray(best.theta) * w <= low)
    if method != "newton" or data.n_theta == 0 or (bool(best.converged) and not (boundary_restart and at_bound)):
        return best
    n_iter = int(best.n_iter)
    for _ in range(MAX_RESTARTS):
        v = np.asarray(best.descent) * w
        if bool(best.converged) or not np.any(v) or not np.all(np.isfinite(v)):
            break
        again = optimize_theta(jnp.asarray(_moved(best, v, w, low)), lower, data, reml, method="newton", **kw)
        n_iter += int(again.n_iter)
        if float(again.fun) >= float(best.fun) - 1e-10 * (1.0 + abs(float(best.fun))) and not bool(again.converged):
            best = _better(best, again)
            break
        best = _better(best, again)
    at = np.asarray(best.theta) * w <= low
    if boundary_restart and bool(best.converged) and np.any(at):
        # A boundary optimum may be a local one: the criterion is even in a zero diagonal entry,
        # so Newton can reach it from one side and stop. Once more from those entries at their
        # start value (1 on the optimizer's scale), and keep the better.
        new = np.where(at, 1.0 / w, np.asarray(best.theta))
        if not np.array_equal(new, np.asarray(start)):  # from the fit's own start it would repeat itself
            again = optimize_theta(jnp.asarray(new), lower, data, reml, method="newton", **kw)
            n_iter += int(again.n_iter)
            if bool(again.converged) and float(again.fun) < float(best.fun) - 1e-10 * (1.0 + abs(float(best.fun))):
                best = again
    if not bool(best.converged):
        lb = optimize_theta(best.theta, lower, data, reml, method="lbfgs", **kw)
        n_iter += int(lb.n_iter)
        if np.all(np.isfinite(np.asarray(lb.theta))):
            again = optimize_theta(lb.theta, lower, data, reml, method="newton", **kw)
            n_iter += int(again.n_iter)
            best = _better(best, _better(again, lb._replace(converged=jnp.asarray(False))))
    if not bool(best.converged) and _first_order(best, w):
        # First-order conditions hold but the curvature test fails: probe along the direction of
        # negative curvature (or, from an L-BFGS point, Newton's own). Where no probe lowers the
        # criterion beyond its rounding level (1e-9 relative), the negative eigenvalue is that of
        # a numerically flat valley (nearly collinear columns), not a way down: converged.
        v = np.asarray(best.descent) * w
        probes = [optimize_theta(best.theta, lower, data, reml, method="newton", **kw)]
        if np.any(v) and np.all(np.isfinite(v)):
            probes.append(
                optimize_theta(jnp.asarray(_moved(best, v, w, low)), lower, data, reml, method="newton", **kw)
            )
        n_iter += sum(int(p.n_iter) for p in probes)
        lowest = min(float(p.fun) for p in probes)
        if lowest >= float(best.fun) - 1e-9 * (1.0 + abs(float(best.fun))):
            best = best._replace(converged=jnp.asarray(True))
        else:
            best = min([best] + probes, key=lambda p: float(p.fun))
    return best._replace(n_iter=jnp.asarray(n_iter))


def _moved(opt: OptResult, v, w, low) -> np.ndarray:
    """theta moved from ``opt`` along the direction ``v`` (on the optimizer's scale phi = theta * w) by
    ``RESTART_STEP`` relative to max(1, |phi|), kept feasible: where :func:`fit_theta` restarts."""
    phi = np.asarray(opt.theta) * w
    step = RESTART_STEP * max(1.0, float(np.max(np.abs(phi))))
    return np.maximum(phi + step * v / np.max(np.abs(v)), low) / w


def _first_order(opt: OptResult, w, tol: float = 1e-6) -> bool:
    """The first-order test of :func:`jaxlmm.optimize.newton` on the optimizer's scale phi = theta * w."""
    g = np.asarray(opt.grad) / w
    return bool(np.all(np.isfinite(g))) and float(np.max(np.abs(g), initial=0.0)) < tol * (1.0 + abs(float(opt.fun)))


_deviance_jit = jax.jit(_deviance)

RESPONSE_RANGE = 2.0**10
"""Responses whose standard deviation lies outside [1/RESPONSE_RANGE, RESPONSE_RANGE] are optimized rescaled."""


def response_scale(design: Design) -> float:
    """A power of two c that brings the response's standard deviation near 1, or 1 if it is near already.

    theta does not depend on the response's units: multiplying y by c
    multiplies r^2 by c^2, so the profiled criterion changes by the constant
    m log(c^2) (m = n - p for REML, n for ML) and its minimizer does not.
    The criterion's size does: at y ~ 1e-80 it is about -n 368, and the
    optimizer's tolerances, relative to 1 + |criterion|, would stop it near
    its start. A power of two scales the cross-products exactly.
    """
    y = np.asarray(design.y_net, dtype=np.float64)
    s = float(np.std(y)) if y.size else 0.0
    if not np.isfinite(s) or s == 0 or 1 / RESPONSE_RANGE <= s <= RESPONSE_RANGE:
        return 1.0
    return float(2.0 ** -np.round(np.log2(s)))


def scale_response(data: CrossProducts, c: float) -> CrossProducts:
    """The cross-products of the response c y (``c`` a power of two: exact)."""
    if c == 1.0:
        return data
    return dataclasses.replace(data, z1y=data.z1y * c, zy=data.zy * c, xty=data.xty * c, yty=data.yty * (c * c))


def criterion_shift(data: CrossProducts, c: float, reml: bool) -> float:
    """The profiled criterion of c y less that of y: m log(c^2), m = n - p (REML) or n (ML)."""
    m = float(data.n) - (data.p if reml else 0)
    return m * 2.0 * float(np.log(c))


class LinearMixedModel:
    """A linear mixed model y = X beta + Z b + e specified by an lme4 formula.

    Holds the parsed formula, the design (model matrices, group codes) and
    the cross-products; fitting does not touch the rows again.
    """

    @uses_float64
    def __init__(self, formula: str, data, *, offset=None, weights=None, design: Design | None = None):
        """``offset``: a known term of the mean with coefficient 1 (lme4's ``offset=``): one number
        per row of ``data``, or the text of an expression in its columns such as ``"log(hours)"``;
        added to the formula's own ``offset(...)`` terms.

        ``weights``: prior weights w_i (lme4's ``weights=``): row i has residual variance
        sigma^2 / w_i. One non-negative number per row of ``data`` or the text of an expression
        in its columns such as ``"w"``; rows of weight zero are dropped."""
        ensure_x64()
        self.formula = formula
        self.design = (
            design if design is not None else build_design(formula, data, offset=offset, weights=weights)
        )
        self.data: CrossProducts = cross_products(self.design)
        self.lower = theta_lower_bounds(self.data.term_dims)
        self.theta0 = theta_start(self.data.term_dims)
        self.data_name = getattr(data, "attrs", {}).get("name") if data is not None else None

    @property
    def term_dims(self):
        return self.data.term_dims

    @property
    def nobs(self) -> int:
        return self.design.n

    @uses_float64
    def deviance(self, theta, reml: bool = True) -> float:
        """The profiled REML criterion (or ML deviance) at ``theta``, lme4's scale."""
        ensure_x64()
        reml = check_bool(reml, "reml")
        theta = jnp.asarray(as_theta(theta, self.theta0.size))
        return float(_deviance_jit(theta, self.data, reml))

    @uses_float64
    def fit(self, reml: bool = True, method: str = "newton", theta0=None, max_iter: int = 200):
        """Estimate the model by REML (default) or ML; returns a frozen LmmFit."""
        from .results import make_fit

        ensure_x64()
        reml = check_bool(reml, "reml")
        if method not in METHODS:
            raise JaxLMMError(f"method must be one of {METHODS}, not {method!r}.")
        max_iter = check_max_iter(max_iter)
        scale = theta_scales(self.design.terms)
        start = self.theta0 / scale if theta0 is None else as_theta(theta0, self.theta0.size, "theta0")
        if theta0 is not None:
            _check_start(self, start, bool(reml))
        c = response_scale(self.design)  # theta is optimized on the response c y (response_scale)
        opt: OptResult = fit_theta(
            jnp.asarray(start), jnp.asarray(self.lower), scale_response(self.data, c), bool(reml), method=method,
            max_iter=max_iter, scale=None if np.all(scale == 1) else jnp.asarray(scale),
            hessian=newton_hessian(self.data),
        )
        if c != 1.0:
            opt = opt._replace(fun=opt.fun - criterion_shift(self.data, c, bool(reml)))
        try:
            fit = make_fit(self, opt, reml=bool(reml), method=method)
        except np.linalg.LinAlgError:
            given = "" if theta0 is None else f" from theta0={np.asarray(start).tolist()}"
            raise JaxLMMError(
                f"The fit{given} ended at theta = {np.asarray(opt.theta).tolist()}, where the "
                "fixed-effect system is numerically singular; "
                + ("start nearer the default theta0 (ones on the diagonal, lme4's start)." if theta0 is not None
                   else "the random effects absorb the fixed effects there (rescale the predictors).")
            ) from None
        if not fit.converged:
            warn(
                f"The {method} optimizer did not converge in {fit.n_iter} iterations "
                f"(largest projected gradient {np.max(np.abs(fit.gradient), initial=0):.3g}); "
                + ("after its restarts and L-BFGS fallback; " if method == "newton" else "")
                + "treat the estimates with care, or refit from fit.theta (theta0=) with a larger max_iter.",
                ConvergenceWarning,
            )
        if fit.singular:
            warn("boundary (singular) fit: see fit.varcorr.", SingularFitWarning)
        return fit


def _check_start(model, start, reml: bool) -> None:
    """``theta0`` gives a finite criterion (an overflowing start would end in a singular system)."""
    value = float(_deviance_jit(jnp.asarray(start), model.data, reml))
    if not np.isfinite(value):
        raise JaxLMMError(
            f"theta0={np.asarray(start).tolist()} is outside the range where the criterion can be "
            f"computed (it is {value} there; the relative factors overflow the float64 cross-products); "
            f"start nearer lme4's default theta0={np.asarray(model.theta0).tolist()}."
        )


def _keywords(func, skip=("self", "formula", "data", "design")) -> list[str]:
    return [
        name for name, p in inspect.signature(func).parameters.items()
        if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _split_lmm_keywords(reml, kwargs: dict) -> tuple[bool, dict, dict]:
    """lme4's spellings resolved, unknown keywords refused; the model's and the fit's keywords."""
    kwargs = dict(kwargs)
    if "REML" in kwargs:
        if reml is not None:
            raise JaxLMMError("Give reml= or lme4's REML=, not both.")
        reml = kwargs.pop("REML")
    reml = check_bool(True if reml is None else reml, "reml")
    model_kw, fit_kw = _keywords(LinearMixedModel.__init__), _keywords(LinearMixedModel.fit)
    fit_kw = [k for k in fit_kw if k not in ("reml", "method")]
    unknown = [k for k in kwargs if k not in model_kw and k not in fit_kw]
    if unknown:
        accepted = list(dict.fromkeys(["formula", "data"] + _keywords(lmm, skip=()) + model_kw + fit_kw))
        accepted = [k for k in accepted if k != "kwargs"]
        raise JaxLMMError(
            f"lmm() got an unexpected keyword argument '{unknown[0]}'."
            f"{closest_name(unknown[0], accepted)} The accepted keywords are: {', '.join(accepted)}."
        )
    return (
        reml,
        {k: v for k, v in kwargs.items() if k in model_kw},
        {k: v for k, v in kwargs.items() if k not in model_kw},
    )


@uses_float64
def lmm(formula: str, data, reml: bool | None = None, method: str = "newton", **kwargs):
    """Fit ``formula`` to ``data`` by REML (default) or ML, like lme4's ``lmer``.

    ``reml``: True (REML, the default when not given) or False (ML); lme4's
    spelling ``REML=`` is accepted too. Further keywords go to
    :class:`LinearMixedModel` and its :meth:`~LinearMixedModel.fit`
    (``offset``, ``weights``, ``theta0``, ``max_iter``); any other keyword is an error naming the
    accepted ones.
    """
    reml, model_kw, fit_kw = _split_lmm_keywords(reml, kwargs)
    return LinearMixedModel(formula, data, **model_kw).fit(reml=reml, method=method, **fit_kw)
