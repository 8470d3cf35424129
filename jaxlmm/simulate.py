"""New responses simulated from a fitted model (lme4's ``simulate.merMod``).

y* = X beta + offset + Z Lambda(theta) u* + sigma W^{-1/2} eps with
u* ~ N(0, sigma^2 I), eps ~ N(0, I) and W the prior weights (Bates et al.,
JSS 2015, eqs. 1-2), Z applied through the integer group codes of each term.
The draw of one response is :func:`jaxlmm.replicates.simulate`, the bootstrap's;
here it is ``vmap``-ped over ``jax.random.split(jax.random.key(seed), n)``,
the same keys the bootstrap uses for its replicates, so
``fit.simulate(n, seed)`` are the responses ``jaxlmm.bootstrap(fit, n, seed)``
refits.

``use_u=True`` (lme4's ``use.u = TRUE``) simulates given the fitted random
effects instead: y* = fitted + sigma W^{-1/2} eps, with the eps of the same
seed's unconditional draw.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._config import lean_jit, on_device, uses_float64
from .memory import check_fits, simulate_bytes
from .replicates import fit_params, replicate_keys, rows_of, simulate_batch
from .validate import check_bool, check_count, check_seed
from .results import check_fit


class Simulated(np.ndarray):
    """The simulated responses (a numpy array, shape (n, nobs)) and the ``seed`` they were drawn with."""

    seed: int | None = None

    def __array_finalize__(self, obj) -> None:
        self.seed = getattr(obj, "seed", None)


@uses_float64
@functools.cache
def _draw():
    """:func:`~jaxlmm.replicates.simulate_batch` compiled, made once: a second call with the same
    shapes reuses the compiled program (a new ``jax.jit`` per call would trace and compile again)."""
    return lean_jit(simulate_batch)


def _given_modes(keys, mean, sigma, weights, n_terms: int):
    """One response per key: ``mean`` + sigma eps / sqrt(w), eps the residual draw of
    :func:`jaxlmm.replicates.simulate` from the same key (its first of ``n_terms`` + 1 sub-keys)."""

    def one(key):
        eps = jax.random.normal(jax.random.split(key, n_terms + 1)[0], mean.shape)
        return mean + sigma * (eps if weights is None else eps / jnp.sqrt(weights))

    return jax.vmap(one)(jax.random.wrap_key_data(keys))


@uses_float64
@functools.cache
def _draw_given_modes():
    return lean_jit(_given_modes, static_argnames="n_terms")


def simulate(fit, n: int = 1, seed: int | None = 0, use_u: bool = False) -> np.ndarray:
    """``n`` responses simulated from ``fit``: an array of shape (n, nobs).

    ``seed``: an integer in 0 .. 2**63 - 1, or None for a random one; either
    way it is recorded as the result's ``.seed``. ``use_u``: given the fitted
    random effects (lme4's ``use.u = TRUE``), new residuals only. The memory
    the draw needs is checked first (:func:`jaxlmm.memory.simulate_bytes`).
    """
    check_fit(fit, func="simulate")
    n, seed = check_count(n, "n (the number of simulated responses)"), check_seed(seed)
    use_u = check_bool(use_u, "use_u")
    check_fits(simulate_bytes(n, fit.design), f"simulate(n={n}) of {fit.nobs} rows")
    keys = replicate_keys(on_device(np.int64(seed)), n)
    design = fit.design
    if use_u:
        weights = None if design.weights is None else on_device(design.weights, np.float64)
        y = np.asarray(_draw_given_modes()(keys, on_device(fit.fitted, np.float64), on_device(fit.sigma, np.float64),
                                           weights, n_terms=len(design.terms)))
    else:
        y = np.asarray(_draw()(keys, rows_of(design), fit_params(fit)))
        y = y if design.offset is None else y + design.offset
    y = y.view(Simulated)
    y.seed = seed
    return y
