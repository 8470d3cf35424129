"""Likelihood profiles of every parameter on lme4's scale (lme4's ``profile.merMod``).

The parameters psi are, as lme4's ``confint`` names them (``oldNames = FALSE``):
per random-effect term the standard deviations ``sd_x|g`` and correlations
``cor_x.y|g`` (in the order of theta: the lower triangle column by column),
then ``sigma``, then the fixed effects. They map to the engine's parameters by

    Sigma_m = S_m R_m S_m,  T_m = S_m chol(R_m) / sigma,  theta = vech(T_m),

S_m the diagonal of SDs and R_m the correlation matrix of term m. The
profile of psi_j is the ML deviance minimized over all other parameters,
D_j(v) = min_{psi: psi_j = v} D(theta(psi), sigma, beta)
(:func:`jaxlmm.likelihood.deviance_ml`), and its signed square root
zeta_j(v) = sign(v - psi_j-hat) sqrt(D_j(v) - D(psi-hat)) (Bates & Watts,
"Nonlinear Regression Analysis", 1988, sec. 6.1; Bates et al., JSS 2015,
sec. 5.1). As lme4's ``devfun2`` does (it calls ``refitML``), REML fits are
profiled on the ML deviance.

The inner minimization is the engine's projected Newton
(:func:`jaxlmm.optimize.newton`) over the engine's v = (theta, sigma, beta),
which reaches singular fits (a zero diagonal entry of theta, a correlation
matrix of lower rank) that the SD and correlation scale approaches only as a
correlation tends to +-1. sigma or beta_j is held fixed; for an SD its row of
the relative factor T is rescaled to the norm SD / sigma, its direction left
free; for the correlation of columns a < b, cos(t_a, t_b) of rows a and b of
T, row b is turned to that angle in the plane of t_a and its own orthogonal
part, its norm kept (:func:`_constrained_min_theta`). One compiled function
serves every parameter and value. A profile limit zeta_j(v) = +-z is found by
a safeguarded secant (regula falsi with the Illinois modification) on v, a
correlation on the atanh scale. An SD profile that stays above -z down to
SD = 0 gives the lower limit 0; a correlation profile that never reaches
+-z gives the limit +-1.

Singular fits: a relative factor of rank below its size has a singular
correlation matrix (its Cholesky factor, and the deviance through it, is not
finite there), and a correlation with an SD of 0 is undefined. The profiles
then start from the estimate with its correlations moved toward 0 by the
least amount that makes every correlation matrix positive definite (an
undefined one at 0); the deviance there exceeds the minimum by a rounding
amount. Each parameter is profiled on its own: one whose profile cannot be
computed gets NaN limits and a warning naming it, and the others keep theirs.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._config import lean_jit
from .distributions import two_sided_z
from .errors import JaxLMMError, JaxLMMWarning, warn
from .likelihood import deviance_ml
from .optimize import newton
from .theta import theta_columns, theta_layout
from .validate import check_level, check_positive_int
from .varcorr import sdcor_estimates, theta_from_sdcor

CORR_LIMIT = 12.0  # |atanh(cor)| beyond which the correlation is taken as +-1


class Kind(enum.IntEnum):
    """What an entry of the profiled parameters w is."""

    SD = 0  # a random-effect SD
    COR = 1  # a correlation, profiled on the atanh scale
    SIGMA = 2  # the residual SD
    BETA = 3  # a fixed effect


def _kinds(term_dims, p: int) -> np.ndarray:
    """The :class:`Kind` of each entry of w: the SDs and correlations in theta's layout, sigma, beta."""
    out = []
    for rows, cols in theta_layout(term_dims):
        out += [Kind.SD if r == c else Kind.COR for r, c in zip(rows, cols)]
    return np.array(out + [Kind.SIGMA] + [Kind.BETA] * p, dtype=np.int64)


def _unpack(w, kinds, term_dims):
    """(theta, sigma, beta) from w = (SDs, atanh(correlations), sigma, beta)."""
    nv = len(kinds) - int(np.sum(kinds == Kind.BETA)) - 1
    v = w[:nv]
    sdcor = jnp.where(jnp.asarray(kinds[:nv] == Kind.COR), jnp.tanh(v), v)
    sigma = w[nv]
    return theta_from_sdcor(sdcor, sigma, term_dims), sigma, w[nv + 1 :]


def _norm(x):
    """|x|, with a finite derivative at x = 0 (NaN would flow through a where)."""
    sq = jnp.sum(x**2)
    return jnp.sqrt(jnp.where(sq > 0, sq, 1.0)) * (sq > 0)


@lean_jit(static_argnames=("column",))
def _constrained_min_theta(v0, lower, data, column: tuple, j, vj, row, A, B):
    """As :func:`_constrained_min` over v = (theta, sigma, beta), the engine's parameters.

    For the profiles of the SDs, sigma and the fixed effects: theta reaches
    the singular fits (a zero diagonal entry) that the SD and correlation
    scale approaches only in the limit of a correlation of +-1. ``row``
    (0/1 over v) marks, for the profile of an SD, the entries of its row of
    the relative factor T: the SD is sigma |T_row|, so the row is rescaled to
    the norm vj / sigma (its direction stays free). For the profile of a
    correlation, ``A`` and ``B`` (0/1, v x k) pick rows a < b of T by
    column: the correlation is cos(t_a, t_b), so t_b is turned in the plane
    of t_a and its own component orthogonal to t_a to the angle arccos(vj),
    keeping its norm (the free parameters stay free, the boundary of
    singular fits stays reachable). Otherwise (all zeros) entry j of v is
    set to vj.
    """
    nt = len(column) - 1 - data.p
    sd = jnp.any(row > 0)
    cor = jnp.any(B > 0)

    def fix(v, j, vj):
        norm = _norm(v * row)
        scaled = jnp.where(row > 0, v * (vj / v[nt]) / jnp.where(norm > 0, norm, 1.0), v)
        ta, tb = A.T @ v, B.T @ v
        ua = ta / jnp.where(_norm(ta) > 0, _norm(ta), 1.0)
        w = tb - jnp.vdot(tb, ua) * ua
        uw = w / jnp.where(_norm(w) > 0, _norm(w), 1.0)
        turned = v + B @ (_norm(tb) * (vj * ua + jnp.sqrt(jnp.maximum(1.0 - vj**2, 0.0)) * uw) - tb)
        return jnp.where(cor, turned, jnp.where(sd, scaled, v.at[j].set(vj)))

    def dev(v, data, j, vj):
        v = fix(v, j, vj)
        return deviance_ml(v[:nt], v[nt], v[nt + 1 :], data)

    res = newton(dev, v0, lower, args=(data, j, vj), gtol=1e-10, max_iter=100, column=np.array(column))
    return res.fun, fix(res.theta, j, vj)


@lean_jit(static_argnames=("kinds",))
def _deviance_at(w, data, kinds: tuple):
    """The ML deviance at w (no minimization)."""
    theta, sigma, beta = _unpack(w, np.array(kinds, dtype=np.int64), data.term_dims)
    return deviance_ml(theta, sigma, beta, data)


def _feasible_start(w, kinds: np.ndarray, dev) -> np.ndarray:
    """``w`` with its atanh-correlations shrunk toward 0 until the deviance there is finite.

    Undefined correlations (NaN: an SD of 0) become 0. The shrinkage factor
    grows from 1e-10 in steps of 100; at a factor of 1 every correlation is 0.
    """
    w = np.where((kinds == Kind.COR) & ~np.isfinite(w), 0.0, w)
    if np.isfinite(dev(w)):
        return w
    r = np.tanh(w)
    shrink = kinds == Kind.COR
    for eps in [1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1e-1, 0.5, 1.0]:
        trial = np.where(shrink, np.arctanh(r * (1.0 - eps)), w)
        if np.isfinite(dev(trial)):
            return trial
    return w


class ProfileWarning(JaxLMMWarning):
    """A parameter's profile could not be computed; its limits are NaN."""


class Profiler:
    """Evaluates zeta_j(v) for one fit; caches the ML fit and warm starts."""

    def __init__(self, fit):
        ml = fit.refit(reml=False)
        self.fit, self.ml = fit, ml
        data = fit.products
        self.data = data
        kinds = _kinds(data.term_dims, len(ml.fixef))
        self.kinds = tuple(int(k) for k in kinds)
        names, values = sdcor_estimates(ml.theta, ml.sigma, ml.terms)
        self.names = names + list(ml.fixef.index)
        psi = np.concatenate([values, ml.fixef.to_numpy()])
        self.psi_hat = psi
        w_hat = np.where(kinds == Kind.COR, np.arctanh(np.clip(psi, -1 + 1e-15, 1 - 1e-15)), psi)
        self.w_hat = _feasible_start(
            w_hat, kinds, lambda w: float(_deviance_at(jnp.asarray(w), data, self.kinds))
        )
        self.lower = np.where((kinds == Kind.SD) | (kinds == Kind.SIGMA), 0.0, -np.inf)
        self.dmin = float(ml.objective)
        self.kind = kinds
        # SDs, sigma and the fixed effects are profiled over the engine's theta (_constrained_min_theta)
        nt = int(np.sum(kinds < Kind.SIGMA))
        self.v_hat = np.concatenate([np.asarray(ml.theta), [ml.sigma], ml.fixef.to_numpy()])
        self.v_lower = np.concatenate([np.asarray(fit.lower), [0.0], np.full(len(ml.fixef), -np.inf)])
        self.column = tuple(int(c) for c in theta_columns(data.term_dims)) + tuple(range(nt, len(kinds)))
        # per SD entry j (a diagonal entry of theta): the entries of its row of T;
        # per correlation entry (r, c): the selections of rows c and r of T, by column
        self.rows, self.pairs = {}, {}
        kmax = max([k for _, k in data.term_dims] or [1])
        i = 0
        for rows, cols in theta_layout(data.term_dims):
            for a, (r, c) in enumerate(zip(rows, cols)):
                if r == c:
                    mask = np.zeros(len(kinds))
                    mask[i : i + len(rows)] = rows == r
                    self.rows[i + a] = mask
                else:
                    A, B = np.zeros((len(kinds), kmax)), np.zeros((len(kinds), kmax))
                    for e, (rr, cc) in enumerate(zip(rows, cols)):
                        if rr == c:
                            A[i + e, cc] = 1.0
                        if rr == r:
                            B[i + e, cc] = 1.0
                    self.pairs[i + a] = (A, B)
            i += len(rows)
        self.no_pair = (np.zeros((len(kinds), kmax)), np.zeros((len(kinds), kmax)))

    def to_value(self, j: int, w: float) -> float:
        return float(np.tanh(w)) if self.kind[j] == Kind.COR else float(w)

    def deviance(self, j: int, wj: float, start=None) -> tuple[float, np.ndarray]:
        """min D over v with parameter j at ``wj`` (a correlation: atanh of it); the minimizing v."""
        v0 = np.array(self.v_hat if start is None else start, dtype=np.float64)
        row = self.rows[j] if self.kind[j] == Kind.SD else np.zeros(len(v0))
        if self.kind[j] == Kind.SD and not np.any(v0[row > 0]):
            v0[j] = 1.0  # a zero row (an SD of 0) has no direction: start from the diagonal entry
        A, B = self.pairs.get(j, self.no_pair)
        value = float(np.tanh(wj)) if self.kind[j] == Kind.COR else float(wj)
        f, v = _constrained_min_theta(
            jnp.asarray(v0), jnp.asarray(self.v_lower), self.data, self.column, j, jnp.asarray(value),
            jnp.asarray(row), jnp.asarray(A), jnp.asarray(B),
        )
        return float(f), np.asarray(v)

    def zeta(self, j: int, wj: float, start=None) -> tuple[float, np.ndarray]:
        f, w = self.deviance(j, wj, start)
        if not np.isfinite(f):
            raise JaxLMMError(
                f"The profile of '{self.names[j]}' has a non-finite deviance at {self.to_value(j, wj):.6g}."
            )
        d = max(f - self.dmin, 0.0)
        return float(np.sign(wj - self.w_hat[j]) * np.sqrt(d)), w

    def limit(self, j: int, target: float, tol: float = 1e-9, max_eval: int = 60) -> float:
        """The value (lme4's scale) where zeta_j crosses ``target`` (!= 0)."""
        side = np.sign(target)
        x0, z0, w0 = self.w_hat[j], 0.0, None
        scale = abs(x0) if abs(x0) > 0 else 1.0
        x1 = x0 + side * 0.05 * scale
        x1 = max(x1, self.lower[j])
        z1, w1 = self.zeta(j, x1, w0)
        evals = 1
        # expand until the target is bracketed
        while side * z1 < side * target:
            if self.lower[j] == 0.0 and x1 <= 0.0:
                return 0.0
            if self.kind[j] == Kind.COR and abs(x1) >= CORR_LIMIT:
                return float(side)
            slope = (z1 - z0) / (x1 - x0) if z1 != z0 else 0.0
            step = (target - z1) / slope if slope * side > 0 else 2.0 * (x1 - x0)
            step = float(np.clip(step, -4.0 * abs(x1 - x0) - 1e-12, 4.0 * abs(x1 - x0) + 1e-12))
            x0, z0, w0 = x1, z1, w1
            x1 = max(x1 + step * 1.05, self.lower[j])
            if self.kind[j] == Kind.COR:
                x1 = float(np.clip(x1, -CORR_LIMIT, CORR_LIMIT))
            z1, w1 = self.zeta(j, x1, w0)
            evals += 1
            if evals > max_eval:
                raise JaxLMMError(f"The profile of '{self.names[j]}' did not reach zeta = {target:.3g}.")
        # Illinois regula falsi on [x0, x1]
        fa, fb = z0 - target, z1 - target
        a, b, wa, wb = x0, x1, w0, w1
        last = 0
        for _ in range(max_eval):
            c = b - fb * (b - a) / (fb - fa)
            fc, wc = self.zeta(j, c, wa if abs(c - a) < abs(c - b) else wb)
            fc -= target
            if abs(fc) < tol or abs(b - a) < tol * (1 + abs(c)):
                return self.to_value(j, c)
            if np.sign(fc) == np.sign(fb):
                b, fb, wb = c, fc, wc
                if last == 1:
                    fa *= 0.5
                last = 1
            else:
                a, fa, wa = c, fc, wc
                if last == -1:
                    fb *= 0.5
                last = -1
        return self.to_value(j, c)  # pragma: no cover

    def select(self, which) -> list[int]:
        if which is None:
            return [j for j in range(len(self.names)) if np.isfinite(self.psi_hat[j])]
        which = [which] if isinstance(which, str) else list(which)
        bad = [w for w in which if w not in self.names]
        if bad:
            raise JaxLMMError(f"No parameter '{bad[0]}'; the parameters are {self.names}.")
        return [self.names.index(w) for w in which]


def profile_limits(fit, level: float = 0.95, which=None) -> pd.DataFrame:
    """Profile-likelihood confidence limits (columns lower, upper), lme4's ``confint``."""
    z = two_sided_z(check_level(level))
    pr = Profiler(fit)
    rows = {pr.names[j]: (_safe_limit(pr, j, -z), _safe_limit(pr, j, z)) for j in pr.select(which)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["lower", "upper"])


def _safe_limit(pr: Profiler, j: int, target: float) -> float:
    """``pr.limit(j, target)``, or NaN with a :class:`ProfileWarning` naming the parameter."""
    side = "lower" if target < 0 else "upper"
    try:
        value = pr.limit(j, target)
    except (JaxLMMError, FloatingPointError, ValueError, ZeroDivisionError) as exc:
        warn(f"The {side} profile limit of '{pr.names[j]}' could not be computed ({exc}); it is NaN.",
             ProfileWarning)
        return float("nan")
    if not np.isfinite(value):
        warn(f"The {side} profile limit of '{pr.names[j]}' could not be computed; it is NaN.", ProfileWarning)
        return float("nan")
    return value


MAX_POINTS = 1000  # profile points per side of each parameter


def profile(fit, which=None, level: float = 0.99, n_points: int = 8) -> pd.DataFrame:
    """Profile traces: columns ``parameter``, ``value`` (lme4's scale), ``zeta``.

    For each parameter, ``n_points`` values on each side of the estimate,
    evenly spaced (on the SD, atanh-correlation, sigma or beta scale) up to
    the limit of the ``level`` profile interval, and the estimate (zeta = 0);
    ``n_points`` from 1 to :data:`MAX_POINTS` (each is a constrained fit).
    """
    n_points = check_positive_int(n_points, "n_points")
    if n_points > MAX_POINTS:
        raise JaxLMMError(f"n_points must be at most {MAX_POINTS} (each point is a constrained fit), not {n_points}.")
    z = two_sided_z(check_level(level))
    pr = Profiler(fit)
    out = []
    for j in pr.select(which):
        out.append((pr.names[j], pr.psi_hat[j], 0.0))
        for side in (-1.0, 1.0):
            end = pr.limit(j, side * z)
            wend = np.arctanh(np.clip(end, -1 + 1e-12, 1 - 1e-12)) if pr.kind[j] == Kind.COR else end
            start = None
            for x in np.linspace(pr.w_hat[j], wend, n_points + 1)[1:]:
                zeta, start = pr.zeta(j, x, start)
                out.append((pr.names[j], pr.to_value(j, x), zeta))
    df = pd.DataFrame(out, columns=["parameter", "value", "zeta"])
    order = pd.Categorical(df["parameter"], categories=list(dict.fromkeys(df["parameter"])), ordered=True)
    df = df.assign(_order=order).sort_values(["_order", "value"], kind="stable")
    return df.drop(columns="_order").reset_index(drop=True)
