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

The table reads like lme4's: one row per model, labelled by the names given
(``anova(fit0, fit1, names=["m0", "m1"])`` or ``anova(m0=fit0, m1=fit1)``;
``model1``, ``model2``, ... by argument position otherwise: Python cannot
see the variable names lme4 takes from R's call), lme4's columns ``npar``,
``AIC``, ``BIC``, ``logLik``, ``deviance``, ``Chisq``, ``Df``,
``Pr(>Chisq)`` (and ``p_boundary``). Printed, it lists the formulas first
(``Models:``) and formats the numbers as lme4 does, in 80 columns;
``table.attrs["models"]`` maps each label to its formula.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from ._config import uses_float64
from .distributions import chi2_mixture_sf, chi2_sf
from .errors import JaxLMMError, JaxLMMWarning, warn
from .validate import check_bool
from .results import check_fit

BOUNDARY_NOTE = (
    "p-values of variance components tested on the boundary (sigma^2 = 0) are conservative "
    "under the chi-square law; p_boundary uses the 50:50 mixture of chi2_{df-1} and chi2_df."
)


def _check_comparable(fits) -> None:
    ref = fits[0].design
    for f in fits[1:]:
        d = f.design
        if d.response != ref.response or d.n != ref.n or not np.array_equal(d.y, ref.y):
            raise JaxLMMError(
                f"Models '{fits[0].formula}' and '{f.formula}' were not fitted to the same "
                f"response and rows ({ref.n} vs {d.n} observations of '{ref.response}' vs "
                f"'{d.response}'); likelihood-ratio tests need the same data."
            )
        require_same_likelihood(fits[0], f)


def require_same_likelihood(a, b) -> None:
    """Raise unless two fits of the same response have the same offset and prior weights (the rule of
    :func:`anova` and :func:`~jaxlmm.pb_test`): otherwise their likelihoods are of different data."""
    da, db = a.design, b.design
    if not np.array_equal(da.y_net, db.y_net):
        raise JaxLMMError(
            f"Models '{a.formula}' and '{b.formula}' have different offsets; "
            "likelihood-ratio tests need the same known part of the mean."
        )
    if not np.array_equal(da.prior_weights, db.prior_weights):
        raise JaxLMMError(
            f"Models '{a.formula}' and '{b.formula}' have different prior weights (weights=); "
            "likelihood-ratio tests need the same likelihood for the same data."
        )


def _components(fit) -> set[tuple[str, str]]:
    """(grouping factor, column) of every random-effect variance in the model."""
    return {(t.name, c) for t in fit.terms for c in t.colnames}


def _nested(small, big) -> bool:
    return set(small.fixef.index) <= set(big.fixef.index) and _components(small) <= _components(big)


def require_nested(small, big) -> None:
    """Raise unless ``small`` is nested in ``big`` (the rule of :func:`anova` and :func:`~jaxlmm.pb_test`).

    Nested: every fixed effect (by name) and every random-effect variance
    (grouping factor and column) of the smaller model is in the larger one.
    """
    if not _nested(small, big):
        raise JaxLMMError(
            f"Model '{small.formula}' is not nested in '{big.formula}': the larger model must "
            "contain every fixed effect and random-effect variance of the smaller one "
            "(check_nested=False compares them anyway)."
        )


def _refit_ml(fits) -> list:
    reml = [f for f in fits if f.reml]
    if not reml:
        return list(fits)
    warn("refitting model(s) with ML (instead of REML)", JaxLMMWarning)
    return [f.refit(reml=False) for f in fits]


def _one_component_more(small, big) -> bool:
    return set(small.fixef.index) == set(big.fixef.index) and len(_components(big) - _components(small)) == 1


COLUMNS = ("npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)", "p_boundary")
SIGNIF_CODES = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"


def _labels(fits, named: dict, names) -> tuple[list, list[str]]:
    """The fits (positional, then keyword) and their row labels."""
    allfits = list(fits) + list(named.values())
    for i, f in enumerate(fits):
        check_fit(f, f"model {i + 1} (argument {i + 1})", "anova")
    if names is not None:
        if named:
            raise JaxLMMError("Give names= or models as keywords (anova(m0=fit0, m1=fit1)), not both.")
        if not isinstance(names, (str, list, tuple, np.ndarray, pd.Index)):
            raise JaxLMMError(f"names must be a list of labels, not {names!r} ({type(names).__name__}).")
        names = [names] if isinstance(names, str) else list(names)
        if len(names) != len(allfits):
            raise JaxLMMError(f"names= has {len(names)} label(s) for {len(allfits)} models.")
        labels = [str(n) for n in names]
    else:
        labels = [f"model{i + 1}" for i in range(len(fits))] + list(named)
    if len(set(labels)) != len(labels):
        raise JaxLMMError(f"The models' labels must be distinct, not {labels}.")
    return allfits, labels


def _decimals(values, digits: int = 5) -> int:
    """Decimals that show the largest finite |value| with ``digits`` significant digits (R's format)."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) == 0:
        return 0
    return int(min(max(0, digits - 1 - math.floor(math.log10(v.max()))), 10))


def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "< 2.2e-16" if p < 2.2e-16 else f"{p:.4g}"


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else " "


class AnovaTable(pd.DataFrame):
    """The result of :func:`anova`: a DataFrame whose text form is lme4's.

    Derived frames (selections, copies) are plain DataFrames.
    """

    @property
    def _constructor(self):
        return pd.DataFrame

    def to_text(self) -> str:
        """lme4's print: the models' formulas, the table (5 significant digits, stars), notes."""
        lines = ["Models:"]
        lines += [f"{name}: {formula}" for name, formula in self.attrs.get("models", {}).items()]
        cells = {"": [str(i) for i in self.index]}
        cells["npar"] = [str(int(v)) for v in self["npar"]]
        for col in ("AIC", "BIC", "logLik", "deviance", "Chisq"):
            d = _decimals(self[col])
            cells[col] = ["" if not np.isfinite(v) else f"{v:.{d}f}" for v in self[col]]
        cells["Df"] = ["" if not np.isfinite(v) else str(int(v)) for v in self["Df"]]
        cells["Pr(>Chisq)"] = [_format_p(v) for v in self["Pr(>Chisq)"]]
        cells["*"] = [_stars(v) for v in self["Pr(>Chisq)"]]  # lme4's unnamed column of stars
        if np.isfinite(self["p_boundary"].to_numpy(dtype=np.float64)).any():
            cells["p_boundary"] = [_format_p(v) for v in self["p_boundary"]]
        widths = {k: max(len(k), *(len(c) for c in v)) for k, v in cells.items()}
        widths["*"] = max(len(c) for c in cells["*"])
        header = {"": "", "*": ""}
        lines.append(" ".join(header.get(k, k).rjust(widths[k]) for k in cells).rstrip())
        for i in range(len(self)):
            row = [cells[""][i].ljust(widths[""])]
            row += [cells[k][i].ljust(widths[k]) if k == "*" else cells[k][i].rjust(widths[k]) for k in cells if k]
            lines.append(" ".join(row).rstrip())
        lines.append("---")
        lines.append(SIGNIF_CODES)
        if "note" in self.attrs:
            lines += textwrap.wrap("Note: " + self.attrs["note"], width=80)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_text()

    def __str__(self) -> str:
        return self.to_text()


@uses_float64
def anova(*fits, names=None, refit: bool = True, check_nested: bool = True, **named_fits) -> AnovaTable:
    """Compare nested fits by likelihood-ratio tests; one row per model, sorted by npar.

    Rows are labelled by ``names`` (or the keywords of keyword-passed fits:
    ``anova(m0=fit0, m1=fit1)``), else ``model1``, ``model2``, ... in the
    order of the arguments; ``table.attrs["models"]`` maps labels to formulas.
    """
    for key, value in named_fits.items():
        if not hasattr(value, "design") or not hasattr(value, "loglik"):
            raise JaxLMMError(
                f"anova() got an unexpected keyword argument '{key}'; models passed by keyword "
                "must be fits, and the options are names=, refit=, check_nested=."
            )
    refit, nested = check_bool(refit, "refit"), check_bool(check_nested, "check_nested")
    fits, labels = _labels(fits, named_fits, names)
    if len(fits) < 2:
        raise JaxLMMError("anova needs at least two fitted models to compare.")
    _check_comparable(fits)
    if refit:
        fits = _refit_ml(fits)
    elif len({f.reml for f in fits}) > 1:
        raise JaxLMMError("Cannot compare REML and ML fits with refit=False.")
    order = sorted(range(len(fits)), key=lambda i: fits[i].npar)
    fits = [fits[i] for i in order]
    labels = [labels[i] for i in order]
    for small, big in zip(fits, fits[1:]):
        if nested:
            require_nested(small, big)
    npar = np.array([f.npar for f in fits], dtype=np.int64)
    loglik = np.array([f.loglik for f in fits])
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, np.diff(loglik))])
    df = np.concatenate([[np.nan], np.diff(npar).astype(np.float64)])
    # two models with as many parameters: no test (NA, as lme4 since 1.1-31)
    p = np.array([np.nan] + [float(chi2_sf(c, d)) if d > 0 else np.nan for c, d in zip(chisq[1:], df[1:])])
    boundary = np.array(
        [np.nan]
        + [
            float(chi2_mixture_sf(c, int(d))) if _one_component_more(s, b) and d >= 1 else np.nan
            for s, b, c, d in zip(fits, fits[1:], chisq[1:], df[1:])
        ]
    )
    columns = [
        npar,
        [f.aic for f in fits],
        [f.bic for f in fits],
        loglik,
        [f.deviance for f in fits],
        chisq,
        df,
        p,
        boundary,
    ]
    table = AnovaTable(dict(zip(COLUMNS, columns)), index=pd.Index(labels))
    table.attrs["models"] = {name: f.formula for name, f in zip(labels, fits)}
    if np.any(np.isfinite(boundary)):
        table.attrs["note"] = BOUNDARY_NOTE
    return table
