"""Lazy access to matplotlib, an optional dependency (``pip install ".[plot]"`` in a clone).

Figures are built as plain :class:`matplotlib.figure.Figure` objects, not
through pyplot: nothing is registered in pyplot's global state, a notebook
shows the returned figure once, and ``fig.savefig(path)`` writes it anywhere.
"""

from __future__ import annotations

from ..errors import JaxLMMError


def new_figure(nrows: int = 1, ncols: int = 1, *, panel=(4.0, 3.2), **subplot_kw):
    """A figure with an ``nrows x ncols`` grid of axes (``axes`` always 2-d)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover (matplotlib is in the test extras)
        raise JaxLMMError(
            "Plotting needs matplotlib, which is not installed: pip install matplotlib "
            '(or, in a clone of jaxlmm, pip install ".[plot]").'
        ) from None
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def drop_unused(fig, axes, used: int) -> None:
    """Remove the grid cells past the first ``used`` (row-major) from the figure."""
    for ax in axes.ravel()[used:]:
        fig.delaxes(ax)


