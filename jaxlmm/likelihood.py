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

the functions lmerTest's ``devfun_vp`` evaluates (Kuznetsova, Brockhoff &
Christensen, J. Stat. Softw. 2017) and lme4's ``devfun2`` profiles.
Minimizing over sigma (and beta) gives back the profiled criteria.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .crossprod import CrossProducts
from .objective import LOG2PI, pieces, solve


def deviance_ml(theta, sigma, beta, data: CrossProducts):
    """-2 log-likelihood at (theta, sigma, beta), lme4's scale."""
    pc = pieces(theta, data)
    sol = solve(theta, data)
    delta = sol.RX.T @ (beta - sol.beta)  # R_X (beta - beta(theta)); sol.RX is R_X'
    r2 = pc.r2 + jnp.sum(delta**2)
    s2 = sigma**2
    return pc.logdet_L + r2 / s2 + data.n * (LOG2PI + jnp.log(s2))


def deviance_reml(theta, sigma, data: CrossProducts):
    """-2 restricted log-likelihood at (theta, sigma), lme4's scale."""
    pc = pieces(theta, data)
    s2 = sigma**2
    return pc.logdet_L + pc.logdet_RX + pc.r2 / s2 + (data.n - data.p) * (LOG2PI + jnp.log(s2))


def deviance_varpar(varpar, data: CrossProducts, reml):
    """lmerTest's deviance of the variance parameters varpar = (theta, sigma).

    For ML, beta is at its conditional estimate beta(theta); for REML it
    does not enter. ``reml`` is a Python boolean (static).
    """
    theta, sigma = varpar[:-1], varpar[-1]
    if reml:
        return deviance_reml(theta, sigma, data)
    return deviance_ml(theta, sigma, solve(theta, data).beta, data)


def vcov_beta_varpar(varpar, data: CrossProducts):
    """Var(beta-hat) = sigma^2 (R_X'R_X)^{-1} as a function of (theta, sigma)."""
    theta, sigma = varpar[:-1], varpar[-1]
    RXt = solve(theta, data).RX  # lower triangular, R_X' R_X = RXt RXt'
    inv = solve_triangular(RXt, jnp.eye(data.p), lower=True)
    return sigma**2 * (inv.T @ inv)
