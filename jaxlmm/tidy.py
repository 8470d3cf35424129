"""Tidy tables and plain records of a fit: broom.mixed's ``tidy`` and a JSON-ready dict.

:func:`tidy` gives one row per parameter in broom.mixed's shape (``tidy()``
of an ``lmerModLmerTest`` fit): the fixed effects with their Satterthwaite
df and p-values, then the random-effect parameters (``ran_pars``) as SDs
and correlations, lme4's order (per term, the lower triangle column by
column: ``sd__(Intercept)``, ``cor__(Intercept).Days``, ``sd__Days``), and
the residual SD ``sd__Observation`` of the group ``Residual``. Column names
use underscores where broom uses dots (``std_error``, ``p_value``,
``conf_low``, ``conf_high``).

:func:`to_dict` gathers every estimate of a fit as Python numbers, strings,
lists and dicts (missing values as ``None``), so that ``json.dumps`` takes it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .errors import JaxLMMError
from .theta import dims_of, term_group_names, theta_layout

TIDY_COLUMNS = ["effect", "group", "term", "estimate", "std_error", "statistic", "df", "p_value"]


def ran_pars(fit) -> tuple[list[str], list[str], np.ndarray]:
    """Groups, broom.mixed's terms and values of the random-effect SDs/correlations, then sigma."""
    groups, terms = [], []
    for grp, t, (rows, cols) in zip(
        term_group_names(fit.terms), fit.terms, theta_layout(dims_of(fit.terms))
    ):
        for r, c in zip(rows, cols):
            groups.append(grp)
            terms.append(f"sd__{t.colnames[r]}" if r == c else f"cor__{t.colnames[c]}.{t.colnames[r]}")
    groups.append("Residual")
    terms.append("sd__Observation")
    est = fit.sdcor.to_numpy()
    if len(est) != len(terms):  # pragma: no cover (sd_cor and theta_layout share the order)
        raise RuntimeError("random-effect parameters out of step")
    return groups, terms, est


def tidy(fit, conf_int: bool = False, conf_level: float = 0.95, conf_method: str = "wald",
         n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """broom.mixed's ``tidy(fit, conf.int, conf.level, conf.method)`` as a DataFrame.

    Columns effect, group (None for fixed effects), term, estimate,
    std_error, statistic (t), df and p_value (Satterthwaite's, as lmerTest;
    NaN for ``ran_pars``), and with ``conf_int=True`` conf_low, conf_high from
    :meth:`LmmFit.confint` by ``conf_method`` ("wald": NaN for ``ran_pars``,
    as lme4; "profile"; "bootstrap" with ``n`` replicates and ``seed``).
    """
    ct = fit.coef_table(ddf="satterthwaite")
    groups, terms, est = ran_pars(fit)
    k, m = len(ct), len(terms)
    nan = np.full(m, np.nan)
    table = pd.DataFrame(
        {
            "effect": ["fixed"] * k + ["ran_pars"] * m,
            "group": pd.Series([None] * k + groups, dtype=object),
            "term": list(ct.index) + terms,
            "estimate": np.concatenate([ct["estimate"].to_numpy(), est]),
            "std_error": np.concatenate([ct["se"].to_numpy(), nan]),
            "statistic": np.concatenate([ct["t"].to_numpy(), nan]),
            "df": np.concatenate([ct["df"].to_numpy(), nan]),
            "p_value": np.concatenate([ct["p"].to_numpy(), nan]),
        }
    )
    if not isinstance(conf_int, (bool, np.bool_)):
        raise JaxLMMError(f"conf_int must be True or False, not {conf_int!r}.")
    if conf_int:
        ci = fit.confint(method=conf_method, level=conf_level, n=n, seed=seed)
        # confint's rows: the SDs/correlations and sigma (ran_pars' order), then the fixed effects
        lower, upper = ci["lower"].to_numpy(), ci["upper"].to_numpy()
        table["conf_low"] = np.concatenate([lower[m:], lower[:m]])
        table["conf_high"] = np.concatenate([upper[m:], upper[:m]])
    return table


def _plain(x):
    """Python scalars for JSON: floats (NaN/inf as None), ints, bools, strings."""
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def records(frame: pd.DataFrame) -> list[dict]:
    """The rows of ``frame`` as dicts of plain Python values (for JSON)."""
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def to_dict(fit) -> dict:
    """Every estimate of ``fit`` as plain Python values (``json.dumps`` takes it)."""
    ct = fit.coef_table(ddf="satterthwaite").rename(columns={"se": "std_error", "t": "statistic", "p": "p_value"})
    ct.insert(0, "term", ct.index)
    ngroups: dict[str, int] = {}
    for t in fit.terms:
        ngroups.setdefault(t.name, int(t.nlevels))
    names = [str(n) for n in fit.fixef.index]
    return {
        "formula": fit.formula,
        "data": fit.data_name,
        "reml": bool(fit.reml),
        "criterion": "REML" if fit.reml else "ML",
        "method": fit.method,
        "objective": _plain(fit.objective),
        "loglik": _plain(fit.loglik),
        "deviance": _plain(fit.deviance),
        "aic": _plain(fit.aic),
        "bic": _plain(fit.bic),
        "sigma": _plain(fit.sigma),
        "npar": int(fit.npar),
        "nobs": int(fit.nobs),
        "n_dropped": int(fit.n_dropped),
        "df_resid": int(fit.df_resid),
        "ngroups": ngroups,
        "theta": [_plain(v) for v in fit.theta],
        "fixef": {n: _plain(v) for n, v in zip(names, fit.fixef)},
        "se": {n: _plain(v) for n, v in zip(names, fit.se)},
        "vcov": {"names": names, "matrix": [[_plain(v) for v in row] for row in fit.vcov.to_numpy()]},
        "varcorr": records(fit.varcorr),
        "coefficients": records(ct.reset_index(drop=True)),
        "ran_pars": [{"group": g, "term": t, "estimate": _plain(v)} for g, t, v in zip(*ran_pars(fit))],
        "converged": bool(fit.converged),
        "n_iter": int(fit.n_iter),
        "singular": bool(fit.singular),
        "dropped_columns": [str(c) for c in fit.design.dropped_columns],
    }


def to_json(fit, indent: int | None = 2) -> str:
    """:func:`to_dict` as JSON text (strict JSON: missing values are ``null``)."""
    return json.dumps(to_dict(fit), indent=indent, allow_nan=False)
