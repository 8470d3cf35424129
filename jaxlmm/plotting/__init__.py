"""Figures for fitted models, bootstrap results and likelihood profiles (matplotlib).

matplotlib is optional (``pip install ".[plot]"`` in a clone) and imported only when
a figure is drawn. Every function returns a :class:`matplotlib.figure.Figure`.

- ``fit.plot`` (:class:`FitPlots`): ``residuals()``, ``qq(which)``,
  ``caterpillar(group)``, ``groups(x, ncols)``;
- :func:`plot_bootstrap`: bootstrap distributions (``jaxlmm.bootstrap``) or
  the LRT* distribution of a parametric bootstrap test (``jaxlmm.pb_test``);
- :func:`plot_profile`: likelihood-profile zeta traces (:func:`jaxlmm.profile`).
"""

from __future__ import annotations

from .accessor import FitPlots
from .inference import plot_bootstrap, plot_profile

__all__ = ["FitPlots", "plot_bootstrap", "plot_profile"]
