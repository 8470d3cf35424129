"""float64 everywhere, and compiled programs kept on disk.

jaxlmm turns on JAX's 64-bit mode when it is imported (``jax_enable_x64``), so
that every array it creates is float64 whatever the user's configuration; the
fitting entry points call :func:`ensure_x64` again, so a user who switches the
flag off after importing still gets float64 fits (with a warning).

Compilation is most of the time of a first fit or bootstrap in a new Python
process (seconds; the fit itself takes milliseconds on small data). Unless
the user has chosen a JAX compilation cache already, jaxlmm points JAX's
persistent cache at ``$JAXLMM_CACHE_DIR`` (default
``~/.cache/jaxlmm/xla``, under ``$XDG_CACHE_HOME`` when set), so a later
process loads the compiled programs instead of compiling them again. The
cache holds only compiled programs, keyed by the program, the JAX version
and the device; ``JAXLMM_CACHE_DIR=off`` turns it off.

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

import os
from pathlib import Path

import jax

from .errors import JaxLMMWarning
from .errors import warn as _warn


def ensure_x64(warn: bool = True) -> None:
    """Enable JAX's float64 mode if it is off; warn when it had been switched off."""
    if not jax.config.jax_enable_x64:
        if warn:
            _warn(
                "JAX's float64 mode (jax_enable_x64) was off; jaxlmm switched it on, "
                "since mixed-model fits need float64.",
                JaxLMMWarning,
            )
        jax.config.update("jax_enable_x64", True)


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
