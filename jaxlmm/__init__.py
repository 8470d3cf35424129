"""jaxlmm: linear mixed-effects models in JAX, with lme4's formulas and answers.

Importing jaxlmm enables JAX's float64 mode, a persistent compilation cache
unless one is configured, and single-threaded LAPACK kernels for JAX's CPU
backend (see ``jaxlmm._config``).
"""

from __future__ import annotations

import gc as _gc

_collecting = _gc.isenabled()
_gc.disable()  # while importing: see jaxlmm._config.imports_settled
try:
    import jax

    jax.config.update("jax_enable_x64", True)

    from ._config import enable_compilation_cache, imports_settled, limit_lapack_threads

    enable_compilation_cache()
    limit_lapack_threads()

    from . import datasets
    from .anova import anova
    from .bootstrap import BootstrapResult, bootstrap
    from .control import Control
    from .errors import (
        ConvergenceWarning,
        DataError,
        FormulaError,
        JaxLMMError,
        JaxLMMWarning,
        MissingDataWarning,
        PrecisionWarning,
        RankDeficiencyWarning,
        SingularFitWarning,
    )
    from .formula import parse_formula
    from .model import LinearMixedModel, lmm
    from .oneway import oneway_anova
    from .pbtest import PBTest, pb_test
    from .plotting import plot_bootstrap, plot_profile
    from .profile import profile
    from .ranova import ranova
    from .rlrt import ExactTest, exact_lrt, exact_rlrt
    from .results import LmmFit

    imports_settled()
finally:
    if _collecting:
        _gc.enable()

__version__ = "0.1.0"

__all__ = [
    "BootstrapResult",
    "Control",
    "ExactTest",
    "PBTest",
    "bootstrap",
    "pb_test",
    "ConvergenceWarning",
    "DataError",
    "FormulaError",
    "JaxLMMError",
    "JaxLMMWarning",
    "LinearMixedModel",
    "LmmFit",
    "MissingDataWarning",
    "PrecisionWarning",
    "RankDeficiencyWarning",
    "SingularFitWarning",
    "anova",
    "datasets",
    "exact_lrt",
    "exact_rlrt",
    "lmm",
    "oneway_anova",
    "parse_formula",
    "plot_bootstrap",
    "plot_profile",
    "profile",
    "ranova",
]
