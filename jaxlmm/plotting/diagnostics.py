"""Residual and random-effect diagnostics: residuals vs fitted, normal QQ, caterpillar.

The figures lme4 users draw by hand (Bates et al., JSS 2015, section 5;
``plot(fit)``, ``qqnorm(resid(fit))``, ``lattice::qqmath(ranef(fit))`` and
``lattice::dotplot(ranef(fit, condVar = TRUE))``). Every figure plots values
the fit already holds: ``fit.fitted``, ``fit.residuals()`` and ``fit.ranef``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import JaxLMMError, closest_name
from ..distributions import norm_quantile, two_sided_z
from ..validate import check_level
from ._mpl import new_figure


def ppoints(n: int) -> np.ndarray:
    """R's ``ppoints(n)``: (i - a)/(n + 1 - 2a), a = 3/8 for n <= 10, else 1/2."""
    a = 3.0 / 8.0 if n <= 10 else 0.5
    return (np.arange(1, n + 1) - a) / (n + 1 - 2 * a)


def qq_points(values) -> tuple[np.ndarray, np.ndarray]:
    """Theoretical normal quantiles at ``ppoints`` and the sorted sample (R's ``qqnorm``)."""
    y = np.sort(np.asarray(values, dtype=np.float64))
    return norm_quantile(ppoints(len(y))), y


def qq_line(values) -> tuple[float, float]:
    """Intercept and slope of R's ``qqline``: the line through the quartile pairs.

    slope = (Q3 - Q1) / (z_.75 - z_.25), intercept = Q1 - slope * z_.25, with
    sample quartiles of type 7 (numpy's default, R's default).
    """
    q1, q3 = np.quantile(np.asarray(values, dtype=np.float64), [0.25, 0.75])
    z1, z3 = norm_quantile(np.array([0.25, 0.75]))
    slope = (q3 - q1) / (z3 - z1)
    return float(q1 - slope * z1), float(slope)


def _draw_qq(ax, values, title: str) -> None:
    x, y = qq_points(values)
    ax.plot(x, y, "o", ms=3.5, alpha=0.7, label="sample")
    a, b = qq_line(values)
    ax.axline((0.0, a), slope=b, color="0.3", lw=1, ls="--", label="qqline")
    ax.set(title=title, xlabel="Standard normal quantiles", ylabel="Sample quantiles")


def residuals_plot(fit, scaled: bool = False):
    """Conditional residuals y - X beta - Z b against the fitted values X beta + Z b."""
    fig, axes = new_figure(1, 1, panel=(5.0, 3.8))
    ax = axes[0, 0]
    r = fit.residuals(scaled=scaled)
    ax.scatter(fit.fitted, r, s=12, alpha=0.7)
    ax.axhline(0.0, color="0.3", lw=1, ls="--")
    ax.set(
        xlabel="Fitted values",
        ylabel="Scaled residuals" if scaled else "Residuals",
        title="Residuals vs fitted",
    )
    return fig


def ranef_wide(fit, group: str) -> pd.DataFrame:
    """Conditional modes of ``group`` as a levels x terms table (and cond. SDs).

    Columns are a two-level index (``value`` | ``cond_sd``, term); rows keep
    the factor's level order. Raises a JaxLMMError naming the known groups.
    """
    re = fit.ranef
    groups = list(dict.fromkeys(re["group"]))
    if group not in groups:
        raise JaxLMMError(
            f"No random-effect group '{group}'; the fit has: {', '.join(groups)}."
            f"{closest_name(group, groups)}"
        )
    sub = re[re["group"] == group]
    terms = list(dict.fromkeys(sub["term"]))
    levels = list(dict.fromkeys(sub["level"]))
    wide = sub.pivot(index="level", columns="term", values=["value", "cond_sd"])
    return wide.reindex(index=levels, columns=pd.MultiIndex.from_product([["value", "cond_sd"], terms]))


def qq_plot(fit, which: str = "residuals"):
    """Normal QQ plot of the conditional residuals, or of each column of a group's modes."""
    if which == "residuals":
        fig, axes = new_figure(1, 1, panel=(4.5, 3.8))
        _draw_qq(axes[0, 0], fit.residuals(), "Residuals")
        return fig
    wide = ranef_wide(fit, which)["value"]
    fig, axes = new_figure(1, wide.shape[1])
    for ax, term in zip(axes[0], wide.columns):
        _draw_qq(ax, wide[term].to_numpy(), f"{which}: {term}")
    return fig


def caterpillar_order(wide: pd.DataFrame) -> np.ndarray:
    """Level order of a caterpillar plot: increasing first column (as lme4's dotplot)."""
    return np.argsort(wide["value"].iloc[:, 0].to_numpy(), kind="stable")


def _draw_caterpillar(ax, levels, value, sd, z: float, label_levels: bool) -> None:
    pos = np.arange(len(value))
    ax.hlines(pos, value - z * sd, value + z * sd, color="0.45", lw=1)
    ax.plot(value, pos, "o", ms=3.5)
    ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
    if label_levels:
        ax.set_yticks(pos, levels, fontsize=7)
    else:
        ax.set_yticks([])


def caterpillar_plot(fit, group: str | None = None, level: float = 0.95, max_labels: int = 60):
    """Conditional modes b_j ± z * cond_sd_j, levels sorted by the first term's modes.

    One column of panels per (group, term), all terms of a group in the same
    order; z is the normal quantile of ``level`` (1.96 for 0.95).
    """
    z = two_sided_z(check_level(level))
    groups = list(dict.fromkeys(fit.ranef["group"])) if group is None else [group]
    if not groups:
        raise JaxLMMError("The model has no random-effect terms: there are no conditional modes to plot.")
    tables = [(g, ranef_wide(fit, g)) for g in groups]
    panels = [(g, w, term) for g, w in tables for term in w["value"].columns]
    nmax = max(len(w) for _, w in tables)
    height = min(max(2.5, 0.16 * nmax + 1.0), 12.0)
    fig, axes = new_figure(1, len(panels), panel=(3.4, height))
    for ax, (g, w, term) in zip(axes[0], panels):
        order = caterpillar_order(w)
        levels = w.index.to_numpy()[order]
        _draw_caterpillar(
            ax,
            levels,
            w[("value", term)].to_numpy()[order],
            w[("cond_sd", term)].to_numpy()[order],
            z,
            label_levels=len(levels) <= max_labels,
        )
        ax.set_title(f"{g}: {term}", fontsize=9)
    fig.suptitle(f"Conditional modes with {100 * level:g}% intervals")
    return fig
