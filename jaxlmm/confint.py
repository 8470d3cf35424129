"""Confidence intervals for all parameters of a fit (lme4's ``confint.merMod``).

Rows in lme4's order and names (``oldNames = FALSE``): the SDs and
correlations of each random-effect term, ``sigma``, then the fixed effects.

- ``profile``: likelihood-ratio intervals {v : |zeta(v)| <= z_{(1+level)/2}}
  from the profiles of :mod:`jaxlmm.profile`;
- ``wald``: beta-hat -/+ z_{(1+level)/2} SE for the fixed effects, NaN for
  the variance parameters (as lme4);
- ``bootstrap``: percentile intervals of the parametric bootstrap
  (:func:`jaxlmm.bootstrap`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._config import uses_float64
from .bootstrap import bootstrap
from .distributions import two_sided_z
from .errors import JaxLMMError
from .memory import check_fits, profile_bytes
from .profile import profile_limits
from .validate import check_count, check_level, check_names, check_seed
from .results import check_fit

METHODS = ("profile", "wald", "bootstrap")
ALIASES = {"boot": "bootstrap"}  # lme4's confint(method = "boot")


def confint_method(method) -> str:
    """The canonical name of an interval method: case-insensitive, lme4's ``"boot"`` is ``"bootstrap"``."""
    key = method.lower() if isinstance(method, str) else method
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise JaxLMMError(
            f"method must be one of {METHODS} (any case; lme4's 'Wald' and 'boot' too), not {method!r}."
        )
    return key


def wald_limits(fit, level: float = 0.95) -> pd.DataFrame:
    """Wald intervals of the fixed effects; NaN rows for the variance parameters."""
    z = two_sided_z(level)
    names = list(fit.sdcor.index)
    est, se = fit.fixef.to_numpy(), fit.se.to_numpy()
    lower = np.concatenate([np.full(len(names), np.nan), est - z * se])
    upper = np.concatenate([np.full(len(names), np.nan), est + z * se])
    return pd.DataFrame({"lower": lower, "upper": upper}, index=names + list(fit.fixef.index))


def parameter_names(fit) -> list[str]:
    """The names of the rows of :func:`confint`: SDs, correlations, sigma, fixed effects."""
    return list(fit.sdcor.index) + list(fit.fixef.index)


@uses_float64
def confint(fit, method: str = "profile", level: float = 0.95, n: int = 1000, seed: int | None = 0, which=None):
    """Intervals (columns lower, upper) by ``profile``, ``wald`` or ``bootstrap``.

    ``method`` is case-insensitive and takes lme4's spellings too: ``"Wald"``,
    ``"boot"``. ``which``: a parameter name or a list of names (default all).
    ``n``, ``seed``: the bootstrap's replicates and seed (``None``: a random
    seed, recorded as ``result.attrs["seed"]``).
    """
    check_fit(fit, func="confint")
    method = confint_method(method)
    level = check_level(level)
    if which is not None:
        which = check_names(which, parameter_names(fit))
    if method == "profile":
        check_fits(profile_bytes(fit), f"The profile of {fit.formula!r}")
        return profile_limits(fit, level=level, which=which)
    if method == "wald":
        out = wald_limits(fit, level)
    else:
        n, seed = check_count(n, "n (the number of bootstrap replicates)"), check_seed(seed)
        out = bootstrap(fit, n=n, seed=seed).confint(level=level, method="percentile")
        out.attrs["seed"] = seed
    return out if which is None else out.loc[which]
