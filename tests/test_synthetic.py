"""Synthetic data (jaxlmm.synthetic): seeded, power-law group sizes, distinct crossed partners."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlmm import synthetic


def test_synthetic_partners_are_distinct_and_follow_the_weights():
    rng = np.random.default_rng(0)
    g1 = np.repeat(np.arange(50), 30)  # 50 levels of 30 rows, 40 partners to choose from
    w = np.r_[np.full(20, 10.0), np.full(20, 1.0)]
    g2 = synthetic.distinct_partners(rng, g1, 40, w)
    assert np.unique(g1 * 40 + g2).size == len(g1)
    # without repeats each level takes the 20 heavy partners first: most rows go to them
    assert np.mean(g2 < 20) > 0.6
    with pytest.raises(ValueError, match="more rows"):
        synthetic.distinct_partners(rng, np.zeros(41, dtype=int), 40, np.ones(40))


def test_synthetic_is_seeded_and_power_law():
    shape = dict(n=3000, levels=(100, 80), bounds=((5, 70), (1, None)))
    a = synthetic.crossed(**shape, seed=3)
    b = synthetic.crossed(**shape, seed=3)
    c = synthetic.crossed(**shape, seed=4)
    assert a.equals(b) and not a.equals(c)
    sizes = a["user"].value_counts()
    assert len(a) == 3000 and sizes.min() >= 5 and sizes.max() <= 70
    assert len(sizes) == 100 and a["movie"].nunique() == 80  # every level present
    assert not a.duplicated(["user", "movie"]).any()  # no user rates a movie twice
    # the first factor's sizes are exactly the clipped power law (default exponent 0.8)
    np.testing.assert_array_equal(np.sort(sizes.to_numpy()), np.sort(synthetic.power_law_sizes(3000, 100, 0.8, 5, 70)))
    assert sizes.max() > 3 * sizes.median()


def test_slopes_generator_shape():
    df = synthetic.random_slopes(2000, 50, seed=0)
    assert list(df.columns) == ["y", "x", "g"] and df["g"].nunique() == 50
    # y = 1 + 0.5 x + ...: the pooled least-squares slope is near 0.5 (group slopes sd 0.3 average out)
    slope = np.polyfit(df.x, df.y, 1)[0]
    assert slope == pytest.approx(0.5, abs=0.25)


def test_power_law_sizes_add_up_and_respect_bounds():
    sizes = synthetic.power_law_sizes(100_000, 500, 0.9, lo=20, hi=2_000)
    assert sizes.sum() == 100_000 and sizes.min() >= 20 and sizes.max() <= 2_000
    assert sizes.max() == 2_000 and np.all(np.diff(sizes) <= 1)  # non-increasing, but for rounding
    with pytest.raises(ValueError, match="cannot hold"):
        synthetic.power_law_sizes(1_000, 100, 1.0, lo=20)
