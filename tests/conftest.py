"""Shared fixtures: lme4's reference values and fitted models, built once per session."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

# XLA's multi-threaded Eigen runtime on CPU has been seen to deadlock (every
# thread idle, the caller waiting forever) on small shared machines; the
# single-threaded runtime avoids it. Must be set before JAX starts.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jaxlmm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# lme4's answers, written by tests/reference/make_reference.R (see its README)
REF = Path(__file__).resolve().parent / "reference"

# reference case -> bundled dataset
CASES = {
    "sleepstudy_slope": "sleepstudy",
    "sleepstudy_uncorr": "sleepstudy",
    "sleepstudy_intercept": "sleepstudy",
    "dyestuff": "dyestuff",
    "dyestuff2_singular": "dyestuff2",
    "penicillin_crossed": "penicillin",
    "pastes_nested": "pastes",
    "insteval_crossed": "insteval",
}


def load_fit_reference(case: str) -> dict:
    return json.loads((REF / "fits" / f"{case}.json").read_text())


def load_json(name: str) -> dict:
    return json.loads((REF / name).read_text())


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


@pytest.fixture(scope="session")
def sleep_fit():
    return get_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy")


@pytest.fixture(scope="session")
def sleep_fit_ml():
    return get_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy", reml=False)
