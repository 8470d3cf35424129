"""float64 everywhere, and compiled programs kept on disk.

jaxlmm turns on JAX's 64-bit mode when it is imported (``jax_enable_x64``), so
that every array it creates is float64 whatever the user's configuration.
Every public entry point (``lmm``, the model's ``fit`` and ``deviance``, the
fit's methods, ``bootstrap``, ``pb_test``, ``anova``, ...) runs inside
:func:`float64`, so it computes in float64 whatever the JAX context:

- the global flag switched off after importing jaxlmm: it is switched on
  again, with a warning saying so;
- a thread-local ``with jax.enable_x64(False):`` block (which the global
  flag cannot override): the call runs inside its own
  ``jax.enable_x64(True)`` block, with a warning saying so; the user's block
  still applies to the user's own code;
- a JAX without ``jax.enable_x64`` and the flag held off: a
  :class:`~jaxlmm.errors.JaxLMMError`, never a float32 fit.

Compilation is most of the time of a first fit or bootstrap in a new Python
process (seconds; the fit itself takes milliseconds on small data). Unless
the user has chosen a JAX compilation cache already, jaxlmm points JAX's
persistent cache at ``$JAXLMM_CACHE_DIR`` (default
``~/.cache/jaxlmm/xla``, under ``$XDG_CACHE_HOME`` when set), so a later
process loads the compiled programs instead of compiling them again. The
cache holds only compiled programs, keyed by the program, the JAX version
and the device; ``JAXLMM_CACHE_DIR=off`` turns it off.

Compile time on the CPU. XLA's CPU compiler spends most of a first fit in
LLVM, optimizing and generating code for each of the hundreds of fused loops
of a criterion's derivatives. The fit, summary, profile, simulation and
bootstrap programs are compiled through :func:`lean_jit`, which on the CPU
backend turns off XLA's newer fusion emitters and lowers LLVM's optimization
level: at level 1 for large data (InstEval's fit program: compile 7.1 s to 4.6 s, run 3.1 s to
3.4 s on a 2-core CPU) and at level 0 where the arguments hold at most
:data:`QUICK_ENTRIES` numbers (sleepstudy's: compile 3.2 s to 1.0 s, run
milliseconds either way). Other backends compile with XLA's defaults.
``JAXLMM_XLA_OPTIONS=default`` turns this off.

LAPACK threads. On the CPU, JAX runs Cholesky factorizations and triangular
solves through scipy's LAPACK (its bundled OpenBLAS). jaxlmm's LAPACK calls
are on blocks of at most 256 x 256, where OpenBLAS's threads cost more than
they bring, and on a busy machine far more (a 256 x 256 Cholesky was seen
to take 0.25 s with two threads on two busy cores, against 1.4 ms with
one). jaxlmm therefore sets the thread count of scipy's OpenBLAS (not
numpy's) to ``$JAXLMM_LAPACK_THREADS``, 1 by default, with threadpoolctl;
``JAXLMM_LAPACK_THREADS=off`` leaves it alone.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
from pathlib import Path

import jax
import numpy as np

from .errors import JaxLMMError, JaxLMMWarning
from .errors import warn as _warn


def x64_enabled() -> bool:
    """Whether JAX computes in float64 here and now (the global flag or a thread-local context)."""
    return bool(jax.config.jax_enable_x64)


def _refuse() -> JaxLMMError:
    return JaxLMMError(
        "JAX's float64 mode is held off here (a jax.enable_x64(False) block or the "
        "jax_enable_x64 flag) and this JAX offers no way to switch it on for jaxlmm's own "
        "computations; mixed-model fits need float64: call jaxlmm outside that block."
    )


def ensure_x64(warn: bool = True) -> None:
    """Enable JAX's global float64 mode if it is off (warning that it did so).

    Raises :class:`JaxLMMError` when float64 is still off afterwards (a
    ``jax.enable_x64(False)`` block holds it off in this thread): computing
    in float32 is never an option. Entry points use :func:`float64`, which
    computes in float64 inside such a block too.
    """
    if x64_enabled():
        return
    jax.config.update("jax_enable_x64", True)
    if not x64_enabled():
        raise _refuse()
    if warn:
        _warn(
            "JAX's float64 mode (jax_enable_x64) was off; jaxlmm switched it on, "
            "since mixed-model fits need float64.",
            JaxLMMWarning,
        )


def float64():
    """A context manager under which JAX computes in float64; see the module docstring.

    Float64 on already: a no-op context. The global flag off: it is switched
    on (with a warning). Held off by a ``jax.enable_x64(False)`` block:
    ``jax.enable_x64(True)`` for the call (with a warning). Neither possible:
    :class:`JaxLMMError`.
    """
    if x64_enabled():
        return contextlib.nullcontext()
    jax.config.update("jax_enable_x64", True)
    if x64_enabled():
        _warn(
            "JAX's float64 mode (jax_enable_x64) was off; jaxlmm switched it on, "
            "since mixed-model fits need float64.",
            JaxLMMWarning,
        )
        return contextlib.nullcontext()
    enable = getattr(jax, "enable_x64", None)  # a State, usable as a context manager (no truth value)
    if enable is None:
        enable = getattr(getattr(jax, "experimental", None), "enable_x64", None)
    if enable is None:
        raise _refuse()
    _warn(
        "JAX's float64 mode is off in this block (jax.enable_x64(False)); jaxlmm computes "
        "in float64 all the same, inside its own jax.enable_x64(True) for this call, since "
        "mixed-model fits need float64. The block still applies to your own JAX code.",
        JaxLMMWarning,
    )
    return enable(True)


def uses_float64(func):
    """Decorator: ``func`` runs in float64 (inside :func:`float64`), or raises JaxLMMError; and with
    the objects made before the outermost such call set aside by Python's cyclic garbage collector
    (:func:`old_objects_aside`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with old_objects_aside():
            if x64_enabled():  # the common case: no context to enter
                return func(*args, **kwargs)
            with float64():
                if not x64_enabled():  # pragma: no cover (a JAX whose context does not nest)
                    raise _refuse()
                return func(*args, **kwargs)

    return wrapper


# Python's cyclic garbage collector. Tracing a program allocates many objects, and every so often
# the collector scans all objects of the process, which after importing jax, scipy and pandas are
# about 170,000 (60-100 ms a scan on a 2-core CPU). The first fit of sleepstudy spent about 0.1 s
# in one such scan, and `import jaxlmm` 0.18 s in collections. Both are avoided without changing
# what is collected in the end: objects are only moved between the collector's generations.
_aside = threading.local()


@contextlib.contextmanager
def old_objects_aside():
    """A block during which the objects older than it are left out of the cyclic collector's scans.

    ``gc.freeze()`` on entry and ``gc.unfreeze()`` on exit (both constant-time moves of the
    collector's lists): the old objects are scanned again from the next full collection after
    the block, and garbage made in the block is collected as usual. The young generations are
    collected first (microseconds), so that the caller's recent garbage is not carried into the
    oldest generation with them. Only the outermost block of a thread acts, and none where
    anything else is frozen (a program that froze objects itself keeps them so) or the
    collector is off.
    """
    if getattr(_aside, "depth", 0) or not gc.isenabled() or gc.get_freeze_count():
        _aside.depth = getattr(_aside, "depth", 0) + 1
        try:
            yield
        finally:
            _aside.depth -= 1
        return
    _aside.depth = 1
    gc.collect(1)
    gc.freeze()
    try:
        yield
    finally:
        _aside.depth = 0
        gc.unfreeze()


def imports_settled() -> None:
    """The end of ``import jaxlmm``, which imports jax and its other dependencies with the collector
    off (and then sets it as it was): the objects made are moved to its oldest generation without a
    scan (``gc.freeze()`` then ``gc.unfreeze()``, where nothing else is frozen)."""
    if not gc.get_freeze_count():
        gc.freeze()
        gc.unfreeze()


QUICK_ENTRIES = 2**17
"""Up to this many numbers in its array arguments, a :func:`lean_jit` program compiles at LLVM level 0."""

_LEAN = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
_QUICK = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 0,
    # hoisting loop invariants out of while loops is a third of the compile time of a small
    # model's Newton loop (sleepstudy: 0.9 s -> 0.6 s without it; the warm fit, a few ms, is
    # unchanged); the bootstrap's refits (level 1, whose throughput it keeps 20% higher) keep it.
    # The while-loop simplifier ran 14 times in the simplification pipeline's fixed point, 20 ms
    # each: without it that program compiles in 0.50 s instead of 0.71 s (medians of six; its run
    # of about 1 ms unchanged)
    "xla_disable_hlo_passes": "while-loop-invariant-code-motion,simplify-while-loops",
}


def on_device(a, dtype=None) -> jax.Array:
    """``a`` as a JAX array: host data (numpy arrays and scalars, Python numbers) copied by
    ``jax.device_put``, JAX arrays (and tracers) as they are (cast to ``dtype`` if given).

    ``jnp.asarray`` of host data runs a small compiled program, compiled once per new shape
    and dtype (jax 0.10: ``stage``, or ``convert_element_type`` for a cast): about 15-30 ms
    each in a new process, several of them on the way to a first fit. A copy compiles nothing.
    """
    if isinstance(a, jax.Array):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return jax.device_put(np.asarray(a, dtype=dtype))


def lean_compiles() -> bool:
    """Whether :func:`lean_jit` programs compile with the lean options here: on the CPU backend,
    unless ``JAXLMM_XLA_OPTIONS=default``."""
    return jax.default_backend() == "cpu" and os.environ.get("JAXLMM_XLA_OPTIONS", "").lower() != "default"


class LeanJit:
    """``jax.jit(fun, **kw)`` whose CPU compilations trade a little run time for compile time.

    Three compiled functions share ``fun``: XLA's defaults (other backends, or
    ``JAXLMM_XLA_OPTIONS=default``), and on the CPU backend the lean options,
    or the quick ones where the call's array arguments hold at most
    :data:`QUICK_ENTRIES` numbers (unless ``quick=False``: programs whose run
    time matters at any size, the bootstrap's refits, whose throughput level 0
    cuts by two thirds). Each keeps its own cache of compiled programs, so a
    call with the shapes of an earlier one compiles nothing.
    """

    def __init__(self, fun, quick: bool = True, **kw):
        functools.update_wrapper(self, fun)
        self._default = jax.jit(fun, **kw)
        self._lean = _jit_with(fun, _LEAN, kw) or self._default
        self._quick = (_jit_with(fun, _QUICK, kw) or self._default) if quick else self._lean

    def pick(self, *args, **kwargs):
        """The compiled function a call with these arguments runs."""
        if not lean_compiles():
            return self._default
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        entries = sum(int(np.size(x)) for x in leaves if hasattr(x, "shape"))
        return self._quick if entries <= QUICK_ENTRIES else self._lean

    def __call__(self, *args, **kwargs):
        return self.pick(*args, **kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """``jax.jit``'s ``lower`` of the compiled function these arguments pick."""
        return self.pick(*args, **kwargs).lower(*args, **kwargs)


def _jit_with(fun, options: dict, kw: dict):
    """``jax.jit`` with these compiler options; None for an older JAX whose ``jit`` takes no ``compiler_options``."""
    try:
        return jax.jit(fun, compiler_options=options, **kw)
    except TypeError:  # pragma: no cover (older JAX)
        return None


def lean_jit(fun=None, quick: bool = True, **kw):
    """:class:`LeanJit` of ``fun`` (a decorator too, with or without ``quick`` and ``jax.jit``'s keywords)."""
    if fun is None:
        return functools.partial(lean_jit, quick=quick, **kw)
    return LeanJit(fun, quick=quick, **kw)


def enable_compilation_cache() -> str | None:
    """Use a persistent compilation cache unless one is configured or it is turned off; its folder."""
    chosen = os.environ.get("JAXLMM_CACHE_DIR", "")
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    configured = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if configured:
        return configured
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = Path(chosen) if chosen else base / "jaxlmm" / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile every time, as without a cache
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return str(path)


def limit_lapack_threads() -> list[str]:
    """Set the threads of the OpenBLAS behind scipy's LAPACK (JAX's CPU kernels); the libraries set."""
    chosen = os.environ.get("JAXLMM_LAPACK_THREADS", "1")
    if chosen.lower() in ("off", "none", ""):
        return []
    try:
        threads = max(1, int(chosen))
        from threadpoolctl import ThreadpoolController
    except (ValueError, ImportError):
        return []
    controller = ThreadpoolController()
    before = {lib.filepath for lib in controller.lib_controllers}
    import scipy.linalg.cython_lapack  # noqa: F401  (what jaxlib's LAPACK kernels call)

    controller = ThreadpoolController()
    libs = [c.filepath for c in controller.lib_controllers if c.filepath not in before]
    if not libs:  # scipy was imported before jaxlmm: its own libraries, not numpy's
        libs = [
            c.filepath for c in controller.lib_controllers
            if "scipy" in c.filepath.replace("scipy_openblas", "") and "numpy" not in c.filepath
        ]
    selected = controller.select(filepath=libs) if libs else None  # (select ORs its criteria)
    if selected is None or not selected.lib_controllers:
        return []
    selected.limit(limits=threads)
    return libs
