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
4. finish the few replicates the first pass left unfinished by later
   passes, batched the same way (see :func:`run_replicates`, :func:`_finish`).

Replicate i uses ``jax.random.split(key(seed), B)[i]``, so the simulated
responses do not depend on the chunk size (chunks bound memory) or on the
number of devices, and the optima agree to rounding: with several visible
devices the replicate axis of each chunk is sharded across them
(``jax.sharding.NamedSharding``); with one it is not. The settings (first
pass, chunk memory, restarts) are those of a :class:`~jaxlmm.control.Control`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import register_dataclass

from ._config import ensure_x64, lean_jit, on_device
from .control import FIRST_PASS, Control
from .crossprod import CrossProducts, Response, response_products, row_sharding, with_response
from .fitting import first_order, has_direction, is_below, minimize_theta, moved_start, second_is_better
from .memory import available_memory_bytes, bootstrap_bytes, check_fits, replicate_bytes
from .objective import deviance, sigma_hat, solve
from .optimize import GTOL, newton_lanes
from .theta import relative_factors, theta_columns, theta_lower_bounds
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
    beta0: jax.Array | None = None  # a refit target's: its products are of y - X beta0

    @property
    def term_dims(self) -> tuple:
        return tuple((t.nlevels, t.X.shape[1]) for t in self.terms)


register_dataclass(TermRows, data_fields=["codes", "X"], meta_fields=["nlevels"])
register_dataclass(Rows, data_fields=["X", "terms", "weights", "beta0"], meta_fields=[])


def rows_of(design, beta0=None) -> Rows:
    """The arrays of a :class:`~jaxlmm.design.Design` that depend on rows, as JAX arrays; with the
    ``beta0`` of its cross-products for the rows of a refit target (:func:`response_products`)."""
    f64 = partial(on_device, dtype=np.float64)
    terms = tuple(TermRows(on_device(t.codes), f64(t.X), t.nlevels) for t in design.terms)
    weights = None if design.weights is None else f64(design.weights)
    return Rows(f64(design.X), terms, weights, None if beta0 is None else f64(beta0))


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
    """A refit of one simulated response: criterion, estimates, convergence (batched: leading axis)."""

    objective: jax.Array
    theta: jax.Array
    beta: jax.Array
    sigma: jax.Array
    converged: jax.Array
    n_iter: jax.Array
    stuck: jax.Array  # theta entries left at a saddle on the bound
    grad: jax.Array | None = None  # the projected gradient at theta
    descent: jax.Array | None = None  # a direction of negative curvature at theta (zeros where none)


class Target(NamedTuple):
    """A model to refit: its rows, cross-products, start (fitted theta) and bounds."""

    rows: Rows
    data: CrossProducts
    theta0: jax.Array
    lower: jax.Array


def _as_refit(opt, data: CrossProducts, reml: bool) -> Refit:
    """A :class:`Refit` from the optimum and the conditional estimates there."""
    sol = solve(opt.theta, data)
    ok = opt.converged & jnp.isfinite(opt.fun) & jnp.all(jnp.isfinite(sol.beta))
    sigma = sigma_hat(sol.r2, data.n, data.p, reml)
    return Refit(opt.fun, opt.theta, sol.beta, sigma, ok, opt.n_iter, opt.stuck, opt.grad, opt.descent)


def refit(data: CrossProducts, theta0, lower, reml: bool, max_iter=Control.max_iter, method: str = "newton",
          conv_tol=Control.convergence_tol, hessian: str = "exact") -> Refit:
    """Minimize the profiled criterion for ``data`` from ``theta0`` (``max_iter``, ``conv_tol`` may be traced)."""
    opt = minimize_theta(theta0, lower, data, reml, method=method, max_iter=max_iter, conv_tol=conv_tol,
                         hessian=hessian)
    return _as_refit(opt, data, reml)


@partial(lean_jit, static_argnames="n")
def replicate_keys(seed, n: int):
    """The key data (uint32, (n, 2)) of ``jax.random.split(jax.random.key(seed), n)``: replicate i's
    key, computed in one compiled program (integer arithmetic: the same bits however compiled).
    Run eagerly, the split and the gather of each chunk's keys compiled small programs of their own
    (about 0.35 s in a new process); the host takes each chunk's keys from this array by numpy."""
    return jax.random.key_data(jax.random.split(jax.random.key(seed), n))


def simulate_batch(keys, sim_rows: Rows, params: SimParams):
    """One response per key from ``params`` (:func:`simulate` vmapped): (len(keys), n). ``keys``:
    typed keys, or their data (:func:`replicate_keys`)."""
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.wrap_key_data(keys)
    return jax.vmap(simulate, in_axes=(0, None, None))(keys, sim_rows, params)


@lean_jit(quick=False)
def simulate_products(keys, sim_rows: Rows, params: SimParams, rows: tuple) -> tuple:
    """Simulate one response per key (:func:`simulate_batch`) and return, for each of ``rows``, its
    batched response cross-products (:class:`~jaxlmm.crossprod.Response`): all the refits need of it."""
    ys = simulate_batch(keys, sim_rows, params)
    return tuple(response_products(r, ys) for r in rows)


@lean_jit(quick=False, static_argnames=("reml", "method", "hessian", "sequential", "lanes"))
def refit_batch(parts: Response, starts, data: CrossProducts, lower, reml: bool, max_iter, method: str = "newton",
                conv_tol=Control.convergence_tol, hessian: str = "exact", sequential: bool = False, valid=None,
                lanes: int | None = None):
    """:func:`refit` of a batch of responses (their cross-products ``parts``), each from its own start.

    Every pass of the bootstrap, the first and the later ones, is this one
    program (``max_iter`` and ``conv_tol`` are traced): a batch of the same size compiles once.
    ``hessian``: Newton's (the fit's policy, :meth:`jaxlmm.control.Control.newton_hessian`).
    ``sequential``: the replicates one after another inside the program (``lax.map``) instead of
    vectorized (``vmap``), see :func:`sequential`; there the replicates not ``valid`` (a boolean per
    replicate: the copies that pad a batch) are skipped, their results zeros. ``lanes`` (Newton,
    not sequential): the replicates run that many at a time, vectorized, each lane taking up the
    next replicate as soon as its own has ended (:func:`jaxlmm.optimize.newton_lanes`); ``valid``
    is then the number of replicates to refit (the rest pad the batch, skipped, zeros).
    """
    one = lambda pt, st: refit(with_response(data, pt), st, lower, reml, max_iter, method, conv_tol, hessian)  # noqa: E731
    if lanes is not None:
        fun = lambda th, pt: deviance(th, with_response(data, pt), reml)  # noqa: E731
        opt = newton_lanes(fun, starts, lower, (parts,), lanes, count=valid, column=theta_columns(data.term_dims),
                           max_iter=max_iter, conv_tol=conv_tol, hessian=hessian)
        return jax.vmap(lambda o, pt: _as_refit(o, with_response(data, pt), reml))(opt, parts)
    if sequential:
        if valid is None:
            return jax.lax.map(lambda a: one(*a), (parts, starts))
        each = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (parts, starts))
        shapes = jax.eval_shape(one, *each)
        skip = lambda pt, st: jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype), shapes)  # noqa: E731
        return jax.lax.map(lambda a: jax.lax.cond(a[2], one, skip, a[0], a[1]), (parts, starts, valid))
    return jax.vmap(one)(parts, starts)


def sequential(data: CrossProducts, control: Control) -> bool:
    """Whether a batch of refits of ``data`` runs its replicates one after another inside the compiled
    program: on the CPU backend, for models whose further random effects have ``control.cpu_map_from``
    columns or more. Their Schur update is a scatter-add over q2^2 targets, which XLA's CPU backend runs
    far slower when it is batched (InstEval, q2 = 1,142: no progress in minutes for two replicates)."""
    return jax.default_backend() == "cpu" and data.q_rest >= control.cpu_map_from


def _first_pass_restarts(res: Refit, max_iter: int, escape: float) -> tuple[np.ndarray, np.ndarray]:
    """Replicates the batched pass left unfinished, and where each restarts.

    - out of iterations: from where it stopped (not those whose last pass met Newton's
      aim, max|g| < ``GTOL`` (1 + |f|): they stopped where a refit without the cap stops);
    - at a saddle on the bound (``Refit.stuck``): the criterion is even in a
      diagonal theta entry whose column holds nothing else below it
      (flipping the sign of a column of T leaves Lambda Lambda' unchanged),
      so its gradient vanishes at 0 and Newton can stop there although the
      criterion curves downward; the entry restarts at ``escape``
      (``Control.escape``);
    - not converged otherwise (a failed line search, or negative curvature
      away from the bound): from where it stopped, then through the restarts
      and fallback of :func:`_finish`.
    """
    stuck = np.asarray(res.stuck, dtype=bool).reshape(len(res.objective), -1)
    theta = np.asarray(res.theta).reshape(stuck.shape)
    aimed = first_order(res.objective, np.asarray(res.grad).reshape(stuck.shape), GTOL)
    capped = (np.asarray(res.n_iter) >= max_iter) & ~aimed
    redo = stuck.any(axis=1) | capped | ~np.asarray(res.converged, dtype=bool)
    return np.flatnonzero(redo), np.where(stuck, escape, theta)


class _Waiting(NamedTuple):
    """Replicates waiting for a later pass: their rows in the result, starts and response cross-products."""

    index: np.ndarray
    start: np.ndarray
    parts: Response


def _take(tree, idx):
    return jax.tree.map(lambda a: np.asarray(a)[idx], tree)


def _join(items: list) -> _Waiting:
    return _Waiting(
        np.concatenate([w.index for w in items]), np.concatenate([w.start for w in items]),
        jax.tree.map(lambda *a: np.concatenate(a), *[w.parts for w in items]),
    )


@dataclass
class _Batches:
    """Runs :func:`refit_batch` for any number of replicates in batches of ``size`` (the last padded)."""

    target: Target
    reml: bool
    size: int
    control: Control = Control()

    lanes: int | None = None  # Newton's lanes (uses_lanes), or None: vmap or lax.map

    def batch(self, parts: Response, starts, max_iter: int, method: str = "newton", valid: int | None = None) -> Refit:
        """One :func:`refit_batch` call with the target's data and the settings of ``control``; the
        replicates from ``valid`` on only pad the batch (a sequential or lane batch skips them)."""
        data = self.target.data
        seq = sequential(data, self.control)
        n = len(starts)
        valid = n if valid is None else min(valid, n)
        lanes = self.lanes if method == "newton" and data.n_theta and not seq else None
        if lanes is not None:
            valid = on_device(valid)  # how many to refit
        else:
            valid = on_device(np.arange(n) < valid) if seq else None  # which to refit (vmap refits all)
        return refit_batch(parts, starts, data, self.target.lower, self.reml, on_device(max_iter), method,
                           on_device(self.control.convergence_tol), self.control.newton_hessian(data.q_rest).value,
                           seq, valid, lanes=lanes)

    def __call__(self, parts: Response, starts: np.ndarray, max_iter: int, method: str = "newton") -> Refit:
        m = len(starts)
        out = []
        for lo in range(0, m, self.size):
            idx = np.minimum(np.arange(lo, lo + self.size), m - 1)
            r = self.batch(_take(parts, idx), jnp.asarray(starts[idx]), max_iter, method, valid=m - lo)
            out.append(_take(r, slice(0, min(self.size, m - lo))))
        return Refit(*(np.concatenate(a) for a in zip(*out)))


def _better(a: Refit, b: Refit) -> np.ndarray:
    """Per replicate, whether ``b`` is the better optimum (:func:`jaxlmm.fitting.second_is_better`)."""
    return second_is_better(a.objective, b.objective, a.converged, b.converged)


def _merge(cur: Refit, new: Refit, where, take) -> Refit:
    """``cur`` with the replicates ``where`` (indices) replaced by ``new`` where ``take``; iterations add up."""
    out = [np.array(a) for a in cur]
    rows = np.asarray(where)[take]
    for a, b in zip(out, new):
        a[rows] = np.asarray(b)[take]
    out[5][np.asarray(where)] = cur.n_iter[where] + new.n_iter
    return Refit(*out)


def _finish(w: _Waiting, run: _Batches, control: Control, lower: np.ndarray) -> Refit:
    """The later passes, batched, with the rules of :func:`jaxlmm.fitting.fit_theta`.

    Newton with the full iteration cap from each waiting start; then, for
    those still not converged: restarts along a direction of negative
    curvature (``control.max_restarts``), L-BFGS followed by Newton, and for
    those whose first-order conditions hold, the probes that tell a flat
    valley from a way down. Every step is one :func:`refit_batch` over all
    the replicates it concerns; the better optimum of each is kept.
    """
    cur = run(w.parts, w.start, control.max_iter)
    active = np.ones(len(w.start), dtype=bool)
    for _ in range(control.max_restarts):
        todo = np.flatnonzero(active & ~cur.converged.astype(bool) & has_direction(cur.descent))
        if not len(todo):
            break
        again = run(_take(w.parts, todo), moved_start(cur.theta[todo], cur.descent[todo], control.restart_step, lower),
                    control.max_iter)
        was = _take(cur, todo)
        active[todo[~is_below(again.objective, was.objective) & ~again.converged.astype(bool)]] = False
        cur = _merge(cur, again, todo, _better(was, again))
    todo = np.flatnonzero(~cur.converged.astype(bool))
    if len(todo):
        lb = run(_take(w.parts, todo), cur.theta[todo], control.max_iter * 5, "lbfgs")
        ok = np.all(np.isfinite(lb.theta), axis=1)
        todo, lb = todo[ok], _take(lb, ok)
        if len(todo):
            again = run(_take(w.parts, todo), lb.theta, control.max_iter)
            lb = lb._replace(converged=np.zeros(len(todo), dtype=bool))  # L-BFGS has no curvature check
            step = _merge(again, lb, np.arange(len(todo)), _better(again, lb))
            was = _take(cur, todo)
            cur = _merge(cur, step, todo, _better(was, step))
    return _probe_flat(cur, w, run, control, lower)


def _select(mask, a: Refit, b: Refit) -> Refit:
    """Per replicate, ``b`` where ``mask``, else ``a``."""
    pick = lambda x, y: np.where(mask.reshape(mask.shape + (1,) * (np.ndim(x) - 1)), y, x)  # noqa: E731
    return Refit(*(pick(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)))


def _probe_flat(cur: Refit, w: _Waiting, run: _Batches, control: Control, lower: np.ndarray) -> Refit:
    """First-order conditions hold but the curvature test fails: Newton again from the point and from a
    move along the direction of negative curvature; where neither lowers the criterion beyond its
    rounding level (1e-9 relative), converged, else the lower probe (:func:`jaxlmm.fitting._probe_flat`,
    batched)."""
    todo = np.flatnonzero(~cur.converged.astype(bool) & first_order(cur.objective, cur.grad, control.convergence_tol))
    if not len(todo):
        return cur
    was = _take(cur, todo)
    probe = run(_take(w.parts, todo), was.theta, control.max_iter)
    n_iter = np.array(probe.n_iter)
    has = np.flatnonzero(has_direction(was.descent))
    if len(has):
        moved = run(_take(w.parts, todo[has]), moved_start(was.theta[has], was.descent[has], control.restart_step, lower),
                    control.max_iter)
        n_iter[has] += moved.n_iter
        lower_moved = np.zeros(len(todo), dtype=bool)
        lower_moved[has] = moved.objective < probe.objective[has]
        full = Refit(*(np.array(a) for a in probe))
        for a, b in zip(full, moved):
            a[has] = b
        probe = _select(lower_moved, probe, full)
    flat = ~is_below(probe.objective, was.objective, 1e-9)
    chosen = _select(flat, probe, was._replace(converged=np.ones(len(todo), dtype=bool)))
    return _merge(cur, chosen._replace(n_iter=n_iter), todo, np.ones(len(todo), dtype=bool))


def _per_replicate_size(targets) -> int:
    """Float64 entries one replicate of a batched refit needs (:func:`jaxlmm.memory.replicate_bytes`)."""
    return max(1, sum(replicate_bytes(tg.data, int(tg.rows.X.shape[0])) for tg in targets) // 8)


def uses_lanes(targets, control: Control, n_devices: int = 1) -> bool:
    """Whether the refits run on Newton's lanes (:func:`jaxlmm.optimize.newton_lanes`): where
    ``control.lanes`` asks for them (None: on the CPU backend), on one device, where a target has
    random effects and none is refitted sequentially (:func:`sequential`). A target without random
    effects (a closed form: ``pb_test``'s null of a variance test) is refitted vectorized, in the
    same chunks."""
    wanted = jax.default_backend() == "cpu" if control.lanes is None else control.lanes
    return bool(wanted and n_devices == 1 and any(tg.data.n_theta for tg in targets)
                and not any(sequential(tg.data, control) for tg in targets))


def lane_count(chunk: int, control: Control) -> int:
    """Newton's lanes for a chunk of ``chunk`` replicates: ``control.cpu_lanes`` at most on the CPU
    backend, elsewhere a ``control.lane_rounds``-th of the chunk."""
    if jax.default_backend() == "cpu":
        return min(chunk, control.cpu_lanes)
    return max(1, math.ceil(chunk / control.lane_rounds))


LANE_ENTRIES = 2**25
"""On the CPU, a chunk on lanes holds at most this many working float64 entries (but at least
``Control.cpu_chunk`` replicates): small models get ``cpu_lanes * lane_rounds`` replicates per
chunk (sleepstudy's 4,096 refit in about 0.4 s, ``pb_test``'s in 0.5 s), larger ones fewer, so
that a chunk, and the progress bar's step, stays short."""


def _default_chunk(targets, control: Control, lanes: bool) -> int:
    """As many replicates as fit in ``control.chunk_share`` of the memory available now
    (``control.chunk_entries`` float64 entries when that is None), at most ``control.cpu_chunk`` on
    the CPU backend (on ``lanes``: ``control.cpu_lanes * control.lane_rounds``, and
    :data:`LANE_ENTRIES` working entries unless that is fewer than ``control.cpu_chunk``)."""
    if control.chunk_entries is None:
        entries = int(control.chunk_share * available_memory_bytes()[0]) // 8
    else:
        entries = control.chunk_entries
    size = _per_replicate_size(targets)
    chunk = max(1, entries // size)
    if jax.default_backend() == "cpu":
        # vmapped Newton loops over batches of 512 and more were seen to stall in XLA's CPU
        # runtime (jax 0.10); default chunks (lanes) stay below that there
        if lanes:
            chunk = min(chunk, control.cpu_lanes * control.lane_rounds, max(control.cpu_chunk, LANE_ENTRIES // size))
        else:
            chunk = min(chunk, control.cpu_chunk)
    return chunk


def chunk_length(targets, n: int, chunk_size: int | None, control: Control, n_devices: int = 1,
                 lanes: bool = False) -> int:
    """Replicates per chunk: ``chunk_size``, or :func:`_default_chunk`; at most ``n``, a multiple of
    the device count. On ``lanes`` (:func:`uses_lanes`) a default chunk is a power of two (the
    largest that fits, or the smallest that holds ``n``: the lanes skip the padding), so that
    bootstraps of other sizes reuse its program; its memory estimate counts a refit's temporaries
    for every replicate, not only for every lane."""
    if chunk_size is None:
        chunk_size = _default_chunk(targets, control, lanes)
        if lanes:
            return min(2 ** int(math.log2(chunk_size)), 2 ** math.ceil(math.log2(n)))
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
    local optimum): it is refitted from there, and the better kept. With
    ``alt_from_null`` (the two have the same random-effect terms) the
    alternative's first pass starts each replicate at its null's optimum,
    nearer its own than the alternative's fitted theta (under the null the
    extra fixed effects change theta less than a new response does).
    """

    n: int
    seed: int
    rows: Rows
    params: SimParams
    targets: tuple
    reml: bool
    control: Control = Control()
    nested: Restart | None = None
    alt_from_null: bool = False


class Passes(NamedTuple):
    """How the replicates were refitted: chunk size, the first batched pass (replicates and seconds,
    simulation included) and the later batched passes (replicates per target, and seconds)."""

    chunk: int
    first: int
    first_seconds: float
    later: tuple
    later_seconds: float


def run_replicates(job: Job, chunk_size: int | None = None, progress: bool = False,
                   desc: str = "bootstrap") -> tuple[tuple, Passes]:
    """Refit ``job.targets`` on ``job.n`` simulated responses, chunk by chunk: numpy :class:`Refit` s
    (one per target) and the :class:`Passes`.

    Every chunk has the same shape (the last is padded with repeated keys and
    trimmed), so one compilation serves all; with several devices each chunk's
    replicate axis is sharded across them. Newton runs at most
    ``control.first_pass`` iterations on the batch, which all but a few
    replicates need; those few (and those stopped at a saddle on the bound,
    and in a nested pair the alternative refits that ended above their
    null's optimum) wait, and are finished together at the end, batched in
    chunks of the same size by the same compiled program (:func:`_finish`):
    nothing is refitted one at a time.
    """
    from tqdm.auto import tqdm

    ensure_x64()
    n, seed = check_count(job.n, "n (the number of bootstrap replicates)"), check_seed(job.seed)
    sharding = row_sharding()  # the replicate axis of a chunk, split across devices (None: one)
    n_devices = 1 if sharding is None else sharding.mesh.size
    on_lanes = uses_lanes(job.targets, job.control, n_devices)
    chunk = chunk_length(job.targets, n, chunk_size, job.control, n_devices, on_lanes)
    lanes = lane_count(chunk, job.control) if on_lanes else None
    check_fits(
        bootstrap_bytes([tg.data for tg in job.targets], int(job.rows.X.shape[0]), n, chunk),
        f"{desc}(n={n}) in chunks of {chunk} replicates",
    )
    keys = np.asarray(replicate_keys(on_device(np.int64(seed)), n))
    pieces, waiting = [], [[] for _ in job.targets]
    cap = job.control.first_pass or (job.control.max_iter if on_lanes else FIRST_PASS)
    bar = tqdm(total=n, desc=desc, unit="replicate", disable=not progress)
    t0 = time.perf_counter()
    for c in range(math.ceil(n / chunk)):
        kc = jax.device_put(keys[np.minimum(np.arange(c * chunk, (c + 1) * chunk), n - 1)], sharding)
        keep = int(min(chunk, n - c * chunk))
        res, unfinished = _first_pass(job, kc, keep, c * chunk, cap, waiting, lanes)
        if unfinished > job.control.pending_share * keep:  # this model needs more iterations than most
            cap = min(2 * cap, job.control.max_iter)
        pieces.append(res)
        bar.update(keep)
    bar.close()
    t1 = time.perf_counter()
    res = [Refit(*(np.concatenate(a, axis=0) for a in zip(*(p[t] for p in pieces)))) for t in range(len(job.targets))]
    out = tuple(
        _finish_all(r, waiting[t], _Batches(tg, job.reml, chunk, job.control, lanes), job.control)
        for t, (r, tg) in enumerate(zip(res, job.targets))
    )
    later = tuple(int(sum(len(w.index) for w in wait)) for wait in waiting)
    return out, Passes(chunk, n, t1 - t0, later, time.perf_counter() - t1)


def _first_pass(job: Job, keys, keep: int, offset: int, cap: int, waiting: list,
                lanes: int | None = None) -> tuple[tuple, int]:
    """One chunk's first batched pass: simulate, refit each target with ``cap`` Newton iterations from its
    start; the first ``keep`` replicates' refits, and the most any target left waiting (appended to
    ``waiting``, per target, with their rows counted from ``offset``)."""
    parts = simulate_products(keys, job.rows, job.params, tuple(tg.rows for tg in job.targets))
    chunk = len(keys)
    res, unfinished = [], 0
    null_thetas = None
    for tg, pt, wait in zip(job.targets, parts, waiting):
        starts = on_device(np.broadcast_to(np.asarray(tg.theta0), (chunk,) + tg.theta0.shape))
        if null_thetas is not None and job.alt_from_null:
            starts = on_device(np.asarray(null_thetas).reshape(starts.shape))
        whole = _Batches(tg, job.reml, chunk, job.control, lanes).batch(pt, starts, cap, valid=keep)
        null_thetas = whole.theta
        r = _take(whole, slice(0, keep))
        idx, start = _first_pass_restarts(r, cap, job.control.escape)
        wait.append(_Waiting(idx + offset, start[idx], _take(pt, idx)))
        unfinished = max(unfinished, len(idx))
        res.append(r)
    if job.nested:  # an alternative refit worse than its null: restart it from the null's optimum
        worse = np.flatnonzero(res[1].objective > res[0].objective + 1e-9 * (1.0 + np.abs(res[0].objective)))
        waiting[1].append(_Waiting(worse + offset, job.nested(res[0].theta, res[1].theta)[worse],
                                   _take(parts[1], worse)))
    return tuple(res), unfinished


def _finish_all(res: Refit, waiting: list, run: _Batches, control: Control) -> Refit:
    """``res`` with the waiting replicates finished (:func:`_finish`); a replicate waiting twice keeps
    its best optimum, and every optimum is compared with the first pass's."""
    if not any(len(w.index) for w in waiting):
        return res
    w = _join(waiting)
    done = _finish(w, run, control, np.asarray(run.target.lower))
    out = Refit(*(np.array(a) for a in res))
    for i, row in enumerate(w.index):  # in order: a replicate may wait twice, the better optimum stays
        again = _take(done, i)
        if again.objective <= out.objective[row]:
            n_iter = out.n_iter[row] + again.n_iter
            for a, b in zip(out, again):
                a[row] = b
            out.n_iter[row] = n_iter
    return out


def fit_params(fit) -> SimParams:
    """beta, theta, sigma of a fit, as float64 JAX arrays."""
    return SimParams(
        on_device(fit.fixef.to_numpy(), np.float64),
        on_device(fit.theta, np.float64),
        on_device(fit.sigma, np.float64),
    )


def target_of(fit, theta0=None) -> Target:
    """A fit's model as a refit target, started at ``theta0`` (default: the fitted theta)."""
    theta0 = fit.theta if theta0 is None else theta0
    return Target(
        rows_of(fit.design, fit.products.beta0), fit.products, on_device(theta0, np.float64),
        on_device(theta_lower_bounds(fit.products.term_dims)),
    )
