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


def test_light_levels_redraw_repeats_and_heavy_levels_draw_without_repeats():
    """Both paths of distinct_partners: levels above HEAVY_SHARE of the partners draw at once (Gumbel
    top-k), the others redraw repeats; no pair repeats and the weights are followed."""
    rng = np.random.default_rng(1)
    levels2 = 640  # heavy: more than 10 rows
    g1 = rng.permutation(np.r_[np.repeat(np.arange(300), 8), np.repeat(np.arange(300, 305), 600)])
    w = np.r_[np.full(10, 100.0), np.ones(630)]  # 10 popular partners, which light levels repeat often
    assert 8 <= synthetic.HEAVY_SHARE * levels2 < 600
    g2 = synthetic.distinct_partners(rng, g1, levels2, w)
    assert np.unique(g1 * levels2 + g2).size == len(g1) and g2.min() >= 0 and g2.max() < levels2
    for level in range(300, 305):  # 600 of 640 by weight: every popular partner, each once
        assert set(range(10)) <= set(g2[g1 == level])
    # a light level's 8 rows are 8 successive draws by weight without repeats: the share of popular
    # partners against numpy's own successive sampling (choice without replacement), 4,000 levels
    ref = np.mean([rng.choice(levels2, 8, replace=False, p=w / w.sum()) < 10 for _ in range(4000)])
    assert np.mean(g2[g1 < 300] < 10) == pytest.approx(ref, abs=0.04)  # 300 levels: SE about 0.012


def test_fill_missing_moves_one_row_to_each_empty_level():
    rng = np.random.default_rng(2)
    g1 = np.arange(30)
    g2 = np.r_[np.zeros(20, dtype=int), np.ones(10, dtype=int)]  # levels 2..5 of 6 empty
    out = synthetic.fill_missing(rng, g2, 6)
    counts = np.bincount(out, minlength=6)
    assert np.all(counts >= 1) and counts[2:].tolist() == [1, 1, 1, 1]
    assert np.sum(out != g2) == 4 and np.unique(g1 * 6 + out).size == 30
    assert synthetic.fill_missing(rng, out, 6) is out  # nothing missing: unchanged
    with pytest.raises(ValueError, match="too few rows"):
        synthetic.fill_missing(rng, np.array([0, 1]), 5)
