"""float64 everywhere.

jaxlmm turns on JAX's 64-bit mode when it is imported (``jax_enable_x64``), so
that every array it creates is float64 whatever the user's configuration; the
fitting entry points call :func:`ensure_x64` again, so a user who switches the
flag off after importing still gets float64 fits (with a warning).
"""

from __future__ import annotations

import warnings

import jax

from .errors import JaxLMMWarning


def ensure_x64(warn: bool = True) -> None:
    """Enable JAX's float64 mode if it is off; warn when it had been switched off."""
    if not jax.config.jax_enable_x64:
        if warn:
            warnings.warn(
                "JAX's float64 mode (jax_enable_x64) was off; jaxlmm switched it on, "
                "since mixed-model fits need float64.",
                JaxLMMWarning,
                stacklevel=3,
            )
        jax.config.update("jax_enable_x64", True)
