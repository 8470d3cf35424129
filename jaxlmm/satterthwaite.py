"""Satterthwaite's degrees of freedom for tests of the fixed effects, by exact autodiff.

For a contrast c'beta (Satterthwaite, Biometrics Bull. 1946; Giesbrecht &
Burns, Biometrics 1985; lmerTest, Kuznetsova et al., J. Stat. Softw. 2017):

    nu = 2 (c' V c)^2 / (g' A g),   V = Var(beta-hat)(phi),
    g_m = c' (dV/dphi_m) c,         A = 2 H^{-1},

with phi = (theta, sigma) the variance parameters and H the Hessian of the
deviance D(phi) (:func:`jaxlmm.likelihood.deviance_varpar`: REML for REML
fits, ML for ML fits) at the estimate; A is the asymptotic covariance of
phi-hat. lmerTest takes g and H by finite differences; here both are exact.
nu does not depend on how phi is parameterized.

Where the fit's Newton optimizer computed the exact Hessian h of the
profiled criterion d(theta) at its optimum (``fit.hessian``), H follows from
it without differentiating twice again. With D(theta, sigma) = c(theta) +
r^2(theta)/sigma^2 + m log sigma^2 (m = n - p for REML, n for ML; c holds
the log-determinants) and sigma-hat^2 = r^2/m, so d(theta) = c + m log(r^2/m)
+ m, at sigma = sigma-hat (where the fit reports sigma) with g = dr^2/dtheta:

    H_theta,theta = h + g g' / (m sigma^4),  H_theta,sigma = -2 g / sigma^3,
    H_sigma,sigma = 4 m / sigma^2;

and V = sigma^2 M(theta) with M = (R_X'R_X)^{-1}, so dV/dsigma = 2 V/sigma.
One forward-mode pass in theta then gives dM/dtheta and g together
(:func:`jaxlmm.likelihood.theta_derivatives`). Otherwise (fits with BFGS Hessians or by
L-BFGS) H is ``jax.hessian`` of D and dV/dphi ``jax.jacfwd`` of V
(:func:`_derivatives`). As lmerTest, H is inverted on its positive eigenvalues
only, so a parameter on the boundary whose curvature vanishes drops out; the
eigenvalues are those of H in each parameter's own units (sigma, and the SD
of its effect over sigma for a theta: :func:`varpar_scales`), so that no
direction is dropped because sigma is small beside theta.

For a q-row contrast matrix L the F statistic and its denominator df follow
lmerTest's ``contestMD`` (Fai & Cornelius, J. Stat. Comput. Simul. 1996):
with L V L' = P diag(d) P', the q one-degree contrasts P_m'L give
t_m^2 = (P_m'L beta)^2 / d_m and nu_m; F = sum t_m^2 / q and, with
E = sum nu_m/(nu_m - 2), ddf = 2E/(E - q) (2 if some nu_m <= 2).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
import pandas as pd

from ._config import lean_jit, on_device
from .distributions import f_sf, t_sf2
from .errors import JaxLMMError
from .likelihood import deviance_varpar, theta_derivatives, vcov_beta_varpar
from .theta import factors_batch, theta_layout

DDF_METHODS = ("satterthwaite", "wald", "residual")


class VarparDerivatives(NamedTuple):
    """V = Var(beta-hat), its Jacobian J (p, p, m) in phi, and A = 2 H^+ (m, m)."""

    V: np.ndarray
    J: np.ndarray
    A: np.ndarray


@lean_jit(static_argnames="reml")
def _derivatives(varpar, data, reml):
    H = jax.hessian(deviance_varpar)(varpar, data, reml)
    J = jax.jacfwd(vcov_beta_varpar)(varpar, data)
    return vcov_beta_varpar(varpar, data), J, H


def _from_profiled_hessian(fit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, J, H) from the fit's exact Hessian of the profiled criterion (the module's notes)."""
    sigma, data = float(fit.sigma), fit.products
    M, dM, g = (np.asarray(a) for a in theta_derivatives(on_device(fit.theta), data))
    m = float(data.n) - data.p if fit.reml else float(data.n)
    k = len(fit.theta)
    H = np.empty((k + 1, k + 1))
    gs = g / sigma**2  # g / sigma^2 first: g g' alone overflows where the weights are ~1e100
    H[:k, :k] = fit.hessian + np.outer(gs, gs) / m
    H[:k, k] = H[k, :k] = -2.0 * gs / sigma
    H[k, k] = 4.0 * m / sigma**2
    J = np.concatenate([sigma**2 * dM, (2.0 * sigma * M)[:, :, None]], axis=2)
    return sigma**2 * M, J, H


def positive_inverse(H: np.ndarray, scales: np.ndarray | None = None, tol: float = 1e-8) -> np.ndarray:
    """Inverse of the symmetric H on its eigenvalues above tol * max(|eig|) (lmerTest), taken in the
    units ``scales`` of its parameters: H's rows and columns are multiplied by them first, so that a
    direction is dropped for being flat, not for being measured in large units."""
    s = np.ones(len(H)) if scales is None else np.asarray(scales, dtype=np.float64)
    lam, Q = np.linalg.eigh(H * s[:, None] * s[None, :])
    keep = lam > tol * max(np.max(np.abs(lam), initial=0.0), 1e-300)
    Qk = Q[:, keep] * s[:, None]
    return (Qk / lam[keep]) @ Qk.T


def varpar_scales(theta, sigma: float, term_dims) -> np.ndarray:
    """The natural size of each of phi = (theta, sigma): sigma for sigma, and for an entry in row i
    of a term's relative factor the length of that row (the SD of the term's i-th effect over sigma;
    1 where it is 0, a variance on the boundary). Invariant to the units of y and of the columns:
    the inverse of H in these units keeps the directions lmerTest keeps at any scale."""
    out = []
    for T, (rows, _) in zip(factors_batch(theta, term_dims), theta_layout(term_dims)):
        length = np.linalg.norm(T[0], axis=1)
        out.append(np.where(length > 0, length, 1.0)[rows])
    return np.concatenate(out + [[float(sigma)]])


def varpar_derivatives(fit) -> VarparDerivatives:
    """V, dV/dphi and A = 2 H^+ at the fit's (theta, sigma); the fit keeps them (``fit.varpar_derivatives``)."""
    if fit.hessian is not None and len(fit.theta) and fit.sigma > 0:
        V, J, H = _from_profiled_hessian(fit)
    else:
        varpar = on_device(np.append(fit.theta, fit.sigma))
        V, J, H = _derivatives(varpar, fit.products, bool(fit.reml))
    scales = varpar_scales(fit.theta, fit.sigma, fit.products.term_dims) if fit.sigma > 0 else None
    return VarparDerivatives(np.asarray(V), np.asarray(J), 2.0 * positive_inverse(np.asarray(H), scales))


def contrast_df(der: VarparDerivatives, c) -> float:
    """Satterthwaite's df of the single contrast c'beta."""
    c = np.asarray(c, dtype=np.float64)
    var = c @ der.V @ c
    g = np.einsum("i,ijm,j->m", c, der.J, c)
    denom = g @ der.A @ g
    return float(2.0 * var**2 / denom) if denom > 0 else float("inf")


def satterthwaite_df(fit) -> np.ndarray:
    """Satterthwaite's df of each fixed effect (the unit contrasts)."""
    der = fit.varpar_derivatives
    eye = np.eye(len(fit.fixef))
    return np.array([contrast_df(der, e) for e in eye])


def coef_table(fit, ddf: str = "satterthwaite") -> pd.DataFrame:
    """Estimate, SE, df, t and two-sided p for each fixed effect.

    ``ddf``: ``"satterthwaite"`` (lmerTest's default), ``"residual"``
    (df = n - p) or ``"wald"`` (the normal law, df infinite).
    """
    if ddf not in DDF_METHODS:
        raise JaxLMMError(f"ddf must be one of {DDF_METHODS}, not {ddf!r}.")
    est, se = fit.fixef.to_numpy(), fit.se.to_numpy()
    if ddf == "satterthwaite":
        df = satterthwaite_df(fit)
    elif ddf == "residual":
        df = np.full(len(est), float(fit.nobs - len(est)))
    else:
        df = np.full(len(est), np.inf)
    t = est / se
    return pd.DataFrame(
        {"estimate": est, "se": se, "df": df, "t": t, "p": t_sf2(t, df)}, index=fit.fixef.index
    )


def _as_contrast(fit, L) -> np.ndarray:
    names = list(fit.fixef.index)
    if isinstance(L, pd.DataFrame):
        missing = [c for c in L.columns if c not in names]
        if missing:
            raise JaxLMMError(f"Contrast column '{missing[0]}' is not a fixed effect; they are {names}.")
        L = L.reindex(columns=names, fill_value=0.0).to_numpy()
    try:
        L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    except (TypeError, ValueError):
        raise JaxLMMError(
            f"The contrast matrix L must be numbers, one column per fixed effect {names}, not {L!r}."
        ) from None
    if L.ndim != 2 or L.shape[1] != len(names):
        raise JaxLMMError(
            f"The contrast matrix L needs {len(names)} columns (one per fixed effect {names}), "
            f"got shape {L.shape}."
        )
    if not np.all(np.isfinite(L)):
        raise JaxLMMError("The contrast matrix L has non-finite entries.")
    return L


def fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """Denominator df of the F statistic from the per-contrast nu_m (lmerTest's get_Fstat_ddf)."""
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - len(nu))


def f_test(fit, L, rhs=0.0, eps: float = np.sqrt(np.finfo(float).eps)) -> pd.DataFrame:
    """F test of H0: L beta = rhs with Satterthwaite's denominator df (lmerTest's contestMD).

    Returns one row: ``num_df`` (rank of L V L'), ``den_df``, ``F`` and ``p``; none where L has no
    rows (as lmerTest's ``contestMD``).
    """
    L = _as_contrast(fit, L)
    if L.shape[0] == 0:
        return pd.DataFrame({"num_df": np.zeros(0, np.int64), "den_df": [], "F": [], "p": []})
    der = fit.varpar_derivatives
    beta = fit.fixef.to_numpy()
    d, P = np.linalg.eigh(L @ der.V @ L.T)
    d, P = d[::-1], P[:, ::-1]
    q = int(np.sum(d > max(eps * d[0], 0.0)))
    if q < 1:
        raise JaxLMMError("The contrast matrix L has rank zero: nothing to test.")
    PtL = P[:, :q].T @ L
    try:
        rhs = np.broadcast_to(np.asarray(rhs, dtype=np.float64), (L.shape[0],))
    except (TypeError, ValueError):
        raise JaxLMMError(
            f"rhs must be a number or {L.shape[0]} numbers (one per row of L), not {rhs!r}."
        ) from None
    if not np.all(np.isfinite(rhs)):
        raise JaxLMMError(f"rhs must be finite, not {rhs.tolist()}.")
    t2 = (PtL @ beta - P[:, :q].T @ rhs) ** 2 / d[:q]
    F = float(np.sum(t2) / q)
    nu = np.array([contrast_df(der, row) for row in PtL])
    ddf = fstat_ddf(nu)
    return pd.DataFrame({"num_df": [q], "den_df": [ddf], "F": [F], "p": [float(f_sf(F, q, ddf))]})
