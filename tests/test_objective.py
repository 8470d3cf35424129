"""The profiled criterion (jaxlmm.objective): lme4's values at fixed theta, the dense textbook formula,
finite-difference derivatives, closed forms without random effects, invariances on random data, and
the conditional modes of every reference fit.

Invariances (checked with hypothesis on random data of one shape, see
random_data.py): for y = X beta + Z b + e (Bates et al., JSS 2015, eqs. 2-3),
at any fixed theta,

- y -> y + c (with an intercept in X): the GLS residuals do not change, so
  neither does the profiled criterion. The cross-products [Z X y]'[Z X y]
  lose about (c / sd(y))^2 eps of relative precision to cancellation (as
  lme4's), so c is drawn within a hundred standard deviations of y;
- y -> c y: r^2 -> c^2 r^2, so the REML criterion gains 2 (n - p) log|c| and
  the ML deviance 2 n log|c|;
- permuting the rows, renaming the levels of a grouping factor or reordering
  its categories permutes Z's rows or columns: the criterion is unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlmm
from jaxlmm.objective import deviance
from models import SMALL, get_fit, get_model
from oracle import CASES, FIT_PARAMS, SLOPE, dense_criterion, load_fit_reference, load_json
from random_data import G, LABELS, N, SETTINGS, close, deviances, factors, make_data, seeds, shifts, thetas


OBJ = load_json("objective_at_theta.json")


DATASET = {
    "sleepstudy_slope": "sleepstudy",
    "dyestuff": "dyestuff",
    "penicillin_crossed": "penicillin",
    "pastes_nested": "pastes",
}


POINTS = [(case, i) for case in OBJ for i in range(len(OBJ[case]["points"]))]


def _formula(case):
    f = OBJ[case]["formula"]
    return f[0] if isinstance(f, list) else f


def _scalar(v):
    return v[0] if isinstance(v, list) else v


@pytest.mark.parametrize("case,i", POINTS, ids=[f"{c}-{i}" for c, i in POINTS])
def test_objective_at_theta_matches_lme4(case, i):
    """lme4's profiled criterion at given theta, boundary points included."""
    pt = OBJ[case]["points"][i]
    model = get_model(_formula(case), DATASET[case])
    value = model.deviance(np.atleast_1d(pt["theta"]), reml=bool(_scalar(pt["reml"])))
    assert value == pytest.approx(_scalar(pt["value"]), rel=1e-9)


def _random_theta(model, rng):
    th = rng.uniform(0.1, 2.0, size=model.theta0.size)
    off = ~np.isfinite(model.lower)
    th[off] = rng.uniform(-0.8, 0.8, size=off.sum())
    return th


@pytest.mark.parametrize("formula,dataset", SMALL)
def test_fast_objective_equals_dense_textbook(formula, dataset):
    model = get_model(formula, dataset)
    rng = np.random.default_rng(1)
    for _ in range(3):
        th = _random_theta(model, rng)
        for reml in (True, False):
            fast = model.deviance(th, reml=reml)
            assert fast == pytest.approx(dense_criterion(model, th, reml), rel=1e-8)


@pytest.mark.parametrize("formula,dataset", SMALL[:3])
def test_gradient_and_hessian_match_finite_differences(formula, dataset):
    model = get_model(formula, dataset)
    f = jax.jit(deviance)
    g = jax.jit(jax.grad(deviance))
    H = jax.jit(jax.hessian(deviance))
    th = _random_theta(model, np.random.default_rng(7))
    h = 1e-5
    for reml in (True, False):
        ga = np.asarray(g(jnp.asarray(th), model.products, reml))
        Ha = np.asarray(H(jnp.asarray(th), model.products, reml))
        gfd, Hfd = np.zeros_like(th), np.zeros((th.size, th.size))
        for i in range(th.size):
            e = np.zeros_like(th)
            e[i] = h
            gfd[i] = (float(f(th + e, model.products, reml)) - float(f(th - e, model.products, reml))) / (2 * h)
            Hfd[:, i] = (
                np.asarray(g(jnp.asarray(th + e), model.products, reml)) - np.asarray(g(jnp.asarray(th - e), model.products, reml))
            ) / (2 * h)
        np.testing.assert_allclose(ga, gfd, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(Ha, Hfd, rtol=1e-5, atol=1e-4)


def _wide_terms_frame() -> pd.DataFrame:
    """120 rows: g (12 levels) crossed with h (5 levels), covariates x1..x4, a response with slopes."""
    rng = np.random.default_rng(11)
    n = 120
    g, h = rng.permutation(np.arange(n) % 12), rng.permutation(np.arange(n) % 5)
    x = rng.normal(size=(n, 4))
    b = rng.normal(size=(12, 5))
    y = 1.0 + x[:, 0] + b[g, 0] + np.sum(b[g, 1:] * x, axis=1) + rng.normal(size=5)[h] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "x4": x[:, 3],
                         "g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h]})


@pytest.mark.parametrize("formula", [
    "y ~ x1 + x2 + (1 + x1 + x2 | g)",  # k1 = 3, unrolled, no further terms
    "y ~ x1 + (1 + x1 + x2 + x3 | g) + (1 + x1 | h)",  # k1 = 4, unrolled, with a further term
    "y ~ x1 + (1 + x1 + x2 + x3 + x4 | g)",  # k1 = 5: LAPACK's factor
])
def test_wide_first_terms_equal_dense_textbook_and_finite_differences(formula):
    """The first term's factor written entry by entry (k1 <= 4) or by LAPACK (k1 = 5) against the
    dense textbook criterion at random theta, and its gradient against central differences."""
    model = jaxlmm.LinearMixedModel(formula, _wide_terms_frame())
    assert model.products.term_dims[0] == (12, len(formula.split("|")[0].split("(")[1].split("+")))
    rng = np.random.default_rng(2)
    g = jax.jit(jax.grad(deviance))
    for _ in range(2):
        th = _random_theta(model, rng)
        for reml in (True, False):
            assert model.deviance(th, reml=reml) == pytest.approx(dense_criterion(model, th, reml), rel=1e-9)
    h = 1e-5
    fd = np.array([(model.deviance(th + h * e, reml=True) - model.deviance(th - h * e, reml=True)) / (2 * h)
                   for e in np.eye(th.size)])
    np.testing.assert_allclose(np.asarray(g(jnp.asarray(th), model.products, True)), fd, rtol=1e-5, atol=1e-5)


def test_deviance_is_jittable_and_vmappable():
    """The objective is a pure function of (theta, data): vmap over theta equals a loop."""
    model = get_model(*SMALL[0])
    thetas = np.stack([_random_theta(model, np.random.default_rng(s)) for s in range(4)])
    batched = jax.vmap(deviance, in_axes=(0, None, None))(jnp.asarray(thetas), model.products, True)
    looped = [model.deviance(t) for t in thetas]
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-12)


def test_no_random_effect_closed_forms():
    y = jaxlmm.datasets.load("dyestuff").Yield.to_numpy(dtype=float)
    n, rss = len(y), np.sum((y - y.mean()) ** 2)
    ml = get_fit("Yield ~ 1", "dyestuff", reml=False)
    assert ml.objective == pytest.approx(n * (1 + np.log(2 * np.pi * rss / n)), rel=1e-12)
    reml = get_fit("Yield ~ 1", "dyestuff")
    closed = (n - 1) * (1 + np.log(2 * np.pi * rss / (n - 1))) + np.log(n)  # log|X'X| = log n
    assert reml.objective == pytest.approx(closed, rel=1e-12)
    assert reml.sigma == pytest.approx(np.sqrt(rss / (n - 1)), rel=1e-12)
    assert reml.npar == 2 and ml.converged


# ---- invariances on random data ------------------------------------------------------------


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, shifts)
def test_shifting_the_response_leaves_the_criterion_unchanged(seed, theta, c):
    d = make_data(seed)
    close(deviances(d.assign(y=d.y + c * d.y.std()), theta), deviances(d, theta))


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, factors)
def test_scaling_the_response_shifts_the_criterion_by_log_c(seed, theta, c):
    d = make_data(seed)
    reml, ml = deviances(d, theta)
    reml_c, ml_c = deviances(d.assign(y=d.y * c), theta)
    shift = 2 * np.log(abs(c))
    close([reml_c, ml_c], [reml + (N - 2) * shift, ml + N * shift])


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, st.permutations(range(N)))
def test_permuting_rows_leaves_the_criterion_unchanged(seed, theta, perm):
    d = make_data(seed)
    close(deviances(d.iloc[list(perm)], theta), deviances(d, theta))


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, st.permutations(range(G)), st.sampled_from(["", "grp_", "9", "Z"]))
def test_relabelling_levels_leaves_the_criterion_unchanged(seed, theta, perm, prefix):
    """New names in a new (sorted) order: a plain text column, R's factor() rule."""
    d = make_data(seed)
    names = {old: f"{prefix}{LABELS[j]}" for old, j in zip(LABELS, perm)}
    relabelled = d.assign(g=d.g.astype(str).map(names))
    close(deviances(relabelled, theta), deviances(d, theta))


@settings(max_examples=200, **SETTINGS)
@given(seeds, thetas, st.permutations(LABELS))
def test_reordering_categories_leaves_the_criterion_unchanged(seed, theta, order):
    d = make_data(seed)
    reordered = d.assign(g=d.g.cat.reorder_categories(list(order)))
    close(deviances(reordered, theta), deviances(d, theta))


# ---- conditional modes and the penalized residual sum of squares of every reference fit -------


RANEF_PARAMS = [(c, k) for c, k in FIT_PARAMS if "ranef" in load_fit_reference(c)[k]]


@pytest.mark.parametrize("case,crit", RANEF_PARAMS, ids=[f"{c}-{k}" for c, k in RANEF_PARAMS])
def test_ranef(case, crit):
    ref_all = load_fit_reference(case)
    fit = get_fit(ref_all["formula"], CASES[case], reml=(crit == "REML"))
    re = ref_all[crit]["ranef"]
    ref = pd.DataFrame(
        {"group": re["grpvar"], "term": re["term"], "level": re["grp"], "value": re["condval"], "sd": re["condsd"]}
    )
    ours = fit.ranef
    merged = ref.merge(ours, on=["group", "term", "level"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    scale = max(1.0, float(np.abs(ref.value).max()))
    np.testing.assert_allclose(merged.value_y, merged.value_x, atol=1e-3 * scale)
    np.testing.assert_allclose(merged.cond_sd, merged.sd, atol=1e-3 * max(1.0, float(ref.sd.max())), rtol=1e-3)


@pytest.mark.parametrize("case,crit", RANEF_PARAMS, ids=[f"{c}-{k}" for c, k in RANEF_PARAMS])
def test_coef_is_lme4s_fixed_effects_plus_conditional_modes(case, crit):
    ref_all = load_fit_reference(case)
    fit = get_fit(ref_all["formula"], CASES[case], reml=(crit == "REML"))
    r = ref_all[crit]
    beta = dict(zip(np.atleast_1d(r["beta_names"]), np.atleast_1d(r["beta"])))
    re = pd.DataFrame(r["ranef"])
    coef = fit.coef()
    assert list(coef) == list(dict.fromkeys(re["grpvar"]))
    for group, rows in re.groupby("grpvar"):
        table = coef[group]
        assert list(table.columns) == list(beta) and table.index.name == group
        assert sorted(table.index) == sorted(set(rows["grp"]))
        expected = rows.assign(coef=[beta[t] + v for t, v in zip(rows["term"], rows["condval"])])
        got = [table.loc[lev, term] for lev, term in zip(rows["grp"], rows["term"])]
        scale = max(1.0, float(np.abs(rows["condval"]).max()))
        np.testing.assert_allclose(got, expected["coef"], rtol=1e-6, atol=1e-3 * scale)
        untouched = [c for c in table.columns if c not in set(rows["term"])]  # fixed effects alone
        for c in untouched:
            np.testing.assert_array_equal(table[c], fit.fixef[c])
            assert fit.fixef[c] == pytest.approx(beta[c], rel=1e-5)


@pytest.mark.parametrize("formula,dataset", [(SLOPE, "sleepstudy"), ("diameter ~ 1 + (1 | plate) + (1 | sample)",
                                                                 "penicillin")])
def test_condvar_is_the_dense_conditional_covariance(formula, dataset):
    """fit.condvar (lme4's postVar): the level blocks of sigma^2 Lambda (Lambda'Z'Z Lambda + I)^{-1} Lambda'
    from a dense Z; their diagonals are ranef's cond_sd squared."""
    from jaxlmm.theta import relative_factors

    fit = get_fit(formula, dataset)
    d = fit.design
    cols, lams = [], []
    for t, T in zip(d.terms, relative_factors(jnp.asarray(fit.theta), fit.products.term_dims)):
        Zt = np.zeros((d.n, t.nlevels * t.k))
        for c in range(t.k):
            Zt[np.arange(d.n), t.codes * t.k + c] = t.X[:, c]
        cols.append(Zt)
        lams.append(np.kron(np.eye(t.nlevels), np.asarray(T)))
    Z, q = np.hstack(cols), sum(c.shape[1] for c in cols)
    Lam = np.zeros((q, q))
    lo = 0
    for blk in lams:
        Lam[lo : lo + len(blk), lo : lo + len(blk)] = blk
        lo += len(blk)
    ZL = Z @ Lam
    M = fit.sigma**2 * Lam @ np.linalg.solve(ZL.T @ ZL + np.eye(q), Lam.T)
    lo = 0
    assert list(fit.condvar) == [f"({t.expr} | {t.name})" for t in d.terms]
    for t, cv in zip(d.terms, fit.condvar.values()):
        assert cv.shape == (t.nlevels, t.k, t.k)
        for j in range(t.nlevels):
            a = lo + j * t.k
            np.testing.assert_allclose(cv[j], M[a : a + t.k, a : a + t.k], rtol=1e-9, atol=1e-12 * M.max())
        lo += t.nlevels * t.k
        sd = fit.ranef[fit.ranef.group == t.name].cond_sd.to_numpy().reshape(t.k, t.nlevels).T
        np.testing.assert_allclose(np.sqrt(np.diagonal(cv, axis1=1, axis2=2)), sd, rtol=1e-12)


def test_coef_fills_random_only_columns_first_in_every_table():
    # lme4: coef(lmer(Reaction ~ 1 + (Days | Subject) + (1 | Days))) has columns Days, (Intercept) in
    # both tables, Days 0 where no term of the group has it
    fit = get_fit("Reaction ~ 1 + (Days | Subject) + (1 | Days)", "sleepstudy")
    coef = fit.coef()
    assert set(coef) == {"Subject", "Days"}
    for table in coef.values():
        assert list(table.columns) == ["Days", "(Intercept)"]
    np.testing.assert_array_equal(coef["Days"]["Days"], 0.0)
    re = fit.ranef.set_index(["group", "term", "level"])["value"].sort_index()
    subject = coef["Subject"]
    np.testing.assert_allclose(subject["Days"], re.loc["Subject", "Days"].loc[subject.index], rtol=1e-14)
    np.testing.assert_allclose(
        subject["(Intercept)"], fit.fixef["(Intercept)"] + re.loc["Subject", "(Intercept)"].loc[subject.index],
        rtol=1e-14,
    )


def test_penalized_rss_identity(pair):
    """r^2 = |y - X beta - Z b|^2 + |u|^2 at the estimates (PLS, JSS 2015 eq. 15).

    Checks the conditional modes of every case, InstEval included, with no
    reference values needed: sigma^2 * (n - p) (REML) or sigma^2 * n (ML).
    """
    fit, _, _ = pair
    d = fit.design
    resid = fit.residuals()
    from jaxlmm.theta import relative_factors

    Ts = relative_factors(np.asarray(fit.theta), fit.products.term_dims)
    u2 = 0.0
    for T, b in zip(Ts, fit.b):
        T = np.asarray(T)
        # b = u T' per level; T may be singular on the boundary, where b = 0
        u = np.linalg.lstsq(T, b.T, rcond=None)[0].T if np.any(b) else np.zeros_like(b)
        u2 += float((u**2).sum())
    r2 = float(resid @ resid) + u2
    denom = d.n - d.p if fit.reml else d.n
    assert r2 == pytest.approx(fit.sigma**2 * denom, rel=1e-7)


def _crossed_frame():
    """600 rows of 40 users x 30 movies (5 to 29 each) with a covariate and a 4-level third factor."""
    from jaxlmm import synthetic

    df = synthetic.crossed(600, (40, 30), seed=5, bounds=((5, 29), (1, None)))
    rng = np.random.default_rng(5)
    return df.assign(x=rng.normal(size=600), genre=pd.Categorical(rng.integers(0, 4, 600).astype(str)))


@pytest.mark.parametrize("formula", [
    "rating ~ 1 + (1 | user) + (1 | movie)",
    "rating ~ x + (x | user) + (1 | movie) + (1 | genre)",
])
def test_dense_rows_of_heavy_levels_equal_the_pairs_and_the_textbook(formula):
    """The Schur update by dense rows (Control.dense_share), for none, some or all of term 1's levels:
    the same criterion and gradient as the pairs alone (1e-10), the dense textbook criterion (1e-9),
    and a gradient matching finite differences."""
    frame = _crossed_frame()
    models = {s: jaxlmm.LinearMixedModel(formula, frame, control=jaxlmm.Control(dense_share=s))
              for s in (2.0, 0.5, 1e-9)}
    l1 = models[2.0].products.term_dims[0][0]
    n_dense = {s: m.products.n_dense for s, m in models.items()}
    assert n_dense[2.0] == 0 and 0 < n_dense[0.5] < l1 and n_dense[1e-9] == l1
    assert models[0.5].products.n_pairs < models[2.0].products.n_pairs and models[1e-9].products.n_pairs == 0
    vg = jax.jit(jax.value_and_grad(deviance), static_argnames="reml")
    split = models[0.5]
    th = _random_theta(split, np.random.default_rng(3))
    for reml in (True, False):
        ref_f, ref_g = vg(jnp.asarray(th), models[2.0].products, reml=reml)
        for s in (0.5, 1e-9):
            f, g = vg(jnp.asarray(th), models[s].products, reml=reml)
            assert float(f) == pytest.approx(float(ref_f), rel=1e-10)
            np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), rtol=1e-9, atol=1e-9)
        assert float(ref_f) == pytest.approx(dense_criterion(split, th, reml), rel=1e-9)
    if formula.endswith("(1 | movie)"):  # the fits agree too (ML), whichever update runs
        fits = [m.fit(reml=False) for m in (models[2.0], split)]
        assert fits[1].objective == pytest.approx(fits[0].objective, rel=1e-10)
        np.testing.assert_allclose(fits[1].theta, fits[0].theta, rtol=1e-6)
    h, (_, g0) = 1e-5, vg(jnp.asarray(th), split.products, reml=True)
    for i in range(th.size):
        e = np.zeros_like(th)
        e[i] = h
        fd = (float(vg(jnp.asarray(th + e), split.products, reml=True)[0])
              - float(vg(jnp.asarray(th - e), split.products, reml=True)[0])) / (2 * h)
        assert float(g0[i]) == pytest.approx(fd, rel=1e-5, abs=1e-5)
