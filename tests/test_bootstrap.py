"""Parametric bootstrap (jaxlmm.bootstrap): batched refits against separate refits, seeds, chunks,
devices, intervals, weighted fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import jaxlmm
from jaxlmm.bootstrap import shortest_interval
from models import data_of, get_fit, weighted_fit
from oracle import DYE1, WEIGHTS, simulated_responses

SLEEP = "Reaction ~ Days + (Days | Subject)"
PENICILLIN = "diameter ~ 1 + (1 | plate) + (1 | sample)"
B = 8
INTERCEPT = WEIGHTS["cases"]["intercept"]["formula"]


def separate_refit(formula, dataset, y, reml):
    """An ordinary fit of one simulated response by the other optimizer (L-BFGS, from lme4's start)."""
    frame = jaxlmm.datasets.load(dataset).copy()
    response = formula.split("~")[0].strip()
    frame[response] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)
        return jaxlmm.lmm(formula, frame, reml=reml, method="lbfgs")


@pytest.fixture(scope="module")
def sleep_boot():
    return jaxlmm.bootstrap(get_fit(SLEEP, "sleepstudy"), n=B, seed=1, progress=False)


@pytest.fixture(scope="module")
def dye_boot():
    return jaxlmm.bootstrap(get_fit(DYE1, "dyestuff"), n=10, seed=3, progress=False)


def test_a_response_far_from_zero_bootstraps_as_the_response_itself(sleep_boot):
    """y + 1e9: the replicates are those of y (same seed), their intercepts 1e9 larger; the refits'
    cross-products are of the simulated responses less their fit, not of responses near 1e9."""
    data = jaxlmm.datasets.load("sleepstudy")
    far = jaxlmm.lmm("y ~ Days + (Days | Subject)", data.assign(y=data["Reaction"] + 1e9))
    res = jaxlmm.bootstrap(far, n=B, seed=1, progress=False)
    a, b = res.table, sleep_boot.table
    assert res.n_failed == 0 and list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a["(Intercept)"] - 1e9, b["(Intercept)"], rtol=0, atol=1e-5)
    for col in [c for c in a.columns if c not in ("(Intercept)", "n_iter", "converged")]:
        np.testing.assert_allclose(a[col], b[col], rtol=1e-6, atol=1e-8, err_msg=col)


@pytest.mark.parametrize("formula,dataset,reml", [(SLEEP, "sleepstudy", True), (PENICILLIN, "penicillin", False)])
def test_each_replicate_equals_a_separate_refit(formula, dataset, reml, sleep_boot):
    fit = get_fit(formula, dataset, reml=reml)
    nrep = B if formula == SLEEP else 4
    res = sleep_boot if formula == SLEEP else jaxlmm.bootstrap(fit, n=nrep, seed=1, progress=False)
    assert res.n_used == nrep and res.n_failed == 0 and res.reml == reml
    tab = res.table
    for i, y in enumerate(simulated_responses(fit, nrep, seed=1)):
        ref = separate_refit(formula, dataset, y, reml)
        assert tab["objective"][i] == pytest.approx(ref.objective, rel=1e-8)
        assert tab["sigma"][i] == pytest.approx(ref.sigma, rel=1e-5)
        np.testing.assert_allclose(tab[list(fit.fixef.index)].iloc[i], ref.fixef.to_numpy(), rtol=1e-5)
        sd = ref.varcorr.query("term2 != term2 and group != 'Residual'")  # SD rows
        names = [f"sd_{t}|{g}" for g, t in zip(sd["group"], sd["term1"])]
        np.testing.assert_allclose(tab[names].iloc[i], sd["sd_cor"], rtol=1e-4, atol=1e-6)


def test_same_seed_same_numbers_and_chunking_does_not_matter(dye_boot):
    fit = get_fit(DYE1, "dyestuff")
    again = jaxlmm.bootstrap(fit, n=10, seed=3, progress=False)
    pd_cols = ["objective", "sigma", "(Intercept)", "theta_Batch.(Intercept)"]
    np.testing.assert_array_equal(again.table[pd_cols].to_numpy(), dye_boot.table[pd_cols].to_numpy())
    # another chunk size: the same responses; batched kernels of another width may round
    # differently, so the optimum agrees to machine precision and the estimates to the
    # optimizer's tolerance
    chunked = jaxlmm.bootstrap(fit, n=10, seed=3, chunk_size=4, progress=False)
    np.testing.assert_allclose(chunked.table["objective"], dye_boot.table["objective"], rtol=1e-12)
    np.testing.assert_allclose(chunked.table[pd_cols].to_numpy(), dye_boot.table[pd_cols].to_numpy(), rtol=1e-5)
    other = jaxlmm.bootstrap(fit, n=10, seed=4, chunk_size=4, progress=False)
    assert not np.allclose(other.table["objective"], dye_boot.table["objective"])


def test_sharded_over_four_devices_equals_one_device(dye_boot):
    script = textwrap.dedent(
        """
        import json, jax, jaxlmm
        assert len(jax.devices()) == 4
        fit = jaxlmm.lmm("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("dyestuff"))
        res = jaxlmm.bootstrap(fit, n=10, seed=3, progress=False)
        print(json.dumps(res.table["objective"].tolist()))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sharded = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(sharded, dye_boot.table["objective"], rtol=1e-12)


def test_confint_percentile_and_shortest(sleep_boot):
    tab = sleep_boot.table
    ci = sleep_boot.confint(level=0.8)
    assert list(ci.index) == [
        "sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sd_Days|Subject", "sigma", "(Intercept)", "Days",
    ]
    for name in ci.index:
        np.testing.assert_allclose(ci.loc[name], np.percentile(tab[name], [10, 90]), rtol=1e-12)
    sh = sleep_boot.confint(level=0.8, method="shortest")
    for name in sh.index:  # brute force: the narrowest window of ceil(0.8 B) sorted values
        v = np.sort(tab[name].to_numpy())
        m = int(np.ceil(0.8 * len(v)))
        w = min(v[i + m - 1] - v[i] for i in range(len(v) - m + 1))
        assert sh.loc[name, "upper"] - sh.loc[name, "lower"] == pytest.approx(w, rel=1e-12)
        assert np.sum((v >= sh.loc[name, "lower"]) & (v <= sh.loc[name, "upper"])) >= m
    assert shortest_interval(np.array([0.0, 1.0, 1.1, 1.2, 5.0]), 0.6) == (1.0, 1.2)
    with pytest.raises(jaxlmm.JaxLMMError, match="method"):
        sleep_boot.confint(method="bca")
    with pytest.raises(jaxlmm.JaxLMMError, match="level"):
        sleep_boot.confint(level=1.5)


def test_slow_replicates_finish_one_by_one_at_the_same_optimum(sleep_boot):
    """With 2 batched Newton iterations nearly every replicate is finished by a separate refit."""
    fit = get_fit(SLEEP, "sleepstudy")
    control = fit.control.replace(first_pass=2, pending_share=1.0)  # pending_share 1: keep the cap at 2
    res = jaxlmm.bootstrap(fit, n=B, seed=1, progress=False, control=control)
    assert res.n_failed == 0
    assert (sleep_boot.table["n_iter"] > 2).sum() >= B // 2  # the case is exercised
    np.testing.assert_allclose(res.table["objective"], sleep_boot.table["objective"], rtol=1e-9)
    np.testing.assert_allclose(res.table["sigma"], sleep_boot.table["sigma"], rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "many"])
def test_bad_replicate_counts_raise(bad):
    with pytest.raises(jaxlmm.JaxLMMError, match="n "):
        jaxlmm.bootstrap(get_fit(DYE1, "dyestuff"), n=bad, progress=False)
    with pytest.raises(jaxlmm.JaxLMMError, match="chunk_size"):
        jaxlmm.bootstrap(get_fit(DYE1, "dyestuff"), n=4, chunk_size=bad, progress=False)


def test_bootstrap_replicates_are_weighted_refits():
    """Each replicate equals an ordinary weighted fit of the response it was simulated as."""
    fit = weighted_fit("intercept", "ML")
    boot = jaxlmm.bootstrap(fit, n=3, seed=2, progress=False)
    data = data_of("sleepstudy")
    for i, y in enumerate(fit.simulate(3, seed=2)):
        ref = jaxlmm.lmm(INTERCEPT, data.assign(Reaction=y), reml=False, weights="w")
        assert boot.table["objective"][i] == pytest.approx(ref.objective, rel=1e-8)
        assert boot.table["sigma"][i] == pytest.approx(ref.sigma, rel=1e-5)
        np.testing.assert_allclose(boot.table[["(Intercept)", "Days"]].iloc[i], ref.fixef, rtol=1e-6)
