"""Pytest fixtures and settings only: the oracles are in oracle.py, the shared fits in models.py."""

from __future__ import annotations

import os

import pytest

# XLA's multi-threaded Eigen runtime on CPU has been seen to deadlock (every
# thread idle, the caller waiting forever) on small shared machines; the
# single-threaded runtime avoids it. Must be set before JAX starts.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

from models import get_fit  # noqa: E402
from oracle import CASES, FIT_PARAMS, SLOPE, load_fit_reference  # noqa: E402


@pytest.fixture(scope="session")
def sleep_fit():
    return get_fit(SLOPE, "sleepstudy")


@pytest.fixture(scope="session")
def sleep_fit_ml():
    return get_fit(SLOPE, "sleepstudy", reml=False)


@pytest.fixture(scope="module", params=FIT_PARAMS, ids=[f"{c}-{k}" for c, k in FIT_PARAMS])
def pair(request):
    """(fit, lme4's values for its criterion, the whole reference) of every reference fit, REML and ML."""
    case, crit = request.param
    ref = load_fit_reference(case)
    fit = get_fit(ref["formula"], CASES[case], reml=(crit == "REML"))
    return fit, ref[crit], ref
