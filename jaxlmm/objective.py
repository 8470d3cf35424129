"""The profiled REML and ML criteria, pure JAX: ``deviance(theta, data, reml)``.

Penalized least squares form of lme4 (Bates, Maechler, Bolker & Walker,
"Fitting linear mixed-effects models using lme4", JSS 2015, eqs. 13-42):
with relative covariance factor Lambda(theta) and the cross-products A of
[Z X y], the Cholesky factor of

    [ Lambda'Z'Z Lambda + I   Lambda'Z'X   Lambda'Z'y ]
    [        X'Z Lambda           X'X          X'y    ]
    [        y'Z Lambda           y'X          y'y    ]

has diagonal blocks L (random effects), R_X' (fixed effects) and r (the
root of the penalized residual sum of squares), and (eqs. 34 and 42)

    ML:   -2 l(theta)   = log|L|^2 + n (1 + log(2 pi r^2 / n))
    REML: -2 l_R(theta) = log|L|^2 + log|R_X|^2 + (n-p)(1 + log(2 pi r^2/(n-p))).

With prior weights w (residual variance sigma^2/w_i) the cross-products are
those of the rows scaled by sqrt(w_i) and both criteria gain -sum_i log w_i
(-log|W|, lme4's ``ldW`` in ``lmerResp::Laplace``).

Structure (as MixedModels.jl): the first term's block is block diagonal, so
its factor is a batch of l1 small k1 x k1 Cholesky factors; its off-diagonal
blocks are sparse (block-COO); the Schur complement of the further terms, X
and y is dense and factored once. n x n and n x q matrices never appear.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular

from .crossprod import CrossProducts
from .linalg import (
    SMALL, cholesky, cholesky_diagonal, cholesky_entries, entry, small_cholesky, small_solve_lower, solve_entries,
    stack, stack_lower, total,
)
from .theta import relative_factors, theta_layout

LOG2PI = float(np.log(2.0 * np.pi))


class Factor(NamedTuple):
    """The blocked Cholesky factor at one theta.

    ``L1`` (l1, k1, k1): factors of T1'D1_j T1 + I; ``F`` (l1, k1, p+1):
    L1_j^{-1} T1'[Z1'X Z1'y]_j; ``V`` (E, k1): the off-diagonal block of the
    factor between term 1 and the further terms, one k1-vector per flattened
    entry; ``L22`` (q2+p+1)^2: the dense factor of the Schur complement.
    """

    L1: jax.Array
    F: jax.Array
    V: jax.Array
    L22: jax.Array


def _scale_rest(M, Ts, term_dims):
    """Lambda_r' M for the rows of the further terms (block diagonal, T_m' per level)."""
    parts, lo = [], 0
    for T, (l, k) in zip(Ts, term_dims):
        blk = M[lo : lo + l * k].reshape((l, k) + M.shape[1:])
        parts.append(jnp.einsum("ba,lb...->la...", T, blk).reshape((l * k,) + M.shape[1:]))
        lo += l * k
    return jnp.concatenate(parts, axis=0)


def _first_term_unrolled(theta, k, d1, C1):
    """L1 (l1, k, k) and F = L1^{-1} T' C1 (l1, k, m), with T' D_j T and T' C_j written out.

    Entry by entry, each product is an elementwise operation on arrays with
    one value per level (and per column of C1), which XLA fuses into a few
    loops; a replicate batch (the bootstrap's ``vmap``) only lengthens them.
    Products of batched 2 x 2 matrices, and their derivatives, otherwise
    become many small reductions over axes of length 2. The factor and the
    solve are :func:`~jaxlmm.linalg.cholesky_entries` and
    :func:`~jaxlmm.linalg.solve_entries`, on the same entries.
    """
    rows, cols = theta_layout([(0, k)])[0]
    T = [[None] * k for _ in range(k)]
    for i, (r, c) in enumerate(zip(rows, cols)):
        T[r][c] = lax.index_in_dim(theta, i, keepdims=False)

    def tdot(a, vecs):  # sum_b T[b][a] vecs[b], skipping the zeros above the diagonal
        return total(lax.mul(T[b][a], vecs[b]) for b in range(a, k))

    d = [[entry(d1, b, c) for c in range(k)] for b in range(k)]
    TD = [[tdot(a, [d[b][c] for b in range(k)]) for c in range(k)] for a in range(k)]  # (T' D)_ac
    M = [[total(lax.mul(TD[a][c], T[c][e]) for c in range(e, k)) for e in range(a + 1)] for a in range(k)]
    for a in range(k):
        M[a][a] = lax.add(M[a][a], 1.0)  # T' D T + I, its lower triangle
    C = [lax.index_in_dim(C1, b, 1, keepdims=False) for b in range(k)]
    L = cholesky_entries(M)
    F = solve_entries(L, [tdot(a, C) for a in range(k)])  # L1^{-1} T' C
    return stack_lower(L), stack(F, axis=1)


class _Reduced(NamedTuple):
    """Term 1's factor and the dense matrix left for the rest (:func:`_reduced`).

    ``L1``, ``F`` and ``V`` as in :class:`Factor`; ``omega`` ((q2+p+1)^2) is
    the Schur complement of term 1 in the augmented PLS system; ``dense`` is
    False when its factor is made by :func:`small_cholesky` instead (no
    further terms: omega is [X y]'s (p+1)^2 block).
    """

    L1: jax.Array
    F: jax.Array
    V: jax.Array
    omega: jax.Array
    dense: bool


def _reduced(theta, data: CrossProducts) -> _Reduced:
    """Term 1's factor and the Schur complement of term 1 at ``theta`` (:class:`_Reduced`)."""
    dims = data.term_dims
    p = data.p
    q2 = data.q_rest
    resp = data.response
    f = jnp.concatenate([data.xtx, resp.xty[:, None]], axis=1)
    omega_ff = jnp.concatenate(
        [f, jnp.concatenate([resp.xty, resp.yty[None]])[None, :]], axis=0
    )
    if not dims:
        z = jnp.zeros((0, 0, 0))
        return _Reduced(z, jnp.zeros((0, 0, p + 1)), jnp.zeros((0, 0)), omega_ff, dense=True)
    l1, k1 = dims[0]
    C1 = jnp.concatenate([data.first.zx, resp.z1y[:, :, None]], axis=2)
    if k1 <= SMALL:
        L1, F = _first_term_unrolled(theta, k1, data.first.blocks, C1)
    else:
        T1 = relative_factors(theta, dims[:1])[0]
        L1 = jnp.linalg.cholesky(jnp.einsum("ba,jbc,cd->jad", T1, data.first.blocks, T1) + jnp.eye(k1))
        F = solve_triangular(L1, jnp.einsum("ba,jbf->jaf", T1, C1), lower=True)
    omega_ff = lax.sub(omega_ff, lax.dot_general(F, F, (((0, 1), (0, 1)), ((), ()))))  # sum_j F_j' F_j
    if q2 == 0:
        return _Reduced(L1, F, jnp.zeros((0, k1)), omega_ff, dense=False)
    Ts = relative_factors(theta, dims)
    T1 = Ts[0]
    Vs = []
    for coupling, T in zip(data.coupling, Ts[1:]):
        G = jnp.einsum("ba,ebc,cd->ead", T1, coupling.blocks, T)
        G = small_solve_lower(L1[coupling.level1], G)  # (blocks, k1, km)
        Vs.append(jnp.swapaxes(G, 1, 2).reshape(-1, k1))
    V = jnp.concatenate(Vs, axis=0)
    # Schur update V'V = Lambda_r' G Lambda_r with G = sum_j C_j' W_j C_j, W_j = T1 (L1_j L1_j')^{-1} T1'
    R = small_solve_lower(L1, jnp.broadcast_to(T1.T, (l1, k1, k1)))
    W = jnp.einsum("jka,jkb->jab", R, R)
    G = _schur_update(W, data, q2)
    zz = _scale_rest(_scale_rest(data.rest.zz - G, Ts[1:], dims[1:]).T, Ts[1:], dims[1:]) + jnp.eye(q2)
    zf = _scale_rest(jnp.concatenate([data.rest.zx, resp.zy[:, None]], axis=1), Ts[1:], dims[1:])
    zf = zf - jax.ops.segment_sum(
        jnp.einsum("ek,ekf->ef", V, F[data.entries.level1]), data.entries.column, num_segments=q2
    )
    omega = jnp.concatenate(
        [jnp.concatenate([zz, zf], axis=1), jnp.concatenate([zf.T, omega_ff], axis=1)], axis=0
    )
    return _Reduced(L1, F, V, omega, dense=True)


def _schur_update(W, data: CrossProducts, q2: int):
    """G = sum_j C_j' W_j C_j (q2 x q2, both triangles) for term 1's W (l1, k1, k1).

    Light levels by their pairs of entries (:class:`~jaxlmm.crossprod.Pairs`): a gather, a
    product and a scatter into the lower triangle. Heavy levels (:class:`~jaxlmm.crossprod.Dense`)
    by one matrix product of their dense rows, C_h' (W_h C_h).
    """
    l1, k1 = W.shape[0], W.shape[1]
    dots = jnp.sum(W.reshape(l1, k1 * k1)[data.pairs.level] * data.pairs.product, axis=1)
    G = jax.ops.segment_sum(dots, data.pairs.target, num_segments=q2 * q2).reshape(q2, q2)
    G = G + G.T - jnp.diag(jnp.diag(G))
    if data.n_dense:
        C = data.dense.C  # (H, k1, q2)
        WC = jnp.einsum("hab,hbq->haq", W[data.dense.level], C)
        G = G + jnp.einsum("haq,har->qr", C, WC)
    return G


def factorize(theta, data: CrossProducts) -> Factor:
    """Blocked Cholesky factor of the augmented PLS system at ``theta``."""
    red = _reduced(theta, data)
    L22 = cholesky(red.omega) if red.dense else small_cholesky(red.omega)
    return Factor(red.L1, red.F, red.V, L22)


class Pieces(NamedTuple):
    """The scalars of the profiled criteria at one theta."""

    logdet_L: jax.Array  # log|L|^2
    logdet_RX: jax.Array  # log|R_X|^2
    r2: jax.Array  # penalized residual sum of squares


def pieces_of_diagonals(L1, d22, q2: int, p: int) -> Pieces:
    """The criterion's scalars from the factor's diagonals: those of term 1's blocks ``L1``
    (l1, k1, k1) and ``d22``, the diagonal of the dense factor L22 (rows: q2 further
    random effects, p fixed effects, y)."""
    ld = lax.add(_twice_sum_log(jnp.diagonal(L1, axis1=1, axis2=2)), _twice_sum_log(d22[:q2]))
    ldx = _twice_sum_log(d22[q2 : q2 + p])
    return Pieces(ld, ldx, lax.integer_pow(d22[-1], 2))


def _twice_sum_log(d):
    """2 sum(log d), by lax (cheap to trace: see the note above :func:`jaxlmm.linalg.entry`)."""
    return lax.mul(2.0, lax.reduce_sum(lax.log(d), tuple(range(d.ndim))))


def pieces(theta, data: CrossProducts) -> Pieces:
    """The criterion's scalars at ``theta``; the dense factor's diagonal alone (:func:`cholesky_diagonal`)."""
    red = _reduced(theta, data)
    d22 = cholesky_diagonal(red.omega) if red.dense else jnp.diagonal(small_cholesky(red.omega))
    return pieces_of_diagonals(red.L1, d22, data.q_rest, data.p)


def deviance(theta, data: CrossProducts, reml=True):
    """Profiled criterion on lme4's -2 log-likelihood scale (REML criterion or ML deviance).

    ``reml`` may be a Python or traced boolean, so one compiled function
    serves both criteria. With prior weights, less sum log w_i (``data.ldw``).
    """
    pc = pieces(theta, data)
    n = data.n
    ld = lax.sub(pc.logdet_L, data.ldw)
    ml = lax.add(ld, lax.mul(n, lax.add(1.0 + LOG2PI, lax.log(lax.div(pc.r2, n)))))
    nmp = lax.sub(n, float(data.p))
    rl = lax.add(lax.add(ld, pc.logdet_RX), lax.mul(nmp, lax.add(1.0 + LOG2PI, lax.log(lax.div(pc.r2, nmp)))))
    return lax.select(jnp.asarray(reml, dtype=bool), rl, ml)


def sigma_hat(r2, n, p: int, reml: bool):
    """The residual SD at theta: sqrt(r^2 / (n - p)) for REML, sqrt(r^2 / n) for ML (JSS 2015, eqs. 32, 39).

    In numpy for host numbers (no program to compile), in JAX for traced ones."""
    v = r2 / (n - p if reml else n)
    return jnp.sqrt(v) if isinstance(v, jax.Array) else np.sqrt(v)


class Solution(NamedTuple):
    """Estimates at theta: beta, spherical modes u (term 1 as (l1, k1), rest flat), sigma."""

    beta: jax.Array
    u1: jax.Array
    u_rest: jax.Array
    r2: jax.Array
    RX: jax.Array  # lower-triangular R_X' (p x p)


def solve(theta, data: CrossProducts) -> Solution:
    """Conditional estimates at ``theta`` by block back-substitution (JSS 2015, eq. 24)."""
    fac = factorize(theta, data)
    q2, p = data.q_rest, data.p
    L22 = fac.L22
    Lub = L22[: q2 + p, : q2 + p]
    rhs = L22[-1, : q2 + p]
    x = solve_triangular(Lub.T, rhs, lower=False)
    u_rest, beta = x[:q2], x[q2:]  # beta less beta0: the products are of y - X beta0
    if not data.term_dims:
        return Solution(beta + data.beta0, jnp.zeros((0, 0)), u_rest, L22[-1, -1] ** 2, L22[q2 : q2 + p, q2 : q2 + p])
    l1, k1 = data.term_dims[0]
    c = fac.F[:, :, p] - fac.F[:, :, :p] @ beta
    if q2:
        entries = data.entries
        c = c - jax.ops.segment_sum(fac.V * u_rest[entries.column][:, None], entries.level1, num_segments=l1)
    u1 = solve_triangular(jnp.swapaxes(fac.L1, 1, 2), c[:, :, None], lower=False)[:, :, 0]
    return Solution(beta + data.beta0, u1, u_rest, L22[-1, -1] ** 2, L22[q2 : q2 + p, q2 : q2 + p])


def conditional_variances(theta, data: CrossProducts) -> list[jax.Array]:
    """Per term, the diagonal blocks of (Lambda'Z'Z Lambda + I)^{-1} (l_m, k_m, k_m).

    Multiplied by sigma^2 and mapped by T_m they are lme4's conditional
    variances of the random effects given y (at the estimated beta). Term 1
    uses the block inverse A^{-1} + A^{-1}B'S^{-1}BA^{-1}; the further terms
    the diagonal blocks of S^{-1}, S = L22z L22z' (the random-effect part of
    the Schur complement).
    """
    dims = data.term_dims
    if not dims:
        return []
    fac = factorize(theta, data)
    q2 = data.q_rest
    l1, k1 = dims[0]
    eye = jnp.broadcast_to(jnp.eye(k1), (l1, k1, k1))
    L1inv = solve_triangular(fac.L1, eye, lower=True)  # (l1, k1, k1)
    A_inv = jnp.einsum("jka,jkb->jab", L1inv, L1inv)
    if q2 == 0:
        return [A_inv]
    Lz = fac.L22[:q2, :q2]
    # C' (q2 x l1*k1): column (j, a) holds V[e, a] at row column[e] for the entries e of level j
    Ct = jnp.zeros((q2, l1, k1)).at[data.entries.column, data.entries.level1].add(fac.V)
    W = solve_triangular(Lz, Ct.reshape(q2, l1 * k1), lower=True).reshape(q2, l1, k1)
    WL = jnp.einsum("rja,jab->rjb", W, L1inv)  # (L22z^-1 C_j') L1_j^-1
    first = A_inv + jnp.einsum("rja,rjb->jab", WL, WL)
    Lzinv = solve_triangular(Lz, jnp.eye(q2), lower=True)
    out, lo = [first], 0
    for l, k in dims[1:]:
        blk = Lzinv[:, lo : lo + l * k].reshape(q2, l, k)
        out.append(jnp.einsum("rla,rlb->lab", blk, blk))
        lo += l * k
    return out
