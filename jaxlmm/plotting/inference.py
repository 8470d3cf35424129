"""Figures of inference results: bootstrap distributions and likelihood profiles.

- :func:`plot_bootstrap`: for a :func:`jaxlmm.bootstrap` result, one
  histogram per parameter with the estimate of the original fit and the
  bootstrap interval marked (lme4 users draw these from ``bootMer``'s ``t``);
  for a :func:`jaxlmm.pb_test` result, the histogram of the simulated
  likelihood-ratio statistics LRT* with the observed LRT and the p-value
  (pbkrtest's ``PBmodcomp``).
- :func:`plot_profile`: the profile zeta traces of :func:`jaxlmm.profile`,
  zeta(v) = sign(v - v-hat) sqrt(D(v) - D(v-hat)) against v, with the
  confidence limits where |zeta| = z_{(1+level)/2} (lme4's ``xyplot`` of a
  ``profile``; Bates et al., JSS 2015, section 5.1). A straight zeta trace
  means a symmetric, Wald-like interval; curvature shows where it is not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import JaxLMMError, closest_name
from ..distributions import two_sided_z
from ..validate import check_level
from ._mpl import drop_unused, new_figure


def _grid(n: int, ncols: int, panel=(3.4, 2.6)):
    ncols = max(1, min(ncols, n))
    fig, axes = new_figure(math.ceil(n / ncols), ncols, panel=panel)
    drop_unused(fig, axes, n)
    return fig, axes.ravel()[:n]


def _select(names, params, what: str) -> list[str]:
    names = list(names)
    if params is None:
        return names
    params = [params] if isinstance(params, str) else list(params)
    for p in params:
        if p not in names:
            raise JaxLMMError(f"No {what} '{p}'; the {what}s are {names}.{closest_name(p, names)}")
    return params


def observed_estimates(fit) -> pd.Series:
    """The fit's SDs, correlations, sigma and fixed effects under lme4's confint names."""
    names, values = list(fit.sdcor.index), fit.sdcor.to_numpy()
    return pd.concat([pd.Series(values, index=names), fit.fixef])


def _is_pb_test(result) -> bool:
    return hasattr(result, "lrt") and hasattr(result, "p_value")


def _lrt_star(result) -> np.ndarray:
    """The simulated LRT* of the converged replicates of a pb_test result."""
    t = result.table
    v = t.loc[t["converged"], "lrt"].to_numpy(dtype=np.float64)
    return v[np.isfinite(v)]


def plot_pb_test(result, bins: int = 40):
    """Histogram of LRT* under the null model, the observed LRT and the bootstrap p-value."""
    v = _lrt_star(result)
    fig, axes = _grid(1, 1, panel=(5.0, 3.6))
    ax = axes[0]
    ax.hist(v, bins=bins, color="C0", alpha=0.75, label=f"LRT* ({len(v)} replicates)")
    ax.axvline(result.lrt, color="C3", lw=2, label=f"observed LRT = {result.lrt:.3g}")
    ax.set(
        xlabel="likelihood-ratio statistic",
        ylabel="count",
    )
    ax.set_title(f"Parametric bootstrap p = {result.p_value:.3g}; chi-square p = {result.p_chisq:.3g}", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_bootstrap(result, params=None, *, fit=None, level: float = 0.95, method: str = "percentile",
                   ncols: int = 3, bins: int = 40):
    """Bootstrap distributions: histograms with the estimate and the interval marked.

    ``result`` is a :func:`jaxlmm.bootstrap` result (one panel per parameter,
    or those named in ``params``; the interval is ``result.confint(level,
    method)``; the estimates of ``fit``, when given, are drawn as solid lines)
    or a :func:`jaxlmm.pb_test` result (the LRT* histogram).
    """
    if _is_pb_test(result):
        return plot_pb_test(result, bins=bins)
    if not hasattr(result, "confint") or not hasattr(result, "table"):
        raise JaxLMMError(
            f"plot_bootstrap needs the result of jaxlmm.bootstrap or jaxlmm.pb_test, not {type(result).__name__}."
        )
    names = _select(result.parameters, params, "parameter")
    ci = result.confint(level=level, method=method)
    observed = None if fit is None else observed_estimates(fit)
    table = result.table[result.table["converged"]]
    fig, axes = _grid(len(names), ncols)
    for ax, name in zip(axes, names):
        v = table[name].to_numpy(dtype=np.float64)
        ax.hist(v[np.isfinite(v)], bins=bins, color="C0", alpha=0.75)
        lo, hi = ci.loc[name, ["lower", "upper"]]
        ax.axvline(lo, color="0.2", ls="--", lw=1.2)
        ax.axvline(hi, color="0.2", ls="--", lw=1.2)
        if observed is not None:
            ax.axvline(observed[name], color="C3", lw=2)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Parametric bootstrap ({len(table)} replicates): {100 * level:g}% {method} intervals (dashed)")
    return fig


def _crossing(zs: np.ndarray, vs: np.ndarray, t: float) -> float:
    """v at zeta = t: the quadratic through the two trace points around the crossing and
    the next one towards the estimate (zeta = 0), where the trace is smoothest."""
    if not zs[0] <= t <= zs[-1]:
        return np.nan
    i = int(np.clip(np.searchsorted(zs, t), 1, len(zs) - 1))  # zs[i-1] <= t <= zs[i]
    idx = np.array([i - 1, i, i + 1]) if t < 0 else np.array([i - 2, i - 1, i])  # third point towards zeta = 0
    if idx[0] < 0 or idx[-1] >= len(zs):
        return float(np.interp(t, zs, vs))
    return float(np.polyval(np.polyfit(zs[idx], vs[idx], 2), t))


def profile_interval(value, zeta, level: float = 0.95) -> tuple[float, float]:
    """Limits where the trace crosses zeta = -/+ z (NaN where it does not reach them).

    zeta is monotone in the parameter, so v(zeta) is a function; it is
    interpolated locally by a quadratic (lme4 fits an interpolation spline of
    v on zeta; see :func:`_crossing`).
    """
    z = two_sided_z(check_level(level))
    order = np.argsort(zeta, kind="stable")
    zs, vs = np.asarray(zeta, dtype=np.float64)[order], np.asarray(value, dtype=np.float64)[order]
    return _crossing(zs, vs, -z), _crossing(zs, vs, z)


def plot_profile(profile_df: pd.DataFrame, params=None, level: float = 0.95, ncols: int = 3):
    """Profile zeta traces, one panel per parameter, with the ``level`` limits marked."""
    missing = {"parameter", "value", "zeta"} - set(getattr(profile_df, "columns", []))
    if missing:
        raise JaxLMMError(
            f"plot_profile needs the table of jaxlmm.profile(fit) (columns parameter, value, zeta); "
            f"missing {sorted(missing)}."
        )
    names = _select(dict.fromkeys(profile_df["parameter"]), params, "parameter")
    z = two_sided_z(check_level(level))
    fig, axes = _grid(len(names), ncols)
    for ax, name in zip(axes, names):
        sub = profile_df[profile_df["parameter"] == name].sort_values("value", kind="stable")
        v, zeta = sub["value"].to_numpy(dtype=np.float64), sub["zeta"].to_numpy(dtype=np.float64)
        ax.plot(v, zeta, "-o", ms=3, color="C0")
        for s in (-z, z):
            ax.axhline(s, color="0.5", ls=":", lw=1)
        lo, hi = profile_interval(v, zeta, level)
        ax.vlines([lo, hi], -z, z, colors="C3", linestyles="--", lw=1.2)
        ax.axhline(0.0, color="0.7", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.supylabel("zeta")
    fig.suptitle(f"Profile traces; {100 * level:g}% limits dashed")
    return fig
