"""lme4's printed summary (jaxlmm.summary): df and p-values, the correlation of the fixed effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jaxlmm

from models import get_fit
from oracle import SLOPE


def test_summary_shows_df_and_p():
    text = get_fit(SLOPE, "sleepstudy").summary()
    assert "df" in text and "Pr(>|t|)" in text
    assert "17.00 " in text and "17.000" not in text  # df with 2 decimals, as lmerTest


def test_summary_fixed_effects_correlation_matches_vcov_and_lme4(sleep_fit):
    from jaxlmm.summary import fixef_correlation

    v = sleep_fit.vcov.to_numpy()
    cor = fixef_correlation(sleep_fit)
    assert cor.loc["Days", "(Intercept)"] == pytest.approx(v[0, 1] / np.sqrt(v[0, 0] * v[1, 1]), rel=1e-12)
    assert round(cor.loc["Days", "(Intercept)"], 3) == -0.138  # lme4's summary
    text = sleep_fit.summary()
    assert text.splitlines()[0] == (
        "Linear mixed model fit by REML. t-tests use Satterthwaite's method [lmerModLmerTest]"
    )
    block = text.split("Correlation of Fixed Effects:\n")[1].splitlines()
    assert block == ["     (Intr)", "Days -0.138"]
    assert "Correlation" not in sleep_fit.summary(correlation=False)
    fixed = text.split("Fixed effects:\n")[1].splitlines()
    assert fixed[1].split()[3] == f"{sleep_fit.coef_table()['df'].iloc[0]:.2f}" == "17.00"


def test_correlation_block_lower_triangle_and_large_p():
    from types import SimpleNamespace

    from jaxlmm.summary import abbreviate, correlation_block

    assert abbreviate("(Intercept)", 6) == "(Intr)"  # R's abbreviate
    names = ["(Intercept)", "Days", "Days2"]
    cor = np.array([[1.0, -0.5, 0.25], [-0.5, 1.0, 0.125], [0.25, 0.125, 1.0]])
    sd = np.array([2.0, 1.0, 0.5])
    fake = SimpleNamespace(
        fixef=pd.Series(np.zeros(3), index=names), vcov=pd.DataFrame(cor * np.outer(sd, sd), index=names, columns=names)
    )
    assert correlation_block(fake)[1:] == [
        "Correlation of Fixed Effects:",
        "      (Intr) Days",
        "Days  -0.500",
        "Days2  0.250  0.125",
    ]
    names = [f"x{i}" for i in range(14)]
    big = SimpleNamespace(fixef=pd.Series(np.zeros(14), index=names), vcov=pd.DataFrame(np.eye(14), index=names, columns=names))
    assert "Correlation matrix not shown by default, as p = 14 > 12." in correlation_block(big)
    assert "Correlation of Fixed Effects:" in correlation_block(big, correlation=True)


def test_summary_tables_by_ddf(sleep_fit):
    """lme4's table (ddf="none"), lmerTest's, and the residual and Wald variants; against lme4's summary."""
    def fixed_rows(text):
        return [line.split() for line in text.split("Fixed effects:\n")[1].splitlines()[1:3]]

    lme4 = sleep_fit.summary(ddf="none")
    assert lme4.splitlines()[0] == "Linear mixed model fit by REML ['lmerMod']"
    assert lme4.split("Fixed effects:\n")[1].splitlines()[0].split() == ["Estimate", "Std.", "Error", "t", "value"]
    # lme4 1.1.31, summary(lmer(Reaction ~ Days + (Days | Subject), sleepstudy)): 251.405 6.825 36.838; 10.467 1.546 6.771
    (n0, *r0), (n1, *r1) = fixed_rows(lme4)
    assert (n0, n1) == ("(Intercept)", "Days")
    np.testing.assert_allclose([float(v) for v in r0], [251.405, 6.825, 36.838], atol=6e-4)
    np.testing.assert_allclose([float(v) for v in r1], [10.467, 1.546, 6.771], atol=6e-4)
    assert 'fit.summary(ddf="satterthwaite")' in lme4 and "Pr(>|t|)" not in lme4
    residual = sleep_fit.summary(ddf="residual")
    assert "t-tests use the residual df (n - p)" in residual.splitlines()[0]
    assert [row[3] for row in fixed_rows(residual)] == ["178.00", "178.00"]  # 180 rows, 2 fixed effects
    wald = fixed_rows(sleep_fit.summary(ddf="wald"))
    assert [row[3] for row in wald] == ["inf", "inf"]
    with pytest.raises(jaxlmm.JaxLMMError, match="ddf must be one of"):
        sleep_fit.summary(ddf="kenward-roger")


def test_default_summary_skips_satterthwaite_where_the_fit_used_bfgs_hessians(sleep_fit):
    """Satterthwaite's columns by default where the fit's Hessians were exact; on request elsewhere."""
    from jaxlmm.summary import default_ddf

    assert default_ddf(sleep_fit) == "satterthwaite" and "Pr(>|t|)" in str(sleep_fit)
    bfgs = jaxlmm.lmm(SLOPE, jaxlmm.datasets.load("sleepstudy"), control=jaxlmm.Control(hessian="bfgs"))
    assert default_ddf(bfgs) == "none"
    assert str(bfgs) == bfgs.summary(ddf="none") and "Pr(>|t|)" not in str(bfgs)
    assert fixed_df(bfgs.summary(ddf="satterthwaite")) == "17.00"


def fixed_df(text: str) -> str:
    return text.split("Fixed effects:\n")[1].splitlines()[1].split()[3]
