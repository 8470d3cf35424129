"""Tail probabilities and quantiles of the t, F, chi-square and normal laws.

Through the regularized incomplete beta and gamma functions (Abramowitz &
Stegun 26.5.27, 26.6.2, 26.4.19) of scipy (a dependency of JAX), computed
on the host: these are a few numbers per table, and a JAX function would
compile a program for each new shape of its arguments (a first summary
spent a quarter of a second compiling them):

    P(|T_nu| > t)  = I_{nu/(nu+t^2)}(nu/2, 1/2)
    P(F_{d1,d2} > f) = I_{d2/(d2+d1 f)}(d2/2, d1/2)
    P(chi2_k > x)  = Q(k/2, x/2)   (upper regularized gamma)

Quantiles of F are found by bisection on the tail probability.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betainc, gammaincc, ndtr, ndtri


def norm_sf2(z):
    """Two-sided normal tail P(|Z| > |z|)."""
    return np.asarray(2.0 * ndtr(-np.abs(np.asarray(z, dtype=np.float64))))


def norm_quantile(p):
    """The p-quantile of the standard normal (R's ``qnorm``), elementwise; a float for a number."""
    q = np.asarray(ndtri(np.asarray(p, dtype=np.float64)))
    return float(q) if q.ndim == 0 else q


def two_sided_z(level: float) -> float:
    """z with P(|Z| <= z) = level for a standard normal Z (1.96 for 0.95): the half-width of a Wald interval."""
    return norm_quantile(0.5 + level / 2.0)


def t_sf2(t, df):
    """Two-sided Student-t tail P(|T_df| > |t|); the normal tail where df is infinite."""
    t = np.asarray(t, dtype=np.float64)
    df = np.broadcast_to(np.asarray(df, dtype=np.float64), t.shape)
    finite = np.isfinite(df)
    dff = np.where(finite, df, 1.0)
    x = dff / (dff + t**2)
    p = np.asarray(betainc(dff / 2.0, 0.5, x))
    return np.where(finite, p, norm_sf2(t))


def f_sf(f, d1, d2):
    """Upper tail P(F_{d1,d2} > f) (1 for f <= 0)."""
    f = np.asarray(f, dtype=np.float64)
    x = d2 / (d2 + d1 * np.maximum(f, 0.0))
    return np.asarray(betainc(d2 / 2.0, d1 / 2.0, x))


def f_quantile(prob: float, d1: float, d2: float, tol: float = 1e-12) -> float:
    """The ``prob``-quantile of F_{d1,d2}, by bisection on ``f_sf``."""
    lo, hi = 0.0, 1.0
    while 1.0 - float(f_sf(hi, d1, d2)) < prob:
        lo, hi = hi, hi * 2.0
    while hi - lo > tol * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if 1.0 - float(f_sf(mid, d1, d2)) < prob:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def chi2_sf(x, df):
    """Upper tail P(chi2_df > x); df = 0 is the point mass at 0."""
    x = np.asarray(x, dtype=np.float64)
    if df == 0:
        return np.where(x > 0, 0.0, 1.0)
    return np.asarray(gammaincc(df / 2.0, np.maximum(x, 0.0) / 2.0))


def chi2_mixture_sf(x, df: int) -> np.ndarray:
    """P(X > x) for the 50:50 mixture of chi2_{df-1} and chi2_df.

    The null law of the likelihood-ratio statistic when one variance
    component is tested on the boundary of its parameter space (Self &
    Liang, JASA 1987; Stram & Lee, Biometrics 1994).
    """
    return 0.5 * chi2_sf(x, df - 1) + 0.5 * chi2_sf(x, df)


__all__ = [
    "chi2_mixture_sf",
    "chi2_sf",
    "f_quantile",
    "f_sf",
    "norm_quantile",
    "two_sided_z",
    "norm_sf2",
    "t_sf2",
]
