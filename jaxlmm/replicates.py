"""Batched refits of simulated responses: the engine of the parametric bootstrap.

lme4's ``bootMer`` (and pbkrtest's ``PBmodcomp``) refit one simulated
response at a time. Here the whole refit is one batched computation:

1. simulate (Bates et al., JSS 2015, eq. 2 with b = Lambda u):
   y* = X beta + Z Lambda(theta) u* + sigma W^{-1/2} eps,  u* ~ N(0, sigma^2 I_q),
   eps ~ N(0, I_n), W the prior weights (the identity without), with Z
   applied through the integer group codes of each term (never a dense
   n x q matrix);
2. compute only the response-dependent cross-products Z'y*, X'y*, y*'y*
   (:func:`jaxlmm.crossprod.response_products`) for the batch;
3. ``vmap`` the whole fit (projected Newton in a ``lax.while_loop``, started
   at the fitted theta) over the batch. A refit never touches the n rows.
4. finish the few replicates the batched pass left unfinished one by one
   (see :func:`run_replicates`).

Replicate i uses ``jax.random.split(key(seed), B)[i]``, so the simulated
responses do not depend on the chunk size (chunks bound memory) or on the
number of devices, and the optima agree to rounding: with several visible
devices the replicate axis of each chunk is sharded across them
(``jax.sharding.NamedSharding``); with one it is not. The settings (first
pass, chunk memory, restarts) are those of a :class:`~jaxlmm.control.Control`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import register_dataclass

from ._config import ensure_x64
from .control import Control
from .crossprod import CrossProducts, Response, response_products, row_sharding, with_response
from .fitting import fit_theta, minimize_theta
from .memory import bootstrap_bytes, check_fits, replicate_bytes
from .objective import sigma_hat, solve
from .theta import relative_factors, theta_lower_bounds
from .validate import check_count, check_seed


# ---- the rows, as a pytree argument ------------------------------------------


@dataclass(frozen=True)
class TermRows:
    """One random-effect term's rows: group codes (n,), columns (n, k), static level count."""

    codes: jax.Array
    X: jax.Array
    nlevels: int = field(metadata=dict(static=True))


@dataclass(frozen=True)
class Rows:
    """What simulation and :func:`response_products` need of a design: X, the terms, the prior weights.

    ``weights`` is None without prior weights.
    """

    X: jax.Array
    terms: tuple
    weights: jax.Array | None = None

    @property
    def term_dims(self) -> tuple:
        return tuple((t.nlevels, t.X.shape[1]) for t in self.terms)


register_dataclass(TermRows, data_fields=["codes", "X"], meta_fields=["nlevels"])
register_dataclass(Rows, data_fields=["X", "terms", "weights"], meta_fields=[])


def rows_of(design) -> Rows:
    """The arrays of a :class:`~jaxlmm.design.Design` that depend on rows, as JAX arrays."""
    f64 = partial(jnp.asarray, dtype=jnp.float64)
    terms = tuple(TermRows(jnp.asarray(t.codes), f64(t.X), t.nlevels) for t in design.terms)
    weights = None if design.weights is None else f64(design.weights)
    return Rows(f64(design.X), terms, weights)


# ---- simulation ------------------------------------------------------------------


class SimParams(NamedTuple):
    """The parameters responses are simulated from: beta, theta, sigma."""

    beta: jax.Array
    theta: jax.Array
    sigma: jax.Array


def simulate(key, rows: Rows, params: SimParams) -> jax.Array:
    """One response y* = X beta + sum_m Z_m b_m + sigma eps / sqrt(w), b_m = sigma u_m T_m'.

    Row r of term m contributes X_m[r] . b_m[codes_m[r]]; u_m (l_m, k_m) and
    eps (n,) are standard normal draws from independent sub-keys of ``key``;
    w are the prior weights (residual variance sigma^2 / w_r; 1 without).
    """
    keys = jax.random.split(key, len(rows.terms) + 1)
    eps = jax.random.normal(keys[0], (rows.X.shape[0],))
    if rows.weights is not None:
        eps = eps / jnp.sqrt(rows.weights)
    y = rows.X @ params.beta + params.sigma * eps
    Ts = relative_factors(params.theta, rows.term_dims)
    for k, t, T in zip(keys[1:], rows.terms, Ts):
        u = jax.random.normal(k, (t.nlevels, t.X.shape[1]))
        b = params.sigma * (u @ T.T)
        y = y + jnp.sum(t.X * b[t.codes], axis=1)
    return y


# ---- one refit, batched ------------------------------------------------------------


class Refit(NamedTuple):
    """A refit of one simulated response: criterion, estimates, convergence."""

    objective: jax.Array
    theta: jax.Array
    beta: jax.Array
    sigma: jax.Array
    converged: jax.Array
    n_iter: jax.Array
    stuck: jax.Array  # theta entries left at a saddle on the bound


class Target(NamedTuple):
    """A model to refit: its rows, cross-products, start (fitted theta) and bounds."""

    rows: Rows
    data: CrossProducts
    theta0: jax.Array
    lower: jax.Array


def _as_refit(opt, sol, data: CrossProducts, reml: bool) -> Refit:
    """A :class:`Refit` from the optimum and the conditional estimates there."""
    ok = opt.converged & jnp.isfinite(opt.fun) & jnp.all(jnp.isfinite(sol.beta))
    sigma = sigma_hat(sol.r2, data.n, data.p, reml)
    return Refit(opt.fun, opt.theta, sol.beta, sigma, ok, opt.n_iter, opt.stuck)


def refit(data: CrossProducts, theta0, lower, reml: bool, max_iter=Control.max_iter) -> Refit:
    """Minimize the profiled criterion for ``data`` from ``theta0`` (``max_iter`` may be traced)."""
    opt = minimize_theta(theta0, lower, data, reml, max_iter=max_iter)
    return _as_refit(opt, solve(opt.theta, data), data, reml)


@partial(jax.jit, static_argnames=("reml",))
def refit_chunk(keys, sim_rows: Rows, params: SimParams, targets: tuple, reml: bool, max_iter) -> tuple:
    """Simulate one response per key from ``params`` and refit every target on each.

    All targets see the same simulated responses (they must share their rows
    and response); returns, per target, the batched :class:`Refit` and the
    response's cross-products (kept for the replicates of a second pass).
    """
    ys = jax.vmap(simulate, in_axes=(0, None, None))(keys, sim_rows, params)
    out = []
    for tg in targets:
        parts = response_products(tg.rows, ys)
        one = lambda pt, tg=tg: refit(with_response(tg.data, pt), tg.theta0, tg.lower, reml, max_iter)  # noqa: E731
        out.append((jax.vmap(one)(parts), parts))
    return tuple(out)


_solve = jax.jit(solve)


def refit_one(data: CrossProducts, theta0, lower, reml: bool, control: Control) -> Refit:
    """``refit`` of one response, through the compiled fit of the model itself (no new compilation),
    with its restarts and fallback (:func:`jaxlmm.fitting.fit_theta`)."""
    opt = fit_theta(jnp.asarray(theta0), lower, data, bool(reml), method="newton", scale=None, control=control)
    return Refit(*(np.asarray(a) for a in _as_refit(opt, _solve(opt.theta, data), data, reml)))


def _first_pass_restarts(res: Refit, max_iter: int, escape: float) -> tuple[np.ndarray, np.ndarray]:
    """Replicates the batched pass left unfinished, and where each restarts.

    - out of iterations: from where it stopped;
    - at a saddle on the bound (``Refit.stuck``): the criterion is even in a
      diagonal theta entry whose column holds nothing else below it
      (flipping the sign of a column of T leaves Lambda Lambda' unchanged),
      so its gradient vanishes at 0 and Newton can stop there although the
      criterion curves downward; the entry restarts at ``escape``
      (``Control.escape``);
    - not converged otherwise (a failed line search, or negative curvature
      away from the bound): from where it stopped, through the fit's restarts
      and fallback (:func:`refit_one`).
    """
    stuck = np.asarray(res.stuck, dtype=bool).reshape(len(res.objective), -1)
    theta = np.asarray(res.theta).reshape(stuck.shape)
    redo = stuck.any(axis=1) | (np.asarray(res.n_iter) >= max_iter) | ~np.asarray(res.converged, dtype=bool)
    return np.flatnonzero(redo), np.where(stuck, escape, theta)


class _Waiting(NamedTuple):
    """Replicates of one chunk waiting for a second pass: their indices, starts and response cross-products."""

    index: np.ndarray
    start: np.ndarray
    parts: Response


class _Pending:
    """The replicates of one target waiting for a second pass (a list of :class:`_Waiting`)."""

    def __init__(self):
        self.waiting: list[_Waiting] = []

    def add(self, idx, start, parts, offset: int) -> None:
        if len(idx):
            self.waiting.append(_Waiting(idx + offset, start[idx], jax.tree.map(lambda a: np.asarray(a)[idx], parts)))

    def run(self, res: Refit, tg: Target, reml: bool, control: Control) -> Refit:
        """Refit the pending replicates one by one; keep the better optimum of each.

        They are few (a replicate needing more than ``control.first_pass``
        Newton iterations is rare), and one by one they reuse the compiled fit
        of the model instead of compiling a batch of another size.
        """
        if not self.waiting:
            return res
        out = Refit(*(np.array(a) for a in res))
        for w in self.waiting:  # a replicate may be pending twice: keep the best
            for i, row in enumerate(w.index):
                data = with_response(tg.data, jax.tree.map(lambda a: jnp.asarray(a[i]), w.parts))
                again = refit_one(data, w.start[i], tg.lower, reml, control)
                if again.objective <= out.objective[row]:
                    n_iter = out.n_iter[row] + again.n_iter
                    for a, b in zip(out, again):
                        a[row] = b
                    out.n_iter[row] = n_iter
        self.waiting = []
        return out


def _per_replicate_size(targets) -> int:
    """Float64 entries one replicate of a batched refit needs (:func:`jaxlmm.memory.replicate_bytes`)."""
    return max(1, sum(replicate_bytes(tg.data, int(tg.rows.X.shape[0])) for tg in targets) // 8)


def chunk_length(targets, n: int, chunk_size: int | None, control: Control, n_devices: int = 1) -> int:
    """Replicates per chunk: ``chunk_size``, or as many as ``control.chunk_entries`` float64 entries hold
    (at most ``control.cpu_chunk`` on the CPU backend); at most ``n``, a multiple of the device count."""
    if chunk_size is None:
        chunk_size = max(1, control.chunk_entries // _per_replicate_size(targets))
        if jax.default_backend() == "cpu":
            # vmapped Newton loops over batches of 512 and more were seen to stall in XLA's CPU
            # runtime (jax 0.10); default chunks stay below that there
            chunk_size = min(chunk_size, control.cpu_chunk)
    else:
        chunk_size = check_count(chunk_size, "chunk_size (None, or a positive integer)")
    chunk = min(int(chunk_size), n)
    return n_devices * math.ceil(chunk / n_devices)


Restart = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""For a nested pair, (theta_null, theta_alt) of a chunk to the start of the alternative's second try."""


@dataclass(frozen=True)
class Job:
    """What :func:`run_replicates` refits: ``n`` responses simulated from ``params`` on ``rows`` with
    ``seed``, each refitted as every one of ``targets`` by REML or ML.

    ``nested``, for a null and an alternative target (in that order), gives
    the start of an alternative refit that ended above its null's optimum (a
    local optimum): it is refitted from there, and the better kept.
    """

    n: int
    seed: int
    rows: Rows
    params: SimParams
    targets: tuple
    reml: bool
    control: Control = Control()
    nested: Restart | None = None


def run_replicates(job: Job, chunk_size: int | None = None, progress: bool = False, desc: str = "bootstrap") -> tuple:
    """Refit ``job.targets`` on ``job.n`` simulated responses, chunk by chunk; numpy :class:`Refit` s.

    Every chunk has the same shape (the last is padded with repeated keys and
    trimmed), so one compilation serves all; with several devices each chunk's
    replicate axis is sharded across them. Newton runs at most
    ``control.first_pass`` iterations on the batch, which all but a few
    replicates need; those few (and those stopped at a saddle on the bound)
    finish one by one at the end, so that one slow replicate does not hold up
    its chunk.
    """
    from tqdm.auto import tqdm

    ensure_x64()
    n, seed = check_count(job.n, "n (the number of bootstrap replicates)"), check_seed(job.seed)
    sharding = row_sharding()  # the replicate axis of a chunk, split across devices (None: one)
    chunk = chunk_length(job.targets, n, chunk_size, job.control, 1 if sharding is None else sharding.mesh.size)
    check_fits(
        bootstrap_bytes([tg.data for tg in job.targets], int(job.rows.X.shape[0]), n, chunk),
        f"{desc}(n={n}) in chunks of {chunk} replicates",
    )
    keys = jax.random.split(jax.random.key(int(seed)), n)
    pieces, pending = [], [_Pending() for _ in job.targets]
    cap = job.control.first_pass
    for c in tqdm(range(math.ceil(n / chunk)), desc=desc, unit="chunk", disable=not progress):
        kc = keys[np.minimum(np.arange(c * chunk, (c + 1) * chunk), n - 1)]
        if sharding is not None:
            kc = jax.device_put(kc, sharding)
        out = refit_chunk(kc, job.rows, job.params, job.targets, job.reml, jnp.asarray(cap))
        keep = int(min(chunk, n - c * chunk))
        res = [Refit(*(np.asarray(a)[:keep] for a in r)) for r, _ in out]
        unfinished = 0
        for r, (_, parts), pend in zip(res, out, pending):
            idx, start = _first_pass_restarts(r, cap, job.control.escape)
            pend.add(idx, start, parts, offset=c * chunk)
            unfinished = max(unfinished, len(idx))
        if unfinished > job.control.pending_share * keep:  # this model needs more iterations than most
            cap = min(2 * cap, job.control.max_iter)
        if job.nested:  # an alternative refit worse than its null: restart it from the null's optimum
            worse = np.flatnonzero(res[1].objective > res[0].objective + 1e-9 * (1.0 + np.abs(res[0].objective)))
            pending[1].add(worse, job.nested(res[0].theta, res[1].theta), out[1][1], offset=c * chunk)
        pieces.append(tuple(res))
    res = [Refit(*(np.concatenate(a, axis=0) for a in zip(*(p[t] for p in pieces)))) for t in range(len(job.targets))]
    return tuple(pend.run(r, tg, job.reml, job.control) for r, tg, pend in zip(res, job.targets, pending))


def fit_params(fit) -> SimParams:
    """beta, theta, sigma of a fit, as float64 JAX arrays."""
    return SimParams(
        jnp.asarray(fit.fixef.to_numpy(), dtype=jnp.float64),
        jnp.asarray(fit.theta, dtype=jnp.float64),
        jnp.asarray(fit.sigma, dtype=jnp.float64),
    )


def target_of(fit, theta0=None) -> Target:
    """A fit's model as a refit target, started at ``theta0`` (default: the fitted theta)."""
    theta0 = fit.theta if theta0 is None else theta0
    return Target(
        rows_of(fit.design), fit.products, jnp.asarray(theta0, dtype=jnp.float64),
        jnp.asarray(theta_lower_bounds(fit.products.term_dims)),
    )
