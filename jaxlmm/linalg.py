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
