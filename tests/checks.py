"""Assertions several test files share: errors that name their argument, warnings, equal fits."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import JaxLMMError
from jaxlmm.design import build_design


def raises(func, *words):
    """``func()`` raises a JaxLMMError whose message contains every one of ``words``; the message."""
    with pytest.raises(JaxLMMError) as info:
        func()
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    return str(info.value)


def fit_quietly(formula, data, **kw):
    """Fit and return (fit, list of the warnings raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = jaxlmm.lmm(formula, data, **kw)
    return fit, caught


def of_type(caught, cls):
    return [w for w in caught if issubclass(w.category, cls)]


def assert_same_fit(a, b, rtol=1e-7):
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    np.testing.assert_allclose(a.theta, b.theta, rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rtol)
    assert list(a.fixef.index) == list(b.fixef.index)
    assert a.sigma == pytest.approx(b.sigma, rel=rtol)


def sleep_with(**columns) -> pd.DataFrame:
    """sleepstudy with extra or replaced columns."""
    d = jaxlmm.datasets.load("sleepstudy").copy()
    for k, v in columns.items():
        d[k] = v
    return d


def design_raises(exc, formula, data, *names):
    """Building the design raises ``exc``, and the message contains every one of ``names``."""
    with pytest.raises(exc) as info:
        build_design(formula, data)
    for name in names:
        assert name in str(info.value), (name, str(info.value))
    return str(info.value)
