"""Linear algebra (jaxlmm.linalg): the blocked Cholesky factor and its diagonal against LAPACK, and their gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm.linalg import cholesky, cholesky_diagonal, small_cholesky, small_solve_lower


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


@pytest.mark.parametrize("n,block", [(11, 4), (12, 4), (3, 4), (300, None)])
def test_cholesky_diagonal_matches_lapack(n, block):
    A = _spd(n, 2)
    d = np.asarray(cholesky_diagonal(jnp.asarray(A), block=block))
    np.testing.assert_allclose(d, np.diag(np.linalg.cholesky(A)), rtol=1e-12)
    g = jax.grad(lambda M: 2.0 * jnp.sum(jnp.log(cholesky_diagonal((M + M.T) / 2, block=block))))(jnp.asarray(A))
    np.testing.assert_allclose(np.asarray(g), np.linalg.inv(A), rtol=1e-9, atol=1e-12)  # d log|A| / dA


def _spd_batch(shape, k, seed=3):
    B = np.random.default_rng(seed).standard_normal(shape + (k, k))
    return B @ np.swapaxes(B, -1, -2) / k + np.eye(k)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_small_factors_match_lapack(k):
    """The unrolled factor and solve of batches of small matrices (k <= SMALL, written with
    lax on entries; larger k by LAPACK) against numpy, with two batch axes and under vmap."""
    A = _spd_batch((3, 5), k)
    L = np.linalg.cholesky(A)
    B = np.random.default_rng(4).standard_normal((3, 5, k, 2))
    got = np.asarray(small_cholesky(jnp.asarray(A)))
    np.testing.assert_allclose(got, L, rtol=1e-13, atol=1e-14)
    assert np.all(np.triu(got, 1) == 0.0)
    np.testing.assert_allclose(np.asarray(small_solve_lower(jnp.asarray(L), jnp.asarray(B))),
                               np.linalg.solve(L, B), rtol=1e-12, atol=1e-13)
    mapped = jax.vmap(small_cholesky)(jnp.asarray(A.reshape(15, k, k)))
    np.testing.assert_allclose(np.asarray(mapped), L.reshape(15, k, k), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("k", [2, 3])
def test_small_cholesky_logdet_gradient_is_inverse(k):
    """d log|A| / dA = A^{-1} through the unrolled factor, for each matrix of a batch."""
    A = jnp.asarray(_spd_batch((4,), k, seed=5))

    def logdet(M):
        S = (M + jnp.swapaxes(M, -1, -2)) / 2
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(small_cholesky(S), axis1=-2, axis2=-1)))

    G = np.asarray(jax.grad(logdet)(A))
    np.testing.assert_allclose(G, np.linalg.inv(np.asarray(A)), rtol=1e-11, atol=1e-13)
