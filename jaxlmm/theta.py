"""theta, the variance parameters the criteria are minimized over: its layout, bounds, start and names.

Each random-effect term m with k_m columns has a lower-triangular relative
covariance factor T_m (Sigma_m = sigma^2 T_m T_m'); theta lists the lower
triangles column by column, term after term (lme4's ``Lind``). Everything
that depends only on that layout lives here: which entry is where
(:func:`theta_layout`), the bounds and lme4's start, T_m from theta (for
JAX: :func:`relative_factors`; for many replicates at once in numpy:
:func:`factors_batch`), the sign convention that makes each diagonal
non-negative (:func:`canonical_theta`), the per-entry scales the optimizer
works in (:func:`theta_scales`) and lme4's names of the entries.

``term_dims`` is the sequence of (levels, columns) of the terms, in the
order of the cross-products (:class:`jaxlmm.crossprod.CrossProducts`);
only the column counts matter here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class TermTheta(NamedTuple):
    """Where one term's theta entries sit in its k x k factor: ``rows[i]``, ``cols[i]`` of entry i."""

    rows: np.ndarray
    cols: np.ndarray


def theta_layout(term_dims) -> list[TermTheta]:
    """Per term, the (row, col) of each theta entry: lower triangle, column-wise (lme4)."""
    out = []
    for _, k in term_dims:
        rows = np.concatenate([np.arange(j, k) for j in range(k)])
        cols = np.concatenate([np.full(k - j, j) for j in range(k)])
        out.append(TermTheta(rows, cols))
    return out


def dims_of(terms) -> list[tuple[int, int]]:
    """``term_dims`` of design terms (anything with ``nlevels`` and ``k``)."""
    return [(t.nlevels, t.k) for t in terms]


def n_theta(term_dims) -> int:
    """The number of theta entries: k (k + 1) / 2 per term."""
    return sum(k * (k + 1) // 2 for _, k in term_dims)


def theta_lower_bounds(term_dims) -> np.ndarray:
    """0 for diagonal entries of each relative factor, -inf below the diagonal."""
    return np.concatenate(
        [np.where(r == c, 0.0, -np.inf) for r, c in theta_layout(term_dims)] or [np.zeros(0)]
    )


def theta_start(term_dims) -> np.ndarray:
    """lme4's start: identity relative factors."""
    return np.concatenate(
        [np.where(r == c, 1.0, 0.0) for r, c in theta_layout(term_dims)] or [np.zeros(0)]
    )


MOMENT_RANGE = (0.1, 10.0)
"""The range :func:`moment_start`'s entries are clipped to."""


def moment_start(design, start: np.ndarray) -> np.ndarray:
    """``start`` with the entry of every scalar term (one column x: ``(1 | g)``, ``(0 + x | g)``)
    replaced by a method-of-moments estimate of sigma_m / sigma, clipped to :data:`MOMENT_RANGE`.

    From the (prior-weighted) least-squares residuals e of the fixed effects, per level j of the
    term: S_j = sum x_i e_i and X_j = sum x_i^2. Were e_i = x_i b_j + noise of variance s^2,
    E[sum S_j^2] = sigma_m^2 sum X_j^2 + s^2 sum X_j; s^2 is taken as the residual variance
    (which includes the term: the estimate errs low). sigma^2 is the residual variance less the
    terms' shares (at least a tenth of it). A start for fits whose iterations are costly (large
    crossed terms); ``start`` where the residuals carry no information (no variance left).
    """
    y, X = design.weighted(design.y_net), design.weighted(design.X)
    e = y - X @ design.least_squares()
    total = float(e @ e) / max(len(e) - X.shape[1], 1)
    if not np.isfinite(total) or total <= 1e-20 * float(y @ y) / max(len(y), 1):  # fitted to rounding
        return np.asarray(start, dtype=np.float64)
    shares = []
    for t in design.terms:
        if t.k != 1:
            shares.append(None)
            continue
        x = design.weighted(t.X[:, 0])
        S = np.bincount(t.codes, weights=x * e, minlength=t.nlevels)
        Xj = np.bincount(t.codes, weights=x * x, minlength=t.nlevels)
        var = (float(S @ S) - total * float(Xj.sum())) / max(float(Xj @ Xj), 1e-300)
        shares.append((max(var, 0.0), float(np.mean(x * x))))
    sigma2 = max(total - sum(v * m for v, m in filter(None, shares)), 0.1 * total)
    out = np.array(start, dtype=np.float64)
    first = np.cumsum([0] + [len(lay.rows) for lay in theta_layout(dims_of(design.terms))])
    for i, share in zip(first, shares):
        if share is not None:
            out[i] = np.clip(np.sqrt(share[0] / sigma2), *MOMENT_RANGE)
    return out


def relative_factors(theta, term_dims) -> list[jax.Array]:
    """The lower-triangular k x k relative covariance factor T_m of each term (JAX, differentiable)."""
    out, i = [], 0
    for (rows, cols), (_, k) in zip(theta_layout(term_dims), term_dims):
        m = len(rows)
        # a product with a constant 0/1 matrix, not a scatter: cheaper to batch and differentiate
        place = np.zeros((k * k, m))
        place[rows * k + cols, np.arange(m)] = 1.0
        out.append((jnp.asarray(place, dtype=theta.dtype) @ theta[i : i + m]).reshape(k, k))
        i += m
    return out


def factors_batch(theta, term_dims) -> list[np.ndarray]:
    """T_m of every row of ``theta`` (B, n_theta) in numpy: arrays (B, k_m, k_m)."""
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    out, lo = [], 0
    for (rows, cols), (_, k) in zip(theta_layout(term_dims), term_dims):
        T = np.zeros((theta.shape[0], k, k))
        T[:, rows, cols] = theta[:, lo : lo + len(rows)]
        lo += len(rows)
        out.append(T)
    return out


def theta_columns(term_dims) -> np.ndarray:
    """For each theta entry, the index of the diagonal entry of its column (see ``optimize.column_flip``)."""
    out, i = [], 0
    for rows, cols in theta_layout(term_dims):
        diag_pos = np.array([np.flatnonzero((rows == c) & (cols == c))[0] for c in cols])
        out.append(i + diag_pos)
        i += len(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def canonical_theta(x, term_dims):
    """Multiply each column of every relative factor by the sign of its diagonal.

    Lambda Lambda' is unchanged, so the criterion is too; the result has a
    non-negative diagonal (lme4's parameterization).
    """
    return x * jnp.where(x[theta_columns(term_dims)] < 0, -1.0, 1.0)


def theta_scales(terms, weights=None) -> np.ndarray:
    """Per theta entry, a power of ten w that brings the entry to the scale of the criterion.

    Theta entry (r, c) of a term multiplies the term's column r (its
    relative factor T is applied as X_term T), so a column measured in
    units c times larger has entries c times smaller. Optimizing over
    phi = theta * w, with w = 10^round(log10 rms(column r)), is the fit of
    columns rescaled to unit size: the criterion's minimizer is unchanged
    and the optimizer sees a well-scaled problem. Columns whose RMS lies
    within 10^(+-1.5) keep w = 1. ``terms``: the design's terms (their
    columns ``X``); ``weights``: the prior weights, whose square roots scale
    the columns in the criterion (constant weights c make theta 1/sqrt(c)
    times its unweighted value).
    """
    out = []
    sw = None if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64))[:, None]
    for t, (rows, _) in zip(terms, theta_layout(dims_of(terms))):
        X = t.X if sw is None else t.X * sw
        rms = np.sqrt((X**2).mean(axis=0))
        power = np.round(np.log10(np.where(rms > 0, rms, 1.0)))
        out.append(10.0 ** np.where(np.abs(power) >= 2, power, 0.0)[rows])
    return np.concatenate(out) if out else np.zeros(0)


SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on theta


def is_singular(theta, terms, lower, tolerance: float = SINGULAR_TOL, weights=None) -> bool:
    """lme4's isSingular: an entry of theta with a lower bound of 0 (a diagonal entry of a relative
    factor) below ``tolerance``, on theta in the units of the optimizer (:func:`theta_scales`)."""
    scales = theta_scales(terms, weights)
    return bool(np.any((np.asarray(theta) * scales)[np.asarray(lower) == 0] < tolerance))


def term_group_names(terms) -> list[str]:
    """lme4's labels of the terms in VarCorr: repeated factors get '.1', '.2', ..."""
    seen: dict[str, int] = {}
    out = []
    for t in terms:
        c = seen.get(t.name, 0)
        out.append(t.name if c == 0 else f"{t.name}.{c}")
        seen[t.name] = c + 1
    return out


def theta_names(terms) -> list[str]:
    """lme4's names of theta: 'Subject.(Intercept)', 'Subject.Days.(Intercept)', ..."""
    out = []
    for grp, t, (rows, cols) in zip(term_group_names(terms), terms, theta_layout(dims_of(terms))):
        for r, c in zip(rows, cols):
            out.append(f"{grp}.{t.colnames[r]}" if r == c else f"{grp}.{t.colnames[r]}.{t.colnames[c]}")
    return out
