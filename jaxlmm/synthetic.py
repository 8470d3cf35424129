"""Seeded synthetic data for benchmarks, with realistic imbalance.

Group sizes follow a power law, as ratings per user and per movie do
(Harper & Konstan, "The MovieLens datasets", ACM TiiS 2015): level i of a
factor with L levels holds about c (i + 1)^(-alpha) rows, clipped to the
fewest and most rows a level may have (the real data's bounds for the
MovieLens shapes; at least one row otherwise), with c chosen so that the
sizes add up to n; which level gets which size, and the order of the rows,
are random. Of two crossed factors, the first's sizes are exact and the
second's are drawn (by the same law) so that no pair of levels repeats, as
no user rates a movie twice. The response is simulated from the model itself,

    y = beta0 + sum_m b_m[g_m] + e,  b_m ~ N(0, sd_m^2),  e ~ N(0, sigma^2),

(with a random slope on ``x`` for :func:`random_slopes`), so the variance
components the fit should recover are known.

Shapes (rows, levels): :func:`movielens_1m` 1,000,209 rows, 6,040 users x
3,706 movies; :func:`movielens_10m` 10,000,054 rows, 69,878 x 10,677;
:func:`movielens_25m` 25,000,095 rows, 162,541 x 59,047;
:func:`slopes_1m` 1,000,000 rows, 10,000 groups with correlated random
intercepts and slopes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def power_law_sizes(n: int, levels: int, alpha: float, lo: int = 1, hi: int | None = None) -> np.ndarray:
    """Level sizes summing to ``n``: c (i + 1)^(-alpha) clipped to [lo, hi], c found by bisection.

    Without ``hi`` the largest level of a steep law can hold a large share of
    all rows; real rating data are bounded (MovieLens-1M: every user has at
    least 20 ratings and none more than about 2,300), so the generators of
    those shapes pass bounds.
    """
    hi = n if hi is None else hi
    if not levels * lo <= n <= levels * hi:
        raise ValueError(f"{levels} levels of {lo} to {hi} rows cannot hold n={n} rows")
    w = (np.arange(levels) + 1.0) ** (-alpha)
    a, b = 0.0, float(n) / w[-1]
    for _ in range(200):  # sum(clip(c w)) increases with c
        c = 0.5 * (a + b)
        a, b = (c, b) if np.clip(c * w, lo, hi).sum() < n else (a, c)
    sizes = np.floor(np.clip(b * w, lo, hi)).astype(np.int64)
    short = n - int(sizes.sum())  # rounding: add one row to the largest levels below hi
    room = np.flatnonzero(sizes < hi)
    sizes[room[: max(short, 0)]] += 1
    assert sizes.sum() == n
    return sizes


def power_law_codes(
    rng: np.random.Generator, n: int, levels: int, alpha: float, lo: int = 1, hi: int | None = None
) -> np.ndarray:
    """``n`` integer codes in [0, levels), sizes from :func:`power_law_sizes`, in random order."""
    if n < levels:
        raise ValueError(f"need at least one row per level: n={n} < levels={levels}")
    sizes = power_law_sizes(n, levels, alpha, lo, hi)
    perm = rng.permutation(levels)  # the big levels are not the first codes
    return rng.permutation(np.repeat(perm, sizes))


HEAVY_SHARE = 1 / 64
"""A first-factor level holding more than this share of the second factor's levels draws its partners
all at once (:func:`_heavy_partners`); the others draw and redraw repeats (:func:`distinct_partners`)."""


def _level_rows(g1: np.ndarray, sizes: np.ndarray):
    """Rows grouped by level (``sizes``: rows per level): (order, starts) with the rows of level j at
    order[starts[j]:starts[j + 1]]."""
    order = np.argsort(g1, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return order, starts


def _rows_of(order: np.ndarray, starts: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The rows of the given first-factor levels, vectorized (no loop over levels)."""
    lens = starts[levels + 1] - starts[levels]
    offsets = np.repeat(starts[levels] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return order[offsets + np.arange(int(lens.sum()))]


def _heavy_partners(rng, g2, order, starts, levels, levels2: int, logp: np.ndarray, block: int = 2**24) -> None:
    """Partners of the rows of heavy ``levels``, each level's drawn by the weights without repeats.

    The Gumbel top-k trick (Vieira 2014; the law of successive weighted draws without
    replacement, Efraimidis & Spirakis 2006): a level with m rows takes the m largest of
    log p + Gumbel noise over all partners, a block of levels at a time.
    """
    per = max(1, block // levels2)
    for lo in range(0, len(levels), per):
        chunk = levels[lo : lo + per]
        keys = logp - np.log(-np.log(rng.random((len(chunk), levels2))))
        for level, row in zip(chunk, keys):
            m = starts[level + 1] - starts[level]
            g2[order[starts[level] : starts[level + 1]]] = np.argpartition(-row, m - 1)[:m]


def distinct_partners(
    rng: np.random.Generator, g1: np.ndarray, levels2: int, weights: np.ndarray, rounds: int = 20
) -> np.ndarray:
    """For rows of first-factor levels ``g1``, second-factor codes with no (g1, g2) pair repeated.

    Codes follow ``weights``, without repeats within a level of g1. A level
    holding more than :data:`HEAVY_SHARE` of the ``levels2`` codes draws its
    codes at once (:func:`_heavy_partners`). The others draw with
    probabilities proportional to ``weights``, and the rows that repeat a
    pair are drawn again, ``rounds`` times by the weights and then uniformly;
    each round looks only at the levels that had a repeat. Vectorized: the
    MovieLens-25M shape (25 million rows) in seconds. Every level of g1 must
    hold at most ``levels2`` rows.
    """
    sizes = np.bincount(g1)
    if sizes.max(initial=0) > levels2:
        raise ValueError(f"a level holds more rows than there are {levels2} levels to pair with")
    p = np.asarray(weights, dtype=float) / np.sum(weights)
    order, starts = _level_rows(g1, sizes)
    heavy = sizes > HEAVY_SHARE * levels2
    g2 = np.zeros(len(g1), dtype=np.int64)
    _heavy_partners(rng, g2, order, starts, np.flatnonzero(heavy), levels2, np.log(p))
    active = np.flatnonzero(~heavy[g1])
    g2[active] = rng.choice(levels2, size=len(active), p=p)
    for r in range(10_000):
        _, first = np.unique(g1[active].astype(np.int64) * levels2 + g2[active], return_index=True)
        again = np.ones(len(active), dtype=bool)
        again[first] = False
        if not again.any():
            return g2
        redo = active[again]
        g2[redo] = rng.choice(levels2, size=len(redo), p=p) if r < rounds else rng.integers(0, levels2, len(redo))
        active = _rows_of(order, starts, np.unique(g1[redo]))
    raise RuntimeError("could not draw distinct pairs")  # pragma: no cover


def fill_missing(rng: np.random.Generator, g2: np.ndarray, levels2: int) -> np.ndarray:
    """Give each second-factor level that no row holds one row, taken from a level holding two or more.

    The rows are drawn uniformly among those of levels with at least two rows (so mostly from
    the largest), at most all but one of a level's rows; a (g1, g2) pair stays unique, since a
    missing level gets a single row.
    """
    counts = np.bincount(g2, minlength=levels2)
    missing = np.flatnonzero(counts == 0)
    if len(missing) == 0:
        return g2
    donors = np.flatnonzero(counts[g2] >= 2)
    if len(donors) < len(missing):
        raise ValueError(f"{len(missing)} levels have no row and too few rows can be moved to them")
    for _ in range(100):
        rows = rng.choice(donors, size=len(missing), replace=False)
        taken = np.bincount(g2[rows], minlength=levels2)
        if np.all((taken < counts) | (counts == 0)):  # no level gives all its rows
            g2 = g2.copy()
            g2[rows] = missing
            return g2
    raise RuntimeError("could not fill the missing levels")  # pragma: no cover


def crossed(
    n: int,
    levels: tuple[int, int],
    seed: int = 0,
    alpha: tuple[float, float] = (0.8, 1.0),
    sd: tuple[float, float] = (0.5, 0.3),
    sigma: float = 1.0,
    names: tuple[str, str] = ("user", "movie"),
    bounds: tuple = ((1, None), (1, None)),
) -> pd.DataFrame:
    """Two crossed factors with power-law sizes and ``rating = 3.5 + b1 + b2 + e``.

    ``bounds``: (fewest, most) rows per level of each factor. The first
    factor's sizes are exact (:func:`power_law_sizes`); the second factor's
    power-law sizes are the probabilities with which each row picks its level,
    with no pair of levels repeated (a user rates a movie once,
    :func:`distinct_partners`), so its sizes follow the law approximately. A
    level of the second factor that no row picked takes one row from a level
    holding several (:func:`fill_missing`).
    """
    rng = np.random.default_rng(seed)
    g1 = power_law_codes(rng, n, levels[0], alpha[0], *bounds[0])
    w2 = power_law_sizes(n, levels[1], alpha[1], *bounds[1])[rng.permutation(levels[1])]
    g2 = fill_missing(rng, distinct_partners(rng, g1, levels[1], w2), levels[1])
    b1 = rng.normal(0.0, sd[0], levels[0])
    b2 = rng.normal(0.0, sd[1], levels[1])
    y = 3.5 + b1[g1] + b2[g2] + rng.normal(0.0, sigma, n)
    return pd.DataFrame(
        {
            "rating": y,
            names[0]: pd.Categorical.from_codes(g1, [f"{names[0][0]}{i}" for i in range(levels[0])]),
            names[1]: pd.Categorical.from_codes(g2, [f"{names[1][0]}{i}" for i in range(levels[1])]),
        }
    )


def random_slopes(
    n: int, groups: int, seed: int = 0, alpha: float = 0.5, sd=(1.0, 0.3), corr: float = 0.3, sigma: float = 1.0
) -> pd.DataFrame:
    """``y = 1 + 0.5 x + b0[g] + b1[g] x + e`` with correlated (b0, b1), power-law group sizes."""
    rng = np.random.default_rng(seed)
    g = power_law_codes(rng, n, groups, alpha)
    cov = np.array([[sd[0] ** 2, corr * sd[0] * sd[1]], [corr * sd[0] * sd[1], sd[1] ** 2]])
    b = rng.multivariate_normal(np.zeros(2), cov, size=groups)
    x = rng.uniform(0.0, 10.0, n)
    y = 1.0 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(0.0, sigma, n)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical.from_codes(g, [f"g{i}" for i in range(groups)])})


def movielens_1m(seed: int = 0) -> pd.DataFrame:
    """MovieLens-1M shape: 1,000,209 ratings, 6,040 users x 3,706 movies (``rating ~ 1 + (1|user) + (1|movie)``).

    Users hold 20 to 2,314 ratings, the range of the real data, with the
    exponent 0.7 giving the real median (96; here 95); movies are drawn with
    power-law weights bounded by the real data's most-rated movie (3,428), each
    user's distinct.
    """
    return crossed(1_000_209, (6_040, 3_706), seed, alpha=(0.7, 1.0), bounds=((20, 2_314), (1, 3_428)))


def movielens_10m(seed: int = 0) -> pd.DataFrame:
    """MovieLens-10M shape: 10,000,054 ratings, 69,878 users x 10,677 movies.

    Users hold at least 20 ratings (as in the real data); the largest groups are bounded at
    about the real data's largest (7,359 ratings of a user, 34,864 of a movie).
    """
    return crossed(10_000_054, (69_878, 10_677), seed, bounds=((20, 7_359), (1, 34_864)))


def movielens_25m(seed: int = 0) -> pd.DataFrame:
    """MovieLens-25M shape: 25,000,095 ratings, 162,541 users x 59,047 movies.

    Users hold at least 20 ratings (as in the real data); the largest groups are
    bounded at about the real data's largest (32,202 ratings of a user, 81,491 of a movie).
    """
    return crossed(25_000_095, (162_541, 59_047), seed, bounds=((20, 32_202), (1, 81_491)))


def slopes_1m(seed: int = 0) -> pd.DataFrame:
    """1,000,000 rows, 10,000 groups: ``y ~ x + (x | g)``."""
    return random_slopes(1_000_000, 10_000, seed)
