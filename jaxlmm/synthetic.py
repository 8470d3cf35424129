"""Seeded synthetic data for benchmarks, with realistic imbalance.

Group sizes follow a power law, as ratings per user and per movie do
(Harper & Konstan, "The MovieLens datasets", ACM TiiS 2015): level i of a
factor with L levels is drawn with probability proportional to
(i + 1)^(-alpha), after every level has been given one row so that none is
empty. The response is simulated from the model itself,

    y = beta0 + sum_m b_m[g_m] + e,  b_m ~ N(0, sd_m^2),  e ~ N(0, sigma^2),

(with a random slope on ``x`` for :func:`random_slopes`), so the variance
components the fit should recover are known.

Shapes (rows, levels): :func:`movielens_1m` 1,000,209 rows, 6,040 users x
3,706 movies; :func:`movielens_25m` 25,000,095 rows, 162,541 x 59,047;
:func:`slopes_1m` 1,000,000 rows, 10,000 groups with correlated random
intercepts and slopes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def power_law_codes(rng: np.random.Generator, n: int, levels: int, alpha: float) -> np.ndarray:
    """``n`` integer codes in [0, levels), each level at least once, sizes ~ power law."""
    if n < levels:
        raise ValueError(f"need at least one row per level: n={n} < levels={levels}")
    w = (np.arange(levels) + 1.0) ** (-alpha)
    extra = rng.choice(levels, size=n - levels, p=w / w.sum())
    codes = np.concatenate([np.arange(levels), extra])
    perm = rng.permutation(levels)  # the big levels are not the first codes
    return rng.permutation(perm[codes])


def crossed(
    n: int,
    levels: tuple[int, int],
    seed: int = 0,
    alpha: tuple[float, float] = (0.8, 1.0),
    sd: tuple[float, float] = (0.5, 0.3),
    sigma: float = 1.0,
    names: tuple[str, str] = ("user", "movie"),
) -> pd.DataFrame:
    """Two crossed factors with power-law sizes and ``rating = 3.5 + b1 + b2 + e``."""
    rng = np.random.default_rng(seed)
    g1 = power_law_codes(rng, n, levels[0], alpha[0])
    g2 = power_law_codes(rng, n, levels[1], alpha[1])
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
    """MovieLens-1M shape: 1,000,209 ratings, 6,040 users x 3,706 movies (``rating ~ 1 + (1|user) + (1|movie)``)."""
    return crossed(1_000_209, (6_040, 3_706), seed)


def movielens_25m(seed: int = 0) -> pd.DataFrame:
    """MovieLens-25M shape: 25,000,095 ratings, 162,541 users x 59,047 movies."""
    return crossed(25_000_095, (162_541, 59_047), seed)


def slopes_1m(seed: int = 0) -> pd.DataFrame:
    """1,000,000 rows, 10,000 groups: ``y ~ x + (x | g)``."""
    return random_slopes(1_000_000, 10_000, seed)
