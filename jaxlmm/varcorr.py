"""The random-effect covariances Sigma_m = sigma^2 T_m T_m' as SDs and correlations, and back.

lme4 reports each term's covariance matrix by its standard deviations
sqrt(Sigma_ii) and correlations Sigma_ij / (sd_i sd_j) (``VarCorr``); its
``confint`` and ``profile`` name them ``sd_<column>|<group>`` and
``cor_<column>.<column>|<group>`` in the order of theta (per term, the lower
triangle column-wise). Both directions are here: from (theta, sigma) to the
table and to the named SDs/correlations of many replicates at once, and from
SDs/correlations back to theta (:func:`theta_from_sdcor`, differentiable,
for the likelihood profiles).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .theta import dims_of, factors_batch, term_group_names, theta_layout


def covariances(theta, sigma, terms) -> list[np.ndarray]:
    """sigma^2 T_m T_m' of every replicate: per term, an array (B, k_m, k_m)."""
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    return [
        sigma[:, None, None] ** 2 * np.einsum("bij,bkj->bik", T, T)
        for T in factors_batch(theta, dims_of(terms))
    ]


def _correlation(S, r: int, c: int, sd):
    """Sigma_rc / (sd_r sd_c); NaN where an SD is 0."""
    den = sd[..., r] * sd[..., c]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, S[..., r, c] / np.where(den > 0, den, 1.0), np.nan)


def sd_cor(theta: np.ndarray, sigma: np.ndarray, terms) -> dict:
    """Random-effect SDs and correlations per replicate, lme4's oldNames=FALSE names.

    ``theta`` (B, n_theta) or (n_theta,), ``sigma`` (B,) or a number. The
    SDs are sqrt(diag Sigma_m), the correlations Sigma_ij / (sd_i sd_j) (NaN
    where an SD is 0). Order: per term, the lower triangle column-wise (sd_1,
    cor_21, ..., sd_2, ...), as lme4's confint; then ``sigma``.
    """
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    out = {}
    Ss = covariances(theta, sigma, terms)
    for grp, t, (rows, cols), S in zip(term_group_names(terms), terms, theta_layout(dims_of(terms)), Ss):
        sd = np.sqrt(np.diagonal(S, axis1=1, axis2=2))
        for r, c in zip(rows, cols):
            if r == c:
                out[f"sd_{t.colnames[r]}|{grp}"] = sd[:, r]
            else:
                out[f"cor_{t.colnames[r]}.{t.colnames[c]}|{grp}"] = _correlation(S, r, c, sd)
    out["sigma"] = sigma
    return out


def sdcor_estimates(theta, sigma, terms) -> tuple[list[str], np.ndarray]:
    """lme4's names and values of the SDs, correlations and sigma at one (theta, sigma)."""
    out = sd_cor(np.asarray(theta)[None, :], np.array([float(sigma)]), terms)
    return list(out), np.array([float(np.asarray(v).reshape(-1)[0]) for v in out.values()])


def varcorr_table(theta, sigma: float, terms) -> pd.DataFrame:
    """lme4's ``VarCorr`` as a frame: group, term1, term2, variance (or covariance), sd_cor.

    One row per column of each term (its variance and SD), then per pair of
    columns (the covariance and the correlation), then the residual.
    """
    rows = []
    for grp, t, S in zip(term_group_names(terms), terms, covariances(theta, sigma, terms)):
        S = S[0]
        sd = np.sqrt(np.diag(S))
        for i, name in enumerate(t.colnames):
            rows.append((grp, name, None, S[i, i], sd[i]))
        for i in range(t.k):
            for j in range(i + 1, t.k):
                rows.append((grp, t.colnames[i], t.colnames[j], S[i, j], float(_correlation(S, i, j, sd))))
    rows.append(("Residual", None, None, sigma**2, sigma))
    # the name columns are object columns with None where lme4 has NA, whatever the model
    # (pandas would otherwise infer a string dtype, turning some None into NaN)
    out = {
        name: pd.Series([r[i] for r in rows], dtype=object)
        for i, name in enumerate(["group", "term1", "term2"])
    }
    out["variance"] = np.array([float(r[3]) for r in rows], dtype=np.float64)
    out["sd_cor"] = np.array([float(r[4]) for r in rows], dtype=np.float64)
    return pd.DataFrame(out)


def theta_from_sdcor(sdcor, sigma, term_dims):
    """theta from the SDs and correlations of each term (layout of theta) and sigma (JAX).

    T_m = diag(sd) chol(R) / sigma, R the correlation matrix: the lower
    Cholesky factor of Sigma_m / sigma^2 with a non-negative diagonal.
    """
    out, i = [], 0
    for (rows, cols), (_, k) in zip(theta_layout(term_dims), term_dims):
        m = len(rows)
        v = sdcor[i : i + m]
        i += m
        diag = rows == cols
        sd = jnp.zeros(k, dtype=v.dtype).at[cols[diag]].set(v[diag])
        if k == 1:
            out.append(sd / sigma)
            continue
        off = ~diag
        R = jnp.eye(k, dtype=v.dtype).at[rows[off], cols[off]].set(v[off])
        R = R.at[cols[off], rows[off]].set(v[off])
        T = sd[:, None] * jnp.linalg.cholesky(R) / sigma
        out.append(T[rows, cols])
    return jnp.concatenate(out) if out else jnp.zeros(0, dtype=sdcor.dtype)
