"""The fitted model: a frozen record of estimates computed once at the optimum.

Formulas (Bates et al., JSS 2015, section 3): sigma^2 = r^2/(n-p) (REML) or
r^2/n (ML), r^2 the (prior-)weighted penalized residual sum of squares;
Var(beta) = sigma^2 (R_X'R_X)^{-1}; Sigma_m = sigma^2 T_m T_m' for each term;
the conditional modes b = Lambda u of the penalized least squares solution;
conditional variances sigma^2 Lambda (L L')^{-1} Lambda' (blocks), as lme4's
``ranef(condVar = TRUE)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd

from ._config import lean_jit, on_device, uses_float64
from .control import Control, Hessian
from .crossprod import CrossProducts, cross_products
from .design import Design
from .errors import ConvergenceWarning, JaxLMMError, PrecisionWarning, SingularFitWarning, warn
from .fitting import METHODS, deviance_jit, minimize
from .likelihood import theta_derivatives
from .objective import conditional_variances, sigma_hat, solve
from .optimize import OptResult
from .summary import satterthwaite_by_default
from .terms import unique_names
from .theta import factors_batch, is_singular, moment_start, theta_lower_bounds, theta_scales, theta_start
from .validate import as_theta, check_bool, check_max_iter, check_response_spread, check_values
from .varcorr import sdcor_estimates, varcorr_table

_solve_jit = lean_jit(solve)
_condvar_jit = lean_jit(conditional_variances)


@dataclass(frozen=True, eq=False)
class LmmFit:
    """A fitted linear mixed model (REML or ML). Built by :func:`estimate`; read-only.

    ``design`` (the model matrices and group codes) and ``products`` (the
    cross-products the criterion reads) are those of the model it was fitted
    to; :meth:`refit` fits them again by the other criterion or from another
    start.
    """

    design: Design
    products: CrossProducts
    control: Control
    data_name: str | None
    reml: bool
    method: str
    objective: float
    theta: np.ndarray
    converged: bool
    n_iter: int
    gradient: np.ndarray
    fixef: pd.Series
    se: pd.Series
    vcov: pd.DataFrame
    sigma: float
    varcorr: pd.DataFrame
    singular: bool
    nobs: int
    n_dropped: int
    b: tuple  # conditional modes per term, arrays (levels, columns)
    hessian: np.ndarray | None = None  # the profiled criterion's exact Hessian in theta at the optimum

    # ---- likelihood summaries -------------------------------------------
    @property
    def formula(self) -> str:
        return self.design.formula.text

    @property
    def npar(self) -> int:
        """Number of parameters: fixed effects, theta and sigma (lme4's df)."""
        return len(self.fixef) + len(self.theta) + 1

    @property
    def loglik(self) -> float:
        """Log-likelihood (restricted for REML fits), -objective/2 as lme4."""
        return float(-0.5 * self.objective)

    @property
    def deviance(self) -> float:
        return float(self.objective)

    @property
    def aic(self) -> float:
        return float(self.objective + 2 * self.npar)

    @property
    def bic(self) -> float:
        return float(self.objective + np.log(self.nobs) * self.npar)

    @property
    def df_resid(self) -> int:
        return self.nobs - self.npar

    @property
    def terms(self):
        return self.design.terms

    @property
    def lower(self) -> np.ndarray:
        """theta's lower bounds: 0 on the diagonal of each relative factor, -inf below it."""
        return theta_lower_bounds(self.products.term_dims)

    def criterion(self, theta, reml: bool | None = None) -> float:
        """The profiled criterion (lme4's ``devfun``) at ``theta``: the REML criterion or ML deviance,
        by the fit's own (default) or by ``reml``; ``fit.criterion(fit.theta) == fit.objective``."""
        theta = on_device(as_theta(theta, len(self.theta)))
        reml = self.reml if reml is None else check_bool(reml, "reml")
        return float(deviance_jit(theta, self.products, reml))

    def refit(self, newresp=None, reml: bool | None = None, theta0=None, method: str | None = None,
              control: Control | None = None) -> "LmmFit":
        """The same model fitted again: to a new response (``newresp``, as lme4's ``refit(fit,
        newresp)``), by the other criterion (``reml=False``: ML, as lme4's ``refitML``), from another
        start (``theta0``), or with other settings. Without arguments the fit itself. Every refit in
        jaxlmm (``anova``, ``pb_test``, profiles, exact tests) goes through here.

        ``newresp``: one number per row of the fit (``fit.nobs``, in the fit's order), or a pandas
        Series, read by the fit's row labels where its index holds them all (rows the fit dropped for
        missing values may be there too, as lme4 drops them), by position otherwise; the design,
        weights and offset stay the fit's.
        """
        reml = self.reml if reml is None else check_bool(reml, "reml")
        design, products = self.design, self.products
        if newresp is not None:
            design = replace(design, y=response_of(newresp, design))
            products = cross_products(design, control=self.control)
        elif reml == self.reml and theta0 is None and method in (None, self.method) and control in (None, self.control):
            return self
        return estimate(
            design, products, reml=reml, method=self.method if method is None else method,
            theta0=theta0, control=self.control if control is None else control, data_name=self.data_name,
        )

    @cached_property
    def sdcor(self) -> pd.Series:
        """The random effects' SDs and correlations, then sigma, by lme4's names (``sd_Days|Subject``, ...)."""
        names, values = sdcor_estimates(self.theta, self.sigma, self.terms)
        return pd.Series(values, index=names, name="estimate")

    # ---- random effects -------------------------------------------------
    @cached_property
    def _condvars(self) -> list[np.ndarray]:
        """Per term, sigma^2 T P_j T' for each level j (levels, k, k): :attr:`condvar`'s arrays."""
        data = self.products
        Ts = [T[0] for T in factors_batch(self.theta, data.term_dims)]
        blocks = [np.asarray(B) for B in _condvar_jit(on_device(self.theta), data)]
        return [self.sigma**2 * np.einsum("ab,lbc,dc->lad", T, P, T) for T, P in zip(Ts, blocks)]

    @property
    def condvar(self) -> dict[str, np.ndarray]:
        """The conditional covariance of each level's random effects given y, per term (lme4's
        ``postVar``: ``attr(ranef(fit, condVar = TRUE)[[g]], "postVar")``, levels first): term label
        ``(expr | g)`` -> array (levels, k, k), sigma^2 T P_j T' with P_j level j's diagonal block of
        (Lambda'Z'Z Lambda + I)^{-1}; levels and columns in the order of ``fit.ranef``."""
        labels, _ = unique_names([f"({t.expr} | {t.name})" for t in self.terms])
        return dict(zip(labels, self._condvars))

    @cached_property
    def ranef(self) -> pd.DataFrame:
        """Conditional modes and conditional SDs: columns group, term, level, value, cond_sd."""
        frames = []
        for t, bm, var in zip(self.terms, self.b, self._condvars):
            csd = np.sqrt(np.maximum(np.diagonal(var, axis1=1, axis2=2), 0.0))
            for i, name in enumerate(t.colnames):
                frames.append(
                    pd.DataFrame(
                        {
                            "group": t.name,
                            "term": name,
                            "level": t.levels.astype(str),
                            "value": bm[:, i],
                            "cond_sd": csd[:, i],
                        }
                    )
                )
        if not frames:
            return pd.DataFrame(columns=["group", "term", "level", "value", "cond_sd"])
        return pd.concat(frames, ignore_index=True)

    def coef(self) -> dict[str, pd.DataFrame]:
        """lme4's ``coef(fit)``: per grouping factor, one row per level holding the fixed effects
        plus that level's conditional modes. A column the random effects have and the fixed effects
        lack comes first, at 0 plus the mode, in every grouping factor's table (as lme4)."""
        fixef = self.fixef
        extra = list(dict.fromkeys(c for t in self.terms for c in t.colnames if c not in fixef.index))
        base = pd.concat([pd.Series(0.0, index=extra), fixef]) if extra else fixef
        out: dict[str, pd.DataFrame] = {}
        for t, bm in zip(self.terms, self.b):
            levels = pd.Index(t.levels.astype(str), name=t.name)
            if t.name not in out:
                out[t.name] = pd.DataFrame(
                    np.tile(base.to_numpy(), (len(levels), 1)), index=levels, columns=list(base.index)
                )
            frame = out[t.name]
            for i, name in enumerate(t.colnames):
                frame.loc[levels, name] += np.asarray(bm[:, i])
        return out

    @cached_property
    def fitted(self) -> np.ndarray:
        """Conditional fitted values X beta + Z b for the rows used in the fit."""
        d = self.design
        out = d.fixed_mean(self.fixef.to_numpy())
        for t, bm in zip(d.terms, self.b):
            out = out + np.einsum("rk,rk->r", t.X, bm[t.codes])
        return out

    def residuals(
        self, kind: str = "conditional", scaled: bool = False, type: str = "response"
    ) -> np.ndarray:
        """Residuals: ``conditional`` y - X beta - Z b, or ``marginal`` y - X beta.

        ``type``: ``"response"`` (the differences themselves) or ``"pearson"``:
        sqrt(w_i) (y_i - fitted_i) with the prior weights w (lme4's
        ``resid(fit, type = "pearson")``; the same as ``"response"`` without
        weights). lme4's other names for a linear mixed model: ``"working"`` is
        ``"response"``, ``"deviance"`` is ``"pearson"``. ``scaled``: divided by
        sigma, so that the Pearson residuals have variance about 1 whatever the
        weights.
        """
        d = self.design
        types = {"response": "response", "working": "response", "pearson": "pearson", "deviance": "pearson"}
        if type not in types:
            raise JaxLMMError(f"type must be one of {list(types)}, not {type!r}.")
        type = types[type]
        if kind == "conditional":
            r = d.y - self.fitted
        elif kind == "marginal":
            r = d.y - d.fixed_mean(self.fixef.to_numpy())
        else:
            raise JaxLMMError(f"kind must be 'conditional' or 'marginal', not {kind!r}.")
        if type == "pearson" and d.weights is not None:
            r = d.sqrt_weights * r
        return r / self.sigma if check_bool(scaled, "scaled") else r

    # ---- inference (jaxlmm.satterthwaite, confint, predict, simulate) --------
    @cached_property
    def varpar_derivatives(self):
        """Var(beta-hat), its Jacobian and the inverse Hessian in (theta, sigma), which Satterthwaite's
        df are made of (:func:`jaxlmm.satterthwaite.varpar_derivatives`); computed on first use, kept."""
        from .satterthwaite import varpar_derivatives

        return varpar_derivatives(self)

    def coef_table(self, ddf: str = "satterthwaite") -> pd.DataFrame:
        """Fixed effects with SE, df, t and p (ddf: 'satterthwaite', 'residual' or 'wald')."""
        from .satterthwaite import coef_table

        return coef_table(self, ddf=ddf)

    def test(self, L, rhs=0.0) -> pd.DataFrame:
        """F test of L beta = rhs with Satterthwaite's denominator df (lmerTest's contestMD)."""
        from .satterthwaite import f_test

        return f_test(self, L, rhs=rhs)

    def confint(self, method: str = "profile", level: float = 0.95, n: int = 1000, seed: int = 0, which=None):
        """Confidence intervals (lower, upper) by 'profile', 'wald' or 'bootstrap'."""
        from .confint import confint

        return confint(self, method=method, level=level, n=n, seed=seed, which=which)

    def predict(self, newdata=None, re=True, offset=None) -> np.ndarray:
        """Predictions X beta + Z b + offset for ``newdata`` (new levels at the population level).

        ``re``: the random effects included: all (True), none (False, lme4's ``re.form = NA``), or
        some (lme4's ``re.form = ~ (1 | g)``): a list of grouping factors' names or terms' labels
        ``"(expr | g)"``. ``offset``: numbers for the new rows, needed when the fit's ``offset=``
        was numbers.
        """
        from .predict import predict

        return predict(self, newdata, re=re, offset=offset)

    def simulate(self, n: int = 1, seed: int = 0, use_u: bool = False) -> np.ndarray:
        """``n`` responses simulated from the fitted model, shape (n, nobs); ``use_u``: given the
        fitted random effects (lme4's ``use.u = TRUE``)."""
        from .simulate import simulate

        return simulate(self, n=n, seed=seed, use_u=use_u)

    # ---- shares of variance (jaxlmm.icc) ------------------------------------
    def icc(self, conf_int: bool = False, conf_level: float = 0.95, n: int = 1000, seed: int = 0, boot=None):
        """Adjusted and conditional intraclass correlation (performance's ``icc``).

        A Series; with ``conf_int`` (or a :func:`jaxlmm.bootstrap` result as
        ``boot``) a frame of estimate, lower, upper: percentile intervals over
        ``n`` parametric-bootstrap refits.
        """
        from .icc import shares

        return shares(self, "icc", conf_int=conf_int, conf_level=conf_level, n=n, seed=seed, boot=boot)

    def r2(self, conf_int: bool = False, conf_level: float = 0.95, n: int = 1000, seed: int = 0, boot=None):
        """Marginal and conditional R^2 of Nakagawa & Schielzeth (performance's ``r2_nakagawa``); as :meth:`icc`."""
        from .icc import shares

        return shares(self, "r2", conf_int=conf_int, conf_level=conf_level, n=n, seed=seed, boot=boot)

    # ---- text -----------------------------------------------------------
    def summary(self, correlation: bool | None = None, ddf: str | None = None) -> str:
        """lme4's summary as text, with lmerTest's df and p-values.

        ``correlation``: show the fixed effects' correlations (default p <= 12).
        ``ddf``: ``"satterthwaite"``, ``"residual"``, ``"wald"`` or ``"none"`` (lme4's table: no df,
        no p-values); by default Satterthwaite's, except for models whose fit used BFGS Hessians
        (a large dense Schur complement), where their program takes seconds to compile:
        ``"none"`` there (:func:`jaxlmm.summary.default_ddf`).
        """
        from .summary import format_summary

        return format_summary(self, correlation=correlation, ddf=ddf)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        kind = "REML" if self.reml else "ML"
        return f"<LmmFit {kind} '{self.formula}' objective={self.objective:.4f}>"

    # ---- tidy output (jaxlmm.tidy) ---------------------------------------
    def tidy(self, conf_int: bool = False, conf_level: float = 0.95, conf_method: str = "wald",
             n: int = 1000, seed: int = 0) -> pd.DataFrame:
        """broom.mixed's ``tidy``: one row per parameter (fixed effects, then ``ran_pars``)."""
        from .tidy import tidy

        return tidy(self, conf_int=conf_int, conf_level=conf_level, conf_method=conf_method, n=n, seed=seed)

    def to_dict(self) -> dict:
        """Every estimate as plain Python values (``json.dumps`` takes it)."""
        from .tidy import to_dict

        return to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        from .tidy import to_json

        return to_json(self, indent=indent)

    # ---- figures --------------------------------------------------------
    @property
    def plot(self):
        """Diagnostic figures (matplotlib): ``.residuals()``, ``.qq()``, ``.caterpillar()``, ``.groups()``."""
        from .plotting import FitPlots

        return FitPlots(self)


def _float64_methods(cls):
    """Every public method and cached property of ``cls`` runs in float64 (:func:`jaxlmm._config.float64`)."""
    for name, attr in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(attr, cached_property):
            wrapped = cached_property(uses_float64(attr.func))
            wrapped.__set_name__(cls, name)
            setattr(cls, name, wrapped)
        elif callable(attr):
            setattr(cls, name, uses_float64(attr))
    return cls


_float64_methods(LmmFit)


def after_fit(products: CrossProducts, method: str, control: Control) -> list:
    """The programs a fit of ``products`` calls once its optimizer is done, for
    :func:`jaxlmm.ahead.compile_ahead`: the solve at the optimum, and where the default summary
    computes Satterthwaite's df from the fit's exact Hessian (Newton with exact Hessians), their
    forward-mode pass."""
    theta = on_device(theta_start(products.term_dims))
    tasks = [(_solve_jit, (theta, products), {})]
    if method == "newton" and products.n_theta and products.p and satterthwaite_by_default(control, products):
        tasks.append((theta_derivatives, (theta, products), {}))
    return tasks


def response_of(newresp, design: Design) -> np.ndarray:
    """``newresp`` as the response of ``design``'s rows (for :meth:`LmmFit.refit`): float64, one per row,
    finite, varying; a pandas Series is read by the index labels of the rows."""
    n = len(design.y)
    if isinstance(newresp, (bool, np.bool_)):
        raise JaxLMMError(
            f"newresp must be {n} numbers, a new response for the fit's rows, not {newresp!r} "
            "(to refit by the other criterion, write refit(reml=...))."
        )
    if isinstance(newresp, pd.DataFrame):
        if newresp.shape[1] != 1:
            raise JaxLMMError(f"newresp must be one response, not a frame of {newresp.shape[1]} columns.")
        newresp = newresp.iloc[:, 0]
    if isinstance(newresp, pd.Series):
        missing = pd.Index(design.rows).difference(newresp.index)
        if not len(missing) and newresp.index.is_unique:
            newresp = newresp.loc[design.rows]  # by label, in the fit's order
        elif len(newresp) != n:
            raise JaxLMMError(
                f"newresp has {len(newresp)} values and lacks the fit's row(s) {list(missing[:5])}; give "
                f"{n} numbers (one per row of the fit) or a Series holding the fit's rows by label."
            )
    try:
        y = np.asarray(newresp, dtype=np.float64)
    except (TypeError, ValueError):
        raise JaxLMMError(f"newresp must be {n} numbers, not {type(newresp).__name__} {newresp!r:.80}.") from None
    if y.shape != (n,):
        raise JaxLMMError(
            f"newresp must have one number per row of the fit ({n}), got shape {y.shape}."
        )
    check_values(y, ["newresp"], "The new response")
    check_response_spread(y, "newresp")
    return y


def check_fit(fit, what: str = "fit", func: str = "") -> None:
    """``fit`` is an :class:`~jaxlmm.results.LmmFit` (what ``jaxlmm.lmm`` returns)."""
    if not isinstance(fit, LmmFit):
        where = f"{func}: " if func else ""
        raise JaxLMMError(
            f"{where}{what} must be a fitted model (the LmmFit that jaxlmm.lmm or "
            f"LinearMixedModel.fit returns), not {type(fit).__name__}."
        )


def estimate(design: Design, products: CrossProducts, reml=True, method: str = "newton", theta0=None,
             max_iter=None, control: Control | None = None, data_name: str | None = None) -> LmmFit:
    """Fit the model of ``design`` / ``products`` by REML or ML (lme4's ``optimizeLmer`` + ``mkMerMod``).

    Checks the arguments, minimizes (:func:`jaxlmm.fitting.minimize`), builds
    the frozen fit and warns where it did not converge or is singular.
    """
    reml = check_bool(reml, "reml")
    if method not in METHODS:
        raise JaxLMMError(f"method must be one of {METHODS}, not {method!r}.")
    control = Control() if control is None else control
    if max_iter is not None:
        control = control.replace(max_iter=check_max_iter(max_iter))
    lower = theta_lower_bounds(products.term_dims)
    start0 = theta_start(products.term_dims)
    scale = theta_scales(design.terms, design.weights)
    start = start0 / scale if theta0 is None else as_theta(theta0, start0.size, "theta0")
    if theta0 is None and control.newton_hessian(products.q_rest) is Hessian.BFGS:
        start = moment_start(design, start)  # iterations cost seconds here: start near the optimum
    if theta0 is not None:
        _check_start(products, start, start0, reml)
    opt = minimize(products, design.y_net, start, lower, scale, reml, method, control)
    try:
        fit = make_fit(design, products, opt, reml=reml, method=method, control=control, data_name=data_name)
    except np.linalg.LinAlgError:
        given = "" if theta0 is None else f" from theta0={np.asarray(start).tolist()}"
        raise JaxLMMError(
            f"The fit{given} ended at theta = {np.asarray(opt.theta).tolist()}, where the "
            "fixed-effect system is numerically singular; "
            + ("start nearer the default theta0 (ones on the diagonal, lme4's start)." if theta0 is not None
               else "the random effects absorb the fixed effects there (rescale the predictors).")
        ) from None
    _warn_fit(fit)
    return fit


def _check_start(products: CrossProducts, start, default, reml: bool) -> None:
    """``theta0`` gives a finite criterion (an overflowing start would end in a singular system)."""
    value = float(deviance_jit(on_device(start), products, reml))
    if not np.isfinite(value):
        raise JaxLMMError(
            f"theta0={np.asarray(start).tolist()} is outside the range where the criterion can be "
            f"computed (it is {value} there; the relative factors overflow the float64 cross-products); "
            f"start nearer lme4's default theta0={np.asarray(default).tolist()}."
        )


def _warn_fit(fit: LmmFit) -> None:
    """lme4's warnings: an optimizer that did not converge, a singular (boundary) fit."""
    if not fit.converged:
        warn(
            f"The {fit.method} optimizer did not converge in {fit.n_iter} iterations "
            f"(largest projected gradient {np.max(np.abs(fit.gradient), initial=0):.3g}); "
            + ("after its restarts and L-BFGS fallback; " if fit.method == "newton" else "")
            + "treat the estimates with care, or refit from fit.theta (theta0=) with a larger max_iter.",
            ConvergenceWarning,
        )
    if fit.singular:
        warn("boundary (singular) fit: see fit.varcorr.", SingularFitWarning)
    _warn_precision(fit)


PRECISION_RATIO = 1e8
"""A fit whose cross-products' y'y (of the response less its least-squares fit) exceeds the residual
sum of squares r^2 this many times has computed r^2 to fewer than half of float64's digits."""


COLLINEAR_RATIO = 1e10
"""Fixed-effect columns whose X'X, scaled to a unit diagonal, has a condition number above this leave
fewer than 6 digits to the estimates (the Cholesky of X'V^{-1}X loses log10 of it)."""


def _warn_collinear(fit: LmmFit) -> None:
    """Warn where X'X (unit diagonal) is ill-conditioned: predictors far from zero beside the intercept
    (x + 1e6), or nearly collinear columns."""
    A = np.asarray(fit.products.xtx)
    if A.shape[0] < 2:
        return
    d = np.sqrt(np.diag(A))
    ev = np.linalg.eigvalsh(A / d[:, None] / d[None, :])
    cond = ev[-1] / ev[0] if ev[0] > 0 else np.inf
    if cond > COLLINEAR_RATIO:
        digits = max(0, int(np.floor(16 - np.log10(cond)))) if np.isfinite(cond) else 0
        warn(
            f"The fixed-effect columns are nearly collinear (X'X scaled to a unit diagonal has condition "
            f"number {cond:.3g}): the estimates keep about {digits} significant digits. Center predictors "
            "that lie far from zero (x - mean(x)), or drop near-duplicate columns.",
            PrecisionWarning,
        )


def _warn_precision(fit: LmmFit) -> None:
    """Warn where r^2 at the estimate is a small difference of large cross-products: the criterion
    keeps about 16 - log10(y'y / r^2) significant digits of r^2, and theta follows it."""
    _warn_collinear(fit)
    m = fit.nobs - (fit.design.p if fit.reml else 0)
    r2 = fit.sigma**2 * m
    if not r2 > 0:
        return
    size = float(np.max(np.abs(fit.design.weighted(fit.design.y_net))))
    if size > PRECISION_RATIO * fit.sigma:  # the stored values themselves: float64 keeps 16 digits of each
        warn(
            f"The response's values reach {size / fit.sigma:.3g} times the residual SD: float64 keeps about "
            f"{max(0, int(np.floor(16 - np.log10(size / fit.sigma))))} significant digits of the residual "
            "variation in each value, and the estimates no more; subtract a constant from the response first.",
            PrecisionWarning,
        )
        return
    yty = float(fit.products.response.yty)
    if not yty > PRECISION_RATIO * r2:
        return
    digits = max(0, int(np.floor(16 - np.log10(yty / r2))))
    X = fit.design.X
    constant = X.shape[1] and np.linalg.matrix_rank(np.column_stack([X, np.ones(len(X))])) == X.shape[1]
    hint = (
        "the random effects carry the response's mean: add an intercept to the fixed effects (or center the response)"
        if not constant else
        "the residual SD is tiny beside the variation the random effects explain; the estimates keep fewer digits"
    )
    warn(
        f"The residual sum of squares at the estimate is {yty / r2:.3g} times smaller than the response's sum "
        f"of squares about its fixed-effect fit: it keeps about {digits} significant digits, and the criterion "
        f"and theta are imprecise ({hint}).",
        PrecisionWarning,
    )


def make_fit(design: Design, products: CrossProducts, opt: OptResult, reml: bool, method: str,
             control: Control, data_name: str | None = None) -> LmmFit:
    """Build the frozen result from the optimizer's output (lme4's mkMerMod)."""
    data = products
    theta = np.asarray(opt.theta, dtype=np.float64)
    sol = _solve_jit(on_device(theta), data)
    n, p = design.n, design.p
    sigma = float(sigma_hat(float(sol.r2), n, p, reml))
    RX = np.asarray(sol.RX)
    RXinv = np.linalg.solve(RX, np.eye(p)) if p else np.zeros((0, 0))
    vcov = sigma**2 * (RXinv.T @ RXinv)
    names = list(design.fixed_names)
    Ts = [T[0] for T in factors_batch(theta, data.term_dims)]
    b, lo = [], 0
    u_rest = np.asarray(sol.u_rest)
    for i, (t, T) in enumerate(zip(design.terms, Ts)):
        if i == 0:
            u = np.asarray(sol.u1)
        else:
            u = u_rest[lo : lo + t.nlevels * t.k].reshape(t.nlevels, t.k)
            lo += t.nlevels * t.k
        b.append(u @ T.T)
    singular = is_singular(theta, design.terms, theta_lower_bounds(products.term_dims), weights=design.weights)
    return LmmFit(
        design=design,
        products=products,
        control=control,
        data_name=data_name,
        reml=reml,
        method=method,
        objective=float(opt.fun),
        theta=theta,
        converged=bool(opt.converged),
        n_iter=int(opt.n_iter),
        gradient=np.asarray(opt.grad),
        fixef=pd.Series(np.asarray(sol.beta), index=names, name="estimate"),
        se=pd.Series(np.sqrt(np.diag(vcov)), index=names, name="se"),
        vcov=pd.DataFrame(vcov, index=names, columns=names),
        sigma=sigma,
        varcorr=varcorr_table(theta, sigma, design.terms),
        singular=singular,
        nobs=n,
        n_dropped=design.n_dropped,
        b=tuple(b),
        hessian=exact_hessian(opt),
    )


def exact_hessian(opt: OptResult) -> np.ndarray | None:
    """The optimizer's exact Hessian of the profiled criterion at its theta, or None where it made
    none (BFGS Hessians, L-BFGS)."""
    H = np.asarray(opt.hessian, dtype=np.float64)
    return H if H.size == 0 or np.all(np.isfinite(H)) else None
