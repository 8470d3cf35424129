"""Variance components (jaxlmm.varcorr): SDs and correlations of every reference fit against lme4's VarCorr."""

from __future__ import annotations

import numpy as np
import pandas as pd


def test_varcorr(pair):
    fit, r, _ = pair
    vc = r["varcorr"]
    ours = fit.varcorr
    assert list(ours.group) == vc["grp"]
    assert [None if pd.isna(x) else x for x in ours.term1] == vc["var1"]
    assert [None if pd.isna(x) else x for x in ours.term2] == vc["var2"]
    # variances on lme4's scale: within 1e-3 of the largest variance
    scale = max(abs(v) for v in vc["vcov"])
    np.testing.assert_allclose(ours.variance.to_numpy(), vc["vcov"], rtol=1e-3, atol=1e-3 * scale)
    np.testing.assert_allclose(ours.sd_cor.to_numpy(), vc["sdcor"], rtol=1e-3, atol=1e-3)
