"""Likelihood-ratio comparison of nested fits (lme4's ``anova.merMod``).

Fits are sorted by their number of parameters; each row after the first
gives chisq = 2 (loglik_i - loglik_{i-1}) (at least 0) on
df = npar_i - npar_{i-1} degrees of freedom and its chi-square p-value.
As lme4 does by default (``refit = TRUE``), REML fits are refitted by
maximum likelihood first, with a warning: REML criteria of models with
different fixed effects are not comparable.

When a model adds one variance component to the one before it (with its
covariances, the fixed effects unchanged), the null value sits on the
boundary of the parameter space and the chi-square p-value is conservative;
the column ``p_boundary`` then gives the p-value of the 50:50 mixture of
chi2_{df-1} and chi2_df (Self & Liang, JASA 1987; Stram & Lee, Biometrics
1994), and ``table.attrs["note"]`` says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .distributions import chi2_mixture_sf, chi2_sf
from .errors import JaxLMMError, JaxLMMWarning, warn

BOUNDARY_NOTE = (
    "p-values of variance components tested on the boundary (sigma^2 = 0) are conservative "
    "under the chi-square law; p_boundary uses the 50:50 mixture of chi2_{df-1} and chi2_df."
)


def _check_comparable(fits) -> None:
    ref = fits[0].model.design
    for f in fits[1:]:
        d = f.model.design
        if d.response != ref.response or d.n != ref.n or not np.array_equal(d.y, ref.y):
            raise JaxLMMError(
                f"Models '{fits[0].formula}' and '{f.formula}' were not fitted to the same "
                f"response and rows ({ref.n} vs {d.n} observations of '{ref.response}' vs "
                f"'{d.response}'); likelihood-ratio tests need the same data."
            )


def _components(fit) -> set[tuple[str, str]]:
    """(grouping factor, column) of every random-effect variance in the model."""
    return {(t.name, c) for t in fit.terms for c in t.colnames}


def _nested(small, big) -> bool:
    return set(small.fixef.index) <= set(big.fixef.index) and _components(small) <= _components(big)


def _refit_ml(fits) -> list:
    reml = [f for f in fits if f.reml]
    if not reml:
        return list(fits)
    warn("refitting model(s) with ML (instead of REML)", JaxLMMWarning)
    return [f.model.fit(reml=False, method=f.method) if f.reml else f for f in fits]


def _one_component_more(small, big) -> bool:
    return set(small.fixef.index) == set(big.fixef.index) and len(_components(big) - _components(small)) == 1


def anova(*fits, refit: bool = True, check_nested: bool = True) -> pd.DataFrame:
    """Compare nested fits by likelihood-ratio tests; one row per model, sorted by npar."""
    if len(fits) < 2:
        raise JaxLMMError("anova needs at least two fitted models to compare.")
    _check_comparable(fits)
    if refit:
        fits = _refit_ml(fits)
    elif len({f.reml for f in fits}) > 1:
        raise JaxLMMError("Cannot compare REML and ML fits with refit=False.")
    order = sorted(range(len(fits)), key=lambda i: fits[i].npar)
    fits = [fits[i] for i in order]
    for small, big in zip(fits, fits[1:]):
        if check_nested and not _nested(small, big):
            raise JaxLMMError(
                f"Model '{small.formula}' is not nested in '{big.formula}': the larger model must "
                "contain every fixed effect and random-effect variance of the smaller one "
                "(check_nested=False compares them anyway)."
            )
    npar = np.array([f.npar for f in fits], dtype=np.int64)
    loglik = np.array([f.loglik for f in fits])
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, np.diff(loglik))])
    df = np.concatenate([[np.nan], np.diff(npar).astype(np.float64)])
    p = np.array([np.nan] + [float(chi2_sf(c, d)) for c, d in zip(chisq[1:], df[1:])])
    boundary = np.array(
        [np.nan]
        + [
            float(chi2_mixture_sf(c, int(d))) if _one_component_more(s, b) and d >= 1 else np.nan
            for s, b, c, d in zip(fits, fits[1:], chisq[1:], df[1:])
        ]
    )
    table = pd.DataFrame(
        {
            "npar": npar,
            "aic": [f.aic for f in fits],
            "bic": [f.bic for f in fits],
            "loglik": loglik,
            "deviance": [f.deviance for f in fits],
            "chisq": chisq,
            "df": df,
            "p": p,
            "p_boundary": boundary,
        },
        index=[f.formula for f in fits],
    )
    if np.any(np.isfinite(boundary)):
        table.attrs["note"] = BOUNDARY_NOTE
    return table
