"""jaxlmm: linear mixed-effects models in JAX, with lme4's formulas and answers.

Importing jaxlmm enables JAX's float64 mode, a persistent compilation cache
unless one is configured, and single-threaded LAPACK kernels for JAX's CPU
backend (see ``jaxlmm._config``).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

from ._config import enable_compilation_cache, limit_lapack_threads  # noqa: E402

enable_compilation_cache()
limit_lapack_threads()

from . import datasets  # noqa: E402
from .anova import anova  # noqa: E402
from .bootstrap import BootstrapResult, bootstrap  # noqa: E402
from .control import Control  # noqa: E402
from .errors import (  # noqa: E402
    ConvergenceWarning,
    DataError,
    FormulaError,
    JaxLMMError,
    JaxLMMWarning,
    MissingDataWarning,
    RankDeficiencyWarning,
    SingularFitWarning,
)
from .formula import parse_formula  # noqa: E402
from .model import LinearMixedModel, lmm  # noqa: E402
from .oneway import oneway_anova  # noqa: E402
from .pbtest import PBTest, pb_test  # noqa: E402
from .plotting import plot_bootstrap, plot_profile  # noqa: E402
from .profile import profile  # noqa: E402
from .ranova import ranova  # noqa: E402
from .rlrt import ExactTest, exact_lrt, exact_rlrt  # noqa: E402
from .results import LmmFit  # noqa: E402

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
