"""Per-group panels: each level's data, its own fitted line and the population line.

The figure of lme4's sleepstudy example (Bates et al., JSS 2015, figure 1;
the per-subject plot of the sleepstudy exercise in the lecture notes): one
small panel per level of a grouping factor showing the observations against a
covariate x, the conditional fit X beta + Z b for that level (solid) and the
population fit X beta (dashed). Both lines are drawn through the fitted values
of the level's rows, sorted by x, so they are exact for any formula.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import JaxLMMError, closest_name
from ._mpl import drop_unused, new_figure


def default_x(design, term) -> str:
    """The first non-intercept column of the group's term, else of the fixed effects."""
    for name in list(term.colnames) + list(design.fixed_names):
        if name != "(Intercept)":
            return name
    raise JaxLMMError(
        f"The model has no covariate to put on the x axis of the '{term.name}' panels; pass x=<column>."
    )


def x_values(design, term, x: str, data=None) -> np.ndarray:
    """Values of ``x`` for the rows used in the fit: a model column, or a column of ``data``."""
    if x in term.colnames:
        return term.X[:, term.colnames.index(x)]
    if x in design.fixed_names:
        return design.X[:, design.fixed_names.index(x)]
    if data is not None and x in data.columns:
        return np.asarray(data.loc[design.rows, x], dtype=np.float64)
    known = list(design.fixed_names) + ([] if data is None else list(data.columns))
    hint = "" if data is not None else " Pass data= to use a column outside the model."
    raise JaxLMMError(f"Column '{x}' is not a model column.{closest_name(x, known)}{hint}")


def group_term(fit, group: str | None):
    """The first random-effect term of ``group`` (default: the first, largest term)."""
    terms = fit.terms
    if not terms:
        raise JaxLMMError("The model has no random-effect terms to draw panels for.")
    if group is None:
        return terms[0]
    for t in terms:
        if t.name == group:
            return t
    names = list(dict.fromkeys(t.name for t in terms))
    raise JaxLMMError(f"No random-effect group '{group}'; the fit has: {', '.join(names)}.{closest_name(group, names)}")


def _draw_panel(ax, x, y, cond, pop) -> None:
    o = np.argsort(x, kind="stable")
    ax.plot(x[o], y[o], "o", ms=3.5, color="C0", label="data")
    ax.plot(x[o], cond[o], "-", color="C1", lw=1.4, label="group fit")
    ax.plot(x[o], pop[o], "--", color="0.35", lw=1.0, label="population fit")


def groups_plot(fit, x=None, ncols: int = 6, group=None, data=None, max_panels: int = 100):
    """One panel per level of ``group`` with its data, its fitted line and the population line."""
    design = fit.design
    term = group_term(fit, group)
    if term.nlevels > max_panels:
        raise JaxLMMError(
            f"'{term.name}' has {term.nlevels} levels, more than max_panels={max_panels}; "
            "raise max_panels or plot a caterpillar instead."
        )
    if ncols < 1:
        raise JaxLMMError(f"ncols must be a positive integer, not {ncols!r}.")
    x = default_x(design, term) if x is None else x
    xv = x_values(design, term, x, data)
    pop = design.fixed_mean(fit.fixef.to_numpy())
    ncols = min(ncols, term.nlevels)
    nrows = math.ceil(term.nlevels / ncols)
    fig, axes = new_figure(nrows, ncols, panel=(1.9, 1.7), sharex=True, sharey=True)
    for j, ax in enumerate(axes.ravel()[: term.nlevels]):
        rows = term.codes == j
        _draw_panel(ax, xv[rows], design.y[rows], fit.fitted[rows], pop[rows])
        ax.set_title(str(term.levels[j]), fontsize=8, pad=2)
        ax.tick_params(labelsize=7)
    drop_unused(fig, axes, term.nlevels)
    fig.supxlabel(x)
    fig.supylabel(design.response)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=3, fontsize=8, frameon=False)
    return fig
