"""The parametric bootstrap of a fit (lme4's ``bootMer``): replicates, their table and intervals.

The refits themselves are :mod:`jaxlmm.replicates` (simulate a batch of
responses, refit them all in one batched computation); here they become a
table with one row per replicate (objective, sigma, beta, theta, SDs and
correlations, convergence) and percentile or shortest intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._config import uses_float64
from .control import Control, as_control
from .errors import ConvergenceWarning, JaxLMMError, warn
from .replicates import Job, Passes, Refit, fit_params, run_replicates, target_of
from .results import LmmFit
from .theta import theta_names
from .validate import check_bool, check_count, check_level, check_seed
from .results import check_fit
from .varcorr import sd_cor


def replicate_table(res: Refit, fit: LmmFit) -> pd.DataFrame:
    """One row per replicate: objective, sigma, beta, theta, SDs/correlations, convergence."""
    terms = fit.terms
    cols = {"objective": res.objective, "sigma": res.sigma}
    cols.update({name: res.beta[:, j] for j, name in enumerate(fit.design.fixed_names)})
    cols.update({f"theta_{name}": res.theta[:, j] for j, name in enumerate(theta_names(terms))})
    sc = sd_cor(res.theta, res.sigma, terms)
    sc.pop("sigma")
    cols.update(sc)
    cols["converged"] = res.converged.astype(bool)
    cols["n_iter"] = res.n_iter
    return pd.DataFrame(cols)


def warn_failed(n_failed: int, n: int, what: str) -> None:
    if n_failed:
        warn(
            f"{n_failed} of {n} {what} replicate(s) did not converge; they are excluded "
            "from the results (see the 'converged' column of .table).",
            ConvergenceWarning,
        )


# ---- intervals -----------------------------------------------------------------------


def shortest_interval(v: np.ndarray, level: float) -> tuple[float, float]:
    """The shortest interval holding ceil(level * B) of the B sorted values (MixedModels.jl's shortestcovint)."""
    v = np.sort(v[np.isfinite(v)])
    if len(v) == 0:
        return np.nan, np.nan
    m = max(1, math.ceil(level * len(v)))
    widths = v[m - 1 :] - v[: len(v) - m + 1]
    i = int(np.argmin(widths))
    return float(v[i]), float(v[i + m - 1])


def percentile_interval(v: np.ndarray, level: float) -> tuple[float, float]:
    """Equal-tailed interval: the (1 -/+ level)/2 sample quantiles (numpy's linear rule)."""
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


INTERVALS = {"percentile": percentile_interval, "shortest": shortest_interval}


# ---- the user-facing result --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """B parametric-bootstrap refits of a fitted model (frozen).

    ``table``: one row per replicate; ``n_used`` converged replicates enter
    the intervals, ``n_failed`` did not converge and are excluded.
    """

    table: pd.DataFrame
    parameters: tuple  # names of the parameters, lme4's confint order
    reml: bool
    seed: int
    n_used: int
    n_failed: int
    passes: Passes | None = None  # chunk size and the time of the batched passes (jaxlmm.replicates.Passes)

    def confint(self, level: float = 0.95, method: str = "percentile") -> pd.DataFrame:
        """Bootstrap intervals for sd_/cor_ parameters, sigma and the fixed effects.

        ``percentile``: equal-tailed sample quantiles; ``shortest``: the
        shortest interval holding a fraction ``level`` of the replicates.
        Correlations ignore replicates where they are undefined (an SD at 0).
        """
        if method not in INTERVALS:
            raise JaxLMMError(f"method must be one of {tuple(INTERVALS)}, not {method!r}.")
        level = check_level(level)
        ok = self.table[self.table["converged"]]
        rows = [INTERVALS[method](ok[p].to_numpy(dtype=np.float64), level) for p in self.parameters]
        return pd.DataFrame(rows, index=list(self.parameters), columns=["lower", "upper"])

    def __repr__(self) -> str:
        return f"<BootstrapResult {'REML' if self.reml else 'ML'} n_used={self.n_used} n_failed={self.n_failed}>"


@uses_float64
def bootstrap(fit, n: int = 10_000, seed: int | None = 0, chunk_size: int | None = None, progress: bool = True,
              control: Control | None = None) -> BootstrapResult:
    """Parametric bootstrap of ``fit`` (lme4's ``bootMer`` with ``use.u = FALSE``).

    Simulates ``n`` responses from the fitted beta, theta, sigma and refits
    each by the fit's criterion (REML or ML), starting at the fitted theta.
    ``seed``: an integer in 0 .. 2**63 - 1, or None for a random one; either
    way recorded as ``result.seed``. The memory of the keys, the results and
    one chunk is checked before anything is allocated
    (:func:`jaxlmm.memory.bootstrap_bytes`). ``control``: the settings of the
    refits (default: the fit's, ``fit.control``).
    """
    check_fit(fit, func="bootstrap")
    n = check_count(n, "n (the number of bootstrap replicates)")
    seed, progress = check_seed(seed), check_bool(progress, "progress")
    control = fit.control if control is None else as_control(control)
    tg = target_of(fit)
    job = Job(n, seed, tg.rows, fit_params(fit), (tg,), fit.reml, control)
    (res,), passes = run_replicates(job, chunk_size, progress, "bootstrap")
    table = replicate_table(res, fit)
    n_failed = int((~table["converged"]).sum())
    warn_failed(n_failed, len(table), "bootstrap")
    names = list(fit.sdcor.index) + list(fit.design.fixed_names)
    return BootstrapResult(table, tuple(names), fit.reml, int(seed), len(table) - n_failed, n_failed, passes)
