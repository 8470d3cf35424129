"""Parametric bootstrap by batched refits: simulate B responses, refit them all at once.

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
(``jax.sharding.NamedSharding``); with one it is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.tree_util import register_dataclass

from ._config import ensure_x64, uses_float64
from .memory import bootstrap_bytes, check_fits, replicate_bytes
from .crossprod import CrossProducts, response_products, row_sharding, with_response
from .errors import ConvergenceWarning, JaxLMMError, warn
from .model import fit_theta, minimize_theta, newton_hessian
from .objective import relative_factors, solve, theta_layout
from .results import term_group_names
from .validate import check_bool, check_count, check_fit, check_level, check_seed

MEMORY_BUDGET = 2**26  # float64 entries per chunk of replicates (512 MB) when chunk_size is None
# On the CPU backend, vmapped Newton loops over batches of 512 and more were seen
# to stall in XLA's CPU runtime (jax 0.10); default chunks stay below that there.
CPU_CHUNK = 256


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


ESCAPE = 0.1  # restart value of a diagonal theta entry stuck at a saddle on the boundary
FIRST_PASS = 8  # Newton iterations of the batched pass at first; slower replicates finish one by one
PENDING_SHARE = 0.1  # above this share of a chunk left unfinished, the batched pass gets more iterations
MAX_ITER = 200  # Newton iterations of a replicate's second pass (as a fit's default)


def _as_refit(opt, sol, data: CrossProducts, reml: bool) -> Refit:
    """A :class:`Refit` from the optimum and the conditional estimates there; sigma^2 = r^2/(n-p) or r^2/n."""
    dof = data.n - data.p if reml else data.n
    ok = opt.converged & jnp.isfinite(opt.fun) & jnp.all(jnp.isfinite(sol.beta))
    return Refit(opt.fun, opt.theta, sol.beta, jnp.sqrt(sol.r2 / dof), ok, opt.n_iter, opt.stuck)


def refit(data: CrossProducts, theta0, lower, reml: bool, max_iter=MAX_ITER) -> Refit:
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


def refit_one(data: CrossProducts, theta0, lower, reml: bool) -> Refit:
    """``refit`` of one response, through the compiled fit of the model itself (no new compilation),
    with its restarts and fallback (:func:`jaxlmm.model.fit_theta`)."""
    opt = fit_theta(
        jnp.asarray(theta0), lower, data, bool(reml), method="newton", max_iter=MAX_ITER, scale=None,
        hessian=newton_hessian(data),
    )
    return Refit(*(np.asarray(a) for a in _as_refit(opt, _solve(opt.theta, data), data, reml)))


def _first_pass_restarts(res: Refit, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Replicates the batched pass left unfinished, and where each restarts.

    - out of iterations: from where it stopped;
    - at a saddle on the bound (``Refit.stuck``): the criterion is even in a
      diagonal theta entry whose column holds nothing else below it
      (flipping the sign of a column of T leaves Lambda Lambda' unchanged),
      so its gradient vanishes at 0 and Newton can stop there although the
      criterion curves downward; the entry restarts at ``ESCAPE``;
    - not converged otherwise (a failed line search, or negative curvature
      away from the bound): from where it stopped, through the fit's restarts
      and fallback (:func:`refit_one`).
    """
    stuck = np.asarray(res.stuck, dtype=bool).reshape(len(res.objective), -1)
    theta = np.asarray(res.theta).reshape(stuck.shape)
    redo = stuck.any(axis=1) | (np.asarray(res.n_iter) >= max_iter) | ~np.asarray(res.converged, dtype=bool)
    return np.flatnonzero(redo), np.where(stuck, ESCAPE, theta)


class _Pending:
    """Replicates of one target waiting for a second pass: index, start, cross-products."""

    def __init__(self):
        self.idx, self.start, self.parts = [], [], []

    def add(self, idx, start, parts, offset: int) -> None:
        if len(idx):
            self.idx.append(idx + offset)
            self.start.append(start[idx])
            self.parts.append(jax.tree.map(lambda a: np.asarray(a)[idx], parts))

    def run(self, res: Refit, tg: Target, reml: bool) -> Refit:
        """Refit the pending replicates one by one; keep the better optimum of each.

        They are few (a replicate needing more than ``FIRST_PASS`` Newton
        iterations is rare), and one by one they reuse the compiled fit of
        the model instead of compiling a batch of another size.
        """
        if not self.idx:
            return res
        idx, start = np.concatenate(self.idx), np.concatenate(self.start)
        parts = jax.tree.map(lambda *a: np.concatenate(a), *self.parts)
        out = [np.array(a) for a in res]
        for i, row in enumerate(idx):  # a replicate may be pending twice: keep the best
            data = with_response(tg.data, jax.tree.map(lambda a: jnp.asarray(a[i]), parts))
            again = refit_one(data, start[i], tg.lower, reml)
            if again.objective <= out[0][row]:
                n_iter = out[5][row] + again.n_iter
                for a, b in zip(out, again):
                    a[row] = b
                out[5][row] = n_iter
        self.idx, self.start, self.parts = [], [], []
        return Refit(*out)


def _per_replicate_size(targets) -> int:
    """Float64 entries one replicate of a batched refit needs (:func:`jaxlmm.memory.replicate_bytes`)."""
    return max(1, sum(replicate_bytes(tg.data, int(tg.rows.X.shape[0])) for tg in targets) // 8)



def run_replicates(
    n: int, seed: int, sim_rows: Rows, params: SimParams, targets: tuple, reml: bool,
    chunk_size: int | None, progress: bool, desc: str, nested=None,
) -> tuple:
    """Refit ``targets`` on ``n`` responses simulated from ``params``, chunk by chunk.

    Every chunk has the same shape (the last is padded with repeated keys and
    trimmed), so one compilation serves all; with several devices each chunk's
    replicate axis is sharded across them. Newton runs at most ``FIRST_PASS``
    iterations on the batch, which all but a few replicates need; those few
    (and those stopped at a saddle on the bound) finish one by one at the
    end, so that one slow replicate does not hold up its chunk.
    ``nested(theta_null, theta_alt)``, for a pair of nested models, gives
    the start of an alternative refit that ended above its null's optimum
    (a local optimum): it is refitted from there, and the better kept.
    Returns numpy :class:`Refit` s.
    """
    from tqdm.auto import tqdm

    ensure_x64()
    n = check_count(n, "n (the number of bootstrap replicates)")
    seed = check_seed(seed)
    sharding = row_sharding()  # the replicate axis of a chunk, split across devices (None: one)
    ndev = 1 if sharding is None else sharding.mesh.size
    if chunk_size is None:
        chunk_size = max(1, MEMORY_BUDGET // _per_replicate_size(targets))
        if jax.default_backend() == "cpu":
            chunk_size = min(chunk_size, CPU_CHUNK)
    else:
        chunk_size = check_count(chunk_size, "chunk_size (None, or a positive integer)")
    chunk = min(int(chunk_size), n)
    chunk = ndev * math.ceil(chunk / ndev)
    check_fits(
        bootstrap_bytes([tg.data for tg in targets], int(sim_rows.X.shape[0]), n, chunk),
        f"{desc}(n={n}) in chunks of {chunk} replicates",
    )
    keys = jax.random.split(jax.random.key(int(seed)), n)
    nchunks = math.ceil(n / chunk)
    pieces, pending = [], [_Pending() for _ in targets]
    cap = FIRST_PASS
    for c in tqdm(range(nchunks), desc=desc, unit="chunk", disable=not progress):
        idx = np.arange(c * chunk, (c + 1) * chunk)
        kc = keys[np.minimum(idx, n - 1)]
        if sharding is not None:
            kc = jax.device_put(kc, sharding)
        out = refit_chunk(kc, sim_rows, params, targets, reml, jnp.asarray(cap))
        keep = int(min(chunk, n - c * chunk))
        res = [Refit(*(np.asarray(a)[:keep] for a in r)) for r, _ in out]
        unfinished = 0
        for r, (_, parts), pend in zip(res, out, pending):
            idx, start = _first_pass_restarts(r, cap)
            pend.add(idx, start, parts, offset=c * chunk)
            unfinished = max(unfinished, len(idx))
        if unfinished > PENDING_SHARE * keep:  # this model needs more iterations than most
            cap = min(2 * cap, MAX_ITER)
        if nested:  # an alternative refit worse than its null: restart it from the null's optimum
            worse = np.flatnonzero(res[1].objective > res[0].objective + 1e-9 * (1.0 + np.abs(res[0].objective)))
            pending[1].add(worse, nested(res[0].theta, res[1].theta), out[1][1], offset=c * chunk)
        pieces.append(tuple(res))
    res = [Refit(*(np.concatenate(a, axis=0) for a in zip(*(p[t] for p in pieces)))) for t in range(len(targets))]
    return tuple(
        pend.run(r, tg, reml) for r, tg, pend in zip(res, targets, pending)
    )


# ---- naming and derived parameters ---------------------------------------------------


def theta_names(terms) -> list[str]:
    """lme4's names of theta: 'Subject.(Intercept)', 'Subject.Days.(Intercept)', ..."""
    out = []
    for grp, t, (rows, cols) in zip(term_group_names(terms), terms, theta_layout([(0, t.k) for t in terms])):
        for r, c in zip(rows, cols):
            out.append(f"{grp}.{t.colnames[r]}" if r == c else f"{grp}.{t.colnames[r]}.{t.colnames[c]}")
    return out


def sd_cor(theta: np.ndarray, sigma: np.ndarray, terms) -> dict:
    """Random-effect SDs and correlations per replicate, lme4's oldNames=FALSE names.

    Sigma_m = sigma^2 T_m T_m'; the SDs are sqrt(diag), the correlations
    Sigma_ij / (sd_i sd_j) (NaN where an SD is 0). Order: per term, the
    lower triangle column-wise (sd_1, cor_21, ..., sd_2, ...), as lme4's confint.
    """
    theta = np.atleast_2d(theta)
    sigma = np.asarray(sigma).reshape(-1)
    out, lo = {}, 0
    for grp, t, (rows, cols) in zip(term_group_names(terms), terms, theta_layout([(0, t.k) for t in terms])):
        m = len(rows)
        T = np.zeros((theta.shape[0], t.k, t.k))
        T[:, rows, cols] = theta[:, lo : lo + m]
        lo += m
        S = sigma[:, None, None] ** 2 * np.einsum("bij,bkj->bik", T, T)
        sd = np.sqrt(np.diagonal(S, axis1=1, axis2=2))
        for r, c in zip(rows, cols):
            if r == c:
                out[f"sd_{t.colnames[r]}|{grp}"] = sd[:, r]
            else:
                den = sd[:, r] * sd[:, c]
                with np.errstate(invalid="ignore", divide="ignore"):
                    cor = np.where(den > 0, S[:, r, c] / np.where(den > 0, den, 1.0), np.nan)
                out[f"cor_{t.colnames[r]}.{t.colnames[c]}|{grp}"] = cor
    out["sigma"] = sigma
    return out


def replicate_table(res: Refit, model) -> pd.DataFrame:
    """One row per replicate: objective, sigma, beta, theta, SDs/correlations, convergence."""
    terms = model.design.terms
    cols = {"objective": res.objective, "sigma": res.sigma}
    cols.update({name: res.beta[:, j] for j, name in enumerate(model.design.fixed_names)})
    cols.update({f"theta_{name}": res.theta[:, j] for j, name in enumerate(theta_names(terms))})
    sc = sd_cor(res.theta, res.sigma, terms)
    sc.pop("sigma")
    cols.update(sc)
    cols["converged"] = res.converged.astype(bool)
    cols["n_iter"] = res.n_iter
    return pd.DataFrame(cols)


def warn_failed(n_failed: int, n: int, what: str) -> None:
    if n_failed:
        warn(
            f"{n_failed} of {n} {what} replicate(s) did not converge; they are excluded "
            "from the results (see the 'converged' column of .table).",
            ConvergenceWarning,
        )


# ---- intervals -----------------------------------------------------------------------


def shortest_interval(v: np.ndarray, level: float) -> tuple[float, float]:
    """The shortest interval holding ceil(level * B) of the B sorted values (MixedModels.jl's shortestcovint)."""
    v = np.sort(v[np.isfinite(v)])
    if len(v) == 0:
        return np.nan, np.nan
    m = max(1, math.ceil(level * len(v)))
    widths = v[m - 1 :] - v[: len(v) - m + 1]
    i = int(np.argmin(widths))
    return float(v[i]), float(v[i + m - 1])


def percentile_interval(v: np.ndarray, level: float) -> tuple[float, float]:
    """Equal-tailed interval: the (1 -/+ level)/2 sample quantiles (numpy's linear rule)."""
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


INTERVALS = {"percentile": percentile_interval, "shortest": shortest_interval}


# ---- the user-facing result --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """B parametric-bootstrap refits of a fitted model (frozen).

    ``table``: one row per replicate; ``n_used`` converged replicates enter
    the intervals, ``n_failed`` did not converge and are excluded.
    """

    table: pd.DataFrame
    parameters: tuple  # names of the parameters, lme4's confint order
    reml: bool
    seed: int
    n_used: int
    n_failed: int

    def confint(self, level: float = 0.95, method: str = "percentile") -> pd.DataFrame:
        """Bootstrap intervals for sd_/cor_ parameters, sigma and the fixed effects.

        ``percentile``: equal-tailed sample quantiles; ``shortest``: the
        shortest interval holding a fraction ``level`` of the replicates.
        Correlations ignore replicates where they are undefined (an SD at 0).
        """
        if method not in INTERVALS:
            raise JaxLMMError(f"method must be one of {tuple(INTERVALS)}, not {method!r}.")
        level = check_level(level)
        ok = self.table[self.table["converged"]]
        rows = [INTERVALS[method](ok[p].to_numpy(dtype=np.float64), level) for p in self.parameters]
        return pd.DataFrame(rows, index=list(self.parameters), columns=["lower", "upper"])

    def __repr__(self) -> str:
        return f"<BootstrapResult {'REML' if self.reml else 'ML'} n_used={self.n_used} n_failed={self.n_failed}>"


def fit_params(fit) -> SimParams:
    """beta, theta, sigma of a fit, as float64 JAX arrays."""
    return SimParams(
        jnp.asarray(fit.fixef.to_numpy(), dtype=jnp.float64),
        jnp.asarray(fit.theta, dtype=jnp.float64),
        jnp.asarray(fit.sigma, dtype=jnp.float64),
    )


def target_of(model, theta0) -> Target:
    return Target(rows_of(model.design), model.data, jnp.asarray(theta0, dtype=jnp.float64), jnp.asarray(model.lower))


@uses_float64
def bootstrap(fit, n: int = 10_000, seed: int | None = 0, chunk_size: int | None = None, progress: bool = True) -> BootstrapResult:
    """Parametric bootstrap of ``fit`` (lme4's ``bootMer`` with ``use.u = FALSE``).

    Simulates ``n`` responses from the fitted beta, theta, sigma and refits
    each by the fit's criterion (REML or ML), starting at the fitted theta.
    ``seed``: an integer in 0 .. 2**63 - 1, or None for a random one; either
    way recorded as ``result.seed``. The memory of the keys, the results and
    one chunk is checked before anything is allocated
    (:func:`jaxlmm.memory.bootstrap_bytes`).
    """
    check_fit(fit, func="bootstrap")
    n = check_count(n, "n (the number of bootstrap replicates)")
    seed, progress = check_seed(seed), check_bool(progress, "progress")
    model = fit.model
    tg = target_of(model, fit.theta)
    (res,) = run_replicates(
        n, seed, tg.rows, fit_params(fit), (tg,), fit.reml, chunk_size, progress, "bootstrap"
    )
    res = Refit(*res)
    table = replicate_table(res, model)
    n_failed = int((~table["converged"]).sum())
    warn_failed(n_failed, len(table), "bootstrap")
    names = list(sd_cor(fit.theta[None, :], np.array([fit.sigma]), model.design.terms))
    names += list(model.design.fixed_names)
    return BootstrapResult(table, tuple(names), fit.reml, int(seed), len(table) - n_failed, n_failed)
