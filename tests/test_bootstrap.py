"""Parametric bootstrap and bootstrap LRT: batched refits against separate refits and references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from conftest import REF, get_fit
from scipy import stats

import jaxlmm
from jaxlmm.bootstrap import shortest_interval
from jaxlmm.replicates import fit_params, rows_of, simulate

SLEEP = "Reaction ~ Days + (Days | Subject)"
PENICILLIN = "diameter ~ 1 + (1 | plate) + (1 | sample)"
DYE0, DYE1 = "Yield ~ 1", "Yield ~ 1 + (1 | Batch)"
B = 8


def simulated_responses(fit, n, seed):
    """The responses replicate i is built from: simulate(split(key(seed), n)[i])."""
    keys = jax.random.split(jax.random.key(seed), n)
    rows, params = rows_of(fit.design), fit_params(fit)
    return [np.asarray(simulate(k, rows, params)) for k in keys]


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


def test_pb_test_sleepstudy_days_matches_pbkrtest():
    ref = json.loads((REF / "inference" / "inference.json").read_text())["anova_fixed_days"]
    f0 = get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False)
    f1 = get_fit(SLEEP, "sleepstudy", reml=False)
    res = jaxlmm.pb_test(f0, f1, n=256, seed=0, progress=False)
    assert res.lrt == pytest.approx(ref["chisq"][1], rel=1e-6)
    assert res.df == ref["df"][1] == 1
    assert res.p_chisq == pytest.approx(ref["p"][1], rel=1e-5)
    # pbkrtest: p ~ 0.001; with 256 replicates at most 1 exceedance is expected (p <= 2/257)
    assert res.n_used == 256 and res.n_failed == 0
    assert res.p_value <= 0.01
    assert res.p_value == pytest.approx((1 + np.sum(res.table["lrt"] >= res.lrt)) / 257)
    # under H0 (away from the boundary) LRT* is close to chi^2(1): median 0.455, SE ~0.07 at B = 256
    assert 0.25 < np.median(res.table["lrt"]) < 0.75
    # the alternative contains the null: its refit is never worse (some first refits end at a
    # local optimum and are refitted from the null's optimum)
    assert res.table["lrt"].min() >= -1e-6


def test_slow_replicates_finish_one_by_one_at_the_same_optimum(sleep_boot):
    """With 2 batched Newton iterations nearly every replicate is finished by a separate refit."""
    fit = get_fit(SLEEP, "sleepstudy")
    control = fit.control.replace(first_pass=2, pending_share=1.0)  # pending_share 1: keep the cap at 2
    res = jaxlmm.bootstrap(fit, n=B, seed=1, progress=False, control=control)
    assert res.n_failed == 0
    assert (sleep_boot.table["n_iter"] > 2).sum() >= B // 2  # the case is exercised
    np.testing.assert_allclose(res.table["objective"], sleep_boot.table["objective"], rtol=1e-9)
    np.testing.assert_allclose(res.table["sigma"], sleep_boot.table["sigma"], rtol=1e-6)


def test_pb_test_variance_component_with_a_null_without_random_effects():
    f0 = get_fit(DYE0, "dyestuff", reml=False)
    f1 = get_fit(DYE1, "dyestuff", reml=False)
    ml_ref = json.loads((REF / "fits" / "dyestuff.json").read_text())["ML"]
    y = f0.design.y
    dev0 = len(y) * (1 + np.log(2 * np.pi * np.sum((y - y.mean()) ** 2) / len(y)))
    res = jaxlmm.pb_test(f0, f1, n=256, seed=2, progress=False)
    assert res.lrt == pytest.approx(dev0 - ml_ref["objective"], rel=1e-6)
    # the null refits are closed form: n (1 + log(2 pi RSS/n)) of each simulated response
    ys = simulated_responses(f0, 256, seed=2)
    dev0_star = [len(v) * (1 + np.log(2 * np.pi * np.sum((v - v.mean()) ** 2) / len(v))) for v in ys]
    np.testing.assert_allclose(res.table["deviance_null"], dev0_star, rtol=1e-10)
    # H0 on the boundary: LRT* is 0 with probability ~1/2 or more; the chi^2(1) p-value is conservative
    zero = np.mean(res.table["lrt"] < 1e-6)
    assert 0.35 < zero < 0.85
    assert res.p_value < res.p_chisq
    k = np.sum(res.table["lrt"] >= res.lrt)
    assert res.p_value == pytest.approx((1 + k) / 257)
    assert stats.binomtest(int(k), 256, 0.5 * res.p_chisq).pvalue > 1e-3  # near half the chi^2 p


def test_pb_test_refits_reml_fits_by_ml_and_checks_its_models():
    f0 = get_fit(DYE0, "dyestuff", reml=True)
    f1 = get_fit(DYE1, "dyestuff", reml=True)
    with pytest.warns(jaxlmm.JaxLMMWarning, match="refitting"):
        res = jaxlmm.pb_test(f0, f1, n=256, seed=2, progress=False)
    ml = jaxlmm.pb_test(get_fit(DYE0, "dyestuff", reml=False), get_fit(DYE1, "dyestuff", reml=False), n=256, seed=2, progress=False)
    assert res.lrt == pytest.approx(ml.lrt, rel=1e-8) and res.p_value == ml.p_value
    with pytest.raises(jaxlmm.JaxLMMError, match="fewer parameters"):
        jaxlmm.pb_test(f1, f0, n=10, progress=False)
    other = get_fit("Yield ~ 1 + (1 | Batch)", "dyestuff2")
    with pytest.raises(jaxlmm.JaxLMMError, match="same rows and response"):
        jaxlmm.pb_test(f0, other, n=10, progress=False)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "many"])
def test_bad_replicate_counts_raise(bad):
    with pytest.raises(jaxlmm.JaxLMMError, match="n "):
        jaxlmm.bootstrap(get_fit(DYE1, "dyestuff"), n=bad, progress=False)
    with pytest.raises(jaxlmm.JaxLMMError, match="chunk_size"):
        jaxlmm.bootstrap(get_fit(DYE1, "dyestuff"), n=4, chunk_size=bad, progress=False)
