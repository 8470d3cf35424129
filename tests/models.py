"""Models and fits shared by the whole test session, built once (fits are frozen).

``get_model`` and ``get_fit`` cache by (formula, dataset[, reml, method]);
``weighted_fit`` caches the fits of lme4's prior-weights reference
(``oracle.WEIGHTS``). Test files import these rather than fitting the same
model again.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import jaxlmm
from oracle import DYE, WEIGHTS

# small models of the bundled datasets: (formula, dataset)
SMALL = [
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
    ("strength ~ 1 + (1 | batch/cask)", "pastes"),
    ("Reaction ~ Days + (Days || Subject)", "sleepstudy"),
]

_models: dict = {}
_fits: dict = {}


def get_model(formula: str, dataset: str) -> jaxlmm.LinearMixedModel:
    key = (formula, dataset)
    if key not in _models:
        _models[key] = jaxlmm.LinearMixedModel(formula, jaxlmm.datasets.load(dataset))
    return _models[key]


def get_fit(formula: str, dataset: str, reml: bool = True, method: str = "newton"):
    """A fitted model, shared by all tests of the session (fits are frozen)."""
    key = (formula, dataset, reml, method)
    if key not in _fits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
            _fits[key] = get_model(formula, dataset).fit(reml=reml, method=method)
    return _fits[key]


def dye_fit():
    return get_fit(DYE, "dyestuff")


# ---- prior weights --------------------------------------------------------------------------


def data_of(name: str) -> pd.DataFrame:
    """The bundled dataset with the reference weights as column ``w``."""
    return jaxlmm.datasets.load(name).assign(w=np.array(WEIGHTS["weights"][name]))


_weighted: dict = {}


def weighted_fit(case: str, crit: str):
    key = (case, crit)
    if key not in _weighted:
        c = WEIGHTS["cases"][case]
        data = data_of(c["data"])
        _weighted[key] = jaxlmm.lmm(c["formula"], data, reml=crit == "REML", weights=data["w"].to_numpy())
    return _weighted[key]
