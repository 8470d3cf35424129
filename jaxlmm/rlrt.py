"""Exact (restricted) likelihood-ratio tests of one variance component (RLRsim).

H0: sigma_b^2 = 0 for one scalar random-effect term b ~ N(0, sigma_b^2 I_K)
with design Z (n x K). Crainiceanu & Ruppert (JRSS-B 66, 2004, Theorems 1
and 2) give the finite-sample null law of the statistics as a functional of
K + 1 independent chi-square variables. With lambda = sigma_b^2 / sigma^2,
mu_s the eigenvalues of Z' P0 Z (P0 = I - X (X'X)^{-1} X', s = 1..K) and xi_s
those of Z'Z:

    RLRT = sup_{lambda >= 0} (n - p) log(1 + N(lambda) / D(lambda)) - sum_s log(1 + lambda mu_s)
    LRT  = sup_{lambda >= 0} n log(1 + N(lambda) / D(lambda)) - sum_s log(1 + lambda xi_s)
                                     + n log(1 + w_q / (sum_s w_s + w_0))

    N(lambda) = sum_s lambda mu_s / (1 + lambda mu_s) w_s,
    D(lambda) = sum_s w_s / (1 + lambda mu_s) + w_0,

w_s ~ chi2_1 (s = 1..K), w_0 ~ chi2_{n-p-K}, w_q ~ chi2_q (q fixed effects
restricted under H0 in the LRT, 0 for a test of the variance alone).
No model is refitted: the eigenvalues are computed once, from the q x q
cross-products (Z'Z is diagonal for one scalar term, Z'Q from the group
codes; never the n x n projection), and the draws are one vmapped JAX
computation over the lambda grid.

RLRsim's conventions are followed (Scheipl, Greven & Kuechenhoff, CSDA 52,
2008; RLRsim's ``RLRTSim``/``LRTSim``): the eigenvalues are divided by the
largest; the supremum is taken over the grid 0, exp(seq(-10, 8, length = 199))
and is the first local maximum along it; the p-value is the share of the
null sample above the observed statistic. A model with one random-effect term
is tested against the linear model (``exactRLRT(m)``); with several, the
tested term is named, the others stay in both the null and the alternative,
and the null law is that of the model with the tested term alone
(``exactRLRT(m, mA, m0)``), RLRsim's approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._config import ensure_x64, uses_float64
from .errors import JaxLMMError, JaxLMMWarning, warn
from .memory import check_fits
from .validate import check_positive_int, check_seed
from .results import check_fit
from .submodels import bar_label, find_term, with_terms

GRID_LENGTH = 200
LOG_GRID = (-10.0, 8.0)
BATCH = 8192  # draws per vmapped batch
ZERO_TOL = 1e-8  # statistics below this (optimizer rounding at a boundary fit) are 0


@dataclass(frozen=True, eq=False)
class ExactTest:
    """An exact (R)LRT of one variance component (RLRsim's ``exactRLRT`` / ``exactLRT``); read-only.

    ``statistic``: the observed (restricted) likelihood-ratio statistic;
    ``p_value``: the share of ``sample``, the simulated null sample, above it
    (1 when the statistic is 0); ``mu`` (and ``xi``, LRT): the eigenvalues
    the sample was drawn with, divided by the largest.
    """

    method: str  # "RLRT" or "LRT"
    term: str
    statistic: float
    p_value: float
    sample: np.ndarray
    nsim: int
    seed: int
    mu: np.ndarray
    xi: np.ndarray
    q: int
    formula: str
    formula_null: str

    def __repr__(self) -> str:
        return (
            f"<ExactTest {self.method} of {self.term}: statistic={self.statistic:.4f}, "
            f"p={self.p_value:.4g} ({self.nsim} simulated values)>"
        )

    def __str__(self) -> str:
        return (
            f"Simulated finite sample distribution of the {self.method} (p-value based on "
            f"{self.nsim} simulated values)\n"
            f"Alternative: {self.formula}\nNull:        {self.formula_null}\n"
            f"{self.method} = {self.statistic:.4f}, p-value = {self.p_value:.4g}"
        )


# ---- the eigenvalues ----------------------------------------------------------------------


def _term_products(term, X):
    """Z'Z (its diagonal: one scalar term) and Z'X of a term, from its codes and column."""
    z = term.X[:, 0]
    zz = np.bincount(term.codes, weights=z * z, minlength=term.nlevels)
    zx = np.zeros((term.nlevels, X.shape[1]))
    np.add.at(zx, term.codes, z[:, None] * X)
    return zz, zx


def eigenvalues(term, X) -> tuple[np.ndarray, np.ndarray]:
    """mu (of Z' P0 Z) and xi (of Z'Z), largest first, min(n, K) of each (RLRsim's ``svd`` sizes).

    Z' P0 Z = Z'Z - (Z'Q)(Q'Z) with X = QR: a K x K matrix, never n x n.
    """
    if term.k != 1:
        raise JaxLMMError(
            f"The exact test needs a term with one variance; {bar_label(term)} has {term.k} columns "
            "(test one column of an uncorrelated term (x || g) instead)."
        )
    n = X.shape[0]
    zz, zx = _term_products(term, X)
    if X.shape[1]:
        zq = np.linalg.solve(np.linalg.cholesky(X.T @ X), zx.T).T  # Z'Q = Z'X R^{-1}
        M = np.diag(zz) - zq @ zq.T
    else:
        M = np.diag(zz)
    K = min(n, term.nlevels)
    mu = np.sort(np.clip(np.linalg.eigvalsh(M), 0.0, None))[::-1][:K]
    xi = np.sort(zz)[::-1][:K]
    return mu, xi


def lambda_grid(length: int = GRID_LENGTH, log_range=LOG_GRID) -> np.ndarray:
    """RLRsim's grid of lambda: 0 and ``length - 1`` points equally spaced in log."""
    return np.concatenate([[0.0], np.exp(np.linspace(log_range[0], log_range[1], length - 1))])


# ---- the simulation -----------------------------------------------------------------------


def _profile(w, w0, fN, ratio, sumlog, n0):
    """The first local maximum of the (R)LR along the grid for one draw (RLRsim's stopping rule).

    With T = sum_s w_s + w_0 and D_g = T - N_g (fD = 1 - fN), 1 + N_g / D_g = T / D_g, so
    LR_g = n0 log(T / D_g) - sumlog_g, and LR_{g+1} < LR_g exactly when
    D_g < D_{g+1} ratio_g, ratio_g = exp((sumlog_{g+1} - sumlog_g) / n0): the descent is
    found without a logarithm; one is taken, at the maximum.
    """
    T = jnp.sum(w) + w0
    D = T - fN @ w
    down = D[:-1] < D[1:] * ratio
    first = jnp.where(jnp.any(down), jnp.argmax(down), D.shape[0] - 1)
    return n0 * jnp.log(T / D[first]) - sumlog[first]


class Law(NamedTuple):
    """What a draw needs: the grid's coefficients, the eigenvalues' mask and the chi-square dfs."""

    fN: jax.Array  # (grid, K') lambda mu / (1 + lambda mu)
    ratio: jax.Array  # (grid - 1,) exp((sumlog_{g+1} - sumlog_g) / n0)
    sumlog: jax.Array  # (grid,) sum_s log(1 + lambda xi_s)
    mask: jax.Array  # (K',) 1 for the K eigenvalues, 0 for padding
    n0: jax.Array  # n - p (RLRT) or n (LRT)
    n: jax.Array
    dfs: jax.Array  # (2,) the dfs of w_0 and w_q
    ml: jax.Array  # 1.0 for the LRT's extra term, else 0.0


def _chi2(key, dfs, shape):
    """chi2 draws of the given dfs (a df of 0 is the point mass at 0): 2 Gamma(df / 2)."""
    g = 2.0 * jax.random.gamma(key, jnp.maximum(dfs, 1.0) / 2.0, shape=shape + dfs.shape, dtype=jnp.float64)
    return jnp.where(dfs > 0, g, 0.0)


@jax.jit
def _draw_batch(key, batch, law: Law):
    """The ``BATCH`` draws of batch number ``batch``, from ``jax.random.fold_in(key, batch)``."""
    k1, k2 = jax.random.split(jax.random.fold_in(key, batch))
    w = law.mask * jax.random.normal(k1, (BATCH,) + law.mask.shape, dtype=jnp.float64) ** 2
    w0, wq = _chi2(k2, law.dfs, (BATCH,)).T
    stat = jax.vmap(_profile, in_axes=(0, 0, None, None, None, None))(w, w0, law.fN, law.ratio, law.sumlog, law.n0)
    return stat + law.ml * law.n * jnp.log1p(wq / (jnp.sum(w, axis=1) + w0))


def padded_size(K: int) -> int:
    """Eigenvalues are padded (masked) to a multiple of 8: few compiled programs, little wasted work."""
    return max(8, -(-K // 8) * 8)


def make_law(mu, xi, n: int, p: int, q: int, ml: bool, grid) -> Law:
    K = len(mu)
    Kp = padded_size(K)
    mu_p = np.zeros(Kp)
    mu_p[:K] = mu
    xi_p = np.zeros(Kp)
    xi_p[:K] = xi
    lm = grid[:, None] * mu_p[None, :]
    sumlog = np.sum(np.log1p(grid[:, None] * xi_p[None, :]), axis=1)
    n0 = n if ml else n - p
    f64 = partial(jnp.asarray, dtype=jnp.float64)
    return Law(
        fN=f64(lm / (1.0 + lm)),
        ratio=f64(np.exp(np.diff(sumlog) / n0)),
        sumlog=f64(sumlog),
        mask=f64(np.arange(Kp) < K),
        n0=f64(n0),
        n=f64(n),
        dfs=f64([max(n - p - K, 0), q if ml else 0]),
        ml=f64(1.0 if ml else 0.0),
    )


def null_sample(mu, xi, n: int, p: int, q: int = 0, nsim: int = 10_000, seed: int = 0, ml: bool = False,
                grid_length: int = GRID_LENGTH, log_range=LOG_GRID) -> np.ndarray:
    """``nsim`` draws of the null law of the RLRT (``ml=False``) or LRT (``ml=True``), as numpy.

    ``mu``, ``xi``: the eigenvalues, already scaled. Draws come in batches
    of ``BATCH``, batch b from ``jax.random.fold_in(jax.random.key(seed), b)``:
    the first draws of a larger sample are the same numbers.
    """
    ensure_x64()
    law = make_law(np.asarray(mu, float), np.asarray(xi, float), n, p, q, ml, lambda_grid(grid_length, log_range))
    key = jax.random.key(seed)
    parts = [_draw_batch(key, jnp.asarray(b, dtype=jnp.int64), law) for b in range(-(-nsim // BATCH))]
    return np.concatenate([np.asarray(x) for x in parts])[:nsim]


# ---- the tests ----------------------------------------------------------------------------


def _refit(fit, reml: bool, what: str):
    if fit.reml == reml:
        return fit
    kind = "REML" if reml else "ML"
    warn(f"refitting the model by {kind}: the exact {what} compares {kind} likelihoods", JaxLMMWarning)
    return fit.refit(reml=reml)


def _p_value(stat: float, sample: np.ndarray) -> float:
    return 1.0 if stat == 0.0 else float(np.mean(stat < sample))


def _statistic(alt, null) -> float:
    stat = max(0.0, 2.0 * (alt.loglik - null.loglik))
    return 0.0 if stat < ZERO_TOL else stat


@uses_float64
def exact_rlrt(fit, term=None, nsim: int = 10_000, seed: int | None = 0, grid_length: int = GRID_LENGTH,
               log_range=LOG_GRID) -> ExactTest:
    """Exact restricted likelihood-ratio test of one variance component (RLRsim's ``exactRLRT``).

    ``fit``: a fit with one random-effect term, tested against the linear
    model (``exactRLRT(m)``); or with several, ``term`` names the tested one
    (``"(0 + Days | Subject)"``, ``"Subject.Days"``, or its index in the
    formula) and the others stay in both models: the statistic compares
    ``fit`` with its refit without ``term``, and the null law is that of
    the model with ``term`` alone (``exactRLRT(m, mA, m0)``). The tested
    term must have one column. An ML fit is refitted by REML first.
    ``nsim`` draws from the null law, from ``jax.random.key(seed)``.
    """
    return _exact(fit, term, nsim, seed, grid_length, log_range, ml=False, null=None)


@uses_float64
def exact_lrt(fit, null=None, nsim: int = 10_000, seed: int | None = 0, grid_length: int = GRID_LENGTH,
              log_range=LOG_GRID) -> ExactTest:
    """Exact likelihood-ratio test of the one random-effect term of ``fit`` (RLRsim's ``exactLRT``).

    ``null``: the linear model (a fit without random effects) of the same
    rows; its fixed effects may be fewer (``q`` restrictions tested with the
    variance). By default, the linear model with the fixed effects of
    ``fit``. ML throughout: REML fits are refitted by ML first.
    """
    if len(fit.terms) != 1:
        raise JaxLMMError(
            f"exact_lrt needs a model with one random-effect term, not {len(fit.terms)} "
            "(as RLRsim's exactLRT); exact_rlrt(fit, term=...) tests one of several."
        )
    return _exact(fit, None, nsim, seed, grid_length, log_range, ml=True, null=null)


def _null_of(fit, null, ml: bool):
    """The given null fit (None: the fit less the tested term, built by the caller) and q."""
    if null is None:
        return None, 0
    check_fit(null, "null", "exact_lrt")
    if len(null.terms):
        raise JaxLMMError("null must be a fit without random-effect terms (the linear model).")
    d, d0 = fit.design, null.design
    if d0.n != d.n or not np.array_equal(d0.y_net, d.y_net):
        raise JaxLMMError("null was not fitted to the same rows and response as fit.")
    if not set(null.fixef.index) <= set(fit.fixef.index):
        raise JaxLMMError("null's fixed effects must be among those of fit.")
    null = _refit(null, reml=not ml, what="LRT" if ml else "RLRT")
    return null, len(fit.fixef) - len(null.fixef)


def _exact(fit, term, nsim, seed, grid_length, log_range, ml: bool, null) -> ExactTest:
    what = "LRT" if ml else "RLRT"
    check_fit(fit, func=f"exact_{what.lower()}")
    nsim = check_positive_int(nsim, "nsim")
    grid_length = check_positive_int(grid_length, "grid_length")
    if grid_length < 2:
        raise JaxLMMError(f"grid_length must be at least 2 (lambda = 0 and one more), not {grid_length}.")
    try:
        lo, hi = (float(v) for v in log_range)
    except (TypeError, ValueError):
        raise JaxLMMError(f"log_range must be two numbers (the log of the grid's ends), not {log_range!r}.") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise JaxLMMError(f"log_range must be two finite numbers, the first smaller, not {log_range!r}.")
    seed = check_seed(seed)  # None: a random seed, recorded on the result
    # the sample (float64) and its sort, besides one batch's draws
    check_fits(32 * nsim + 8 * BATCH * 64, f"exact_{what.lower()}(nsim={nsim})")
    fit = _refit(fit, reml=not ml, what=what)
    design = fit.design
    if getattr(design, "weights", None) is not None:
        raise JaxLMMError("The exact tests assume unit weights; this model has prior weights.")
    if not design.terms:
        raise JaxLMMError("The model has no random-effect term to test.")
    if term is None:
        if len(design.terms) != 1:
            raise JaxLMMError(
                f"The model has {len(design.terms)} random-effect terms: name the one to test with "
                f"term= (one of {', '.join(bar_label(t) for t in design.terms)})."
            )
        i = 0
    else:
        i = find_term(design, term)
    tested = design.terms[i]
    mu, xi = eigenvalues(tested, design.X)
    if not np.any(mu > 0):
        raise JaxLMMError(f"{bar_label(tested)} is confounded with the fixed effects (Z'P0Z = 0).")
    null_fit, q = _null_of(fit, null, ml)
    if null_fit is None:
        rest = [t for j, t in enumerate(design.terms) if j != i]
        null_fit = with_terms(fit, rest).fit(reml=not ml, method=fit.method)
    scale = max(mu.max(), xi.max()) if ml else mu.max()
    stat = _statistic(fit, null_fit)
    sample = null_sample(mu / scale, (xi if ml else mu) / scale, design.n, design.p, q, nsim, seed, ml,
                         grid_length, log_range)
    return ExactTest(
        method=what,
        term=bar_label(tested),
        statistic=stat,
        p_value=_p_value(stat, sample),
        sample=sample,
        nsim=nsim,
        seed=int(seed),
        mu=mu / scale,
        xi=(xi if ml else mu) / scale,
        q=int(q),
        formula=fit.formula,
        formula_null=null_fit.formula,
    )
