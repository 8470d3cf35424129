"""Issue 13 (numerical trust), the input side: every bad argument is a JaxLMMError naming it,
float64 whatever the JAX context, unreadable --data files, and memory checked before allocating.

Fits come from ``conftest.get_fit`` (shared by the session); the only new ones
are small (a non-nested pair on sleepstudy, and one in a subprocess for the
memory measurement).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import get_fit, get_model

import jaxlmm
from jaxlmm import JaxLMMError, JaxLMMWarning, cli, memory
from jaxlmm._config import ensure_x64

SLOPE = "Reaction ~ Days + (Days | Subject)"
DYE = "Yield ~ 1 + (1 | Batch)"
ROOT = Path(__file__).resolve().parents[1]


def dye_fit():
    return get_fit(DYE, "dyestuff")


def raises(func, *words):
    with pytest.raises(JaxLMMError) as info:
        func()
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    return str(info.value)


# ---- raw exceptions of the issue ----------------------------------------------------------


def test_theta0_that_overflows_names_theta0():
    model = get_model(SLOPE, "sleepstudy")
    msg = raises(lambda: model.fit(theta0=[1e8, 0, 1e8]), "theta0=[100000000.0, 0.0, 100000000.0]")
    assert "lme4's default theta0" in msg


@pytest.mark.parametrize("seed", [2**70, 2**63, -1, "1", 1.5, True, np.float64(3.0)])
def test_seeds_out_of_range_or_not_integers(seed):
    fit = dye_fit()
    for call in (lambda: fit.simulate(2, seed=seed), lambda: jaxlmm.bootstrap(fit, n=3, seed=seed, progress=False),
                 lambda: fit.confint("boot", n=3, seed=seed)):
        raises(call, "seed must be an integer in 0 .. 2**63 - 1")


def test_seed_none_is_random_and_recorded():
    fit = dye_fit()
    y = fit.simulate(3, seed=None)
    assert isinstance(y.seed, int) and 0 <= y.seed < 2**63
    np.testing.assert_array_equal(fit.simulate(3, seed=y.seed), y)
    assert fit.simulate(1, seed=7).seed == 7
    boot = jaxlmm.bootstrap(fit, n=4, seed=None, progress=False)
    assert isinstance(boot.seed, int)
    again = jaxlmm.bootstrap(fit, n=4, seed=boot.seed, progress=False)
    np.testing.assert_array_equal(again.table["objective"], boot.table["objective"])
    pb = jaxlmm.pb_test(get_fit("Yield ~ 1", "dyestuff", reml=False), get_fit(DYE, "dyestuff", reml=False),
                        n=4, seed=None, progress=False)
    assert isinstance(pb.seed, int)
    ci = fit.confint("boot", n=4, seed=None)
    assert isinstance(ci.attrs["seed"], int)
    exact = jaxlmm.exact_rlrt(get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy"), nsim=100, seed=None)
    assert isinstance(exact.seed, int) and 0 <= exact.seed < 2**63


def test_confint_which_unknown_or_not_a_name():
    fit = get_fit(SLOPE, "sleepstudy")
    for method in ("wald", "profile", "boot"):
        msg = raises(lambda: fit.confint(method, which="nope"), "'nope'", "which=")
        assert "sd_(Intercept)|Subject" in msg
    raises(lambda: fit.confint("wald", which=3), "which must be a parameter name")
    raises(lambda: fit.confint("wald", which=["Days", None]), "None")
    assert list(fit.confint("wald", which=["Days"]).index) == ["Days"]


@pytest.mark.parametrize("bad", [3, "fit", None, np.zeros(3)])
def test_a_non_fit_is_named(bad):
    fit = dye_fit()
    raises(lambda: jaxlmm.anova(fit, bad), "anova: model 2", "must be a fitted model", type(bad).__name__)
    raises(lambda: jaxlmm.anova(bad, fit), "anova: model 1")
    raises(lambda: jaxlmm.pb_test(bad, fit, n=3), "pb_test: null_fit must be a fitted model")
    raises(lambda: jaxlmm.pb_test(fit, bad, n=3), "pb_test: alt_fit must be a fitted model")
    raises(lambda: jaxlmm.bootstrap(bad, n=3), "bootstrap: fit must be a fitted model")
    from jaxlmm.confint import confint
    from jaxlmm.simulate import simulate

    raises(lambda: simulate(bad), "simulate: fit must be a fitted model")
    raises(lambda: confint(bad), "confint: fit must be a fitted model")


def test_pb_test_refuses_non_nested_models_as_anova_does():
    small = get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy", reml=False)
    other = get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False)
    pb = raises(lambda: jaxlmm.pb_test(small, other, n=3, progress=False), "is not nested in")
    an = raises(lambda: jaxlmm.anova(small, other), "is not nested in")
    assert pb == an  # one check (jaxlmm.anova.require_nested) for both
    res = jaxlmm.pb_test(small, other, n=3, progress=False, check_nested=False)
    assert res.df == other.npar - small.npar


def test_reml_must_be_a_bool_everywhere():
    model = get_model(SLOPE, "sleepstudy")
    for bad in ("False", 0, None, 0.5):
        raises(lambda: model.deviance([1, 0, 1], reml=bad), "reml must be True or False")
        raises(lambda: model.fit(reml=bad), "reml must be True or False")


# ---- an audit of the public functions ---------------------------------------------------------
def _cases():
    fit = lambda: get_fit(SLOPE, "sleepstudy")  # noqa: E731
    dye = dye_fit
    boot = lambda: jaxlmm.bootstrap(dye(), n=4, progress=False)  # noqa: E731
    ml0 = lambda: get_fit("Yield ~ 1", "dyestuff", reml=False)  # noqa: E731
    ml1 = lambda: get_fit(DYE, "dyestuff", reml=False)  # noqa: E731
    one = lambda: get_fit("Reaction ~ Days + (1 | Subject)", "sleepstudy")  # noqa: E731
    out = []
    for bad in ("a", None, -1, 0, float("nan"), 1.5, float("inf"), True):
        out.append((f"bootstrap n={bad!r}", lambda b=bad: jaxlmm.bootstrap(dye(), n=b), "n (the number of bootstrap"))
        out.append((f"pb_test n={bad!r}", lambda b=bad: jaxlmm.pb_test(ml0(), ml1(), n=b), "n (the number of bootstrap"))
        out.append((f"simulate n={bad!r}", lambda b=bad: dye().simulate(b), "n (the number of simulated"))
        out.append((f"chunk_size={bad!r}", lambda b=bad: jaxlmm.bootstrap(dye(), n=3, chunk_size=b), "chunk_size")
                   if bad is not None else None)
    for bad in ("0.9", None, 0, 1, -0.5, float("nan"), 95, True):
        out.append((f"confint level={bad!r}", lambda b=bad: fit().confint("wald", level=b), "level"))
        out.append((f"boot.confint level={bad!r}", lambda b=bad: boot().confint(level=b), "level"))
        out.append((f"tidy level={bad!r}", lambda b=bad: fit().tidy(conf_int=True, conf_level=b), "level"))
    for bad in ("yes", None, 1, 0.0):
        out.append((f"progress={bad!r}", lambda b=bad: jaxlmm.bootstrap(dye(), n=3, progress=b), "progress"))
        out.append((f"pb progress={bad!r}", lambda b=bad: jaxlmm.pb_test(ml0(), ml1(), n=3, progress=b), "progress"))
        out.append((f"predict re={bad!r}", lambda b=bad: fit().predict(re=b), "re must be True or False"))
        out.append((f"scaled={bad!r}", lambda b=bad: fit().residuals(scaled=b), "scaled"))
        out.append((f"refit={bad!r}", lambda b=bad: jaxlmm.anova(ml0(), ml1(), refit=b), "refit"))
        out.append((f"check_nested={bad!r}", lambda b=bad: jaxlmm.anova(ml0(), ml1(), check_nested=b), "check_nested"))
        out.append((f"pb check_nested={bad!r}", lambda b=bad: jaxlmm.pb_test(ml0(), ml1(), check_nested=b), "check_nested"))
        if bad is not None:
            out.append((f"correlation={bad!r}", lambda b=bad: fit().summary(correlation=b), "correlation"))
    out += [
        ("names=3", lambda: jaxlmm.anova(ml0(), ml1(), names=3), "names must be a list"),
        ("L text", lambda: fit().test("a"), "contrast matrix L"),
        ("L shape", lambda: fit().test(np.eye(3)), "needs 2 columns"),
        ("rhs text", lambda: fit().test(np.eye(2), rhs="x"), "rhs must be"),
        ("rhs nan", lambda: fit().test(np.eye(2), rhs=np.nan), "rhs must be finite"),
        ("method", lambda: fit().confint(method=None), "method must be one of"),
        ("boot method", lambda: boot().confint(method="bca"), "method must be one of"),
        ("theta wrong shape", lambda: get_model(SLOPE, "sleepstudy").deviance([1, 2]), "theta must have 3"),
        ("theta text", lambda: get_model(SLOPE, "sleepstudy").deviance("abc"), "theta must be"),
        ("max_iter", lambda: get_model(SLOPE, "sleepstudy").fit(max_iter=0), "max_iter"),
        ("predict text", lambda: fit().predict("abc"), "data must be"),
        ("formula None", lambda: jaxlmm.lmm(None, jaxlmm.datasets.load("dyestuff")), "formula must be a string"),
        ("data None", lambda: jaxlmm.lmm(DYE, None), "data must be a pandas DataFrame"),
        ("oneway data", lambda: jaxlmm.oneway_anova(None, "Yield", "Batch"), "data must be"),
        ("dataset name", lambda: jaxlmm.datasets.load(None), "No bundled dataset"),
        ("exact_rlrt seed", lambda: jaxlmm.exact_rlrt(one(), nsim=10, seed=2**70), "seed must be an integer"),
        ("exact_rlrt fit", lambda: jaxlmm.exact_rlrt("fit"), "exact_rlrt: fit must be a fitted model"),
        ("exact_rlrt nsim", lambda: jaxlmm.exact_rlrt(one(), nsim=10**12), "exact_rlrt(nsim=1000000000000) needs"),
        ("exact_lrt null", lambda: jaxlmm.exact_lrt(one(), null=3), "exact_lrt: null must be a fitted model"),
        ("ranova fit", lambda: jaxlmm.ranova("x"), "ranova: fit must be a fitted model"),
        ("icc conf_level", lambda: one().icc(conf_int=True, conf_level="x"), "conf_level must be a number"),
        ("r2 conf_int", lambda: one().r2(conf_int="x"), "conf_int must be True or False"),
    ]
    return [c for c in out if c is not None]


CASES = _cases()


@pytest.mark.parametrize("label,call,words", CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_are_jaxlmm_errors_naming_them(label, call, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JaxLMMWarning)
        raises(call, words)


# ---- float64 whatever the JAX context --------------------------------------------------------


def test_fit_inside_enable_x64_false_is_float64_with_a_true_warning():
    ref = get_fit(SLOPE, "sleepstudy")
    model = get_model(SLOPE, "sleepstudy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with jax.enable_x64(False):
            fit = model.fit()
            value = model.deviance(ref.theta)
            ranef = fit.ranef
            sim = fit.simulate(2, seed=1)
            assert jnp.zeros(1).dtype == jnp.float32  # the user's block still holds for the user's code
        fresh = jaxlmm.LinearMixedModel(SLOPE, jaxlmm.datasets.load("sleepstudy"))
    assert jax.config.jax_enable_x64
    assert fit.objective == pytest.approx(ref.objective, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-7)
    assert value == pytest.approx(ref.objective, rel=1e-12)
    assert ranef["value"].dtype == np.float64 and sim.dtype == np.float64
    msgs = [str(w.message) for w in caught if issubclass(w.category, JaxLMMWarning)]
    assert len(msgs) == 4 and all("jax.enable_x64(False)" in m and "float64 all the same" in m for m in msgs)
    assert all(w.filename == __file__ for w in caught if issubclass(w.category, JaxLMMWarning))
    assert fresh.deviance(ref.theta) == pytest.approx(ref.objective, rel=1e-12)


@pytest.mark.parametrize("entry", ["bootstrap", "simulate", "confint", "anova"])
def test_global_flag_off_is_switched_on_by_every_entry_point(entry):
    fit = dye_fit()
    calls = {
        "bootstrap": lambda: jaxlmm.bootstrap(fit, n=3, seed=1, progress=False).table["objective"].to_numpy(),
        "simulate": lambda: fit.simulate(2, seed=1),
        "confint": lambda: fit.confint("wald").to_numpy(),
        "anova": lambda: jaxlmm.anova(get_fit("Yield ~ 1", "dyestuff", reml=False), get_fit(DYE, "dyestuff", reml=False))
        ["Chisq"].to_numpy(),
    }
    ref = calls[entry]()
    jax.config.update("jax_enable_x64", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = calls[entry]()
        assert jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", True)
    msgs = [str(w.message) for w in caught if issubclass(w.category, JaxLMMWarning)]
    assert msgs == ["JAX's float64 mode (jax_enable_x64) was off; jaxlmm switched it on, since mixed-model "
                    "fits need float64."]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ref)


def test_float64_refused_when_no_context_can_switch_it_on(monkeypatch):
    model = get_model(SLOPE, "sleepstudy")
    with jax.enable_x64(False):
        monkeypatch.setattr(jax, "enable_x64", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", JaxLMMWarning)
            raises(lambda: model.deviance([1, 0, 1]), "float64", "jax.enable_x64(False)")
            raises(ensure_x64, "float64")


# ---- the command line's --data ----------------------------------------------------------------


def _cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "name,content,words",
    [
        ("bin.csv", bytes(range(256)) * 8, "binary"),
        ("empty.csv", b"", "empty file"),
        ("latin.csv", "Yield,Batch\n1,\xe9\n".encode("latin-1"), "not UTF-8"),
        ("blank.csv", b"\n\n\n", "Cannot read"),
        ("header.csv", b"Yield,Batch\n", "no rows"),
        ("passwd", b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                   b"bin:x:2:2:bin:/bin:/usr/sbin/nologin\n", "Column 'Yield'"),
        ("fake.parquet", b"PAR1 not really", "Parquet"),
    ],
)
def test_unreadable_data_files_exit_2(tmp_path, capsys, name, content, words):
    import importlib.util

    if name.endswith(".parquet") and importlib.util.find_spec("pyarrow") is not None:
        words = "Cannot read"
    path = tmp_path / name
    path.write_bytes(content)
    rc, out, err = _cli(capsys, "fit", DYE, "--data", str(path))
    assert rc == 2 and out == "", err
    assert err.startswith("jaxlmm: error: ") and words in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_parquet_without_pyarrow_names_the_extra(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("No module named 'pyarrow'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1....PAR1")
    rc, _, err = _cli(capsys, "fit", DYE, "--data", str(path))
    assert rc == 2 and "optional extra 'parquet'" in err and 'pip install ".[parquet]"' in err
    extras = (ROOT / "pyproject.toml").read_text()
    assert 'parquet = ["pyarrow>=' in extras


def test_a_file_on_disk_wins_over_a_bundled_name(tmp_path, capsys, monkeypatch):
    other = jaxlmm.datasets.load("dyestuff2")
    (tmp_path / "dyestuff").write_text(other.to_csv(index=False))
    folder = tmp_path / "sleepstudy"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    rc, out, _ = _cli(capsys, "fit", DYE, "--data", "dyestuff", "--ml", "--format", "json")
    mine = json.loads(out)
    rc2, out2, _ = _cli(capsys, "fit", DYE, "--data", "bundled:dyestuff", "--ml", "--format", "json")
    bundled = json.loads(out2)
    assert rc == rc2 == 0
    assert mine["data"] == "dyestuff" and bundled["data"] == "dyestuff"
    ref2 = get_fit(DYE, "dyestuff2", reml=False)
    ref = get_fit(DYE, "dyestuff", reml=False)
    assert mine["fixef"]["(Intercept)"] == pytest.approx(ref2.fixef.iloc[0], rel=1e-8)
    assert bundled["fixef"]["(Intercept)"] == pytest.approx(ref.fixef.iloc[0], rel=1e-8)
    # a folder of a bundled dataset's name is not a file: the bundled dataset
    rc3, _, _ = _cli(capsys, "fit", SLOPE, "--data", "sleepstudy", "--format", "json")
    assert rc3 == 0
    rc4, _, err = _cli(capsys, "fit", DYE, "--data", "bundled:nope")
    assert rc4 == 2 and "no bundled dataset 'nope'" in err


# ---- memory ----------------------------------------------------------------------------------


def test_available_memory_is_the_least_bound(monkeypatch):
    avail, source = memory.available_memory_bytes()
    assert 0 < avail <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(memory, "_cgroup_free", lambda: 3 * 2**30)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 5 * 2**30)
    monkeypatch.setattr(memory, "_address_space_free", lambda: None)
    assert memory.available_memory_bytes() == (3 * 2**30, "the cgroup's memory limit less its usage")
    monkeypatch.setattr(memory, "_address_space_free", lambda: 2**30)
    assert memory.available_memory_bytes()[0] == 2**30
    monkeypatch.setattr(memory, "_device_free", lambda device: 7)
    assert memory.available_memory_bytes()[0] == 7
    msg = raises(lambda: memory.check_fits(2**31, "A thing"), "A thing needs about 2.0 GiB", "0.0 GiB are available")
    assert "free memory of" in msg


def test_cgroup_limit_less_usage_counts_inactive_page_cache_as_free(monkeypatch):
    files = {
        "/sys/fs/cgroup/memory.max": str(8 * 2**30),
        "/sys/fs/cgroup/memory.current": str(7 * 2**30),
        "/sys/fs/cgroup/memory.stat": f"anon 100\ninactive_file {2 * 2**30}\nactive_file 5\n",
    }
    monkeypatch.setattr(memory, "_read", files.get)
    assert memory._cgroup_free() == 3 * 2**30
    files["/sys/fs/cgroup/memory.max"] = "max"
    assert memory._cgroup_free() is None
    v1 = {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(4 * 2**30),
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": str(3 * 2**30),
        "/sys/fs/cgroup/memory/memory.stat": "total_inactive_file 0\n",
    }
    monkeypatch.setattr(memory, "_read", v1.get)
    assert memory._cgroup_free() == 2**30


def test_address_space_limit_is_read():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        assert memory._address_space_free() is None
    else:
        assert memory._address_space_free() >= 0


def test_huge_bootstrap_and_simulate_refused_before_allocating():
    fit = dye_fit()
    raises(lambda: jaxlmm.bootstrap(fit, n=10**12, progress=False), "bootstrap(n=1000000000000)", "GiB")
    raises(lambda: jaxlmm.pb_test(get_fit("Yield ~ 1", "dyestuff", reml=False), get_fit(DYE, "dyestuff", reml=False),
                                  n=10**12, progress=False), "pb_test(n=1000000000000)")
    raises(lambda: fit.simulate(10**12), "simulate(n=1000000000000)", "GiB")


def test_fit_refused_when_it_does_not_fit():
    from jaxlmm.crossprod import cross_products

    design = get_model(DYE, "dyestuff").design
    raises(lambda: cross_products(design, memory_limit=2**20), "needs about", "given limit")


def test_estimates_grow_with_the_shape():
    small = memory.estimate_fit_bytes(((1000, 1), (100, 1)), 1, 5000, 50_000)
    pairs = memory.estimate_fit_bytes(((1000, 1), (100, 1)), 1, 5000, 5_000_000)
    dense = memory.estimate_fit_bytes(((1000, 1), (3000, 1)), 1, 5000, 50_000)
    assert small < pairs and small < dense
    # per pair: its arguments (20 bytes for k1 = 1), and its temporaries or its build on the host
    per_pair = (pairs - small) / (5_000_000 - 50_000)
    assert 40 <= per_pair <= 100


def test_estimate_bounds_the_measured_peak_of_a_small_crossed_fit():
    """A fresh process fits 30,000 rows of 3,000 x 300 crossed levels; the estimate covers its peak."""
    env = {**os.environ, "JAXLMM_CACHE_DIR": "off"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory_peak.py"), "--one", "fit", "30000", "3000", "300"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["estimate"] >= r["measured"], r
    assert r["estimate"] <= 2.0 * r["measured"], r
