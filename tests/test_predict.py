"""Predictions (jaxlmm.predict) against lme4 and a dense oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from models import get_fit
from oracle import SLOPE, load_json

INF = load_json("inference/inference.json")
PEN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def test_predict_matches_lme4():
    ref = INF["predict"]
    fit = get_fit(SLOPE, "sleepstudy")
    new = pd.DataFrame(ref["newdata"])
    np.testing.assert_allclose(fit.predict(new), ref["conditional"], rtol=1e-6)
    np.testing.assert_allclose(fit.predict(new, re=False), ref["population"], rtol=1e-6)
    fr = INF["fitted_residuals_sleepstudy"]
    np.testing.assert_allclose(fit.predict()[:10], fr["fitted_head"], rtol=1e-6)
    np.testing.assert_allclose(fit.residuals()[:10], fr["resid_head"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.predict(jaxlmm.datasets.load("sleepstudy")), fit.fitted, rtol=1e-12)
    with pytest.raises(jaxlmm.DataError, match="Subject"):
        fit.predict(pd.DataFrame({"Days": [1.0]}))
    with pytest.raises(jaxlmm.DataError, match="Days"):
        fit.predict(pd.DataFrame({"Days": [np.nan], "Subject": ["308"]}))


def test_predict_crossed_terms_dense():
    """Penicillin: prediction on the training rows equals X beta + Z b with dense Z."""
    fit = get_fit(PEN, "penicillin")
    data = jaxlmm.datasets.load("penicillin")
    b = fit.ranef.set_index(["group", "level"])["value"]
    dense = fit.fixef.iloc[0] + b.loc["plate"].loc[data.plate.astype(str)].to_numpy()
    dense = dense + b.loc["sample"].loc[data["sample"].astype(str)].to_numpy()
    np.testing.assert_allclose(fit.predict(data), dense, rtol=1e-12)


def test_predict_with_some_random_effects_as_lme4_re_form():
    """re=["plate"] (lme4's re.form = ~ (1 | plate)): the fixed part plus the plate effects only; the
    parts add up to the whole prediction, on new rows and on the fitted ones."""
    fit = get_fit(PEN, "penicillin")
    data = jaxlmm.datasets.load("penicillin")
    none, whole = fit.predict(data, re=False), fit.predict(data)
    plate, sample = fit.predict(data, re=["plate"]), fit.predict(data, re="(1 | sample)")
    b = fit.ranef.set_index(["group", "level"])["value"]
    np.testing.assert_allclose(plate - none, b.loc["plate"].loc[data.plate.astype(str)].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(plate + sample - none, whole, rtol=1e-12)
    np.testing.assert_allclose(fit.predict(re=["plate"]), plate, rtol=1e-12)  # the fitted rows
    np.testing.assert_allclose(fit.predict(data, re=["plate", "sample"]), whole, rtol=1e-12)
    with pytest.raises(jaxlmm.JaxLMMError, match="'batch' is neither"):
        fit.predict(data, re=["batch"])
