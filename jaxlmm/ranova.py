"""Likelihood-ratio tests of the random-effect terms, one at a time (lmerTest's ``ranova``).

One row for the model (``<none>``), then one per reduced model, in the order
of the formula's terms, as lmerTest's ``ranova(model, reduce.terms = TRUE)``:

- a term without formula terms on its left (``(1 | g)``) is removed
  (row ``(1 | g)``);
- otherwise each formula term ``x`` of the left-hand side is dropped in
  turn (row ``x in (1 + x | g)``); dropping the only one leaves ``(1 | g)``,
  which is one term with a ``(1 | g)`` already there (``(x || g)``'s row
  ``x in (0 + x | g)`` is the model with ``(1 | g)`` alone).

Each reduced model is refitted by the model's criterion (REML fits are
compared by REML likelihoods: the fixed effects are the same). Columns:
``npar``, ``logLik``, ``AIC``, ``LRT`` = 2 (logLik_model - logLik_row),
``Df`` = npar_model - npar_row, ``Pr(>Chisq)`` from chi2_Df, and beside them
``p_boundary``: where the row removes one variance (with its covariances),
the p-value of the 50:50 mixture of chi2_{Df-1} and chi2_Df (Self & Liang,
JASA 1987; Stram & Lee, Biometrics 1994), which the chi-square p-value
overstates; NaN otherwise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .anova import _components
from .distributions import chi2_mixture_sf, chi2_sf
from ._config import uses_float64
from .errors import JaxLMMError
from .results import check_fit
from .submodels import bar_label, formula_order, reduced_term, term_labels, with_terms

COLUMNS = ("npar", "logLik", "AIC", "LRT", "Df", "Pr(>Chisq)", "p_boundary")


def _distinct(terms: list) -> list:
    """``terms`` without repeats: a term with the grouping factor and columns of an earlier one is the
    same term (as R's formula keeps a term once, so that lmerTest's reduced ``(1 | g) + (1 | g)`` is
    ``(1 | g)``)."""
    seen, out = set(), []
    for t in terms:
        key = (t.name, tuple(t.colnames))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def reduced_models(design) -> dict:
    """Row label -> random-effect terms of each reduced model (lmerTest's ``get_newforms``)."""
    terms = design.terms
    out = {}
    for i in formula_order(design):
        t = terms[i]
        labels = term_labels(t)
        if not labels:
            out[bar_label(t)] = [u for j, u in enumerate(terms) if j != i]
            continue
        for lab in labels:
            out[f"{lab} in {bar_label(t)}"] = _distinct(
                [reduced_term(u, lab) if j == i else u for j, u in enumerate(terms)]
            )
    return out


@uses_float64
def ranova(fit) -> pd.DataFrame:
    """lmerTest's ``ranova`` table of ``fit``, with a boundary-mixture p-value column ``p_boundary``."""
    check_fit(fit, func="ranova")
    if not fit.terms:
        raise JaxLMMError("ranova needs a model with at least one random-effect term.")
    labels, fits = ["<none>"], [fit]
    for label, terms in reduced_models(fit.design).items():
        labels.append(label)
        fits.append(with_terms(fit, terms).fit(reml=fit.reml, method=fit.method))
    npar = np.array([f.npar for f in fits], dtype=np.int64)
    loglik = np.array([f.loglik for f in fits])
    lrt = np.concatenate([[np.nan], 2.0 * (loglik[0] - loglik[1:])])
    df = np.concatenate([[np.nan], (npar[0] - npar[1:]).astype(np.float64)])
    p = np.array([np.nan] + [float(chi2_sf(max(x, 0.0), d)) if d > 0 else np.nan for x, d in zip(lrt[1:], df[1:])])
    full = _components(fit)
    mixture = np.array(
        [np.nan]
        + [
            float(chi2_mixture_sf(max(x, 0.0), int(d))) if d >= 1 and len(full - _components(f)) == 1 else np.nan
            for f, x, d in zip(fits[1:], lrt[1:], df[1:])
        ]
    )
    table = pd.DataFrame(
        dict(zip(COLUMNS, [npar, loglik, -2.0 * loglik + 2.0 * npar, lrt, df, p, mixture])),
        index=pd.Index(labels),
    )
    table.attrs["models"] = {lab: f.formula for lab, f in zip(labels, fits)}
    table.attrs["heading"] = f"ANOVA-like table for random-effects: Single term deletions\nModel: {fit.formula}"
    return table
