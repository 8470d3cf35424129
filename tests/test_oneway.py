"""The balanced one-way toolkit: closed forms against the engine and scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import jaxlmm
from models import get_fit

FORMULA = "Yield ~ 1 + (1 | Batch)"
DATASETS = ["dyestuff", "dyestuff2"]


def _anova(name):
    return jaxlmm.oneway_anova(jaxlmm.datasets.load(name), "Yield", "Batch")


def _batch_sd(fit) -> float:
    vc = fit.varcorr
    return float(vc.loc[vc.group == "Batch", "sd_cor"].iloc[0])


@pytest.mark.parametrize("name", DATASETS)
def test_sums_of_squares_and_f_test(name):
    data = jaxlmm.datasets.load(name)
    ow = _anova(name)
    groups = [g.Yield.to_numpy(dtype=float) for _, g in data.groupby("Batch", observed=True)]
    F, p = st.f_oneway(*groups)
    assert (ow.a, ow.n) == (6, 5)
    assert ow.F == pytest.approx(F, rel=1e-10)
    assert ow.p_value == pytest.approx(p, rel=1e-8)
    y = data.Yield.to_numpy(dtype=float)
    assert ow.ssa + ow.sse == pytest.approx(np.sum((y - y.mean()) ** 2), rel=1e-12)
    table = ow.table
    assert list(table["df"]) == [5, 24, 29]
    assert table.loc["group", "ms"] == pytest.approx(ow.ssa / 5, rel=1e-12)
    assert ow.moments.sigma2_a == pytest.approx((ow.msa - ow.mse) / 5, rel=1e-12)


@pytest.mark.parametrize("name", DATASETS)
def test_power_function(name):
    ow = _anova(name)
    crit = st.f.ppf(0.95, 5, 24)
    assert ow.critical_value(0.05) == pytest.approx(crit, rel=1e-9)
    rho = np.array([0.0, 0.1, 0.5, 2.0])
    np.testing.assert_allclose(ow.power(rho), st.f.sf(crit / (1 + 5 * rho), 5, 24), rtol=1e-8)
    assert ow.power(0.0) == pytest.approx(0.05, rel=1e-8)
    with pytest.raises(jaxlmm.JaxLMMError, match="ratio"):
        ow.power(-1.0)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("reml", [True, False])
def test_engine_equals_closed_forms(name, reml):
    ow = _anova(name)
    est = ow.reml if reml else ow.ml
    fit = get_fit(FORMULA, name, reml=reml)
    assert fit.fixef.iloc[0] == pytest.approx(est.mu, rel=1e-10)
    assert fit.sigma**2 == pytest.approx(est.sigma2_e, rel=1e-5)
    assert _batch_sd(fit) ** 2 == pytest.approx(est.sigma2_a, rel=1e-5, abs=1e-6 * est.sigma2_e)
    if name == "dyestuff2":  # the truncated branch: the batch variance is estimated as zero
        assert est.sigma2_a == 0.0
        total = ow.ssa + ow.sse
        assert est.sigma2_e == pytest.approx(total / (30 - 1 if reml else 30), rel=1e-12)


@pytest.mark.parametrize("name", DATASETS)
def test_blup_shrinkage(name):
    ow = _anova(name)
    fit = get_fit(FORMULA, name)
    est = jaxlmm.oneway.VarianceEstimates(fit.fixef.iloc[0], _batch_sd(fit) ** 2, fit.sigma**2)
    blup = ow.blup(est)
    engine = fit.fixef.iloc[0] + fit.ranef.set_index("level")["value"]
    np.testing.assert_allclose(blup.to_numpy(), engine.loc[blup.index].to_numpy(), rtol=1e-8, atol=1e-8)
    w = 5 * est.sigma2_a / (est.sigma2_e + 5 * est.sigma2_a)
    np.testing.assert_allclose(blup, w * ow.group_means + (1 - w) * ow.grand_mean, rtol=1e-12)


def test_bad_input():
    data = jaxlmm.datasets.load("dyestuff")
    with pytest.raises(jaxlmm.DataError, match="balanced"):
        jaxlmm.oneway_anova(data.iloc[1:], "Yield", "Batch")
    with pytest.raises(jaxlmm.DataError, match="Batchx"):
        jaxlmm.oneway_anova(data, "Yield", "Batchx")
    with pytest.raises(jaxlmm.DataError, match="not numeric"):
        jaxlmm.oneway_anova(data.assign(Yield=data.Batch), "Yield", "Batch")
    with pytest.raises(jaxlmm.DataError, match="missing"):
        jaxlmm.oneway_anova(data.assign(Yield=data.Yield.where(data.index > 0)), "Yield", "Batch")
    one = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": ["a", "b", "c"]})
    with pytest.raises(jaxlmm.DataError, match="two observations"):
        jaxlmm.oneway_anova(one, "y", "g")
