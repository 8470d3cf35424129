"""New responses simulated from a fitted model (lme4's ``simulate.merMod``).

y* = X beta + offset + Z Lambda(theta) u* + sigma W^{-1/2} eps with
u* ~ N(0, sigma^2 I), eps ~ N(0, I) and W the prior weights (Bates et al.,
JSS 2015, eqs. 1-2), Z applied through the integer group codes of each term.
The draw of one response is the bootstrap's :func:`jaxlmm.bootstrap.simulate`;
here it is ``vmap``-ped over ``jax.random.split(jax.random.key(seed), n)``,
the same keys the bootstrap uses for its replicates, so
``fit.simulate(n, seed)`` are the responses ``jaxlmm.bootstrap(fit, n, seed)``
refits.
"""

from __future__ import annotations

import jax
import numpy as np

from .errors import JaxLMMError


def simulate(fit, n: int = 1, seed: int = 0) -> np.ndarray:
    """``n`` responses simulated from ``fit``: an array of shape (n, nobs)."""
    from .bootstrap import fit_params, rows_of
    from .bootstrap import simulate as simulate_one

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise JaxLMMError(f"n must be a positive integer, not {n!r}.")
    keys = jax.random.split(jax.random.key(int(seed)), int(n))
    draw = jax.jit(jax.vmap(simulate_one, in_axes=(0, None, None)))
    design = fit.model.design
    y = np.asarray(draw(keys, rows_of(design), fit_params(fit)))
    return y if design.offset is None else y + design.offset
