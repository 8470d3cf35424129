"""The deviance as a function of all parameters, not profiled: D(theta, sigma, beta).

The engine minimizes criteria with sigma and beta profiled out
(:mod:`jaxlmm.objective`). Inference needs them back as free arguments:
Satterthwaite's degrees of freedom differentiate the deviance in the
variance parameters (theta, sigma), and likelihood profiles fix one
parameter and minimize over all the others. From the pieces of the blocked
Cholesky factor at theta (log|L|^2, log|R_X|^2, r^2(theta), the conditional
estimate beta(theta) and R_X) and the identity (Bates et al., JSS 2015,
eqs. 30-36)

    r^2(theta, beta) = r^2(theta) + ||R_X (beta - beta(theta))||^2,

the -2 log-likelihoods are

    ML:   D(theta, sigma, beta) = log|L|^2 + r^2(theta, beta)/sigma^2 + n log(2 pi sigma^2)
    REML: D_R(theta, sigma)     = log|L|^2 + log|R_X|^2 + r^2(theta)/sigma^2
                                  + (n - p) log(2 pi sigma^2),

less sum_i log w_i (``data.ldw``) with prior weights w (lme4's ``ldW``);
the functions lmerTest's ``devfun_vp`` evaluates (Kuznetsova, Brockhoff &
Christensen, J. Stat. Softw. 2017) and lme4's ``devfun2`` profiles.
Minimizing over sigma (and beta) gives back the profiled criteria.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ._config import lean_jit
from .crossprod import CrossProducts
from .objective import LOG2PI, factorize, pieces_of_diagonals


class FactorParts(NamedTuple):
    """What the unprofiled criteria need from one blocked Cholesky factor at theta.

    With the dense factor L22 of the Schur complement (rows: further random
    effects, X, y), R_X' = L22[X, X] and r_X = L22[y, X]; then
    R_X beta(theta) = r_X, so R_X (beta - beta(theta)) = R_X beta - r_X and no
    triangular solve is needed.
    """

    logdet_L: object  # log|L|^2
    logdet_RX: object  # log|R_X|^2
    r2: object  # r^2(theta)
    RXt: object  # R_X' (lower triangular, p x p)
    rX: object  # r_X (p,)


def factor_parts(theta, data: CrossProducts) -> FactorParts:
    """log|L|^2, log|R_X|^2, r^2(theta), R_X' and r_X from a single factorization."""
    fac = factorize(theta, data)
    q2, p = data.q_rest, data.p
    pc = pieces_of_diagonals(fac.L1, jnp.diagonal(fac.L22), q2, p)
    x = slice(q2, q2 + p)
    return FactorParts(pc.logdet_L, pc.logdet_RX, pc.r2, fac.L22[x, x], fac.L22[-1, x])


def deviance_ml(theta, sigma, beta, data: CrossProducts):
    """-2 log-likelihood at (theta, sigma, beta), lme4's scale."""
    fp = factor_parts(theta, data)
    r2 = fp.r2 + jnp.sum((fp.RXt.T @ (beta - data.beta0) - fp.rX) ** 2)  # products of y - X beta0
    s2 = sigma**2
    return fp.logdet_L - data.ldw + r2 / s2 + data.n * (LOG2PI + jnp.log(s2))


def deviance_reml(theta, sigma, data: CrossProducts):
    """-2 restricted log-likelihood at (theta, sigma), lme4's scale."""
    fp = factor_parts(theta, data)
    s2 = sigma**2
    return fp.logdet_L - data.ldw + fp.logdet_RX + fp.r2 / s2 + (data.n - data.p) * (LOG2PI + jnp.log(s2))


def deviance_varpar(varpar, data: CrossProducts, reml):
    """lmerTest's deviance of the variance parameters varpar = (theta, sigma).

    For ML, beta is at its conditional estimate beta(theta), where the
    quadratic term vanishes; for REML it does not enter. ``reml`` is a
    Python boolean (static).
    """
    theta, sigma = varpar[:-1], varpar[-1]
    if reml:
        return deviance_reml(theta, sigma, data)
    fp = factor_parts(theta, data)
    s2 = sigma**2
    return fp.logdet_L - data.ldw + fp.r2 / s2 + data.n * (LOG2PI + jnp.log(s2))


def vcov_beta_varpar(varpar, data: CrossProducts):
    """Var(beta-hat) = sigma^2 (R_X'R_X)^{-1} as a function of (theta, sigma)."""
    theta, sigma = varpar[:-1], varpar[-1]
    inv = solve_triangular(factor_parts(theta, data).RXt, jnp.eye(data.p), lower=True)
    return sigma**2 * (inv.T @ inv)


def _m_and_r2(theta, data: CrossProducts):
    """M(theta) = (R_X'R_X)^{-1} (Var(beta-hat) / sigma^2) and r^2(theta), from one factorization."""
    fp = factor_parts(theta, data)
    inv = solve_triangular(fp.RXt, jnp.eye(data.p), lower=True)
    return inv.T @ inv, fp.r2


@lean_jit
def theta_derivatives(theta, data: CrossProducts):
    """M = (R_X'R_X)^{-1}, dM/dtheta (p, p, n_theta) and dr^2/dtheta at theta, by one forward-mode
    pass: with the fit's Hessian of the profiled criterion, what Satterthwaite's df need
    (:mod:`jaxlmm.satterthwaite`)."""
    (M, _), (dM, dr2) = _m_and_r2(theta, data), jax.jacfwd(_m_and_r2)(theta, data)
    return M, dM, dr2
