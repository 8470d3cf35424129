"""The runtime's settings (jaxlmm._config): float64 whatever the JAX context, the compilation cache,
LAPACK threads, and no new compilation for repeated shapes."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm
from checks import assert_same_fit, of_type, raises
from jaxlmm import JaxLMMWarning
from jaxlmm._config import ensure_x64
from models import dye_fit, get_fit, get_model
from oracle import DYE, SLOPE

SLEEP = jaxlmm.datasets.load("sleepstudy")


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


def test_float64_mode_switched_off_by_the_user():
    """jaxlmm switches float64 back on (with a warning) and the fit is unchanged."""
    ref = get_fit(SLOPE, "sleepstudy")
    jax.config.update("jax_enable_x64", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = jaxlmm.LinearMixedModel(SLOPE, SLEEP)
            fit = model.fit()
        assert len(of_type(caught, JaxLMMWarning)) == 1
        assert "jax_enable_x64" in str(caught[0].message)
        assert jax.config.jax_enable_x64
        assert fit.theta.dtype == np.float64
        assert_same_fit(fit, ref, rtol=1e-9)
        jax.config.update("jax_enable_x64", False)
        with pytest.warns(JaxLMMWarning, match="jax_enable_x64"):
            value = model.deviance(ref.theta)
        assert value == pytest.approx(ref.objective, rel=1e-12)
    finally:
        jax.config.update("jax_enable_x64", True)


# ---- the compilation cache and the BLAS threads -------------------------------------------


def _cache_dir_in_child(env_extra: dict, tmp_path) -> str:
    """The compilation cache folder JAX uses after ``import jaxlmm`` in a fresh process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "JAXLMM_CACHE_DIR")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), **env_extra)
    code = "import jax, jaxlmm; print(jax.config.jax_compilation_cache_dir or '')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_compilation_cache_default_choice_and_off(tmp_path):
    """Compiled programs go to ~/.cache/jaxlmm/xla (XDG), a chosen folder, JAX's own setting, or nowhere."""
    default = tmp_path / "xdg" / "jaxlmm" / "xla"
    assert _cache_dir_in_child({}, tmp_path) == str(default) and default.is_dir()
    assert _cache_dir_in_child({"JAXLMM_CACHE_DIR": str(tmp_path / "mine")}, tmp_path) == str(tmp_path / "mine")
    assert _cache_dir_in_child({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}, tmp_path) == str(tmp_path / "jax")
    assert _cache_dir_in_child({"JAXLMM_CACHE_DIR": "off"}, tmp_path) == ""


def _blas_threads_in_child(env_extra: dict) -> dict:
    """{library file: threads} of the BLAS libraries loaded after ``import jaxlmm`` in a fresh process."""
    import json as _json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("JAXLMM_LAPACK_THREADS", "OPENBLAS_NUM_THREADS")}
    env.update(env_extra)
    code = (
        "import json, numpy, threadpoolctl as t\n"
        "before = {d['filepath']: d['num_threads'] for d in t.threadpool_info()}\n"
        "import jaxlmm, scipy.linalg\n"
        "after = {d['filepath']: d['num_threads'] for d in t.threadpool_info()}\n"
        "print(json.dumps([before, after]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return _json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("setting,expected", [(None, 1), ("2", 2), ("off", None)])
def test_lapack_threads_of_scipy_only(setting, expected):
    """scipy's OpenBLAS (behind JAX's CPU LAPACK) gets the chosen threads; numpy's is left alone."""
    before, after = _blas_threads_in_child({} if setting is None else {"JAXLMM_LAPACK_THREADS": setting})
    numpy_libs = set(before)
    scipy_libs = [f for f in after if f not in numpy_libs]
    assert scipy_libs  # scipy brings its own OpenBLAS in the wheels this project installs
    for f in numpy_libs:
        assert after[f] == before[f]
    # left alone, scipy's OpenBLAS starts with the same default as numpy's (the cores it may use)
    default = max(before.values())
    for f in scipy_libs:
        assert after[f] == (default if expected is None else expected)


def test_repeated_calls_with_the_same_shapes_compile_nothing():
    """A second simulate, predict, bootstrap, Wald confint, refit, anova or pb_test of the same shapes
    traces no new program (counted with JAX's monitoring events: every trace of a jitted function
    reports its duration)."""
    import collections

    import jax

    fit = get_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    null = get_fit("Reaction ~ 1 + (Days | Subject)", "sleepstudy")
    newdata = jaxlmm.datasets.load("sleepstudy").head(7)
    calls = {
        "simulate": lambda seed: fit.simulate(4, seed=seed),
        "predict": lambda seed: fit.predict(newdata),
        "bootstrap": lambda seed: jaxlmm.bootstrap(fit, n=8, seed=seed, progress=False),
        "confint": lambda seed: fit.confint("wald"),
        "refit by ML": lambda seed: fit.refit(reml=False),
        "anova (refits by ML)": lambda seed: jaxlmm.anova(null, fit),
        "pb_test": lambda seed: jaxlmm.pb_test(null, fit, n=8, seed=seed, progress=False),
    }
    events = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.update([name]))
    for name, call in calls.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", JaxLMMWarning)  # anova and pb_test refit the REML fits by ML
            call(1)
            events.clear()
            call(2)
        assert events["/jax/core/compile/jaxpr_trace_duration"] == 0, (name, dict(events))
    # the counter does see a trace: a new shape of simulate compiles
    fit.simulate(5, seed=3)
    assert events["/jax/core/compile/jaxpr_trace_duration"] >= 1


def test_lean_jit_picks_its_options_by_size_and_computes_the_same(monkeypatch):
    """On the CPU: level 0 for small arguments, level 1 for large or quick=False, XLA's defaults on
    request; the three programs give the criterion of a fit to rounding (and lme4's at its optimum)."""
    from jaxlmm._config import QUICK_ENTRIES, lean_jit
    from jaxlmm.objective import deviance

    fit = get_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    f = lean_jit(deviance, static_argnames="reml")
    theta = jnp.asarray(fit.theta)
    assert f.pick(theta, fit.products, reml=True) is f._quick
    assert f.pick(jnp.zeros(QUICK_ENTRIES + 1)) is f._lean
    g = lean_jit(deviance, quick=False, static_argnames="reml")
    assert g.pick(theta, fit.products, reml=True) is g._lean
    values = [float(f(theta, fit.products, reml=True)), float(g(theta, fit.products, reml=True))]
    monkeypatch.setenv("JAXLMM_XLA_OPTIONS", "default")
    assert f.pick(theta, fit.products, reml=True) is f._default
    values.append(float(f(theta, fit.products, reml=True)))
    np.testing.assert_allclose(values, fit.objective, rtol=1e-13)
    assert fit.objective == pytest.approx(1743.6282719585, rel=1e-10)  # lme4 1.1.31, REML


# ---- compiling ahead (jaxlmm.ahead) ------------------------------------------------------------


def _traces_of(call) -> int:
    """The programs JAX traces while ``call()`` runs (its monitoring events)."""
    import collections

    events = collections.Counter()

    def count(name, secs, **kw):
        events.update([name])

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        call()
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    return events["/jax/core/compile/jaxpr_trace_duration"]


@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_summary_after_a_first_fit_was_compiled_ahead(monkeypatch, setting):
    """A first fit of new shapes compiles the summary's derivatives beside its own program: printing
    the summary then traces nothing; with JAXLMM_COMPILE_AHEAD=off it traces them (the counter sees
    it). Either way no compiling thread outlives the fit, and the fit is the same."""
    import threading

    from jaxlmm import ahead

    monkeypatch.setenv("JAXLMM_COMPILE_AHEAD", setting)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert ahead.enabled() == (setting == "on")
    # shapes no other test fits: a quadratic term (theta of 6), and one subject (on) or two (off) less
    drop = SLEEP.Subject.unique()[: 1 if setting == "on" else 2]
    data = SLEEP[~SLEEP.Subject.isin(drop)].assign(D2=lambda d: (d.Days - 4.5) ** 2 / 10)
    box = {}
    assert _traces_of(lambda: box.update(fit=jaxlmm.lmm("Reaction ~ Days + D2 + (Days + D2 | Subject)", data))) > 0
    fit = box["fit"]
    assert not [t for t in threading.enumerate() if t.name == "jaxlmm-compile-ahead"]
    n = _traces_of(lambda: str(fit))
    assert (n == 0) if setting == "on" else (n > 0)
    ref = jaxlmm.lmm("Reaction ~ Days + D2 + (Days + D2 | Subject)", data)  # compiled by now, nothing ahead
    assert fit.objective == ref.objective and np.array_equal(fit.theta, ref.theta)


def test_compile_ahead_drops_errors_and_compiles_only_what_is_released():
    """A task that cannot be compiled is recorded, not raised; a block never released compiles nothing;
    the block's end waits for the thread."""
    from jaxlmm import ahead

    f = jax.jit(lambda x: x @ x)
    bad = (f, (jnp.ones((2, 3)),), {})  # a shape error when lowered
    good = (f, (jnp.ones((3, 3)),), {})
    with ahead.compile_ahead([bad, good]) as a:
        assert ahead.pending()
        ahead.release()
        assert not ahead.pending()
    if ahead.enabled():
        assert a.thread is not None and not a.thread.is_alive()
        assert len(a.errors) == 1 and a.compiled == 1
    with ahead.compile_ahead([good]) as b:
        pass
    assert b.thread is None and b.compiled == 0
    assert not ahead.pending()  # outside any block


# ---- Python's cyclic garbage collector ------------------------------------------------------


def _gc_after_import_in_child(before: str) -> list:
    """[collector on after the import, objects frozen, full collections during it, the collector's
    state when jax, scipy and pandas were imported] in a new process."""
    import json as _json
    import subprocess
    import sys

    code = (
        "import gc, json, sys\n" + before + "\n"
        "seen = {}\n"
        "class Probe:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name in ('jax', 'scipy', 'pandas'):\n"
        "            seen.setdefault(name, gc.isenabled())\n"
        "sys.meta_path.insert(0, Probe())\n"
        "full = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and info['generation'] == 2 and full.append(1))\n"
        "import jaxlmm\n"
        "print(json.dumps([gc.isenabled(), gc.get_freeze_count(), len(full), seen]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return _json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("before,enabled,frozen", [("", True, 0), ("gc.disable()", False, 0),
                                                     ("gc.freeze()", True, None)])
def test_import_collects_nothing_and_leaves_the_collector_as_it_was(before, enabled, frozen):
    """`import jaxlmm` imports jax, scipy and pandas with the collector off and runs no full
    collection, then leaves the collector on or off as it was, and objects the program froze itself
    frozen."""
    on, count, full, seen = _gc_after_import_in_child(before)
    assert on is enabled and full == 0
    assert seen == {"jax": False, "scipy": False, "pandas": False}
    assert count == 0 if frozen == 0 else count > 0


def test_old_objects_are_set_aside_only_by_the_outermost_block():
    import gc
    import weakref

    from jaxlmm._config import old_objects_aside

    class Node:
        pass

    assert gc.isenabled() and gc.get_freeze_count() == 0
    old = Node()
    before = Node()
    before.me = before  # young garbage from before the block: collected on entry, not set aside
    gone_before = weakref.ref(before)
    del before
    with old_objects_aside():
        assert gone_before() is None
    with old_objects_aside():
        held = gc.get_freeze_count()
        assert held > 0 and gc.is_tracked(old)
        with old_objects_aside():  # nested: nothing more frozen, nothing thawed on leaving
            assert gc.get_freeze_count() == held
        assert gc.get_freeze_count() == held
        young = Node()
        young.me = young  # a cycle made in the block is collected as usual
        gone = weakref.ref(young)
        del young
        gc.collect()
        assert gone() is None
    assert gc.get_freeze_count() == 0
    with pytest.raises(ZeroDivisionError):
        with old_objects_aside():
            1 / 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # objects frozen by the program: left frozen
    try:
        mine = gc.get_freeze_count()
        with old_objects_aside():
            assert gc.get_freeze_count() == mine
        assert gc.get_freeze_count() == mine
    finally:
        gc.unfreeze()


def test_entry_points_thaw_what_they_set_aside():
    import gc

    fit = jaxlmm.lmm("Reaction ~ Days + (1 | Subject)", SLEEP)
    str(fit)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_first_fit_compiles_only_its_own_programs():
    """In a new process, fitting sleepstudy and printing its summary compiles the optimizer's
    program, the solve and the summary's derivatives, and nothing else (no small programs for
    host-to-device copies or eager arithmetic, which cost 15-30 ms each there)."""
    import json as _json
    import os
    import subprocess
    import sys

    code = (
        "import json, logging, jax\n"
        "import jaxlmm\n"
        "names = []\n"
        "class H(logging.Handler):\n"
        "    def emit(self, r):\n"
        "        m = r.getMessage()\n"
        "        if m.startswith('Finished XLA compilation of '):\n"
        "            names.append(m.split('jit(')[1].split(')')[0])\n"
        "for n in ('jax._src.dispatch', 'jax._src.interpreters.pxla', 'jax._src.compiler'):\n"
        "    lg = logging.getLogger(n); lg.addHandler(H()); lg.setLevel(logging.DEBUG)\n"
        "jax.config.update('jax_log_compiles', True)\n"
        "d = jaxlmm.datasets.load('sleepstudy')\n"
        "text = str(jaxlmm.lmm('Reaction ~ Days + (Days | Subject)', d))\n"
        "assert 'Satterthwaite' in text or 'df' in text\n"
        "print(json.dumps(sorted(set(names))))\n"
    )
    env = dict(os.environ, JAXLMM_CACHE_DIR="off")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    names = _json.loads(out.stdout.strip().splitlines()[-1])
    assert names == ["minimize_theta", "solve", "theta_derivatives"], names
