"""From a parsed formula and a data frame to model matrices and group codes.

The fixed-effect matrix X and each random-effect term's per-row matrix are
built by formulaic; a term's Z is never formed: it is represented by integer
group codes (one per row) and the term's few columns, as lme4's ``mkReTrms``
does with its sparse ``Zt`` (Bates et al., JSS 2015, section 2.3).

Terms are sorted by decreasing number of levels (a stable sort, as lme4),
so that the first term, whose block of Z'Z is block diagonal, is the largest.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import (
    DataError,
    FormulaError,
    MissingDataWarning,
    RankDeficiencyWarning,
    closest_name,
)
from .formula import ParsedFormula, RandomTerm, parse_formula

_ANSI = re.compile(r"\x1b\[[0-9;]*m|[⧛⧚]")


@dataclass(frozen=True)
class TermDesign:
    """One random-effect term: grouping codes and the term's per-row columns.

    Row ``r`` of Z for this term holds ``X[r]`` in the columns of level
    ``codes[r]``; q = len(levels) * X.shape[1].
    """

    name: str
    factors: tuple[str, ...]
    expr: str
    colnames: tuple[str, ...]
    levels: np.ndarray
    codes: np.ndarray
    X: np.ndarray

    @property
    def k(self) -> int:
        return self.X.shape[1]

    @property
    def nlevels(self) -> int:
        return len(self.levels)


@dataclass(frozen=True)
class Design:
    """Everything the engine needs from the data, in numpy, rows already filtered."""

    formula: ParsedFormula
    response: str
    y: np.ndarray
    X: np.ndarray
    fixed_names: tuple[str, ...]
    dropped_columns: tuple[str, ...]
    terms: tuple[TermDesign, ...]
    n_dropped: int
    rows: np.ndarray  # index labels of the rows used

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def p(self) -> int:
        return self.X.shape[1]


def lme4_name(col: str) -> str:
    """formulaic column name -> lme4's: 'Intercept' -> '(Intercept)', 'f[T.b]' -> 'fb'."""
    if col == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[(?:T\.)?([^\]]*)\]", r"\1", col)


def _formulaic_error(exc: Exception, what: str, columns) -> FormulaError:
    msg = _ANSI.sub("", str(exc)).strip()
    missing = re.search(r"`([^`]+)` is not present", msg)
    if missing:
        name = missing.group(1)
        return FormulaError(
            f"Column '{name}' used in {what} is not in the data.{closest_name(name, columns)}"
        )
    return FormulaError(f"Cannot build {what}: {msg.splitlines()[0] if msg else type(exc).__name__}")



def _required(expr: str, what: str) -> set[str]:
    from formulaic import Formula

    try:
        return set(Formula(expr).required_variables)
    except Exception as exc:
        raise _formulaic_error(exc, what, []) from None


def _check_columns(names, data: pd.DataFrame, what: str) -> None:
    for name in sorted(names):
        if name not in data.columns:
            raise FormulaError(
                f"Column '{name}' used in {what} is not in the data.{closest_name(name, data.columns)}"
            )


def _as_factor(col: pd.Series) -> pd.Categorical:
    """R's factor(): Categorical keeps its order (unused levels dropped), others sort."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.remove_unused_categories().array
    values = col.to_numpy()
    levels = np.unique(values)
    return pd.Categorical(values, categories=levels)


def _level_label(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def group_codes(data: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and labels of the interaction of ``factors``.

    Levels are the observed combinations ordered with the first factor
    varying slowest (R's ``a:b`` on factors, unused levels dropped).
    """
    codes, labels = None, None
    for name in factors:
        fac = _as_factor(data[name])
        c = np.asarray(fac.codes, dtype=np.int64)
        lab = np.array([_level_label(v) for v in fac.categories], dtype=object)
        if codes is None:
            codes, labels = c, lab
        else:
            combined = codes * len(lab) + c
            uniq, codes = np.unique(combined, return_inverse=True)
            labels = np.array(
                [f"{labels[u // len(lab)]}:{lab[u % len(lab)]}" for u in uniq], dtype=object
            )
    return codes.astype(np.int64), labels


def _prepare(data, used: set[str]) -> tuple[pd.DataFrame, int]:
    """Columns in use, rows with a missing value dropped (counted, warned)."""
    cols = [c for c in data.columns if c in used]
    frame = data[cols]
    for c in cols:
        col = frame[c]
        if col.isna().all():
            raise DataError(f"Column '{c}' has only missing values.")
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isinf(vals).any():
                raise DataError(
                    f"Column '{c}' has {int(np.isinf(vals).sum())} infinite value(s); "
                    "remove or recode them before fitting."
                )
    keep = frame.notna().all(axis=1).to_numpy()
    n_dropped = int((~keep).sum())
    if n_dropped:
        bad = [c for c in cols if frame[c].isna().any()]
        warnings.warn(
            f"{n_dropped} row(s) with missing values in {', '.join(repr(b) for b in bad)} were dropped.",
            MissingDataWarning,
            stacklevel=4,
        )
    frame = frame[keep]
    if len(frame) == 0:
        raise DataError("No rows are left after dropping rows with missing values.")
    # R's defaults: character columns become factors with sorted levels.
    out = {}
    for c in frame.columns:
        col = frame[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            out[c] = col.cat.remove_unused_categories()
        elif pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            out[c] = pd.Series(_as_factor(col.astype(str)), index=col.index)
        elif pd.api.types.is_bool_dtype(col):
            out[c] = col.astype(np.float64)
        else:
            out[c] = col
    return pd.DataFrame(out, index=frame.index), n_dropped


def _model_matrix(expr: str, data: pd.DataFrame, what: str):
    from formulaic import model_matrix

    try:
        mm = model_matrix(expr, data, na_action="raise")
    except Exception as exc:
        raise _formulaic_error(exc, what, data.columns) from None
    return mm


def drop_collinear(X: np.ndarray, names: tuple[str, ...], tol: float = 1e-7):
    """Keep a maximal set of linearly independent columns, in order.

    A column is dropped when its residual after projection on the columns
    kept before it is below ``tol`` relative to its norm (lme4 drops
    columns by a pivoted QR; on ties both keep the earlier columns).
    Returns (X kept, names kept, names dropped).
    """
    scale = np.sqrt((X**2).sum(axis=0))
    scale[scale == 0] = 1.0
    Xs = X / scale
    keep: list[int] = []
    Q = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        v = Xs[:, j] - Q @ (Q.T @ Xs[:, j])
        v = v - Q @ (Q.T @ v)
        nv = np.linalg.norm(v)
        if nv > tol and np.linalg.norm(X[:, j]) > 0:
            keep.append(j)
            Q = np.column_stack([Q, v / nv])
    dropped = tuple(n for j, n in enumerate(names) if j not in keep)
    return X[:, keep], tuple(names[j] for j in keep), dropped


def _response(data: pd.DataFrame, response: str) -> np.ndarray:
    if response in data.columns:
        col = data[response]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)) or isinstance(
            col.dtype, pd.CategoricalDtype
        ):
            raise DataError(
                f"The response '{response}' is not numeric (dtype {col.dtype}); "
                "a linear mixed model needs a numeric response."
            )
        return col.to_numpy(dtype=np.float64)
    mm = _model_matrix(f"{response} ~ 1", data, f"the response '{response}'")
    lhs = mm.lhs
    if lhs.shape[1] != 1:
        raise DataError(f"The response '{response}' is not a single numeric column.")
    return np.asarray(lhs, dtype=np.float64)[:, 0]


def _term_design(term: RandomTerm, data: pd.DataFrame, n: int) -> TermDesign:
    what = f"the random-effect term ({term.expr} | {term.name})"
    mm = _model_matrix(term.expr, data, what)
    Xm = np.asarray(mm, dtype=np.float64)
    if Xm.ndim != 2 or Xm.shape[1] == 0:
        raise FormulaError(f"The random-effect term ({term.expr} | {term.name}) has no columns.")
    colnames = tuple(lme4_name(c) for c in mm.columns)
    codes, levels = group_codes(data, term.factors)
    nl = len(levels)
    if nl < 2:
        raise DataError(
            f"Grouping factor '{term.name}' has only {nl} level: a random effect needs at least "
            "two groups. Drop the term or use the factor as a fixed effect."
        )
    if nl >= n:
        raise DataError(
            f"Grouping factor '{term.name}' has {nl} levels for {n} observations: the number of "
            "levels of each grouping factor must be less than the number of observations, or "
            "the random effect cannot be told apart from the residual."
        )
    return TermDesign(
        name=term.name,
        factors=term.factors,
        expr=term.expr,
        colnames=colnames,
        levels=levels,
        codes=codes,
        X=Xm,
    )


def _check_slopes_vary(t: TermDesign) -> None:
    """A slope column must vary within some level, else it is confounded with the intercept."""
    constant = np.ptp(t.X, axis=0) == 0
    if t.k < 2 or not constant.any():
        return
    counts = np.bincount(t.codes, minlength=t.nlevels)
    for j, name in enumerate(t.colnames):
        col = t.X[:, j]
        if constant[j]:
            continue
        mean = np.bincount(t.codes, weights=col, minlength=t.nlevels) / np.maximum(counts, 1)
        if np.allclose(col, mean[t.codes], rtol=0, atol=1e-12 * (1 + np.abs(col).max())):
            raise DataError(
                f"In the random-effect term ({t.expr} | {t.name}), column '{name}' does not vary "
                f"within any level of '{t.name}', so its random effect cannot be told apart "
                f"from the others; drop '{name}' from the term or use a separate term "
                f"(1 | {t.name})."
            )


def build_design(formula, data) -> Design:
    """Parse ``formula`` and build the model matrices from ``data``.

    Raises FormulaError for unknown columns or bad terms, DataError for
    unusable data; rows with missing values in used columns are dropped.
    """
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    if isinstance(data, dict):
        data = pd.DataFrame(data)
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame (or a dict of columns), not {type(data).__name__}.")
    used = _required(f"{parsed.response} ~ {parsed.fixed}", "the fixed-effect formula")
    _check_columns(used, data, "the formula")
    for t in parsed.random:
        tvars = _required(t.expr, f"the random-effect term ({t.expr} | {t.name})")
        _check_columns(tvars | set(t.factors), data, f"the random-effect term ({t.expr} | {t.name})")
        used |= tvars | set(t.factors)
    frame, n_dropped = _prepare(data, used)
    n = len(frame)
    y = _response(frame, parsed.response)
    mm = _model_matrix(f"1 ~ {parsed.fixed}" if parsed.fixed else "1 ~ 1", frame, "the fixed-effect model matrix")
    X = np.asarray(mm.rhs, dtype=np.float64)
    names = tuple(lme4_name(c) for c in mm.rhs.columns)
    X, names, dropped = drop_collinear(X, names)
    if dropped:
        warnings.warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column(s): "
            f"{', '.join(dropped)}.",
            RankDeficiencyWarning,
            stacklevel=3,
        )
    if n <= X.shape[1]:
        raise DataError(f"{n} observations are too few for {X.shape[1]} fixed-effect columns.")
    if np.ptp(y) == 0:
        raise DataError(
            f"The response '{parsed.response}' is constant ({y[0]:g}); there is no variation to model."
        )
    terms = [_term_design(t, frame, n) for t in parsed.random]
    for t in terms:
        _check_slopes_vary(t)
    order = sorted(range(len(terms)), key=lambda i: -terms[i].nlevels)
    terms = tuple(terms[i] for i in order)
    return Design(
        formula=parsed,
        response=parsed.response,
        y=y,
        X=X,
        fixed_names=names,
        dropped_columns=dropped,
        terms=terms,
        n_dropped=n_dropped,
        rows=np.asarray(frame.index),
    )
