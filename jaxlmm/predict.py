"""Predictions for new data from a fitted model (lme4's ``predict.merMod``).

Conditional prediction x_new' beta + z_new' b, with b the conditional modes
of the fit (Bates et al., JSS 2015, section 3.5): the new rows are encoded
with the training encoding (formulaic's ModelSpec stored on the design, so
factor levels and contrasts are those of the fit), and each random-effect
term adds the row's columns times the mode of its level. A level the fit
has not seen contributes 0, i.e. is predicted at the population level (lme4's
``allow.new.levels = TRUE``). ``re=False`` gives x_new' beta only (lme4's
``re.form = NA``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .design import _formulaic_error, group_codes, lme4_name
from .validate import as_frame
from .errors import DataError


def _columns(spec, data: pd.DataFrame, names, what: str) -> np.ndarray:
    """The columns ``names`` of the model matrix of ``spec`` evaluated on ``data``."""
    try:
        mm = spec.get_model_matrix(data, na_action="raise")
    except Exception as exc:
        raise _formulaic_error(exc, what, data.columns) from None
    got = {lme4_name(c): j for j, c in enumerate(mm.columns)}
    M = np.asarray(mm, dtype=np.float64).reshape(len(data), -1)
    return M[:, [got[n] for n in names]]


def _check_missing(data: pd.DataFrame, cols) -> None:
    for c in cols:
        if c not in data.columns:
            raise DataError(f"Column '{c}' needed for prediction is not in newdata.")
        if data[c].isna().any():
            raise DataError(f"Column '{c}' of newdata has {int(data[c].isna().sum())} missing value(s).")


def level_index(term, data: pd.DataFrame) -> np.ndarray:
    """Per row of ``data``, the index of its level of ``term`` in the fit (-1 if unseen)."""
    codes, labels = group_codes(data, term.factors)
    known = {str(lv): i for i, lv in enumerate(term.levels)}
    return np.array([known.get(str(labels[c]), -1) for c in codes], dtype=np.int64)


def predict(fit, newdata=None, re: bool = True) -> np.ndarray:
    """Predicted responses for ``newdata`` (the fitted rows when None)."""
    design = fit.model.design
    beta = fit.fixef.to_numpy()
    if newdata is None:
        return np.asarray(fit.fitted if re else design.X @ beta)
    data = as_frame(newdata)
    if design.fixed_spec is None:  # pragma: no cover (designs built by build_design have it)
        raise DataError("This fit does not keep its encoding; refit it to predict on new data.")
    _check_missing(data, sorted(design.fixed_spec.required_variables))
    out = _columns(design.fixed_spec, data, design.fixed_names, "the fixed-effect formula") @ beta
    if not re:
        return out
    for t, b in zip(design.terms, fit.b):
        _check_missing(data, sorted(set(t.spec.required_variables) | set(t.factors)))
        Zt = _columns(t.spec, data, t.colnames, f"the random-effect term ({t.expr} | {t.name})")
        idx = level_index(t, data)
        bt = np.where((idx >= 0)[:, None], b[np.maximum(idx, 0)], 0.0)
        out = out + np.einsum("rk,rk->r", Zt, bt)
    return out
