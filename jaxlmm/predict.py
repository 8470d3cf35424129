"""Predictions for new data from a fitted model (lme4's ``predict.merMod``).

Conditional prediction x_new' beta + z_new' b + offset, with b the
conditional modes of the fit (Bates et al., JSS 2015, section 3.5): the new
rows are encoded with the fit's encoding (:class:`jaxlmm.terms.Encoding`:
the same factor levels and contrasts, poly coefficients and centres, the
same columns by position), and each random-effect term adds the row's
columns times the mode of its level. A grouping level the fit has not seen
contributes 0, i.e. is predicted at the population level (lme4's
``allow.new.levels = TRUE``); an unseen level of a fixed-effect factor, a
number where the fit had a factor (or the reverse), a missing or non-finite
value is a :class:`~jaxlmm.errors.DataError` naming the column.
``re=False`` gives x_new' beta + offset only (lme4's ``re.form = NA``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .design import group_codes, offset_nodes, offset_values
from .errors import DataError, JaxLMMError
from .terms import names_in
from .validate import as_frame
from .results import check_fit


def _check_columns(data: pd.DataFrame, cols) -> None:
    """Each column needed is in ``data``, without missing or infinite values."""
    for c in cols:
        if c not in data.columns:
            raise DataError(f"Column '{c}' needed for prediction is not in newdata.")
        if int(np.sum(data.columns == c)) > 1:
            raise DataError(f"Column '{c}' appears more than once in newdata; rename or drop the copies.")
        col = data[c]
        if col.isna().any():
            raise DataError(f"Column '{c}' of newdata has {int(col.isna().sum())} missing value(s).")
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            vals = col.to_numpy(dtype=np.float64)
            if not np.isfinite(vals).all():
                raise DataError(f"Column '{c}' of newdata has {int((~np.isfinite(vals)).sum())} non-finite value(s).")


def _matrix(enc, data: pd.DataFrame, what: str) -> np.ndarray:
    _check_columns(data, enc.required)
    M = enc.matrix(data)
    bad = ~np.isfinite(M).all(axis=0)
    if bad.any():
        name = enc.columns[int(np.flatnonzero(bad)[0])]
        raise DataError(f"The column '{name}' of {what} is not finite for some rows of newdata (e.g. log of 0).")
    return M


def level_index(term, data: pd.DataFrame) -> np.ndarray:
    """Per row of ``data``, the index of its level of ``term`` in the fit (-1 if unseen)."""
    codes, labels = group_codes(data, term.factors)
    known = {str(lv): i for i, lv in enumerate(term.levels)}
    return np.array([known.get(str(labels[c]), -1) for c in codes], dtype=np.int64)


def _offset(design, data: pd.DataFrame, offset) -> np.ndarray:
    """The offset of the new rows: the formula's offset(...) terms plus offset= (the fit's text, or numbers)."""
    if design.offset_arg == "numbers" and offset is None:
        raise DataError(
            "The fit has an offset= given as numbers; pass offset= (one number per row of newdata) to predict."
        )
    text = None if design.offset_arg == "numbers" else design.offset_arg
    _check_columns(data, [c for node in offset_nodes(design.formula, text) for c in names_in(node, data.columns)])
    numbers = None
    if offset is not None:
        try:
            numbers = np.asarray(offset, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(
                f"offset= of predict needs {len(data)} numbers, one per row of newdata, not {offset!r:.60} "
                "(an offset the fit took as text is evaluated on newdata by itself)."
            ) from None
        if numbers.shape != (len(data),) or not np.isfinite(numbers).all():
            raise DataError(f"offset= needs {len(data)} finite numbers, one per row of newdata.")
    return offset_values(data, design.formula, text, numbers)


def _terms_of(fit, re) -> list[bool]:
    """Which of the fit's random-effect terms a prediction includes: ``re`` True (all), False (none), or
    lme4's ``re.form`` as a list of terms, each a grouping factor's name (its terms) or a term's label
    ``(expr | g)``."""
    terms = fit.design.terms
    if isinstance(re, (bool, np.bool_)):
        return [bool(re)] * len(terms)
    if isinstance(re, str):
        re = [re]
    if not isinstance(re, (list, tuple)) or not all(isinstance(r, str) for r in re):
        raise JaxLMMError(
            f"re must be True, False or a list of terms (grouping factors or labels '(expr | g)'), not {re!r}."
        )
    labels = [f"({t.expr} | {t.name})" for t in terms]
    squash = lambda text: "".join(text.split())  # noqa: E731
    keep = [False] * len(terms)
    for r in re:
        hits = [i for i, t in enumerate(terms) if r == t.name or squash(r) == squash(labels[i])]
        if not hits:
            raise JaxLMMError(
                f"re must be True, False or terms of the fit: '{r}' is neither a grouping factor nor a term "
                f"of it; its terms are {labels}."
            )
        for i in hits:
            keep[i] = True
    return keep


def predict(fit, newdata=None, re=True, offset=None) -> np.ndarray:
    """Predicted responses for ``newdata`` (the fitted rows when None); ``re``: :func:`_terms_of`."""
    check_fit(fit, func="predict")
    keep = _terms_of(fit, re)
    design = fit.design
    beta = fit.fixef.to_numpy()
    if newdata is None:
        if offset is not None:
            raise DataError("offset= is for newdata; the fitted rows use the fit's own offset.")
        if all(keep):
            return np.asarray(fit.fitted)
        out = design.fixed_mean(beta)
        for t, b, k in zip(design.terms, fit.b, keep):
            if k:
                out = out + np.einsum("rk,rk->r", t.X, b[t.codes])
        return np.asarray(out)
    data = as_frame(newdata)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused by _finite below
        out = _matrix(design.fixed_spec, data, "the fixed-effect formula") @ beta + _offset(design, data, offset)
    for t, b, k in zip(design.terms, fit.b, keep):
        if not k:
            continue
        what = f"the random-effect term ({t.expr} | {t.name})"
        _check_columns(data, list(t.factors))
        Zt = _matrix(t.spec, data, what)
        idx = level_index(t, data)
        bt = np.where((idx >= 0)[:, None], b[np.maximum(idx, 0)], 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            out = out + np.einsum("rk,rk->r", Zt, bt)
    return _finite(out)


def _finite(out: np.ndarray) -> np.ndarray:
    """Predictions, refused where newdata's values take them past float64 (e.g. x = 1e308)."""
    bad = ~np.isfinite(out)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} prediction(s) overflow float64 (row {int(np.flatnonzero(bad)[0])} of newdata): "
            "its predictors are far outside the fitted data."
        )
    return out
