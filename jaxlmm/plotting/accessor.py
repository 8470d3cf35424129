"""``fit.plot``: the diagnostic figures of one fitted model, as methods."""

from __future__ import annotations

from .diagnostics import caterpillar_plot, qq_plot, residuals_plot
from .groups import groups_plot


class FitPlots:
    """Figures of a fitted model; every method returns a matplotlib Figure.

    Reached as ``fit.plot``; see :mod:`jaxlmm.plotting.diagnostics` and
    :mod:`jaxlmm.plotting.groups` for what each figure draws.
    """

    def __init__(self, fit):
        self._fit = fit

    def residuals(self, scaled: bool = False):
        """Conditional residuals against fitted values (lme4's ``plot(fit)``)."""
        return residuals_plot(self._fit, scaled=scaled)

    def qq(self, which: str = "residuals"):
        """Normal QQ plot of the residuals, or of the conditional modes of group ``which``."""
        return qq_plot(self._fit, which=which)

    def caterpillar(self, group: str | None = None, level: float = 0.95):
        """Sorted conditional modes with ``level`` intervals, for one group or all."""
        return caterpillar_plot(self._fit, group=group, level=level)

    def groups(self, x: str | None = None, ncols: int = 6, group: str | None = None, data=None):
        """One panel per level of ``group`` (default: the first term's factor) against ``x``."""
        return groups_plot(self._fit, x=x, ncols=ncols, group=group, data=data)

    def __repr__(self) -> str:
        return "<FitPlots: residuals(), qq(which), caterpillar(group), groups(x, ncols)>"
