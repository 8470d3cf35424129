"""Simulated responses and batched refits (jaxlmm.replicates): the model's moments, replicates redone."""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import replicates
from jaxlmm.replicates import fit_params, rows_of, simulate
from models import get_fit
from oracle import DYE1, SLOPE


def test_simulation_matches_the_model_moments():
    """Mean and covariance of y* over many draws: X beta and sigma^2 (Z Lambda Lambda'Z' + I)."""
    fit = get_fit(DYE1, "dyestuff")
    keys = jax.random.split(jax.random.key(0), 20000)
    ys = np.asarray(jax.vmap(simulate, in_axes=(0, None, None))(keys, rows_of(fit.design), fit_params(fit)))
    sb2 = (fit.sigma * fit.theta[0]) ** 2
    assert ys.mean() == pytest.approx(fit.fixef.iloc[0], abs=4 * np.sqrt((sb2 + fit.sigma**2) / 20000))
    codes = fit.design.terms[0].codes
    same = codes[0] == codes[1]  # rows 0 and 1 share a batch
    cov01 = np.cov(ys[:, 0], ys[:, 1])
    assert same
    assert cov01[0, 0] == pytest.approx(sb2 + fit.sigma**2, rel=0.05)
    assert cov01[0, 1] == pytest.approx(sb2, rel=0.1)


def test_bootstrap_redoes_replicates_that_did_not_converge():
    """The batched pass's replicates that failed the checks are finished one by one (replicates._first_pass_restarts)."""
    from jaxlmm.replicates import Refit, _first_pass_restarts

    theta = np.array([[0.5, 0.2], [0.0, 1.0], [0.7, 0.3], [0.4, 0.4]])
    res = Refit(
        objective=np.zeros(4), theta=theta, beta=np.zeros((4, 1)), sigma=np.ones(4),
        converged=np.array([True, False, False, True]), n_iter=np.array([3, 4, 8, 2]),
        stuck=np.array([[False, False], [True, False], [False, False], [False, False]]),
        grad=np.full((4, 2), 1e-6),
    )
    idx, start = _first_pass_restarts(res, 8, 0.1)
    assert idx.tolist() == [1, 2]  # a saddle on the bound; out of iterations
    assert start[1].tolist() == [0.1, 1.0] and start[2].tolist() == theta[2].tolist()
    res = res._replace(converged=np.array([True, False, True, False]), n_iter=np.array([3, 4, 2, 2]),
                       stuck=np.zeros((4, 2), dtype=bool))
    idx, _ = _first_pass_restarts(res, 8, 0.1)
    assert idx.tolist() == [1, 3]  # a failed line search or negative curvature away from the bound
    # at the cap, those whose last pass met Newton's aim max|g| < 1e-9 (1 + |f|) are done
    res = res._replace(converged=np.ones(4, dtype=bool), n_iter=np.full(4, 8), objective=np.full(4, 1e3),
                       grad=np.array([[1e-7, 0.0], [1.01e-6, 0.0], [0.0, -2e-6], [0.0, -9e-7]]))
    idx, _ = _first_pass_restarts(res, 8, 0.1)
    assert idx.tolist() == [1, 2]


# ---- every pass batched: the replicates equal single refits ------------------------------------


def _three_terms() -> pd.DataFrame:
    """A response with three crossed random intercepts (12 x 9 x 6 levels) and a covariate."""
    rng = np.random.default_rng(3)
    n = 240
    a, b, c = rng.integers(0, 12, n), rng.integers(0, 9, n), rng.integers(0, 6, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + 0.8 * rng.normal(size=12)[a] + 0.5 * rng.normal(size=9)[b] + 0.3 * rng.normal(size=6)[c]
    return pd.DataFrame({"y": y + rng.normal(size=n), "x": x, "a": a.astype(str), "b": b.astype(str),
                         "c": c.astype(str)})


BATCHED = {  # formula, data, REML
    "random slope": (SLOPE, lambda: jaxlmm.datasets.load("sleepstudy"), True),
    "crossed": ("diameter ~ 1 + (1 | plate) + (1 | sample)", lambda: jaxlmm.datasets.load("penicillin"), False),
    "three terms": ("y ~ x + (1 | a) + (1 | b) + (1 | c)", _three_terms, True),
    "singular": ("Yield ~ 1 + (1 | Batch)", lambda: jaxlmm.datasets.load("dyestuff2"), True),
}


@functools.lru_cache(maxsize=None)
def _batched_case(case: str):
    formula, load, reml = BATCHED[case]
    data = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
        return formula, data, jaxlmm.lmm(formula, data, reml=reml)


def _single_refits(formula, data, fit, ys, **kw) -> list:
    """Each simulated response fitted on its own by lmm, from the fitted theta (the bootstrap's start)."""
    response = formula.split("~")[0].strip()
    rows = data.iloc[fit.design.rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.JaxLMMWarning)
        return [jaxlmm.lmm(formula, rows.assign(**{response: np.asarray(y)}), reml=fit.reml, theta0=fit.theta, **kw)
                for y in ys]


@pytest.mark.parametrize("case", list(BATCHED))
def test_replicates_of_the_later_batched_passes_equal_single_refits(case, monkeypatch):
    """first_pass=1: nearly every replicate is finished by the later batched passes; each one's optimum
    is that of the same response fitted alone (1e-8 relative), and nothing is refitted one at a time."""
    formula, data, fit = _batched_case(case)
    sizes = []
    batch = replicates._Batches.__call__

    def counted(self, parts, starts, max_iter, method="newton"):
        sizes.append(len(starts))
        return batch(self, parts, starts, max_iter, method)

    monkeypatch.setattr(replicates._Batches, "__call__", counted)
    n = 8
    res = jaxlmm.bootstrap(fit, n=n, seed=5, progress=False, control=fit.control.replace(first_pass=1))
    single = _single_refits(formula, data, fit, fit.simulate(n, seed=5))
    np.testing.assert_allclose(res.table["objective"], [f.objective for f in single], rtol=1e-8)
    assert res.table["converged"].all() and res.n_failed == 0
    assert res.passes.later[0] > 0 and sizes[0] == res.passes.later[0]  # the later pass: one batch of all
    assert res.passes.first == n and res.passes.chunk == n


@pytest.mark.parametrize("case", ["random slope", "crossed"])
def test_forced_failures_are_counted_exactly(case):
    """A convergence tolerance no fit can meet: every replicate the batched passes leave unconverged is
    counted (n_failed, the warning), and every one reported converged is at the single refit's optimum."""
    formula, data, fit = _batched_case(case)
    n = 8
    control = fit.control.replace(first_pass=1, max_iter=3, convergence_tol=1e-14)
    with pytest.warns(jaxlmm.ConvergenceWarning) as record:
        res = jaxlmm.bootstrap(fit, n=n, seed=5, progress=False, control=control)
    ok = res.table["converged"].to_numpy()
    assert res.n_failed == int((~ok).sum()) > 0 and res.n_used == n - res.n_failed
    assert any(f"{res.n_failed} of {n} bootstrap replicate(s)" in str(w.message) for w in record)
    single = np.array([f.objective for f in _single_refits(formula, data, fit, fit.simulate(n, seed=5))])
    obj = res.table["objective"].to_numpy()
    np.testing.assert_allclose(obj[ok], single[ok], rtol=1e-8)
    assert np.all(obj[~ok] >= single[~ok] * (1 - 1e-8 * np.sign(single[~ok])))


def test_the_later_passes_restart_fall_back_and_probe_as_a_single_fit_does():
    """replicates._finish on a scripted optimizer: replicate 0 converges at once; 1 stops at negative
    curvature and its restart along it finds a lower converged optimum; 2 stalls without a direction,
    L-BFGS and Newton after it converge lower; 3 meets the first-order conditions with a curvature test
    failing, and no probe lowers it: a flat valley, converged. Iterations add up over the passes."""
    calls = []

    def refit(objective, theta, converged, n_iter, grad=0.0, descent=0.0):
        m = len(objective)
        column = lambda v: np.broadcast_to(np.asarray(v, float), (m,)).reshape(m, 1)  # noqa: E731
        return replicates.Refit(
            objective=np.asarray(objective, float), theta=column(theta), beta=np.zeros((m, 1)), sigma=np.ones(m),
            converged=np.asarray(converged), n_iter=np.asarray(n_iter), stuck=np.zeros((m, 1), bool),
            grad=column(grad), descent=column(descent))

    def run(parts, starts, max_iter, method="newton"):
        rows = parts.tolist()
        calls.append((method, rows))
        step = len(calls)
        if step == 1:  # the second Newton pass, from the waiting starts
            return refit([1.0, 5.0, 7.0, 3.0], [0.5, 0.0, 0.3, 0.2], [True, False, False, False], [2, 3, 4, 5],
                         grad=[0.0, 0.0, 0.5, 1e-9], descent=[0.0, 1.0, 0.0, 0.0])
        if step == 2:  # the restart of replicate 1 along its direction
            assert method == "newton" and rows == [1]
            assert starts[0, 0] == pytest.approx(0.1)  # moved by restart_step from theta 0
            return refit([4.0], [0.4], [True], [6])
        if step == 3:  # L-BFGS for the replicates still not converged
            assert method == "lbfgs" and rows == [2, 3]
            return refit([6.5, 3.0], [0.31, 0.2], [True, False], [10, 10])
        if step == 4:  # Newton from the L-BFGS points
            assert method == "newton" and rows == [2, 3]
            return refit([6.0, 3.0], [0.32, 0.2], [True, False], [1, 1])
        if step == 5:  # the probe of replicate 3 (no direction: one probe)
            assert rows == [3]
            return refit([3.0], [0.2], [False], [2])
        raise AssertionError(f"unexpected call {step}: {method} {rows}")

    waiting = replicates._Waiting(np.arange(4), np.zeros((4, 1)), np.arange(4))
    control = jaxlmm.Control(max_restarts=2)
    out = replicates._finish(waiting, run, control, np.zeros(1))
    assert len(calls) == 5
    np.testing.assert_array_equal(out.objective, [1.0, 4.0, 6.0, 3.0])
    np.testing.assert_array_equal(out.converged, [True, True, True, True])
    np.testing.assert_array_equal(out.n_iter, [2, 3 + 6, 4 + 10 + 1, 5 + 10 + 1 + 2])


def test_a_sequential_batch_equals_a_vectorized_one():
    """Control.cpu_map_from: the replicates of a chunk refitted one after another inside the program
    (lax.map, for large Schur complements on the CPU) give the vectorized refits' optima."""
    formula, data, fit = _batched_case("crossed")
    assert not replicates.sequential(fit.products, fit.control)  # q2 = 6: vectorized by default
    by_map = fit.control.replace(cpu_map_from=1)
    assert replicates.sequential(fit.products, by_map)
    a = jaxlmm.bootstrap(fit, n=8, seed=2, progress=False)
    b = jaxlmm.bootstrap(fit, n=8, seed=2, progress=False, control=by_map)
    np.testing.assert_allclose(b.table["objective"], a.table["objective"], rtol=1e-10)
    np.testing.assert_allclose(b.table["theta_plate.(Intercept)"], a.table["theta_plate.(Intercept)"], rtol=1e-6)
    # chunks of 3: the last chunk pads one copy, which the sequential batch skips (zeros); the
    # replicates are unchanged
    c = jaxlmm.bootstrap(fit, n=8, seed=2, progress=False, control=by_map, chunk_size=3)
    np.testing.assert_allclose(c.table["objective"], a.table["objective"], rtol=1e-10)
    tg = replicates.target_of(fit)
    run = replicates._Batches(tg, fit.reml, 3, by_map)
    starts = np.repeat(np.asarray(tg.theta0)[None], 3, axis=0)
    parts = jax.tree.map(lambda v: np.repeat(np.asarray(v)[None], 3, axis=0), fit.products.response)
    r = run.batch(parts, jax.numpy.asarray(starts), 50, valid=2)
    assert np.all(np.asarray(r.converged)[:2]) and not bool(np.asarray(r.converged)[2])
    assert float(r.objective[2]) == 0.0 and float(r.objective[0]) == pytest.approx(fit.objective, rel=1e-10)


def test_lanes_chunks_and_their_padding():
    """On one device, vectorized refits run on Newton's lanes: a default chunk is a power of two (the
    smallest holding n, at most cpu_lanes * lane_rounds on the CPU), with cpu_lanes lanes; a padded
    chunk's copies are skipped (zeros), and lanes give the vectorized (vmap) refits' optima. Sequential
    targets and several devices do not use lanes."""
    formula, data, fit = _batched_case("crossed")
    tg = replicates.target_of(fit)
    control = fit.control
    assert not replicates.uses_lanes([tg], control.replace(lanes=True), n_devices=2)
    assert not replicates.uses_lanes([tg], control.replace(cpu_map_from=1))
    assert replicates.uses_lanes([tg], control.replace(lanes=True)) and not replicates.uses_lanes(
        [tg], control.replace(lanes=False))
    assert replicates.uses_lanes([tg], control) == (jax.default_backend() == "cpu")
    control = control.replace(lanes=True)
    if jax.default_backend() == "cpu":
        most = control.cpu_lanes * control.lane_rounds
        assert [replicates.chunk_length([tg], n, None, control, lanes=True) for n in (1, 5, 100, 10**6)] == [
            1, 8, 128, most]
        assert replicates.chunk_length([tg], 100, None, control) == min(100, control.cpu_chunk)
        assert replicates.lane_count(most, control) == control.cpu_lanes
        # a model whose replicates hold many entries gets smaller chunks, down to cpu_chunk
        size = replicates._per_replicate_size([tg])
        assert replicates._default_chunk([tg], control.replace(lane_rounds=10**6), True) == max(
            control.cpu_chunk, replicates.LANE_ENTRIES // size)
    assert replicates.chunk_length([tg], 100, 7, control, lanes=True) == 7  # a chunk_size is kept
    starts = jax.numpy.asarray(np.repeat(np.asarray(tg.theta0)[None], 6, axis=0) * np.linspace(0.5, 2, 6)[:, None])
    parts = jax.tree.map(lambda v: np.repeat(np.asarray(v)[None], 6, axis=0), fit.products.response)
    on_lanes = replicates._Batches(tg, fit.reml, 6, control, lanes=2).batch(parts, starts, 50, valid=4)
    by_vmap = replicates._Batches(tg, fit.reml, 6, control).batch(parts, starts, 50)
    np.testing.assert_allclose(np.asarray(on_lanes.objective)[:4], np.asarray(by_vmap.objective)[:4], rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(on_lanes.n_iter)[:4], np.asarray(by_vmap.n_iter)[:4])
    assert np.all(np.asarray(on_lanes.converged)[:4]) and not np.any(np.asarray(on_lanes.objective)[4:])
    assert float(on_lanes.objective[0]) == pytest.approx(fit.objective, rel=1e-10)


@pytest.mark.parametrize("case", ["random slope", "crossed"])
def test_bootstraps_on_lanes_and_in_vectorized_batches_agree(case):
    """The same replicates refitted on lanes and as vmap-ped batches (Control.lanes, the default on
    accelerators) reach the same optima; the batches finish some in later passes."""
    formula, data, fit = _batched_case(case)
    a = jaxlmm.bootstrap(fit, n=24, seed=4, progress=False, control=fit.control.replace(lanes=True))
    b = jaxlmm.bootstrap(fit, n=24, seed=4, progress=False, control=fit.control.replace(lanes=False, first_pass=3))
    assert a.passes.chunk == 32 and b.passes.chunk == 24 and sum(b.passes.later) > 0
    np.testing.assert_allclose(b.table["objective"], a.table["objective"], rtol=1e-10)
    assert a.n_failed == b.n_failed == 0


def test_a_variance_test_refits_its_alternative_on_lanes():
    """pb_test of Dyestuff's batch variance: the null (no random effects, closed form) is refitted
    vectorized and the alternative on lanes, in the same chunks; the statistics equal those of
    vectorized batches for both (Control.lanes=False)."""
    dye = jaxlmm.datasets.load("dyestuff")
    null = jaxlmm.lmm("Yield ~ 1", dye, reml=False)
    alt = jaxlmm.lmm("Yield ~ 1 + (1 | Batch)", dye, reml=False)
    targets = [replicates.target_of(null), replicates.target_of(alt)]
    assert replicates.uses_lanes(targets, alt.control.replace(lanes=True))
    assert not replicates.uses_lanes(targets[:1], alt.control.replace(lanes=True))  # nothing to iterate
    a = jaxlmm.pb_test(null, alt, n=40, seed=3, progress=False, control=alt.control.replace(lanes=True))
    b = jaxlmm.pb_test(null, alt, n=40, seed=3, progress=False, control=alt.control.replace(lanes=False))
    np.testing.assert_allclose(a.table["lrt"], b.table["lrt"], rtol=1e-9, atol=1e-9)
    assert a.p_value == b.p_value and a.n_failed == b.n_failed == 0
