"""jaxlmm.Control: validated settings, recorded on the fit, used by its refits; estimates unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import jaxlmm
from jaxlmm.control import Control, Hessian, as_control

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return jaxlmm.datasets.load("sleepstudy")


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(max_iter=0), "max_iter must be a positive integer"),
        (dict(max_iter=2.5), "max_iter must be a positive integer"),
        (dict(max_iter=True), "max_iter must be a positive integer"),
        (dict(chunk_rows=-1), "chunk_rows must be a positive integer"),
        (dict(pair_chunk="many"), "pair_chunk must be a positive integer"),
        (dict(first_pass=0), "first_pass must be a positive integer"),
        (dict(max_restarts=-1), "max_restarts must be a non-negative integer"),
        (dict(restart_step=0.0), "restart_step must be a positive number"),
        (dict(escape=float("nan")), "escape must be a positive number"),
        (dict(convergence_tol=0), "convergence_tol must be a positive number"),
        (dict(chunk_share=0.0), r"chunk_share must be a number in \(0, 1\]"),
        (dict(chunk_entries=0), "chunk_entries must be a positive integer"),
        (dict(cpu_map_from=-3), "cpu_map_from must be a positive integer"),
        (dict(pending_share=1.5), r"pending_share must be a number in \[0, 1\]"),
        (dict(boundary_restart="yes"), "boundary_restart must be True or False"),
        (dict(hessian="newton"), "hessian must be one of"),
        (dict(dense_share=0), "dense_share must be a positive number"),
        (dict(dense_share="half"), "dense_share must be a positive number"),
    ],
)
def test_bad_settings_are_refused_by_name(changes, message):
    with pytest.raises(jaxlmm.JaxLMMError, match="Control: " + message):
        Control(**changes)


def test_settings_are_normalised_and_copied():
    c = Control(max_iter=np.int64(50), hessian="bfgs")
    assert c.max_iter == 50 and type(c.max_iter) is int and c.hessian is Hessian.BFGS
    d = c.replace(max_restarts=0)
    assert (d.max_restarts, c.max_restarts, d.max_iter) == (0, 3, 50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_iter = 3
    with pytest.raises(jaxlmm.JaxLMMError, match="Control has no setting 'max_iters'"):
        c.replace(max_iters=3)
    with pytest.raises(jaxlmm.JaxLMMError, match="control must be a jaxlmm.Control"):
        as_control({"max_iter": 3})
    assert as_control(None) == Control()


def test_the_dense_share_by_backend():
    from jaxlmm.control import DENSE_SHARE

    assert Control().schur_dense_share("cpu") == DENSE_SHARE["cpu"] == 0.1
    assert Control().schur_dense_share("gpu") == Control().schur_dense_share("tpu") == DENSE_SHARE["gpu"]
    assert Control(dense_share=0.25).schur_dense_share("gpu") == 0.25


def test_the_hessian_policy():
    auto = Control()
    assert auto.newton_hessian(auto.bfgs_from - 1) is Hessian.EXACT
    assert auto.newton_hessian(auto.bfgs_from) is Hessian.BFGS
    assert Control(hessian="exact").newton_hessian(10**6) is Hessian.EXACT
    assert Control(bfgs_from=5).newton_hessian(5) is Hessian.BFGS


def test_the_fit_records_its_control_and_its_refits_use_it(sleep):
    control = Control(max_iter=150, hessian="bfgs")
    fit = jaxlmm.lmm(SLEEP, sleep, control=control)
    assert fit.control == control
    ml = fit.refit(reml=False)
    assert ml.control == control and not ml.reml
    again = jaxlmm.lmm(SLEEP, sleep, control=control, max_iter=40)
    assert again.control == control.replace(max_iter=40)
    with pytest.raises(jaxlmm.JaxLMMError, match="control must be a jaxlmm.Control"):
        jaxlmm.lmm(SLEEP, sleep, control="fast")


def test_bfgs_and_exact_hessians_reach_the_same_optimum(sleep):
    """The Hessian policy changes the path, not the answer (lme4: REML criterion 1743.6283)."""
    exact = jaxlmm.lmm(SLEEP, sleep, control=Control(hessian="exact"))
    bfgs = jaxlmm.lmm(SLEEP, sleep, control=Control(hessian="bfgs"))
    assert exact.converged and bfgs.converged
    assert bfgs.objective == pytest.approx(exact.objective, rel=1e-12)
    assert exact.objective == pytest.approx(1743.6282719585, rel=1e-10)
    np.testing.assert_allclose(bfgs.theta, exact.theta, rtol=1e-5)


def test_a_small_iteration_cap_is_reported_not_hidden(sleep):
    """max_iter=1 with no restarts: Newton cannot finish, the fit says so."""
    control = Control(max_iter=1, max_restarts=0, boundary_restart=False)
    with pytest.warns(jaxlmm.ConvergenceWarning, match="did not converge"):
        fit = jaxlmm.lmm(SLEEP, sleep, control=control, method="lbfgs")
    assert not fit.converged


def test_chunks_from_the_available_memory_or_a_fixed_budget(sleep):
    """Without chunk_size: a share of the memory available now, or chunk_entries float64 entries."""
    from jaxlmm.memory import available_memory_bytes
    from jaxlmm.replicates import _per_replicate_size, chunk_length, target_of

    fit = jaxlmm.lmm(SLEEP, sleep)
    targets = (target_of(fit),)
    per = _per_replicate_size(targets)
    fixed = Control(chunk_entries=5 * per, cpu_chunk=10**6)
    assert chunk_length(targets, 10**6, None, fixed) == 5
    share = Control(chunk_share=0.5, cpu_chunk=10**9)
    expected = int(0.5 * available_memory_bytes()[0]) // 8 // per
    assert abs(chunk_length(targets, 10**12, None, share) - expected) <= 0.05 * expected + 1
    assert chunk_length(targets, 10**6, None, Control()) <= Control().cpu_chunk  # the CPU backend's cap
    assert chunk_length(targets, 3, 100, Control()) == 3  # never more than n
