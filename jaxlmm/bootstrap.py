"""Parametric bootstrap by batched refits: simulate B responses, refit them all at once.

lme4's ``bootMer`` (and pbkrtest's ``PBmodcomp``) refit one simulated
response at a time. Here the whole refit is one batched computation:

1. simulate (Bates et al., JSS 2015, eq. 2 with b = Lambda u):
   y* = X beta + Z Lambda(theta) u* + sigma eps,  u* ~ N(0, sigma^2 I_q),
   eps ~ N(0, I_n), with Z applied through the integer group codes of each
   term (never a dense n x q matrix);
2. compute only the response-dependent cross-products Z'y*, X'y*, y*'y*
   (:func:`jaxlmm.crossprod.response_products`) for the batch;
3. ``vmap`` the whole fit (projected Newton in a ``lax.while_loop``, started
   at the fitted theta) over the batch. A refit never touches the n rows.

Replicate i uses ``jax.random.split(key(seed), B)[i]``, so the numbers do
not depend on the chunk size (chunks bound memory) or on the number of
devices: with several visible devices the replicate axis of each chunk is
sharded across them (``jax.sharding.NamedSharding``); with one it is not.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import register_dataclass

from ._config import ensure_x64
from .crossprod import CrossProducts, response_products, with_response
from .errors import ConvergenceWarning, JaxLMMError
from .model import optimize_theta
from .objective import deviance as _deviance
from .objective import relative_factors, solve, theta_layout
from .results import term_group_names

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
    """What simulation and :func:`response_products` need of a design: X and the terms."""

    X: jax.Array
    terms: tuple

    @property
    def term_dims(self) -> tuple:
        return tuple((t.nlevels, t.X.shape[1]) for t in self.terms)


register_dataclass(TermRows, data_fields=["codes", "X"], meta_fields=["nlevels"])
register_dataclass(Rows, data_fields=["X", "terms"], meta_fields=[])


def rows_of(design) -> Rows:
    """The arrays of a :class:`~jaxlmm.design.Design` that depend on rows, as JAX arrays."""
    f64 = partial(jnp.asarray, dtype=jnp.float64)
    terms = tuple(TermRows(jnp.asarray(t.codes), f64(t.X), t.nlevels) for t in design.terms)
    return Rows(f64(design.X), terms)


# ---- simulation ------------------------------------------------------------------


class SimParams(NamedTuple):
    """The parameters responses are simulated from: beta, theta, sigma."""

    beta: jax.Array
    theta: jax.Array
    sigma: jax.Array


def simulate(key, rows: Rows, params: SimParams) -> jax.Array:
    """One response y* = X beta + sum_m Z_m b_m + sigma eps, b_m = sigma u_m T_m'.

    Row r of term m contributes X_m[r] . b_m[codes_m[r]]; u_m (l_m, k_m) and
    eps (n,) are standard normal draws from independent sub-keys of ``key``.
    """
    keys = jax.random.split(key, len(rows.terms) + 1)
    y = rows.X @ params.beta + params.sigma * jax.random.normal(keys[0], (rows.X.shape[0],))
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


class Target(NamedTuple):
    """A model to refit: its rows, cross-products, start (fitted theta) and bounds."""

    rows: Rows
    data: CrossProducts
    theta0: jax.Array
    lower: jax.Array


ESCAPE = 0.1  # restart value of a diagonal theta entry stuck at a saddle on the boundary


def escape_boundary_saddle(opt, data: CrossProducts, lower, reml: bool):
    """Restart from points where a diagonal theta entry sits at 0 with negative curvature.

    The criterion is even in each diagonal entry whose column holds nothing
    else below it (flipping the sign of a column of T leaves Lambda Lambda'
    unchanged), so its gradient there is 0 and the projected Newton stops even
    when d^2f/dtheta_i^2 < 0, a saddle. Such entries restart at ``ESCAPE``;
    the better of the two optima is kept.
    """
    H = jax.hessian(_deviance)(opt.theta, data, reml)
    stuck = (opt.theta <= lower) & (jnp.diagonal(H) < 0)
    again = optimize_theta(jnp.where(stuck, ESCAPE, opt.theta), lower, data, reml)
    better = jnp.any(stuck) & (again.fun < opt.fun)
    return jax.tree.map(lambda a, b: jnp.where(better, b, a), opt, again)


def refit(data: CrossProducts, theta0, lower, reml: bool) -> Refit:
    """Minimize the profiled criterion for ``data`` from ``theta0``; sigma^2 = r^2/(n-p) or r^2/n."""
    opt = optimize_theta(theta0, lower, data, reml)
    if data.n_theta:
        opt = escape_boundary_saddle(opt, data, lower, reml)
    sol = solve(opt.theta, data)
    dof = data.n - data.p if reml else data.n
    ok = opt.converged & jnp.isfinite(opt.fun) & jnp.all(jnp.isfinite(sol.beta))
    return Refit(opt.fun, opt.theta, sol.beta, jnp.sqrt(sol.r2 / dof), ok, opt.n_iter)


@partial(jax.jit, static_argnames=("reml",))
def refit_chunk(keys, sim_rows: Rows, params: SimParams, targets: tuple, reml: bool) -> tuple:
    """Simulate one response per key from ``params`` and refit every target on each.

    All targets see the same simulated responses (they must share their rows
    and response); returns one batched :class:`Refit` per target.
    """
    ys = jax.vmap(simulate, in_axes=(0, None, None))(keys, sim_rows, params)
    out = []
    for tg in targets:
        parts = response_products(tg.rows, ys)
        one = lambda pt, tg=tg: refit(with_response(tg.data, pt), tg.theta0, tg.lower, reml)  # noqa: E731
        out.append(jax.vmap(one)(parts))
    return tuple(out)


def _per_replicate_size(targets) -> int:
    """Rough float64 entries one replicate needs (response, Hessian of the factorization)."""
    size = 0
    for tg in targets:
        d = tg.data
        n = int(d.n)
        kmax = max([k for _, k in d.term_dims] or [1])
        l1, k1 = d.term_dims[0] if d.term_dims else (0, 0)
        fac = l1 * k1 * (k1 + d.p + 1) + (d.q_rest + d.p + 1) ** 2 + len(d.e_j1) * max(k1, 1)
        size += n * (kmax + 2) + 8 * (d.n_theta + 1) * fac
    return max(size, 1)


def _mesh():
    """A one-axis mesh over all visible devices, or None with a single device."""
    devices = jax.devices()
    return Mesh(np.array(devices), ("rep",)) if len(devices) > 1 else None


def run_replicates(
    n: int, seed: int, sim_rows: Rows, params: SimParams, targets: tuple, reml: bool,
    chunk_size: int | None, progress: bool, desc: str,
) -> tuple:
    """Refit ``targets`` on ``n`` responses simulated from ``params``, chunk by chunk.

    Every chunk has the same shape (the last is padded with repeated keys and
    trimmed), so one compilation serves all; with several devices each chunk's
    replicate axis is sharded across them. Returns numpy :class:`Refit` s.
    """
    from tqdm.auto import tqdm

    ensure_x64()
    if not isinstance(n, (int, np.integer, float)) or int(n) != n or n < 1:
        raise JaxLMMError(f"n (the number of bootstrap replicates) must be a positive integer, not {n!r}.")
    n = int(n)
    mesh = _mesh()
    ndev = 1 if mesh is None else mesh.size
    if chunk_size is None:
        chunk_size = max(1, MEMORY_BUDGET // _per_replicate_size(targets))
        if jax.default_backend() == "cpu":
            chunk_size = min(chunk_size, CPU_CHUNK)
    elif not isinstance(chunk_size, (int, np.integer, float)) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise JaxLMMError(f"chunk_size must be a positive integer or None, not {chunk_size!r}.")
    chunk = min(int(chunk_size), n)
    chunk = ndev * math.ceil(chunk / ndev)
    keys = jax.random.split(jax.random.key(int(seed)), n)
    nchunks = math.ceil(n / chunk)
    pieces = []
    for c in tqdm(range(nchunks), desc=desc, unit="chunk", disable=not progress):
        idx = np.arange(c * chunk, (c + 1) * chunk)
        kc = keys[np.minimum(idx, n - 1)]
        if mesh is not None:
            kc = jax.device_put(kc, NamedSharding(mesh, PartitionSpec("rep")))
        res = refit_chunk(kc, sim_rows, params, targets, reml)
        keep = int(min(chunk, n - c * chunk))
        pieces.append(jax.tree.map(lambda a: np.asarray(a)[:keep], res))
    return jax.tree.map(lambda *a: np.concatenate(a, axis=0), *pieces)


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
        warnings.warn(
            f"{n_failed} of {n} {what} replicate(s) did not converge; they are excluded "
            "from the results (see the 'converged' column of .table).",
            ConvergenceWarning,
            stacklevel=3,
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
        if not 0 < level < 1:
            raise JaxLMMError(f"level must lie strictly between 0 and 1, not {level!r}.")
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


def bootstrap(fit, n: int = 10_000, seed: int = 0, chunk_size: int | None = None, progress: bool = True) -> BootstrapResult:
    """Parametric bootstrap of ``fit`` (lme4's ``bootMer`` with ``use.u = FALSE``).

    Simulates ``n`` responses from the fitted beta, theta, sigma and refits
    each by the fit's criterion (REML or ML), starting at the fitted theta.
    """
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
