"""Formula and data to a model (jaxlmm.model): lmm's keywords, lme4's spellings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jaxlmm
from models import get_fit
from oracle import DYE1


def test_lmm_keywords_reml_alias_weights_and_unknown():
    dye = jaxlmm.datasets.load("dyestuff")
    ml = get_fit(DYE1, "dyestuff", reml=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alias = jaxlmm.lmm(DYE1, dye, REML=False)
    assert alias.reml is False and alias.objective == pytest.approx(ml.objective, rel=1e-12)
    with pytest.raises(jaxlmm.JaxLMMError, match="not both"):
        jaxlmm.lmm(DYE1, dye, reml=False, REML=False)
    ones = jaxlmm.lmm(DYE1, dye, REML=False, weights=np.ones(30))  # lme4's weights=: all 1 is no weighting
    assert ones.objective == pytest.approx(ml.objective, rel=1e-10)
    with pytest.raises(jaxlmm.JaxLMMError, match="'methd'") as err:
        jaxlmm.lmm(DYE1, dye, methd="lbfgs")
    message = str(err.value)
    assert "Did you mean 'method'?" in message
    import inspect

    for name in list(inspect.signature(jaxlmm.LinearMixedModel.fit).parameters)[1:]:
        assert name in message  # reml, method, theta0, max_iter ...
    for bad in ("False", 0, "REML"):
        with pytest.raises(jaxlmm.JaxLMMError, match="reml must be True or False"):
            jaxlmm.lmm(DYE1, dye, reml=bad)
    with pytest.raises(jaxlmm.JaxLMMError, match="reml must be True or False"):
        jaxlmm.LinearMixedModel(DYE1, dye).fit(reml="False")
