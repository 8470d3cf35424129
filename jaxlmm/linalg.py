"""Dense Cholesky factorization written with matrix products.

The Schur complement of the first random-effect term (InstEval: 1157 x 1157)
is factored at every evaluation of the criterion and differentiated twice by
the Newton optimizer. LAPACK's ``potrf`` as exposed by XLA on CPU, and above
all the reverse- and forward-mode rules of ``jnp.linalg.cholesky`` (built on
triangular solves), run far below the speed of a matrix product. A blocked
right-looking Cholesky (Golub & Van Loan, "Matrix Computations", 4th ed.,
algorithm 4.2.4) moves almost all its flops into products:

    A = [A11 A21'; A21 A22],  L11 = chol(A11)  (b x b),
    L21 = A21 L11^{-T},       L22 = chol(A22 - L21 L21'),

with the b x b inverse L11^{-1} formed explicitly so that L21 is a product
too. Automatic differentiation of these steps is again products, so the
gradient and the Hessian of the criterion run at matrix-product speed.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

BLOCK = 256


def cholesky(A, block: int = BLOCK):
    """Lower Cholesky factor of the symmetric positive definite ``A`` (n x n), blocked.

    NaN where ``A`` is not positive definite, as ``jnp.linalg.cholesky``.
    The recursion over blocks is unrolled at trace time (n / block steps).
    """
    n = A.shape[-1]
    if n <= block:
        return jnp.linalg.cholesky(A)
    b = block
    L11 = jnp.linalg.cholesky(A[:b, :b])
    L11_inv = solve_triangular(L11, jnp.eye(b, dtype=A.dtype), lower=True)
    L21 = A[b:, :b] @ L11_inv.T
    L22 = cholesky(A[b:, b:] - L21 @ L21.T, block)
    top = jnp.concatenate([L11, jnp.zeros((b, n - b), dtype=A.dtype)], axis=1)
    return jnp.concatenate([top, jnp.concatenate([L21, L22], axis=1)], axis=0)


def cholesky_diagonal(A, block: int | None = None):
    """The diagonal of the lower Cholesky factor of ``A``, without forming the factor.

    The same blocked recursion as :func:`cholesky`, keeping only each
    diagonal block's diagonal: the profiled criterion needs no more, and
    neither the factor's concatenations nor their derivatives are built.
    The default block is :data:`BLOCK`, doubled from n = 2,048 on, where
    fewer, larger steps were measured faster (value and gradient at
    n = 3,706 on a 2-core CPU: 2.2 s against 2.5 s; at n = 1,157 the
    smaller block is faster).
    """
    n = A.shape[-1]
    b = (BLOCK if n < 2048 else 2 * BLOCK) if block is None else block
    out = []
    while A.shape[-1] > b:
        L11 = jnp.linalg.cholesky(A[:b, :b])
        out.append(jnp.diagonal(L11))
        L11_inv = solve_triangular(L11, jnp.eye(b, dtype=A.dtype), lower=True)
        L21 = A[b:, :b] @ L11_inv.T
        A = A[b:, b:] - L21 @ L21.T
    out.append(jnp.diagonal(jnp.linalg.cholesky(A)))
    return jnp.concatenate(out)


SMALL = 4


def small_cholesky(A):
    """Cholesky factors of a batch (..., k, k) of small SPD matrices, k <= SMALL.

    The first term's diagonal blocks (one per level) are k x k with k the
    number of columns of the term (1 for an intercept, 2 for a random
    slope). The Cholesky-Crout recursion, unrolled at trace time, turns the
    batch into a handful of elementwise array operations: no per-matrix
    LAPACK call, and cheap to differentiate and to ``vmap`` (the bootstrap
    refits batches of these). Larger k falls back to ``jnp.linalg.cholesky``.
    """
    k = A.shape[-1]
    if k > SMALL or k == 0:
        return jnp.linalg.cholesky(A)
    L = cholesky_entries([[entry(A, i, j) for j in range(i + 1)] for i in range(k)])
    return stack_lower(L)


def small_solve_lower(L, B):
    """L^{-1} B for a batch of small lower-triangular L (..., k, k), B (..., k, m): forward substitution."""
    k = L.shape[-1]
    if k > SMALL or k == 0:
        return solve_triangular(L, B, lower=True)
    rows = solve_entries([[entry(L, i, j) for j in range(i + 1)] for i in range(k)],
                         [lax.index_in_dim(B, i, B.ndim - 2, keepdims=False) for i in range(k)])
    return stack(rows, axis=-2)


# The small factors above are unrolled into elementwise operations on arrays with one value per
# matrix of the batch ("entries"). They are written with lax's primitives, not jax.numpy's
# operators: each jax.numpy operator is a small jitted function, which the derivatives of the
# criterion trace again (jvp and linearize) at every use. Tracing the Newton loop of a random-slope
# model (value, gradient and Hessian) took about twice as long in a fresh process. The
# primitives and their order are those the operators would give; XLA may fuse the program
# differently, so results agree to rounding (sleepstudy's optimum: 1e-14 relative).


def entry(A, i: int, j: int):
    """A[..., i, j] by lax's slicing."""
    r = A.ndim
    return lax.index_in_dim(lax.index_in_dim(A, j, r - 1, keepdims=False), i, r - 2, keepdims=False)


def total(terms):
    """terms[0] + terms[1] + ..., left to right (Python's ``sum`` without its 0); None for none."""
    out = None
    for t in terms:
        out = t if out is None else lax.add(out, t)
    return out


def stack(arrays, axis: int):
    """``jnp.stack`` of arrays of one shape and dtype, by lax."""
    nd = arrays[0].ndim + 1
    axis = axis % nd
    return lax.concatenate([lax.expand_dims(a, (axis,)) for a in arrays], axis)


def stack_lower(L):
    """The (..., k, k) array of lower-triangular entries ``L[i][j]`` (j <= i), zeros above."""
    k = len(L)
    zero = lax.full_like(L[0][0], 0.0)
    return stack([stack([L[i][j] if j <= i else zero for j in range(k)], axis=-1) for i in range(k)], axis=-2)


def cholesky_entries(A):
    """The Cholesky-Crout recursion on entries: ``A[i][j]`` (j <= i) the lower triangle of a batch of
    SPD matrices, arrays of one shape; the factor's entries ``L[i][j]`` (j <= i)."""
    k = len(A)
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        s = total(lax.integer_pow(L[j][m], 2) for m in range(j))
        d = lax.sqrt(A[j][j] if s is None else lax.sub(A[j][j], s))
        L[j][j] = d
        for i in range(j + 1, k):
            s = total(lax.mul(L[i][m], L[j][m]) for m in range(j))
            L[i][j] = lax.div(A[i][j] if s is None else lax.sub(A[i][j], s), d)
    return L


def solve_entries(L, B):
    """Forward substitution on entries: ``L[i][j]`` (j <= i, shape s) a batch of lower-triangular
    factors, ``B[i]`` its right-hand sides' rows (shape s + (m,)); the rows of L^{-1} B."""
    rows = []
    for i in range(len(B)):
        s = total(lax.mul(lax.expand_dims(L[i][m], (L[i][m].ndim,)), rows[m]) for m in range(i))
        r = B[i] if s is None else lax.sub(B[i], s)
        rows.append(lax.div(r, lax.expand_dims(L[i][i], (L[i][i].ndim,))))
    return rows
