"""From a parsed formula and a data frame to model matrices and group codes.

The fixed-effect matrix X and each random-effect term's per-row matrix are
built by formulaic; a term's Z is never formed: it is represented by integer
group codes (one per row) and the term's few columns, as lme4's ``mkReTrms``
does with its sparse ``Zt`` (Bates et al., JSS 2015, section 2.3).

Terms are sorted by decreasing number of levels (a stable sort, as lme4),
so that the first term, whose block of Z'Z is block diagonal, is the largest.

Rows with a missing value in a used column are dropped, counted
(``Design.n_dropped``) and warned about (lme4's ``na.omit``, made visible);
collinear fixed-effect columns are dropped with a warning naming them
(lme4's ``check.rankX``); everything else that cannot be fitted raises,
by the rules of :mod:`jaxlmm.validate`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from .errors import (
    DataError,
    FormulaError,
    MissingDataWarning,
    RankDeficiencyWarning,
    closest_name,
    warn,
)
from .formula import ParsedFormula, RandomTerm, parse_formula
from .validate import (
    as_frame,
    check_column_types,
    check_identifiable,
    check_levels,
    check_response_spread,
    check_response_type,
    check_unique_columns,
    check_values,
)

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
    spec: object = None  # formulaic ModelSpec of the term's columns (for new data)

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
    fixed_spec: object = None  # formulaic ModelSpec of X (for new data)

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


def _unknown_name(name: str, what: str, columns, text: str = "") -> FormulaError:
    """'Column x is not in the data' (with the closest column), or 'unknown function x'."""
    dotted = re.search(rf"(?<![\w.]){re.escape(name)}\.[\w.]+", text)
    name = dotted.group(0) if dotted else name
    if re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", text):
        return FormulaError(
            f"'{name}' in {what} is neither a column of the data nor a function the formula "
            f"language knows (such as log, exp, sqrt, or I(...) for arithmetic)."
            f"{closest_name(name, columns)}"
        )
    return FormulaError(
        f"Column '{name}' used in {what} is not in the data.{closest_name(name, columns)}"
    )


def _formulaic_error(exc: Exception, what: str, columns, text: str = "") -> FormulaError:
    """Translate an exception of formulaic into a FormulaError naming the formula part."""
    msg = _ANSI.sub("", str(exc)).strip()
    missing = re.search(r"`([^`]+)` is not present", msg)
    if missing:
        return _unknown_name(missing.group(1), what, columns, text)
    where = f" '{text}'" if text else ""
    first = msg.splitlines()[0] if msg else type(exc).__name__
    return FormulaError(f"Cannot read {what}{where}: {first}")


@lru_cache(maxsize=512)
def _parsed(expr: str):
    """formulaic's parse of ``expr``, kept: the same formula is rebuilt for every dataset."""
    from formulaic import Formula

    return Formula(expr)


_TOKEN = re.compile(r"`([^`]+)`|(?<![A-Za-z0-9_.])([A-Za-z_.][A-Za-z0-9_.]*)(?![A-Za-z0-9_.]|\s*\()")


def _required(expr: str, what: str, columns) -> set[str]:
    """The variables ``expr`` needs: formulaic's list, plus the data columns named in it.

    formulaic leaves out the arguments of stateful transforms such as
    ``poly(x, 2)`` or ``center(x)``, and lists R-style dotted names
    ``my.x`` as ``my`` (it evaluates them as columns all the same); names
    followed by '(' are functions.
    """
    try:
        found = set(_parsed(expr).required_variables)
    except Exception as exc:
        raise _formulaic_error(exc, what, [], expr) from None
    names = {a or b for a, b in _TOKEN.findall(expr)}
    named = {c for c in columns if c in names}
    prefixes = {str(c).split(".")[0] for c in named if "." in str(c)}
    return (found - (prefixes - set(columns))) | named


def _check_columns(names, data: pd.DataFrame, what: str, text: str = "") -> None:
    for name in sorted(names):
        if name not in data.columns:
            raise _unknown_name(name, what, data.columns, text)


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


def _drop_missing(data: pd.DataFrame, used: set[str]) -> tuple[pd.DataFrame, int]:
    """The columns in use, rows with a missing value dropped (counted, warned; lme4's na.omit)."""
    check_unique_columns(data, used)
    cols = [c for c in data.columns if c in used]
    frame = data[cols]
    check_column_types(frame)
    missing = frame.isna()
    keep = ~missing.any(axis=1).to_numpy()
    n_dropped = int((~keep).sum())
    bad = ", ".join(f"'{c}' ({int(missing[c].sum())})" for c in cols if missing[c].any())
    if n_dropped == len(frame):
        raise DataError(
            f"No rows are left after dropping the rows with missing values; missing values per "
            f"column: {bad}."
        )
    if n_dropped:
        warn(
            f"{n_dropped} row(s) with missing values were dropped; missing values per column: {bad}.",
            MissingDataWarning,
        )
    return frame[keep], n_dropped


def _prepare(data: pd.DataFrame, used: set[str]) -> tuple[pd.DataFrame, int]:
    """Rows with missing values dropped, then R's column conversions."""
    frame, n_dropped = _drop_missing(data, used)
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
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            mm = model_matrix(_parsed(expr), data, na_action="ignore")  # non-finite values: check_values
    except Exception as exc:
        raise _formulaic_error(exc, what, data.columns, expr) from None
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
    """The response as float64: a numeric column, or an expression such as log(y)."""
    if response in data.columns:
        y = data[response].to_numpy(dtype=np.float64)
    else:
        lhs = _model_matrix(f"{response} ~ 1", data, f"the response '{response}'").lhs
        if lhs.shape[1] != 1:
            raise DataError(f"The response '{response}' is not a single numeric column.")
        y = np.asarray(lhs, dtype=np.float64)[:, 0]
    check_values(y, [response], "The response")
    check_response_spread(y, response)
    return y


def _fixed_matrix(parsed: ParsedFormula, data: pd.DataFrame):
    """X with collinear columns dropped (warned, as lme4's check.rankX), and the names kept."""
    mm = _model_matrix(f"1 ~ {parsed.fixed}", data, "the fixed-effect formula")
    names = tuple(lme4_name(c) for c in mm.rhs.columns)
    X = np.asarray(mm.rhs, dtype=np.float64).reshape(len(data), len(names))
    check_values(X, names, "The fixed-effect column")
    X, names, dropped = drop_collinear(X, names)
    if dropped:
        warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column(s): "
            f"{', '.join(dropped)}.",
            RankDeficiencyWarning,
        )
    if len(data) <= X.shape[1]:
        raise DataError(f"{len(data)} observations are too few for {X.shape[1]} fixed-effect columns.")
    return X, names, dropped, mm.rhs.model_spec


def _term_design(term: RandomTerm, data: pd.DataFrame, n: int) -> TermDesign:
    """One term's columns and group codes, checked against lme4's rules (jaxlmm.validate)."""
    what = f"the random-effect term ({term.expr} | {term.name})"
    mm = _model_matrix(term.expr, data, what)
    Xm = np.asarray(mm, dtype=np.float64)
    if Xm.ndim != 2 or Xm.shape[1] == 0:
        raise FormulaError(f"The random-effect term ({term.expr} | {term.name}) has no columns.")
    colnames = tuple(lme4_name(c) for c in mm.columns)
    check_values(Xm, colnames, f"In {what}, column")
    codes, levels = group_codes(data, term.factors)
    check_levels(term.name, len(levels), Xm.shape[1], n)
    check_identifiable(Xm, codes, len(levels), colnames, term.expr, term.name)
    return TermDesign(
        name=term.name,
        factors=term.factors,
        expr=term.expr,
        colnames=colnames,
        levels=levels,
        codes=codes,
        X=Xm,
        spec=mm.model_spec,
    )


def _used_columns(parsed: ParsedFormula, data: pd.DataFrame) -> set[str]:
    """The data columns the formula needs; an unknown name is a FormulaError."""
    fixed = f"{parsed.response} ~ {parsed.fixed}"
    used = _required(fixed, "the fixed-effect formula", data.columns)
    _check_columns(used, data, "the formula", fixed)
    for t in parsed.random:
        what = f"the random-effect term ({t.expr} | {t.name})"
        tvars = _required(t.expr, what, data.columns)
        _check_columns(tvars | set(t.factors), data, what, t.expr)
        used |= tvars | set(t.factors)
    return used


def build_design(formula, data) -> Design:
    """Parse ``formula`` and build the model matrices from ``data``.

    Raises FormulaError for unknown columns or bad terms, DataError for
    unusable data (see :mod:`jaxlmm.validate`); rows with missing values in
    used columns are dropped and counted.
    """
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    data = as_frame(data)
    used = _used_columns(parsed, data)
    check_response_type(data, parsed.response)
    frame, n_dropped = _prepare(data, used)
    n = len(frame)
    y = _response(frame, parsed.response)
    X, names, dropped, fixed_spec = _fixed_matrix(parsed, frame)
    terms = [_term_design(t, frame, n) for t in parsed.random]
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
        fixed_spec=fixed_spec,
    )


def theta_scales(terms) -> np.ndarray:
    """Per theta entry, a power of ten w that brings the entry to the scale of the criterion.

    Theta entry (r, c) of a term multiplies the term's column r (its
    relative factor T is applied as X_term T), so a column measured in
    units c times larger has entries c times smaller. Optimizing over
    phi = theta * w, with w = 10^round(log10 rms(column r)), is the fit of
    columns rescaled to unit size: the criterion's minimizer is unchanged
    and the optimizer sees a well-scaled problem. Columns whose RMS lies
    within 10^(+-1.5) keep w = 1.
    """
    from .objective import theta_layout

    out = []
    for t, (rows, _) in zip(terms, theta_layout([(t.nlevels, t.k) for t in terms])):
        rms = np.sqrt((t.X**2).mean(axis=0))
        power = np.round(np.log10(np.where(rms > 0, rms, 1.0)))
        out.append(10.0 ** np.where(np.abs(power) >= 2, power, 0.0)[rows])
    return np.concatenate(out) if out else np.zeros(0)
