"""Parametric bootstrap likelihood-ratio test of two nested models (pbkrtest's PBmodcomp).

H0 is the smaller model. With both models fitted by ML (Halekoh & Hojsgaard,
"A Kenward-Roger approximation and parametric bootstrap methods for tests in
linear mixed models - the R package pbkrtest", JSS 2014, section 5):

- observed statistic LRT = dev0 - dev1 (ML deviances);
- B responses are simulated from the ML estimates of the null model and both
  models are refitted by ML to each, LRT*_b = dev0*_b - dev1*_b;
- p = (1 + #{LRT*_b >= LRT}) / (1 + B), beside the chi^2 p-value on
  df = npar1 - npar0 degrees of freedom.

The null may have no random-effect term at all (``y ~ 1`` against
``y ~ 1 + (1 | g)``, the test of sigma_A^2 = 0): its criterion is closed form.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from ._config import uses_float64
from .anova import require_nested, require_same_likelihood
from .bootstrap import warn_failed
from .control import Control, as_control
from .replicates import Job, Passes, fit_params, run_replicates, target_of
from .theta import theta_start
from .distributions import chi2_sf
from .errors import JaxLMMError, JaxLMMWarning, SingularFitWarning, warn
from .validate import check_bool, check_count, check_seed
from .results import check_fit


def _ml(fit):
    """``fit`` itself when fitted by ML, else its model refitted by ML (as lme4's anova)."""
    if not fit.reml:
        return fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        return fit.refit(reml=False)


def _check_pair(null_fit, alt_fit, nested: bool = True) -> None:
    check_fit(null_fit, "null_fit", "pb_test")
    check_fit(alt_fit, "alt_fit", "pb_test")
    d0, d1 = null_fit.design, alt_fit.design
    if d0.n != d1.n or not np.array_equal(d0.rows, d1.rows) or not np.array_equal(d0.y, d1.y):
        raise JaxLMMError(
            "The two models must be fitted to the same rows and response "
            f"(null: {d0.n} rows of '{d0.response}', alternative: {d1.n} rows of '{d1.response}')."
        )
    require_same_likelihood(null_fit, alt_fit)
    if null_fit.npar >= alt_fit.npar:
        raise JaxLMMError(
            f"The null model must have fewer parameters than the alternative "
            f"({null_fit.npar} >= {alt_fit.npar}); pass the smaller model first."
        )
    if nested:  # anova's rule: the null's fixed effects and variances are all in the alternative
        require_nested(null_fit, alt_fit)


def _same_random_effects(f0, f1) -> bool:
    """Both models have the same random-effect terms (so one theta serves both)."""
    a, b = f0.terms, f1.terms
    return len(a) == len(b) and all(
        s.name == t.name and s.colnames == t.colnames and np.array_equal(s.codes, t.codes)
        and np.array_equal(s.X, t.X)
        for s, t in zip(a, b)
    )


def _alt_start(theta_null, theta_alt, same: bool, default):
    """Where an alternative refit that ended above its null's optimum starts again.

    With the same random-effect terms, the null's optimum: there the
    alternative's criterion is at most the null's (its fixed effects include
    the null's), so the refit ends at or below it and LRT* >= 0. Otherwise
    lme4's start (identity relative factors).
    """
    if same:
        return np.asarray(theta_null).reshape(len(theta_alt), -1)
    return np.broadcast_to(np.asarray(default), np.shape(theta_alt))


@dataclass(frozen=True, eq=False)
class PBTest:
    """Result of :func:`pb_test` (frozen). ``table``: LRT* and both refits per replicate."""

    lrt: float
    df: int
    p_value: float
    p_chisq: float
    n_used: int
    n_failed: int
    table: pd.DataFrame
    seed: int | None = None  # the seed of the simulated responses (drawn at random for seed=None)
    passes: Passes | None = None  # chunk size and the time of the batched passes (jaxlmm.replicates.Passes)

    def __repr__(self) -> str:
        return (
            f"<PBTest LRT={self.lrt:.4f} df={self.df} p_value={self.p_value:.4g} "
            f"p_chisq={self.p_chisq:.4g} n_used={self.n_used} n_failed={self.n_failed}>"
        )


@uses_float64
def pb_test(
    null_fit, alt_fit, n: int = 10_000, seed: int | None = 0, chunk_size: int | None = None,
    progress: bool = True, check_nested: bool = True, control: Control | None = None,
) -> PBTest:
    """Parametric bootstrap LRT of ``null_fit`` (H0) against ``alt_fit`` (pbkrtest's PBmodcomp).

    The models must be nested as :func:`~jaxlmm.anova` requires
    (``check_nested=False`` tests them anyway). ``control``: the refits' settings
    (default: ``alt_fit.control``). ``seed``: an integer in
    0 .. 2**63 - 1, or None for a random one, recorded as ``result.seed``.
    """
    _check_pair(null_fit, alt_fit, check_bool(check_nested, "check_nested"))
    n = check_count(n, "n (the number of bootstrap replicates)")
    seed, progress = check_seed(seed), check_bool(progress, "progress")
    if null_fit.reml or alt_fit.reml:
        warn("refitting model(s) with ML (instead of REML)", JaxLMMWarning)
    f0, f1 = _ml(null_fit), _ml(alt_fit)
    lrt = float(f0.objective - f1.objective)
    t0, t1 = target_of(f0), target_of(f1)
    control = alt_fit.control if control is None else as_control(control)
    same = _same_random_effects(f0, f1)
    nested = partial(_alt_start, same=same, default=theta_start(f1.products.term_dims))
    job = Job(n, seed, t0.rows, fit_params(f0), (t0, t1), False, control, nested, alt_from_null=same)
    (r0, r1), passes = run_replicates(job, chunk_size, progress, "pb_test")
    lrt_star = r0.objective - r1.objective
    ok = r0.converged.astype(bool) & r1.converged.astype(bool) & np.isfinite(lrt_star)
    table = pd.DataFrame(
        {"lrt": lrt_star, "deviance_null": r0.objective, "deviance_alt": r1.objective,
         "converged_null": r0.converged.astype(bool), "converged_alt": r1.converged.astype(bool),
         "converged": ok}
    )
    n_used = int(ok.sum())
    warn_failed(len(ok) - n_used, len(ok), "pb_test")
    df = int(f1.npar - f0.npar)
    p = (1.0 + np.sum(lrt_star[ok] >= lrt)) / (1.0 + n_used)
    return PBTest(lrt, df, float(p), float(chi2_sf(lrt, df)), n_used, len(ok) - n_used, table, seed, passes)
