"""The fitted model: a frozen record of estimates computed once at the optimum.

Formulas (Bates et al., JSS 2015, section 3): sigma^2 = r^2/(n-p) (REML) or
r^2/n (ML), r^2 the (prior-)weighted penalized residual sum of squares;
Var(beta) = sigma^2 (R_X'R_X)^{-1}; Sigma_m = sigma^2 T_m T_m' for each term;
the conditional modes b = Lambda u of the penalized least squares solution;
conditional variances sigma^2 Lambda (L L')^{-1} Lambda' (blocks), as lme4's
``ranef(condVar = TRUE)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._config import uses_float64
from .design import theta_scales
from .objective import conditional_variances, relative_factors, solve

SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on theta


_solve_jit = jax.jit(solve)
_condvar_jit = jax.jit(conditional_variances)


def term_group_names(terms) -> list[str]:
    """lme4's labels of the terms in VarCorr: repeated factors get '.1', '.2', ..."""
    seen: dict[str, int] = {}
    out = []
    for t in terms:
        c = seen.get(t.name, 0)
        out.append(t.name if c == 0 else f"{t.name}.{c}")
        seen[t.name] = c + 1
    return out


def _varcorr(terms, Ts, sigma) -> pd.DataFrame:
    rows = []
    for grp, t, T in zip(term_group_names(terms), terms, Ts):
        S = sigma**2 * (T @ T.T)
        sd = np.sqrt(np.diag(S))
        for i, name in enumerate(t.colnames):
            rows.append((grp, name, None, S[i, i], sd[i]))
        for i in range(t.k):
            for j in range(i + 1, t.k):
                denom = sd[i] * sd[j]
                cor = S[i, j] / denom if denom > 0 else np.nan
                rows.append((grp, t.colnames[i], t.colnames[j], S[i, j], cor))
    rows.append(("Residual", None, None, sigma**2, sigma))
    # the name columns are object columns with None where lme4 has NA, whatever the model
    # (pandas would otherwise infer a string dtype, turning some None into NaN)
    out = {
        name: pd.Series([r[i] for r in rows], dtype=object)
        for i, name in enumerate(["group", "term1", "term2"])
    }
    out["variance"] = np.array([float(r[3]) for r in rows], dtype=np.float64)
    out["sd_cor"] = np.array([float(r[4]) for r in rows], dtype=np.float64)
    return pd.DataFrame(out)


@dataclass(frozen=True, eq=False)
class LmmFit:
    """A fitted linear mixed model (REML or ML). Built by ``make_fit``; read-only."""

    model: object
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

    # ---- likelihood summaries -------------------------------------------
    @property
    def formula(self) -> str:
        return self.model.design.formula.text

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
        return self.model.design.terms

    # ---- random effects -------------------------------------------------
    @cached_property
    def ranef(self) -> pd.DataFrame:
        """Conditional modes and conditional SDs: columns group, term, level, value, cond_sd."""
        data = self.model.data
        Ts = [np.asarray(T) for T in relative_factors(jnp.asarray(self.theta), data.term_dims)]
        blocks = [np.asarray(B) for B in _condvar_jit(jnp.asarray(self.theta), data)]
        frames = []
        for t, T, bm, P in zip(self.terms, Ts, self.b, blocks):
            var = self.sigma**2 * np.einsum("ab,lbc,dc->lad", T, P, T)
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

    @cached_property
    def fitted(self) -> np.ndarray:
        """Conditional fitted values X beta + Z b for the rows used in the fit."""
        d = self.model.design
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
        weights). ``scaled``: divided by sigma, so that the Pearson residuals
        have variance about 1 whatever the weights.
        """
        from .errors import JaxLMMError

        d = self.model.design
        if type not in ("response", "pearson"):
            raise JaxLMMError(f"type must be 'response' or 'pearson', not {type!r}.")
        if kind == "conditional":
            r = d.y - self.fitted
        elif kind == "marginal":
            r = d.y - d.fixed_mean(self.fixef.to_numpy())
        else:
            raise JaxLMMError(f"kind must be 'conditional' or 'marginal', not {kind!r}.")
        if type == "pearson" and d.weights is not None:
            r = d.sqrt_weights * r
        from .validate import check_bool

        return r / self.sigma if check_bool(scaled, "scaled") else r

    # ---- inference (jaxlmm.satterthwaite, confint, predict, simulate) --------
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

    def predict(self, newdata=None, re: bool = True, offset=None) -> np.ndarray:
        """Predictions X beta + Z b + offset for ``newdata`` (new levels at the population level).

        ``offset``: numbers for the new rows, needed when the fit's ``offset=`` was numbers.
        """
        from .predict import predict

        return predict(self, newdata, re=re, offset=offset)

    def simulate(self, n: int = 1, seed: int = 0) -> np.ndarray:
        """``n`` responses simulated from the fitted model, shape (n, nobs)."""
        from .simulate import simulate

        return simulate(self, n=n, seed=seed)

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
    def summary(self, correlation: bool | None = None) -> str:
        """lmerTest's summary as text; ``correlation``: show the fixed effects' correlations (default p <= 12)."""
        from .summary import format_summary

        return format_summary(self, correlation=correlation)

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


def is_singular(theta, terms, lower, tolerance: float = SINGULAR_TOL) -> bool:
    """lme4's isSingular: an entry of theta with a lower bound of 0 (a diagonal entry of a relative
    factor) below ``tolerance``, on theta in the units of the optimizer (design.theta_scales)."""
    return bool(np.any((np.asarray(theta) * theta_scales(terms))[np.asarray(lower) == 0] < tolerance))


def make_fit(model, opt, reml: bool, method: str) -> LmmFit:
    """Build the frozen result from the optimizer's output (lme4's mkMerMod)."""
    data = model.data
    design = model.design
    theta = np.asarray(opt.theta, dtype=np.float64)
    sol = _solve_jit(jnp.asarray(theta), data)
    n, p = design.n, design.p
    r2 = float(sol.r2)
    sigma = float(np.sqrt(r2 / (n - p if reml else n)))
    RX = np.asarray(sol.RX)
    RXinv = np.linalg.solve(RX, np.eye(p)) if p else np.zeros((0, 0))
    vcov = sigma**2 * (RXinv.T @ RXinv)
    names = list(design.fixed_names)
    Ts = [np.asarray(T) for T in relative_factors(jnp.asarray(theta), data.term_dims)]
    b, lo = [], 0
    u_rest = np.asarray(sol.u_rest)
    for i, (t, T) in enumerate(zip(design.terms, Ts)):
        if i == 0:
            u = np.asarray(sol.u1)
        else:
            u = u_rest[lo : lo + t.nlevels * t.k].reshape(t.nlevels, t.k)
            lo += t.nlevels * t.k
        b.append(u @ T.T)
    singular = is_singular(theta, design.terms, model.lower)
    return LmmFit(
        model=model,
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
        varcorr=_varcorr(design.terms, Ts, sigma),
        singular=singular,
        nobs=n,
        n_dropped=design.n_dropped,
        b=tuple(b),
    )
