"""Random data of one shape for the property tests (hypothesis), and their strategies.

18 groups of 3 rows (lme4's sleepstudy layout), so the compiled criterion and
optimizer are shared with the reference fits; the values vary, drawn from a
seeded generator, and hypothesis varies the seed, theta and the transformation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck
from hypothesis import strategies as st

import jaxlmm

G, R = 18, 3
N = G * R
LABELS = [f"s{i:02d}" for i in range(G)]
SLOPE = "y ~ x + (x | g)"
INTERCEPT = "y ~ x + (1 | g)"
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(0, 2**32 - 1)
thetas = st.tuples(st.floats(0.0, 3.0), st.floats(-2.0, 2.0), st.floats(0.0, 3.0))
factors = st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3)
shifts = st.floats(-100.0, 100.0)  # in standard deviations of y


def make_data(seed: int) -> pd.DataFrame:
    """18 groups of 3 rows, a predictor and a response with group intercepts and slopes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=N) * rng.uniform(0.5, 5.0)
    b = rng.normal(size=(G, 2)) * rng.uniform(0.0, 3.0, size=2)
    codes = np.repeat(np.arange(G), R)
    y = 10 + 2 * x + b[codes, 0] + b[codes, 1] * x + rng.normal(size=N) * rng.uniform(0.2, 3.0)
    g = pd.Categorical(np.array(LABELS)[codes], categories=LABELS)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def deviances(data, theta, formula=SLOPE):
    model = jaxlmm.LinearMixedModel(formula, data)
    th = np.asarray(theta)[: model.theta0.size]
    return model.deviance(th, reml=True), model.deviance(th, reml=False)


def quiet_fit(data, formula=INTERCEPT):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
        return jaxlmm.lmm(formula, data)


def close(a, b, rel=1e-9):
    np.testing.assert_allclose(a, b, rtol=rel, atol=rel * 10)
