"""The tests' oracles: lme4's answers and the textbook formulas the package is checked against.

- lme4's values, written by the R scripts of ``tests/reference/`` (see its
  README): ``load_json``, ``load_fit_reference``, the reference fits' cases
  ``CASES`` and the prior-weights reference ``WEIGHTS``;
- dense textbook formulas: ``dense_criterion`` (the profiled criterion from
  an explicit V), ``simulated_responses`` (the responses the bootstrap draws);
- the data of a reference script (``sleep_z``) and the formulas several test
  files share.

Test files import from here and from ``models`` (the shared fits), never from
``conftest`` or from one another.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# lme4's answers, written by tests/reference/make_reference.R (see its README)
REF = Path(__file__).resolve().parent / "reference"

# reference case -> bundled dataset
CASES = {
    "sleepstudy_slope": "sleepstudy",
    "sleepstudy_uncorr": "sleepstudy",
    "sleepstudy_intercept": "sleepstudy",
    "dyestuff": "dyestuff",
    "dyestuff2_singular": "dyestuff2",
    "penicillin_crossed": "penicillin",
    "pastes_nested": "pastes",
    "insteval_crossed": "insteval",
}

# every reference fit: (case, criterion)
FIT_PARAMS = [(case, crit) for case in CASES for crit in ("REML", "ML")]

# formulas of the bundled datasets that several test files fit
SLOPE = "Reaction ~ Days + (Days | Subject)"
DYE0, DYE1 = "Yield ~ 1", "Yield ~ 1 + (1 | Batch)"
DYE = DYE1


def load_fit_reference(case: str) -> dict:
    return json.loads((REF / "fits" / f"{case}.json").read_text())


def load_json(name: str) -> dict:
    return json.loads((REF / name).read_text())


# ---- prior weights: tests/reference/weights.R writes weights.json ------------------------------


def _vectors(obj):
    """The JSON with R's length-one vectors (written as scalars by auto_unbox) as lists again."""
    if isinstance(obj, dict):
        return {k: (v if k in SCALARS or not isinstance(v, (int, float, str)) else [v]) if not isinstance(v, dict)
                else _vectors(v) for k, v in obj.items()}
    return obj


SCALARS = {"objective", "sigma", "nobs", "formula", "data", "chisq", "df", "p", "lme4_version"}
WEIGHTS = _vectors(load_json("weights.json"))


# ---- the data of tests/reference/profile_singular.R ---------------------------------------------


def sleep_z():
    from jaxlmm.datasets import load

    d = load("sleepstudy").copy()
    d["z"] = ((np.arange(1, len(d) + 1) * 7919) % 97) / 97 - 0.5  # the rule of profile_singular.R
    return d


# ---- dense textbook formulas ------------------------------------------------------------------


def dense_criterion(model, theta, reml):
    """The lecture notes' textbook form with V0 = Z Lambda Lambda' Z' + I built explicitly.

    -2 l_R = log|V0| + log|X'V0^{-1}X| + (n-p)(1 + log(2 pi r^2/(n-p))), with
    r^2 = (y - X b)' V0^{-1} (y - X b) at the GLS b; ML drops log|X'V0^{-1}X| and uses n.
    """
    from jaxlmm.theta import relative_factors

    d = model.design
    n, p = d.n, d.p
    cols, lam = [], []
    for t, T in zip(d.terms, relative_factors(jnp.asarray(theta), model.products.term_dims)):
        Zt = np.zeros((n, t.nlevels * t.k))
        for c in range(t.k):
            Zt[np.arange(n), t.codes * t.k + c] = t.X[:, c]
        cols.append(Zt)
        lam.append(np.kron(np.eye(t.nlevels), np.asarray(T)))
    Z = np.hstack(cols)
    Lam = np.zeros((Z.shape[1], Z.shape[1]))
    lo = 0
    for blk in lam:
        Lam[lo : lo + blk.shape[0], lo : lo + blk.shape[0]] = blk
        lo += blk.shape[0]
    ZL = Z @ Lam
    V0 = ZL @ ZL.T + np.eye(n)
    Vi = np.linalg.inv(V0)
    XtViX = d.X.T @ Vi @ d.X
    b = np.linalg.solve(XtViX, d.X.T @ Vi @ d.y)
    e = d.y - d.X @ b
    r2 = e @ Vi @ e
    logdetV = np.linalg.slogdet(V0)[1]
    if reml:
        return logdetV + np.linalg.slogdet(XtViX)[1] + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
    return logdetV + n * (1 + np.log(2 * np.pi * r2 / n))


def simulated_responses(fit, n, seed):
    """The responses replicate i is built from: simulate(split(key(seed), n)[i])."""
    from jaxlmm.replicates import fit_params, rows_of, simulate

    keys = jax.random.split(jax.random.key(seed), n)
    rows, params = rows_of(fit.design), fit_params(fit)
    return [np.asarray(simulate(k, rows, params)) for k in keys]
