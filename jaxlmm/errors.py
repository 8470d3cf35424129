"""Exceptions and warnings raised by jaxlmm.

Every user error is a :class:`JaxLMMError` (a ``ValueError``), split into
:class:`FormulaError` (the formula text or its terms) and :class:`DataError`
(the data frame and its columns). Numerical outcomes of a fit (singular fit,
no convergence, dropped columns) are warnings, also reported on the result.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_FUNCTOOLS = functools.__file__  # cached_property's frame between a fit's property and the user


class JaxLMMError(ValueError):
    """Base class of every error raised by jaxlmm for bad input."""


class FormulaError(JaxLMMError):
    """The model formula cannot be parsed or names something that is not there."""


class DataError(JaxLMMError):
    """The data cannot be used with the formula (missing, non-numeric, degenerate)."""


class JaxLMMWarning(UserWarning):
    """Base class of jaxlmm's warnings."""


class SingularFitWarning(JaxLMMWarning):
    """The fit lies on the boundary: a variance component or correlation is degenerate."""


class ConvergenceWarning(JaxLMMWarning):
    """The optimizer stopped before its convergence criterion was met."""


class PrecisionWarning(JaxLMMWarning):
    """The criterion was computed with few significant digits at the estimate: theta is imprecise."""


class RankDeficiencyWarning(JaxLMMWarning):
    """Fixed-effect columns were dropped because the design is rank deficient."""


class MissingDataWarning(JaxLMMWarning):
    """Rows with missing values were dropped before fitting."""


def closest_name(name: str, choices) -> str:
    """A ' Did you mean ...?' suffix naming the closest of ``choices``, or ''."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def user_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` call in the caller) of the first frame outside jaxlmm."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (_in_package(frame.f_code.co_filename) or frame.f_code.co_filename == _FUNCTOOLS):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning] = JaxLMMWarning) -> None:
    """``warnings.warn`` attributed to the user's line: the first frame outside the jaxlmm package.

    Every warning of jaxlmm goes through here, so ``warning.filename`` and
    ``warning.lineno`` name the caller's code (the line that called
    ``jaxlmm.lmm``, ``fit.confint``, ``jaxlmm.bootstrap``, ...), whatever the
    depth of the call inside the library.
    """
    warnings.warn(message, category, stacklevel=user_stacklevel())
