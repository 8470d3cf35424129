"""The balanced one-way random-effects model in closed form: y_ij = mu + A_i + e_ij.

i = 1..a groups, j = 1..n observations each, A_i ~ N(0, s2A), e_ij ~ N(0, s2E)
(Searle, Casella & McCulloch, "Variance Components", 1992, ch. 3-4; Monahan,
"A Primer on Linear Models", 2008). With SSA = n sum_i (ybar_i - ybar)^2 and
SSE = sum_ij (y_ij - ybar_i)^2:

- MSA = SSA/(a-1), MSE = SSE/(a(n-1)); E MSA = s2E + n s2A, E MSE = s2E;
- method of moments (ANOVA): s2A = (MSA - MSE)/n, s2E = MSE;
- F = MSA/MSE ~ (1 + n rho) F_{a-1, a(n-1)}, rho = s2A/s2E, so the size-alpha
  test of H0: s2A = 0 rejects when F > F_crit = F_{1-alpha; a-1, a(n-1)} and
  its power at rho is P(F_{a-1, a(n-1)} > F_crit / (1 + n rho));
- ML: s2A = (SSA/a - MSE)/n, s2E = MSE if that is positive, else
  s2A = 0, s2E = (SSA + SSE)/(an); mu = ybar in both cases;
- REML: s2A = (MSA - MSE)/n, s2E = MSE if positive, else s2A = 0,
  s2E = (SSA + SSE)/(an - 1);
- BLUP of mu + A_i: w ybar_i + (1 - w) ybar with w = n s2A/(s2E + n s2A)
  (the prediction of A_i alone is w (ybar_i - ybar)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .design import group_codes
from .distributions import f_quantile, f_sf
from .errors import DataError, JaxLMMError
from .validate import as_frame, check_level


@dataclass(frozen=True)
class VarianceEstimates:
    """mu, s2A (between groups) and s2E (within groups) of one method."""

    mu: float
    sigma2_a: float
    sigma2_e: float


@dataclass(frozen=True, eq=False)
class OneWayAnova:
    """The one-way random-effects ANOVA of a balanced design (see the module docstring)."""

    a: int
    n: int
    grand_mean: float
    group_means: pd.Series
    ssa: float
    sse: float

    @property
    def df_a(self) -> int:
        return self.a - 1

    @property
    def df_e(self) -> int:
        return self.a * (self.n - 1)

    @property
    def msa(self) -> float:
        return self.ssa / self.df_a

    @property
    def mse(self) -> float:
        return self.sse / self.df_e

    @property
    def F(self) -> float:
        return self.msa / self.mse

    @property
    def p_value(self) -> float:
        """P(F_{a-1, a(n-1)} > F) under H0: s2A = 0."""
        return float(f_sf(self.F, self.df_a, self.df_e))

    @property
    def table(self) -> pd.DataFrame:
        """The ANOVA table with expected mean squares."""
        return pd.DataFrame(
            {
                "df": [self.df_a, self.df_e, self.a * self.n - 1],
                "ss": [self.ssa, self.sse, self.ssa + self.sse],
                "ms": [self.msa, self.mse, np.nan],
                "expected_ms": [f"s2E + {self.n} s2A", "s2E", ""],
                "F": [self.F, np.nan, np.nan],
                "p": [self.p_value, np.nan, np.nan],
            },
            index=["group", "residual", "total"],
        )

    @property
    def moments(self) -> VarianceEstimates:
        """Method-of-moments (ANOVA) estimates; s2A may be negative."""
        return VarianceEstimates(self.grand_mean, (self.msa - self.mse) / self.n, self.mse)

    def _truncated(self, s2a: float, denom: float) -> VarianceEstimates:
        if s2a > 0:
            return VarianceEstimates(self.grand_mean, s2a, self.mse)
        return VarianceEstimates(self.grand_mean, 0.0, (self.ssa + self.sse) / denom)

    @property
    def ml(self) -> VarianceEstimates:
        """Closed-form maximum-likelihood estimates (truncated at s2A = 0)."""
        return self._truncated((self.ssa / self.a - self.mse) / self.n, self.a * self.n)

    @property
    def reml(self) -> VarianceEstimates:
        """Closed-form REML estimates (truncated at s2A = 0)."""
        return self._truncated((self.msa - self.mse) / self.n, self.a * self.n - 1)

    def critical_value(self, alpha: float = 0.05) -> float:
        """F_{1-alpha; a-1, a(n-1)}: reject H0 when F exceeds it."""
        alpha = check_level(alpha, "alpha")
        return f_quantile(1.0 - alpha, self.df_a, self.df_e)

    def power(self, ratio, alpha: float = 0.05) -> np.ndarray:
        """Power of the size-alpha F test at rho = s2A/s2E (scalar or array)."""
        rho = np.asarray(ratio, dtype=np.float64)
        if np.any(rho < 0) or not np.all(np.isfinite(rho)):
            raise JaxLMMError("The variance ratio s2A/s2E must be finite and non-negative.")
        return f_sf(self.critical_value(alpha) / (1.0 + self.n * rho), self.df_a, self.df_e)

    def blup(self, estimates: VarianceEstimates | None = None) -> pd.Series:
        """BLUPs of the group means mu + A_i, by default at the REML estimates."""
        est = self.reml if estimates is None else estimates
        total = est.sigma2_e + self.n * est.sigma2_a
        w = self.n * est.sigma2_a / total
        return (w * self.group_means + (1.0 - w) * est.mu).rename("blup")

    def __repr__(self) -> str:
        return f"<OneWayAnova a={self.a} n={self.n} F={self.F:.4g} p={self.p_value:.4g}>"


def oneway_anova(data, response: str, group: str) -> OneWayAnova:
    """One-way random-effects ANOVA of ``response`` by ``group`` (balanced data only)."""
    data = as_frame(data)
    for col in (response, group):
        if col not in data.columns:
            raise DataError(f"Column '{col}' is not in the data.")
        if data[col].isna().any():
            raise DataError(f"Column '{col}' has missing values; the closed forms need complete data.")
    y = data[response]
    if not pd.api.types.is_numeric_dtype(y) or isinstance(y.dtype, pd.CategoricalDtype):
        raise DataError(f"The response '{response}' is not numeric (dtype {y.dtype}).")
    y = y.to_numpy(dtype=np.float64)
    codes, levels = group_codes(data, (group,))
    counts = np.bincount(codes, minlength=len(levels))
    if len(levels) < 2:
        raise DataError(f"Grouping factor '{group}' needs at least two levels, it has {len(levels)}.")
    if np.any(counts != counts[0]):
        raise DataError(
            f"The one-way closed forms need a balanced design: the levels of '{group}' have "
            f"between {counts.min()} and {counts.max()} observations."
        )
    n = int(counts[0])
    if n < 2:
        raise DataError(f"Each level of '{group}' needs at least two observations.")
    means = np.bincount(codes, weights=y, minlength=len(levels)) / n
    grand = float(y.mean())
    return OneWayAnova(
        a=len(levels),
        n=n,
        grand_mean=grand,
        group_means=pd.Series(means, index=[str(v) for v in levels], name="mean"),
        ssa=float(n * np.sum((means - grand) ** 2)),
        sse=float(np.sum((y - means[codes]) ** 2)),
    )
