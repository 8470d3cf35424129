"""Shares of variance: the intraclass correlation and Nakagawa & Schielzeth's R^2.

The variance of a Gaussian mixed model's response splits into (insight's
``get_variance``, which performance's ``icc`` and ``r2_nakagawa`` use):

- fixed: var(X beta), the sample variance (denominator n - 1) of the fitted
  fixed part (Nakagawa & Schielzeth, Methods Ecol. Evol. 4, 2013, eq. 26);
- random: for each random-effect term with fewer levels than observations,
  the mean over the rows of z_r' Sigma_m z_r = trace(Sigma_m Z_m'Z_m) / n,
  z_r the term's columns in the row (taken from the fixed-effects matrix by
  name, the intercept as ones; columns not among the fixed effects are left
  out, as insight does), Sigma_m = sigma^2 T_m T_m' (Johnson, Methods Ecol.
  Evol. 5, 2014, for random slopes); summed over terms;
- residual: sigma^2.

Then ICC_adjusted = random / (random + residual), ICC_conditional =
random / (fixed + random + residual), R2_marginal = fixed / total,
R2_conditional = (fixed + random) / total (Nakagawa, Johnson & Schielzeth,
J. R. Soc. Interface 14, 2017). As insight, a singular fit (a variance
parameter below ``tolerance``) has no random variance: the shares that need
it are NaN, with a warning.

Each is a function of (beta, theta, sigma), computed for one fit or for
every replicate of :func:`jaxlmm.bootstrap` at once, whose percentiles give
intervals (performance's ``ci`` argument, by parametric rather than
nonparametric resampling).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .bootstrap import BootstrapResult, bootstrap, percentile_interval
from .errors import JaxLMMError, JaxLMMWarning, warn
from .validate import check_bool, check_level
from .theta import dims_of, factors_batch, is_singular, theta_names

TOLERANCE = 1e-5  # insight's tolerance for a singular fit


def _term_moments(design) -> list[tuple[int, list[int], np.ndarray]]:
    """Per term used: its index, the columns kept, and Z'Z / n of those columns (from X by name)."""
    X, names, n = design.X, list(design.fixed_names), design.n
    out = []
    for i, t in enumerate(design.terms):
        if t.nlevels == n:  # one level per observation: insight counts it elsewhere (0 for Gaussian)
            continue
        keep, cols = [], []
        for j, c in enumerate(t.colnames):
            if c in names:
                keep.append(j)
                cols.append(X[:, names.index(c)])
            elif c == "(Intercept)":
                keep.append(j)
                cols.append(np.ones(n))
        Z = np.column_stack(cols) if cols else np.zeros((n, 0))
        out.append((i, keep, Z.T @ Z / n))
    return out


def variance_parts(beta, theta, sigma, design) -> pd.DataFrame:
    """The fixed, random and residual variances, one row per (beta, theta, sigma) replicate."""
    beta, theta = np.atleast_2d(beta), np.atleast_2d(theta)
    sigma = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    fixed = np.var(design.X @ beta.T, axis=0, ddof=1) if design.n > 1 else np.zeros(len(sigma))
    Ts = factors_batch(theta, dims_of(design.terms))
    random = np.zeros(len(sigma))
    for i, keep, M in _term_moments(design):
        T = Ts[i][:, keep, :]
        S = sigma[:, None, None] ** 2 * np.einsum("bij,bkj->bik", T, T)
        random = random + np.einsum("bij,ij->b", S, M)
    return pd.DataFrame({"fixed": fixed, "random": random, "residual": sigma**2})


def _shares(parts: pd.DataFrame, which: str) -> pd.DataFrame:
    f, r, e = parts["fixed"], parts["random"], parts["residual"]
    total = f + r + e
    if which == "icc":
        return pd.DataFrame({"adjusted": r / (r + e), "conditional": r / total})
    return pd.DataFrame({"marginal": f / total, "conditional": (f + r) / total})


def _replicates(fit, boot, n: int, seed: int):
    """beta, theta, sigma of the converged replicates of a parametric bootstrap of ``fit``."""
    if boot is None:
        boot = bootstrap(fit, n=n, seed=seed, progress=False)
    elif not isinstance(boot, BootstrapResult):
        raise JaxLMMError(f"boot must be the result of jaxlmm.bootstrap of this model, not {type(boot).__name__}.")
    tab = boot.table[boot.table["converged"]]
    names = list(fit.design.fixed_names)
    thetas = [f"theta_{t}" for t in theta_names(fit.terms)]
    if any(c not in tab.columns for c in names + thetas):
        raise JaxLMMError("boot is not a bootstrap of this model (its parameters differ).")
    return tab[names].to_numpy(), tab[thetas].to_numpy(), tab["sigma"].to_numpy()


def shares(fit, which: str, conf_int: bool = False, conf_level: float = 0.95, n: int = 1000, seed: int = 0,
           boot=None, tolerance: float = TOLERANCE):
    """``which`` = ``"icc"`` or ``"r2"`` of ``fit``: a Series, or with ``conf_int`` a frame of
    estimate, lower, upper (percentile intervals over ``boot``, or a new bootstrap of ``n``)."""
    conf_int = check_bool(conf_int, "conf_int")
    design = fit.design
    if not design.terms:
        raise JaxLMMError(f"{which} needs a model with random effects.")
    parts = variance_parts(fit.fixef.to_numpy(), fit.theta, fit.sigma, design)
    singular = is_singular(fit.theta, fit.terms, fit.lower, tolerance, weights=fit.design.weights)
    if singular:
        warn(
            f"Can't compute the random-effect variances of a singular fit (a variance parameter below "
            f"{tolerance:g}): the {'ICC' if which == 'icc' else 'conditional R2'} is NaN.",
            JaxLMMWarning,
        )
        parts["random"] = np.nan
    est = _shares(parts, which).iloc[0].rename(which.upper() if which == "icc" else "R2")
    if not (conf_int or boot is not None):
        return est
    conf_level = check_level(conf_level, "conf_level")
    reps = _shares(variance_parts(*_replicates(fit, boot, n, seed), design), which)
    if singular:
        reps.loc[:, reps.columns != "marginal"] = np.nan
    rows = [(est[c], *percentile_interval(reps[c].to_numpy(dtype=np.float64), conf_level)) for c in est.index]
    return pd.DataFrame(rows, index=est.index, columns=["estimate", "lower", "upper"])
