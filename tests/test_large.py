"""Large-fit machinery: blocked Cholesky, memory estimate, synthetic data, saddle escape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import get_model
from jaxlmm import synthetic
from jaxlmm.crossprod import cross_products
from jaxlmm.errors import JaxLMMError
from jaxlmm.linalg import cholesky, cholesky_diagonal
from jaxlmm.memory import check_fits, estimate_fit_bytes, pair_count
from jaxlmm.optimize import grad_and_hessian, newton


def _spd(n, seed=0):
    B = np.random.default_rng(seed).standard_normal((n, n))
    return B @ B.T / n + np.eye(n)


@pytest.mark.parametrize("n,block", [(11, 4), (8, 4), (3, 4)])
def test_blocked_cholesky_matches_lapack(n, block):
    A = _spd(n)
    L = np.asarray(cholesky(jnp.asarray(A), block=block))
    np.testing.assert_allclose(L, np.linalg.cholesky(A), rtol=1e-12, atol=1e-12)


def test_blocked_cholesky_logdet_gradient_is_inverse():
    """d log|A| / dA = A^{-1} (symmetric A), through the blocked factor."""
    A = jnp.asarray(_spd(11, 1))

    def logdet(M):
        S = (M + M.T) / 2
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(cholesky(S, block=4))))

    G = np.asarray(jax.grad(logdet)(A))
    np.testing.assert_allclose(G, np.linalg.inv(np.asarray(A)), rtol=1e-10, atol=1e-12)


def test_blocked_cholesky_not_positive_definite_gives_nan():
    A = -np.eye(6)
    assert np.isnan(np.asarray(cholesky(jnp.asarray(A), block=4))).any()


def test_grad_and_hessian_closed_form():
    """f = sum(a x^3) + x0 x1: gradient 3 a x^2 + (x1, x0), Hessian diag(6 a x) + offdiag 1."""
    a = jnp.array([1.0, 2.0])
    f = lambda x, a: jnp.sum(a * x**3) + x[0] * x[1]  # noqa: E731
    x = jnp.array([0.5, -1.5])
    v, g, H = grad_and_hessian(f)(x, a)
    assert float(v) == pytest.approx(0.125 - 6.75 - 0.75)
    np.testing.assert_allclose(g, [3 * 0.25 - 1.5, 3 * 2 * 2.25 + 0.5])
    np.testing.assert_allclose(H, [[3.0, 1.0], [1.0, -18.0]])


def test_newton_leaves_a_saddle_on_the_bound():
    """f = (x^2 - 1)^2 is even: x = 0 (the bound) is stationary but a maximum; the minimum is x = 1."""
    f = lambda x: jnp.sum((x**2 - 1.0) ** 2)  # noqa: E731
    res = newton(f, jnp.zeros(1), jnp.zeros(1))
    assert float(res.theta[0]) == pytest.approx(1.0, abs=1e-8)
    assert float(res.fun) == pytest.approx(0.0, abs=1e-14)
    assert bool(res.converged)


def test_pair_count_matches_listed_pairs():
    m = get_model("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")
    assert pair_count(np.asarray(m.products.entries.level1)) == m.products.n_pairs


def test_memory_estimate_grows_with_pairs_and_schur_size():
    from jaxlmm.memory import PAIR_TEMP

    dims = ((1000, 1), (500, 1))
    base = estimate_fit_bytes(dims, 2, 5000, 10_000, on="cpu")
    # per pair (k1 = 1): its argument (level, target, one product) and its temporaries
    per_pair = (4 + 8 + 8) + (PAIR_TEMP + 8)
    assert estimate_fit_bytes(dims, 2, 5000, 20_000, on="cpu") - base == pytest.approx(10_000 * per_pair)
    assert estimate_fit_bytes(((1000, 1), (1000, 1)), 2, 5000, 10_000, on="cpu") > base
    # the dense Schur complement alone: at least 8 (q2 + p + 1)^2 float64s
    assert base > 8 * 8 * 503**2


def test_too_large_fit_raises_clear_error():
    m = get_model("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")
    with pytest.raises(JaxLMMError, match=r"plate.*sample.*GiB.*too large"):
        cross_products(m.design, memory_limit=1000)
    with pytest.raises(JaxLMMError, match="too large"):
        check_fits(2**31, "this fit", available=2**30)


def test_memory_check_counts_the_chunk_of_rows():
    """The refusal threshold lies between the fit's estimate and the estimate plus one chunk's working set."""
    from jaxlmm.crossprod import _families, row_plan
    from jaxlmm.memory import chunk_bytes, rows_bytes

    m = get_model("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")
    d = m.products
    # the fit's estimate and the design's rows (both counted before the rows are summed)
    fit_only = estimate_fit_bytes(d.term_dims, d.p, d.n_entries, pair_count(np.asarray(d.entries.level1)))
    fit_only += rows_bytes(m.design.n, 1 + 1 + 2)
    per_row = sum(f.ka * f.kb for f in _families(row_plan(m.design).layout, (1, 1), 1)[0])
    assert per_row == 1 * 3 + 1 * 3 + 1  # (1 | plate) and (1 | sample) against [z X y]; Z1'Z2
    chunk = chunk_bytes(m.design.n, per_row, 1 + 1 + 2 + 4)
    assert chunk == m.design.n * (12 * 7 + 8 * 8)
    cross_products(m.design, memory_limit=fit_only + chunk)  # fits exactly
    with pytest.raises(JaxLMMError, match="too large"):
        cross_products(m.design, memory_limit=fit_only + chunk - 1)


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


def test_bfgs_newton_leaves_a_saddle_on_the_bound():
    """The quasi-Newton variant confirms a stopping point with the exact Hessian: x = 0 is a saddle."""
    f = lambda x: jnp.sum((x**2 - 1.0) ** 2)  # noqa: E731
    res = newton(f, jnp.zeros(1), jnp.zeros(1), hessian="bfgs")
    assert float(res.theta[0]) == pytest.approx(1.0, abs=1e-8)
    assert bool(res.converged)


def test_bfgs_newton_on_a_curved_valley():
    """Rosenbrock's function (minimum 0 at (1, 1)) from (-1.2, 1), bounded below by -5."""
    f = lambda x: 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2  # noqa: E731
    res = newton(f, jnp.array([-1.2, 1.0]), jnp.full(2, -5.0), hessian="bfgs")
    np.testing.assert_allclose(np.asarray(res.theta), [1.0, 1.0], atol=1e-6)
    assert bool(res.converged)


@pytest.mark.parametrize(
    "case", ["penicillin_crossed", "sleepstudy_slope", "dyestuff2_singular"]
)
def test_bfgs_newton_reaches_lme4s_optimum(case):
    """hessian="bfgs" (used for large Schur complements) on small models: lme4's ML deviance and theta."""
    from conftest import CASES, load_fit_reference
    from jaxlmm.fitting import optimize_theta
    from jaxlmm.theta import canonical_theta

    ref = load_fit_reference(case)
    m = get_model(ref["formula"], CASES[case])
    opt = optimize_theta(
        jnp.asarray(m.theta0), jnp.asarray(m.lower), m.products, False, method="newton", hessian="bfgs"
    )
    r = ref["ML"]
    assert bool(opt.converged)
    assert float(opt.fun) == pytest.approx(r["objective"], rel=1e-8)
    theta = np.asarray(canonical_theta(opt.theta, m.term_dims))
    np.testing.assert_allclose(theta, np.atleast_1d(r["theta"]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("n,block", [(11, 4), (12, 4), (3, 4), (300, None)])
def test_cholesky_diagonal_matches_lapack(n, block):
    A = _spd(n, 2)
    d = np.asarray(cholesky_diagonal(jnp.asarray(A), block=block))
    np.testing.assert_allclose(d, np.diag(np.linalg.cholesky(A)), rtol=1e-12)
    g = jax.grad(lambda M: 2.0 * jnp.sum(jnp.log(cholesky_diagonal((M + M.T) / 2, block=block))))(jnp.asarray(A))
    np.testing.assert_allclose(np.asarray(g), np.linalg.inv(A), rtol=1e-9, atol=1e-12)  # d log|A| / dA
