"""Figures for fitted models, bootstrap results and likelihood profiles (matplotlib).

matplotlib is optional (``pip install "jaxlmm[plot]"``) and imported only when
a figure is drawn. Every function returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

from .accessor import FitPlots

__all__ = ["FitPlots"]
