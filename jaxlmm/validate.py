"""Checks of user input, each raising a :class:`~jaxlmm.errors.JaxLMMError` that names the culprit.

The rules follow lme4's checks in ``lFormula`` / ``lmerControl`` (Bates et
al., JSS 2015, section 2.5; lme4's ``checkNlevels`` and ``checkZdims``), made
explicit:

- a grouping factor needs at least two levels and fewer levels than
  observations (``check.nlev.gtr.1``, ``check.nobs.vs.nlev``);
- a term needs fewer random effects than observations, l k < n
  (``check.nobs.vs.nRE``);
- the response must be numeric and not constant
  (``check.response.not.const``);
- every value that enters the cross-products must be finite and small
  enough that its square is (lme4 stops with "NA/NaN/Inf in 'x'").

One rule goes beyond lme4, which fits such a model and usually ends on the
boundary: the covariance matrix of a term must be identifiable from the
data (:func:`check_identifiable`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError, JaxLMMError, closest_name

# |values| beyond this overflow (or, below its inverse, underflow) when squared and summed
_HUGE = 1e150


def as_frame(data) -> pd.DataFrame:
    """The data as a DataFrame (a dict of equal-length columns is accepted), with rows."""
    if isinstance(data, dict):
        try:
            data = pd.DataFrame(data)
        except ValueError as exc:
            raise DataError(f"Cannot make a data frame of the dict of columns: {exc}") from None
    if not isinstance(data, pd.DataFrame):
        raise DataError(
            f"data must be a pandas DataFrame (or a dict of columns), not {type(data).__name__}."
        )
    if len(data) == 0:
        raise DataError("The data frame has no rows.")
    if not all(isinstance(c, str) for c in data.columns):  # R's names are text: column 1 is `1`
        data = data.set_axis([str(c) for c in data.columns], axis=1)
    return data


def check_unique_columns(data: pd.DataFrame, used) -> None:
    """Each column the formula uses appears once in the data."""
    dup = data.columns[data.columns.duplicated()]
    for c in sorted({str(c) for c in dup if c in used}):
        raise DataError(
            f"Column '{c}' appears more than once in the data; rename or drop the copies."
        )


def check_column_types(frame: pd.DataFrame) -> None:
    """Every used column is numeric, boolean or categorical/text, and not all missing.

    Infinite numbers are refused (lme4: "NA/NaN/Inf in 'x'"): dropping them
    like missing values would hide a data error.
    """
    for c in frame.columns:
        col = frame[c]
        kind = getattr(col.dtype, "kind", "O")
        if kind in "mMc":
            what = {"m": "a time-difference", "M": "a date/time", "c": "a complex"}[kind]
            hint = " (e.g. days since a start date)" if kind in "mM" else ""
            raise DataError(
                f"Column '{c}' is {what} column (dtype {col.dtype}); convert it to real "
                f"numbers{hint} or to a categorical before fitting."
            )
        if col.isna().all():
            raise DataError(f"Column '{c}' has only missing values.")
        if kind == "O" and not isinstance(col.dtype, pd.CategoricalDtype):
            values = col.dropna().to_numpy()
            if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                   for v in values):
                raise DataError(
                    f"Column '{c}' holds numbers in an object column (dtype object): convert it with "
                    "pandas.to_numeric for a numeric variable, or with .astype(str) for a factor."
                )
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isinf(vals).any():
                raise DataError(
                    f"Column '{c}' has {int(np.isinf(vals).sum())} infinite value(s); "
                    "remove or recode them before fitting."
                )


def check_response_type(data: pd.DataFrame, response: str) -> None:
    """The response column, when it is a plain column, is numeric (bool counts as 0/1)."""
    if response not in data.columns:
        return
    col = data[response]
    numeric = pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
    if not numeric or isinstance(col.dtype, pd.CategoricalDtype):
        raise DataError(
            f"The response '{response}' is not numeric (dtype {col.dtype}); a linear mixed model "
            "needs a numeric response (convert text numbers with pandas.to_numeric)."
        )


def check_values(values: np.ndarray, names, what: str, small_ok: bool = False) -> None:
    """The columns of ``values`` (after evaluating the formula) are finite and of usable size.

    A transform such as ``log(x)`` of a zero or negative value gives -inf or
    NaN; values beyond 1e150 overflow the cross-products, and a column whose
    values are all below 1e-150 (not all zero) underflows them (its squares
    are below float64's smallest normal number). ``small_ok``: tiny values
    are harmless (an offset is subtracted, never squared).
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    for j, name in enumerate(names):
        col = values[:, j]
        bad = ~np.isfinite(col)
        if bad.any():
            raise DataError(
                f"{what} '{name}' has {int(bad.sum())} non-finite value(s) (NaN or infinite) after "
                "evaluating the formula, e.g. the log of zero or of a negative number; "
                "transform or filter the data first."
            )
        big = np.max(np.abs(col), initial=0.0)
        if big > _HUGE:
            raise DataError(
                f"{what} '{name}' has values up to {big:.3g}, too large for float64 "
                "cross-products; rescale it (e.g. divide by a power of ten)."
            )
        if not small_ok and 0 < big < 1 / _HUGE:
            raise DataError(
                f"{what} '{name}' has values of at most {big:.3g} in size, too small for float64 "
                "cross-products (their squares underflow); rescale it (e.g. multiply by a power of ten)."
            )


def check_response_spread(y: np.ndarray, response: str) -> None:
    """The response varies, on a scale whose squares are normal float64 numbers."""
    spread = float(np.ptp(y))
    if spread == 0:
        raise DataError(
            f"The response '{response}' is constant ({y[0]:g}); there is no variation to model."
        )
    if spread < 1 / _HUGE:
        raise DataError(
            f"The response '{response}' varies by only {spread:.3g}, too little for float64 "
            "cross-products; rescale it (e.g. multiply by a power of ten)."
        )


def check_levels(name: str, nlevels: int, k: int, n: int) -> None:
    """lme4's rules per term: 2 <= levels < n and levels * columns < n."""
    if nlevels < 2:
        raise DataError(
            f"Grouping factor '{name}' has only {nlevels} level: a random effect needs at least "
            "two groups. Drop the term or use the factor as a fixed effect."
        )
    if nlevels >= n:
        raise DataError(
            f"Grouping factor '{name}' has {nlevels} levels for {n} observations: the number of "
            "levels of each grouping factor must be less than the number of observations, or "
            "the random effect cannot be told apart from the residual."
        )
    if nlevels * k >= n:
        raise DataError(
            f"The term with grouping factor '{name}' has {nlevels} x {k} = {nlevels * k} random "
            f"effects for {n} observations: the number of random effects of a term must be less "
            "than the number of observations, or the variance components and the residual "
            "variance cannot be told apart. Use fewer columns in the term."
        )


def _level_grams(X: np.ndarray, codes: np.ndarray, nlevels: int) -> np.ndarray:
    """X_j'X_j for every level j: shape (levels, k, k)."""
    k = X.shape[1]
    out = np.empty((nlevels, k, k))
    for a in range(k):
        for b in range(k):
            out[:, a, b] = np.bincount(codes, weights=X[:, a] * X[:, b], minlength=nlevels)
    return out


def _sym_products(W: np.ndarray) -> np.ndarray:
    """Rows vech(w_a w_b' + w_b w_a') for all pairs of columns a <= b of W (k x r)."""
    k, r = W.shape
    iu = np.triu_indices(k)
    rows = []
    for a in range(r):
        for b in range(a, r):
            S = np.outer(W[:, a], W[:, b])
            rows.append((S + S.T)[iu])
    return np.array(rows).reshape(-1, len(iu[0]))


def identifiable(X: np.ndarray, codes: np.ndarray, nlevels: int) -> bool:
    """Whether the k x k covariance Sigma of a term is determined by the marginal covariances.

    The rows of level j have marginal covariance X_j Sigma X_j' (+ residual),
    so Sigma is identified iff no symmetric S != 0 has X_j S X_j' = 0 for all
    j. With W_j a basis of the row space of X_j, that holds iff the
    symmetric products sym(w w') of the W_j span all k(k+1)/2 symmetric
    matrices. It does at once when one level has X_j of full column rank
    (its slope columns vary within that level). It fails, for example, for a
    factor that is constant within every level, as ``(treatment | subject)``
    with ``treatment`` between subjects, since the levels show only as many
    distinct variances as there are treatments.
    """
    k = X.shape[1]
    scale = np.sqrt((X**2).mean(axis=0))
    if np.any(scale == 0):
        return False
    lam, Q = np.linalg.eigh(_level_grams(X / scale, codes, nlevels))
    tol = 1e-10 * np.maximum(lam[:, -1:], np.finfo(float).tiny)
    rank = (lam > tol).sum(axis=1)
    if np.any(rank == k):
        return True
    parts = [_sym_products(Q[j][:, k - r :]) for j, r in enumerate(rank) if r > 0]
    if not parts:
        return False
    M = np.vstack(parts)
    s = np.linalg.svd(M, compute_uv=False)
    return int((s > 1e-8 * s[0]).sum()) == k * (k + 1) // 2


def between_level_columns(X: np.ndarray, codes: np.ndarray, nlevels: int, names) -> list[str]:
    """The columns that are constant within every level (they vary only between levels)."""
    counts = np.maximum(np.bincount(codes, minlength=nlevels), 1)
    out = []
    for j, name in enumerate(names):
        col = X[:, j]
        mean = np.bincount(codes, weights=col, minlength=nlevels) / counts
        if np.allclose(col, mean[codes], rtol=0, atol=1e-12 * (1 + np.abs(col).max())):
            out.append(name)
    return out


def collinear_columns(X: np.ndarray, names, tol: float = 1e-6) -> list[str]:
    """The columns (scaled to unit size) in the near-null space of X: those of a linear dependence.

    Names the columns with a weight above 1e-3 in the right singular vector
    of the smallest singular value, when that value is below ``tol`` times
    the largest; [] otherwise.
    """
    X = np.asarray(X, dtype=np.float64)
    size = np.max(np.abs(X), axis=0)
    if X.shape[1] < 2 or np.any(size == 0):
        return []
    _, s, Vt = np.linalg.svd(X / size, full_matrices=False)
    if s[-1] > tol * s[0]:
        return []
    v = np.abs(Vt[-1])
    return [n for n, a in zip(names, v) if a > 1e-3 * v.max()]


def check_identifiable(X, codes, nlevels, colnames, expr: str, name: str) -> None:
    """Raise when the covariance matrix of the term ``(expr | name)`` is not identifiable."""
    if identifiable(X, codes, nlevels):
        return
    between = between_level_columns(X, codes, nlevels, colnames)
    slopes = [c for c in between if c != "(Intercept)"]
    if not slopes:
        collinear = collinear_columns(X, colnames)
        cols = ", ".join(f"'{c}'" for c in collinear or colnames)
        raise DataError(
            f"The covariance matrix of the random-effect term ({expr} | {name}) cannot be estimated: "
            f"the columns {cols} of the term are collinear (or nearly: linearly dependent up to "
            f"rounding) within the levels of '{name}', so their variances and covariances cannot be "
            f"told apart. Drop one of them from the term, or give them separate terms."
        )
    cols = ", ".join(f"'{c}'" for c in slopes)
    raise DataError(
        f"The covariance matrix of the random-effect term ({expr} | {name}) cannot be estimated: "
        f"{cols} do(es) not vary within the levels of '{name}', and the levels do not show "
        f"enough distinct patterns to separate the {len(colnames)} variances and their "
        f"covariances. Keep {cols} as fixed effect(s) and drop it from the term, "
        f"e.g. (1 | {name})."
    )


def as_theta(theta, size: int, what: str = "theta") -> np.ndarray:
    """A finite float64 vector of ``size`` entries (lme4's theta order), or a JaxLMMError."""
    try:
        arr = np.asarray(theta, dtype=np.float64)
    except (TypeError, ValueError):
        raise JaxLMMError(f"{what} must be a vector of {size} numbers, not {theta!r}.") from None
    if arr.shape != (size,):
        raise JaxLMMError(f"{what} must have {size} entries (lme4's theta order), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise JaxLMMError(f"{what} must be finite, got {arr.tolist()}.")
    return arr


INT_MAX = 2**31 - 1  # counts and sizes enter compiled programs as 32-bit integers


def check_positive_int(value, what: str) -> int:
    """A positive integer (an int, not a bool or a float) up to :data:`INT_MAX`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= INT_MAX:
        raise JaxLMMError(f"{what} must be a positive integer (at most {INT_MAX}), not {value!r}.")
    return int(value)


def check_max_iter(max_iter) -> int:
    """A positive integer number of optimizer iterations."""
    return check_positive_int(max_iter, "max_iter")


# ---- arguments of the public functions ----------------------------------------------

SEED_MAX = 2**63 - 1


def check_seed(seed, what: str = "seed") -> int:
    """A random seed: an integer in 0 .. 2**63 - 1; ``None`` draws one at random (from the OS).

    The seed drawn for ``None`` is returned, so that callers record it on
    their result and the draw can be repeated.
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy % (SEED_MAX + 1))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise JaxLMMError(
            f"{what} must be an integer in 0 .. 2**63 - 1 (or None for a random seed), "
            f"not {seed!r} ({type(seed).__name__})."
        )
    if not 0 <= int(seed) <= SEED_MAX:
        raise JaxLMMError(
            f"{what} must be an integer in 0 .. 2**63 - 1 (or None for a random seed), not {int(seed)}."
        )
    return int(seed)


def check_level(level, what: str = "level") -> float:
    """A confidence level: a real number strictly between 0 and 1."""
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.integer, np.floating)):
        raise JaxLMMError(f"{what} must be a number strictly between 0 and 1, not {level!r} ({type(level).__name__}).")
    if not 0 < float(level) < 1:  # NaN fails too
        raise JaxLMMError(f"{what} must lie strictly between 0 and 1, not {level!r}.")
    return float(level)


def check_bool(value, what: str) -> bool:
    """``value`` as a bool; anything else (the string "False", 0.5, None) is an error."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise JaxLMMError(f"{what} must be True or False, not {value!r} ({type(value).__name__}).")


def check_count(value, what: str) -> int:
    """A positive whole number (an int, or a float with an integral value)."""
    ok = isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not np.isfinite(value) or int(value) != value or value < 1:
        raise JaxLMMError(f"{what} must be a positive integer, not {value!r}.")
    return int(value)


def check_names(which, names, what: str = "which") -> list[str]:
    """``which`` (a name or a list of names) as a list of names among ``names``; None: all."""
    names = list(names)
    if which is None:
        return names
    if isinstance(which, str):
        which = [which]
    elif isinstance(which, (list, tuple, np.ndarray, pd.Index)):
        which = list(which)
    else:
        raise JaxLMMError(
            f"{what} must be a parameter name or a list of names, not {which!r} ({type(which).__name__})."
        )
    bad = [w for w in which if not isinstance(w, str) or w not in names]
    if bad:
        raise JaxLMMError(
            f"No parameter {bad[0]!r} ({what}=);{closest_name(bad[0], names)} the parameters are {names}."
        )
    return which
