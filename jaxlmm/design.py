"""From a parsed formula and a data frame to model matrices and group codes.

The fixed-effect matrix X and each random-effect term's per-row matrix are
built by :mod:`jaxlmm.terms` (the formula read as data, never executed),
which also keeps how to build them again for new data; a term's Z is never formed: it is represented by integer
group codes (one per row) and the term's few columns, as lme4's ``mkReTrms``
does with its sparse ``Zt`` (Bates et al., JSS 2015, section 2.3).

Terms are sorted by decreasing number of levels (a stable sort, as lme4),
so that the first term, whose block of Z'Z is block diagonal, is the largest.

Rows with a missing value in a used column are dropped, counted
(``Design.n_dropped``) and warned about (lme4's ``na.omit``, made visible);
so are rows with a prior weight of zero (``weights=``);
collinear fixed-effect columns are dropped with a warning naming them
(lme4's ``check.rankX``); everything else that cannot be fitted raises,
by the rules of :mod:`jaxlmm.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import (
    DataError,
    FormulaError,
    MissingDataWarning,
    RankDeficiencyWarning,
    JaxLMMWarning,
    closest_name,
    warn,
)
from .formula import ParsedFormula, RandomTerm, parse_formula
from .terms import (
    Encoding, Evaluator, TermList, encode, expand_terms, level_text, names_in, numeric_levels, parse, unique_names,
    vet,
)
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
    spec: Encoding | None = None  # how the columns are built (for new data)

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
    fixed_spec: Encoding | None = None  # how X is built (for new data)
    offset: np.ndarray | None = None  # known part of the mean (zeros without an offset)
    offset_arg: str | None = None  # the offset= argument: its text, "numbers", or None
    weights: np.ndarray | None = None  # prior weights w_i > 0 (residual variance sigma^2 / w_i); None: all 1
    weights_arg: str | None = None  # the weights= argument: its text, "numbers", or None

    def fixed_mean(self, beta) -> np.ndarray:
        """X beta plus the offset: the population-level mean of the rows."""
        out = self.X @ np.asarray(beta)
        return out if self.offset is None else out + self.offset

    @property
    def y_net(self) -> np.ndarray:
        """The response less the offset: what X beta + Z b models."""
        return self.y if self.offset is None else self.y - self.offset

    @property
    def prior_weights(self) -> np.ndarray:
        """The prior weights of the rows (ones without weights=)."""
        return np.ones(len(self.y)) if self.weights is None else self.weights

    def weighted(self, a) -> np.ndarray:
        """The rows of ``a`` (the response, X, or a term's columns) times sqrt(w_i), as float64: what
        the criterion's cross-products are sums of (``a`` itself without weights)."""
        a = np.asarray(a, dtype=np.float64)
        sw = self.sqrt_weights
        return a if sw is None else a * (sw if a.ndim == 1 else sw[:, None])

    @property
    def sqrt_weights(self) -> np.ndarray | None:
        """sqrt(w_i): the factor each row of [Z X y] is scaled by in the cross-products (None: unweighted)."""
        return None if self.weights is None else np.sqrt(self.weights)

    @property
    def log_det_weights(self) -> float:
        """sum_i log w_i (lme4's ``ldW``), 0 without weights: the criteria subtract it."""
        return 0.0 if self.weights is None else float(np.sum(np.log(self.weights)))

    def least_squares(self) -> np.ndarray:
        """The least-squares coefficients of the response (less its offset) on X, with the prior
        weights, refined once on the residual (zeros without columns)."""
        X = self.weighted(self.X)
        if X.shape[1] == 0 or X.shape[0] == 0:
            return np.zeros(X.shape[1])
        y = self.weighted(self.y_net)
        beta = np.linalg.lstsq(X, y, rcond=None)[0]
        return beta + np.linalg.lstsq(X, y - X @ beta, rcond=None)[0]

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def p(self) -> int:
        return self.X.shape[1]


def _check_columns(names, data: pd.DataFrame, what: str) -> None:
    for name in sorted(names):
        if name not in data.columns:
            raise FormulaError(f"Column '{name}' used in {what} is not in the data.{closest_name(name, data.columns)}")


def _as_factor(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """R's factor(): (codes, labels); a Categorical keeps its order (unused levels dropped), others
    sort; floats that print alike are one level (:func:`jaxlmm.terms.numeric_levels`)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        fac = col.cat.remove_unused_categories().array
        return np.asarray(fac.codes, dtype=np.int64), np.array([level_text(v) for v in fac.categories], dtype=object)
    values = col.to_numpy()
    if values.dtype.kind == "f":
        codes, labels = numeric_levels(values)
        return codes, np.array(labels, dtype=object)
    levels, codes = np.unique(values, return_inverse=True)
    return codes.ravel().astype(np.int64), np.array([level_text(v) for v in levels], dtype=object)


def group_codes(data: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and labels of the interaction of ``factors``.

    Levels are the observed combinations ordered with the first factor
    varying slowest (R's ``a:b`` on factors, unused levels dropped).
    """
    codes, labels = None, None
    for name in factors:
        c, lab = _as_factor(data[name])
        if codes is None:
            codes, labels = c, lab
        else:
            combined = codes * len(lab) + c
            uniq, codes = np.unique(combined, return_inverse=True)
            labels = np.array(
                [f"{labels[u // len(lab)]}:{lab[u % len(lab)]}" for u in uniq], dtype=object
            )
    return codes.astype(np.int64), labels


def _drop_missing(data: pd.DataFrame, used: set[str], extra=None) -> tuple[pd.DataFrame, int, np.ndarray]:
    """The columns in use, rows with a missing value dropped (counted, warned; lme4's na.omit).

    ``extra``: ``{argument: numbers per row}`` (a numeric offset= or weights=) whose
    missing values drop rows too.
    Returns the frame, the number of rows dropped and the mask of rows kept. (Each column in ``used``
    appears once: :func:`_build_design` checked it first.)
    """
    cols = [c for c in data.columns if c in used]
    frame = data[cols]
    check_column_types(frame)
    missing = frame.isna()
    keep = ~missing.any(axis=1).to_numpy()
    bad = [f"'{c}' ({int(missing[c].sum())})" for c in cols if missing[c].any()]
    for arg, values in (extra or {}).items():
        if values is not None and np.isnan(values).any():
            keep &= ~np.isnan(values)
            bad.append(f"{arg} ({int(np.isnan(values).sum())})")
    n_dropped = int((~keep).sum())
    bad = ", ".join(bad)
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
    return frame[keep], n_dropped, keep


def _prepare(data: pd.DataFrame, used: set[str], extra=None) -> tuple[pd.DataFrame, int, np.ndarray]:
    """Rows with missing values dropped, then R's column conversions."""
    frame, n_dropped, keep = _drop_missing(data, used, extra)
    # R's defaults: character columns become factors with sorted levels.
    out = {}
    for c in frame.columns:
        col = frame[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            out[c] = col.cat.remove_unused_categories()
        elif pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            text = col.astype(str).to_numpy()
            out[c] = pd.Series(pd.Categorical(text, categories=np.unique(text)), index=col.index)
        else:
            out[c] = col
    return pd.DataFrame(out, index=frame.index), n_dropped, keep


def drop_collinear(X: np.ndarray, tol: float = 1e-7) -> tuple[list[int], list[int]]:
    """Keep a maximal set of linearly independent columns, in order.

    A column is dropped when its residual after projection on the columns
    before it is below ``tol`` relative to its norm: |R_jj| of the QR
    decomposition of the columns scaled to unit norm (one LAPACK call; lme4
    drops columns by a pivoted QR; on ties both keep the earlier columns).
    Returns the indices of the columns kept and of those dropped.
    """
    norms = np.sqrt((X**2).sum(axis=0))
    p = X.shape[1]
    if p == 0:
        return [], []
    R = np.linalg.qr(X / np.where(norms > 0, norms, 1.0), mode="r")
    resid = np.zeros(p)
    resid[: min(R.shape)] = np.abs(np.diagonal(R))
    keep = [j for j in range(p) if resid[j] > tol and norms[j] > 0]
    return keep, [j for j in range(p) if j not in keep]


def _response(data: pd.DataFrame, response: str) -> np.ndarray:
    """The response as float64: a numeric column, or an expression such as log(y)."""
    y = Evaluator(data, f"the response '{response}'").numeric(parse(response, "the response"))
    check_values(y, [response], "The response")
    check_response_spread(y, response)
    return y


def offset_nodes(parsed: ParsedFormula, text: str | None = None) -> list:
    """The trees of the formula's offset(...) terms and of a text offset= argument."""
    return list(_fixed_terms(parsed).offsets) + ([parse(text, "offset=")] if text is not None else [])


def offset_values(frame: pd.DataFrame, parsed: ParsedFormula, text: str | None = None, numbers=None) -> np.ndarray:
    """The offset of the rows of ``frame``: the formula's offset(...) terms, a text offset= evaluated on
    ``frame``, and numbers given per row (zeros without any)."""
    out = np.zeros(len(frame))
    for node in offset_nodes(parsed, text):
        out = out + Evaluator(frame, "the offset").numeric(node)
    if numbers is not None:
        out = out + numbers
    check_values(out, ["offset"], "The", small_ok=True)
    return out


def _fixed_terms(parsed: ParsedFormula) -> TermList:
    return expand_terms(parse(parsed.fixed, "the fixed-effect formula"), "the fixed-effect formula", parsed.fixed)


def _fixed_matrix(parsed: ParsedFormula, data: pd.DataFrame):
    """X with collinear columns dropped (warned, as lme4's check.rankX), and the names kept."""
    X, enc = encode(parsed.fixed, _fixed_terms(parsed), data, "the fixed-effect formula")
    names, renamed = unique_names(enc.names)
    if renamed:
        warn(
            "fixed-effect columns with the same name were renamed: "
            + ", ".join(f"'{a}' -> '{b}'" for a, b in renamed) + ".",
            JaxLMMWarning,
        )
    check_values(X, names, "The fixed-effect column")
    keep, dropped = drop_collinear(X)
    if dropped:
        warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column(s): "
            f"{', '.join(names[j] for j in dropped)}.",
            RankDeficiencyWarning,
        )
    X = X[:, keep]
    if len(data) <= X.shape[1]:
        raise DataError(f"{len(data)} observations are too few for {X.shape[1]} fixed-effect columns.")
    enc = enc.with_keep(keep, names)
    return X, enc.columns, tuple(names[j] for j in dropped), enc


def _term_design(term: RandomTerm, data: pd.DataFrame, n: int) -> TermDesign:
    """One term's columns and group codes, checked against lme4's rules (jaxlmm.validate)."""
    what = f"the random-effect term ({term.expr} | {term.name})"
    Xm, enc = encode(term.expr, expand_terms(parse(term.expr, what), what, term.expr), data, what)
    if Xm.shape[1] == 0:
        raise FormulaError(f"The random-effect term ({term.expr} | {term.name}) has no columns.")
    colnames, _ = unique_names(enc.names)
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
        spec=enc.with_keep(range(len(colnames)), colnames),
    )


def _used_columns(parsed: ParsedFormula, data: pd.DataFrame, offset, weights=None) -> set[str]:
    """The data columns the formula (and a text offset= or weights=) needs; an unknown name is a FormulaError."""
    columns = set(data.columns)
    used: set[str] = set()
    parts = [(parsed.response, "the response"), (parsed.fixed, "the fixed-effect formula")]
    parts += [(t.expr, f"the random-effect term ({t.expr} | {t.name})") for t in parsed.random]
    if isinstance(offset, str):
        parts.append((offset, "offset="))
    if isinstance(weights, str):
        parts.append((weights, "weights="))
    for text, what in parts:
        node = parse(text, what)
        vet(node, what, columns)
        used |= set(names_in(node, columns))
    for t in parsed.random:
        _check_columns(set(t.factors), data, f"the random-effect term ({t.expr} | {t.name})")
        used |= set(t.factors)
    return used


def _per_row_argument(value, n: int, name: str):
    """``offset=`` or ``weights=`` as given: None, the text of an expression in the columns, or n numbers."""
    if value is None:
        return None
    if isinstance(value, str):
        parse(value, f"{name}=")
        return value
    try:
        if np.iscomplexobj(value) or np.iscomplexobj(np.asarray(value)):
            raise TypeError
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"{name}= must be real numbers (one per row of the data) or the text of an expression."
        ) from None
    if arr.shape != (n,):
        raise DataError(f"{name}= has shape {arr.shape}; it needs one number per row of the data ({n}).")
    return arr


def _offset_argument(offset, n: int):
    """``offset=``: None, text, or n numbers, none of them infinite (NaN marks a missing value)."""
    arr = _per_row_argument(offset, n, "offset")
    if isinstance(arr, np.ndarray) and np.isinf(arr).any():
        raise DataError("offset= has infinite values.")
    return arr


def _weights_argument(weights, n: int):
    """``weights=``: None, text, or n numbers, finite and non-negative (NaN marks a missing weight: the
    row is dropped)."""
    arr = _per_row_argument(weights, n, "weights")
    if isinstance(arr, np.ndarray):
        _check_weights(arr[~np.isnan(arr)])
    return arr


def _check_weights(w: np.ndarray) -> None:
    """Prior weights are finite and non-negative (lme4: ``all(weights >= 0)``)."""
    if np.isinf(w).any() or np.isnan(w).any():
        raise DataError(f"weights= has {int((~np.isfinite(w)).sum())} non-finite value(s); prior weights are finite.")
    if (w < 0).any():
        raise DataError(
            f"weights= has {int((w < 0).sum())} negative value(s) (the smallest {w.min():.6g}); "
            "prior weights are non-negative."
        )
    if len(w) and w.max() > 1e150:
        raise DataError(f"weights= has values up to {w.max():.3g}, too large for float64 cross-products.")


def _weights(frame: pd.DataFrame, arg, kept: np.ndarray) -> np.ndarray | None:
    """The prior weights of the rows of ``frame``: the numbers given (rows kept) or the expression's values."""
    if arg is None:
        return None
    if isinstance(arg, str):
        w = Evaluator(frame, "weights=").numeric(parse(arg, "weights="))
        w = np.broadcast_to(np.asarray(w, dtype=np.float64), (len(frame),)).copy()
        _check_weights(w)
        return w
    return arg[kept]


def build_design(formula, data, offset=None, weights=None) -> Design:
    """Parse ``formula`` and build the model matrices from ``data``.

    ``offset``: a known term added with coefficient 1 (lme4's ``offset=``),
    as one number per row or the text of an expression in the columns; the
    formula's own ``offset(...)`` terms are added to it.
    ``weights``: prior weights w_i (lme4's ``weights=``), residual variance
    sigma^2 / w_i: one non-negative number per row or the text of an
    expression in the columns. Rows of weight zero are dropped (they carry
    no information; lme4 keeps them and reports an infinite criterion).
    Raises FormulaError for unknown columns or bad terms, DataError for
    unusable data (see :mod:`jaxlmm.validate`); rows with missing values in
    used columns (or in a numeric offset or weights) are dropped and counted.
    """
    try:
        return _build_design(formula, data, offset, weights)
    except RecursionError:
        raise FormulaError("The formula is too deeply nested to evaluate; build some columns in the data.") from None


def _drop_zero_weights(data: pd.DataFrame, used: set[str], kept: np.ndarray, w: np.ndarray):
    """The rows kept less those of weight zero (warned): the frame prepared again, the mask, the weights."""
    zero = w == 0
    if zero.all():
        raise DataError("weights= is zero for every row that is left; there is nothing to fit.")
    warn(f"{int(zero.sum())} row(s) with weight zero were dropped.", MissingDataWarning)
    kept = kept.copy()
    kept[np.flatnonzero(kept)[zero]] = False
    frame, _, _ = _prepare(data.iloc[np.flatnonzero(kept)], used)
    return frame, kept, w[~zero]


def _build_design(formula, data, offset, weights=None) -> Design:
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    data = as_frame(data)
    used = _used_columns(parsed, data, offset, weights)
    check_unique_columns(data, used)
    check_response_type(data, parsed.response)
    extra = _offset_argument(offset, len(data))
    numbers = extra is not None and not isinstance(extra, str)
    warg = _weights_argument(weights, len(data))
    wnumbers = warg is not None and not isinstance(warg, str)
    frame, n_dropped, kept = _prepare(
        data, used, {"offset=": extra if numbers else None, "weights=": warg if wnumbers else None}
    )
    w = _weights(frame, warg, kept)
    if w is not None and (w == 0).any():
        n_dropped += int((w == 0).sum())
        frame, kept, w = _drop_zero_weights(data, used, kept, w)
    n = len(frame)
    y = _response(frame, parsed.response)
    X, names, dropped, fixed_spec = _fixed_matrix(parsed, frame)
    off = offset_values(frame, parsed, None if numbers else extra, extra[kept] if numbers else None)
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
        offset=off,
        offset_arg=offset if isinstance(offset, str) else (None if offset is None else "numbers"),
        weights=w,
        weights_arg=weights if isinstance(weights, str) else (None if weights is None else "numbers"),
    )
