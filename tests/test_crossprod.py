"""Cross-products summed on the device in chunks of rows, and sharded across devices.

The chunked sums are checked against dense products of an explicitly built
Z (n x q) on small data, with a chunk of 7 rows so that several chunks and a
padded last chunk are summed; the criterion computed from them against lme4;
and, in a child process with four (host-platform) devices, the sharded sums
against the single-device ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from operator import attrgetter

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.linalg import block_diag

import jaxlmm
from jaxlmm import crossprod, memory
from jaxlmm.crossprod import (
    chunk_length,
    chunk_sums,
    cross_products,
    device_chunks,
    row_plan,
    row_sharding,
)
from jaxlmm.design import build_design
from jaxlmm.objective import deviance
from oracle import load_json

SMALL_CHUNK = 7
THREE_TERMS = "y ~ 1 + x + (1 | g1) + (1 + x | g2) + (1 | g3)"
FLOATS = [
    "first.blocks", "first.zx", "rest.zz", "rest.zx", "xtx",
    "response.z1y", "response.zy", "response.xty", "response.yty", "n",
]


def synthetic_frame() -> pd.DataFrame:
    """60 rows, three crossed factors (12, 5 and 3 levels) and a covariate x."""
    rng = np.random.default_rng(7)
    n = 60
    g1, g2, g3 = (rng.permutation(np.arange(n) % levels) for levels in (12, 5, 3))
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(size=12)[g1] + rng.normal(size=5)[g2] * x + rng.normal(size=3)[g3]
    y = y + rng.normal(size=n)
    return pd.DataFrame(
        {"y": y, "x": x, "g1": [f"a{i}" for i in g1], "g2": [f"b{i}" for i in g2], "g3": [f"c{i}" for i in g3]}
    )


CASES = {
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", lambda: jaxlmm.datasets.load("penicillin")),
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", lambda: jaxlmm.datasets.load("sleepstudy")),
    "pastes": ("strength ~ 1 + (1 | batch/cask)", lambda: jaxlmm.datasets.load("pastes")),
    "three_terms": (THREE_TERMS, synthetic_frame),
    "no_random_terms": ("Yield ~ 1", lambda: jaxlmm.datasets.load("dyestuff")),
}


def design_of(case):
    formula, frame = CASES[case]
    return build_design(formula, frame())


def dense_z(term, n: int) -> np.ndarray:
    """The term's block of Z, n x (levels * k), level-major as in the cross-products."""
    Z = np.zeros((n, term.nlevels * term.k))
    for c in range(term.k):
        Z[np.arange(n), term.codes * term.k + c] = term.X[:, c]
    return Z


def assert_close(actual, expected, rtol=1e-12, scale=None):
    """Equal to ``rtol`` of the largest |expected| (or of ``scale``: the size of the summands of a sum
    that cancels to near zero, such as X'(y - X beta0))."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def check_against_dense(cp, design):
    """Every float array of ``cp`` against the products of dense Z, X and y - X beta0, beta0 the
    least-squares coefficients of y on X (the response the products are of)."""
    n, X = design.n, design.X
    beta0 = np.linalg.lstsq(X, design.y, rcond=None)[0] if X.shape[1] else np.zeros(0)
    assert_close(cp.beta0, beta0)
    y = design.y - X @ np.asarray(cp.beta0)
    assert_close(cp.xtx, X.T @ X)
    assert_close(cp.response.xty, X.T @ y, scale=float(np.max(np.abs(X).T @ np.abs(design.y), initial=1.0)))
    assert_close(cp.response.yty, y @ y)
    assert float(cp.n) == n
    if not design.terms:
        assert cp.first.blocks.shape == (0, 0, 0) and cp.rest.zz.shape == (0, 0) and cp.coupling == ()
        return
    Zs = [dense_z(t, n) for t in design.terms]
    t1, Z1 = design.terms[0], Zs[0]
    l1, k1 = t1.nlevels, t1.k
    assert_close(block_diag(*np.asarray(cp.first.blocks)), Z1.T @ Z1)  # off-diagonal blocks are zero
    assert_close(cp.first.zx, (Z1.T @ X).reshape(l1, k1, -1))
    assert_close(cp.response.z1y, (Z1.T @ y).reshape(l1, k1))
    for tm, Zm, c in zip(design.terms[1:], Zs[1:], cp.coupling, strict=True):
        coo = np.zeros((l1 * k1, tm.nlevels * tm.k))
        for a, b, v in zip(np.asarray(c.level1), np.asarray(c.level_m), np.asarray(c.blocks)):
            coo[a * k1 : (a + 1) * k1, b * tm.k : (b + 1) * tm.k] = v
        assert_close(coo, Z1.T @ Zm)  # the COO blocks hold all of Z1'Zm
    Zr = np.hstack(Zs[1:]) if len(Zs) > 1 else np.zeros((n, 0))
    assert_close(cp.rest.zz, Zr.T @ Zr)
    assert_close(cp.rest.zx, Zr.T @ X)
    assert_close(cp.response.zy, Zr.T @ y)


@pytest.mark.parametrize("case", ["penicillin", "pastes", "three_terms"])
def test_schur_pairs_give_the_dense_update(case):
    """sum over pairs of <W_j, C_a C_b'> into (col a, col b) is the lower triangle of sum_j C_j' W_j C_j.

    C_j (k1 x q2) is level j's rows of Z1'Zr from a dense Z; W_j random symmetric.
    """
    design = design_of(case)
    cp = cross_products(design, control=jaxlmm.Control(chunk_rows=SMALL_CHUNK, dense_share=2.0))  # pairs only
    n, t1 = design.n, design.terms[0]
    l1, k1 = t1.nlevels, t1.k
    Z1 = dense_z(t1, n)
    Zr = np.hstack([dense_z(t, n) for t in design.terms[1:]])
    q2 = Zr.shape[1]
    C = (Z1.T @ Zr).reshape(l1, k1, q2)
    rng = np.random.default_rng(3)
    A = rng.normal(size=(l1, k1, k1))
    W = A + np.swapaxes(A, 1, 2)
    dense = np.einsum("jar,jab,jbs->rs", C, W, C)
    j, flat, prod = (np.asarray(a) for a in (cp.pairs.level, cp.pairs.target, cp.pairs.product))
    G = np.zeros(q2 * q2)
    np.add.at(G, flat, np.sum(W.reshape(l1, -1)[j] * prod, axis=1))
    G = G.reshape(q2, q2)
    assert np.all(G[np.triu_indices(q2, 1)] == 0.0)  # lower triangle only
    assert_close(np.tril(G), np.tril(dense))
    rows = flat // q2
    assert np.all(np.diff(rows) >= 0)  # listed by target row
    E = cp.n_entries
    Cflat = np.concatenate([np.swapaxes(np.asarray(c.blocks), 1, 2).reshape(-1, k1) for c in cp.coupling])
    for step in (1, 5):  # built a few pairs at a time: the same list
        level1, column = np.asarray(cp.entries.level1), np.asarray(cp.entries.column)
        again = crossprod.schur_pairs(level1, column, Cflat, q2, pair_chunk=step)
        assert E and all(np.array_equal(a, b) for a, b in zip(again, (j, flat, prod)))
    # heavy levels as dense rows (Control.dense_share), the others by their pairs: the same update
    m = np.bincount(level1, minlength=l1)  # entries per level: the fullest levels dense, or all if alike
    share = (m.max() - 0.5) / q2 if m.min() < m.max() else 0.01
    split = cross_products(design, control=jaxlmm.Control(chunk_rows=SMALL_CHUNK, dense_share=share))
    heavy = np.asarray(split.dense.level)
    lighter = m * (m + 1) // 2 * memory.pair_bytes(k1) >= 8 * k1 * q2  # a dense row never needs more memory
    assert np.array_equal(heavy, np.flatnonzero((m > share * q2) & lighter))
    assert np.array_equal(heavy, crossprod.heavy_levels(level1, q2, share, k1))
    assert len(heavy) >= 1 or case == "pastes"  # pastes: one entry per level, pairs are lighter
    assert_close(np.asarray(split.dense.C), C[heavy])
    j, flat, prod = (np.asarray(a) for a in (split.pairs.level, split.pairs.target, split.pairs.product))
    assert not np.isin(j, heavy).any()
    G = np.zeros(q2 * q2)
    np.add.at(G, flat, np.sum(W.reshape(l1, -1)[j] * prod, axis=1))
    G = G.reshape(q2, q2)
    G = G + G.T - np.diag(np.diag(G)) + np.einsum("har,hab,hbs->rs", C[heavy], W[heavy], C[heavy])
    assert_close(G, dense)


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_sums_equal_dense_products(case):
    design = design_of(case)
    assert design.n > 2 * SMALL_CHUNK and design.n % SMALL_CHUNK != 0  # several chunks, the last padded
    small = cross_products(design, control=jaxlmm.Control(chunk_rows=SMALL_CHUNK))
    check_against_dense(small, design)
    whole = cross_products(design)  # one chunk of all rows: summed on the host (numpy)
    check_against_dense(whole, design)
    for name in FLOATS:
        assert_close(attrgetter(name)(small), attrgetter(name)(whole))
    for a, b in zip(small.coupling, whole.coupling, strict=True):
        assert_close(a.blocks, b.blocks)
        np.testing.assert_array_equal(a.level1, b.level1)
        np.testing.assert_array_equal(a.level_m, b.level_m)
    for name in ["entries.level1", "entries.column", "pairs.level", "pairs.target"]:
        np.testing.assert_array_equal(attrgetter(name)(small), attrgetter(name)(whole))
    assert_close(small.pairs.product, whole.pairs.product)


@pytest.mark.parametrize("case", ["three_terms", "sleepstudy"])
def test_host_sums_equal_device_sums(case, monkeypatch):
    """Small data are summed by numpy (crossprod.HOST_PRODUCTS), larger by the compiled chunk sums: the same sums."""
    plan = row_plan(design_of(case))
    host = crossprod.accumulate(plan)
    monkeypatch.setattr(crossprod, "HOST_PRODUCTS", 0)
    device = crossprod.accumulate(plan)
    assert sorted(host) == sorted(device)
    for name in host:
        a, b = jax.tree.leaves(host[name]), jax.tree.leaves(device[name])
        assert len(a) == len(b) and all(isinstance(x, (np.ndarray, np.generic)) for x in a)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, np.asarray(y), rtol=1e-12, atol=1e-9)


def test_chunk_sums_of_all_rows_are_the_cross_products():
    design = design_of("three_terms")
    plan = row_plan(design, design.least_squares())
    sums = jax.jit(chunk_sums, static_argnames="layout")(plan.rows, layout=plan.layout)
    cp = cross_products(design)
    for name in ["first.blocks", "first.zx", "rest.zx", "xtx"] + [f"response.{r}" for r in ("z1y", "zy", "xty", "yty")]:
        assert_close(sums[name], attrgetter(name)(cp))
    for a, b in zip(sums["coupling.blocks"], cp.coupling, strict=True):
        assert_close(a, b.blocks)
    (m, m2, a, b), = plan.pair_blocks  # g2 (with a slope) against g3
    k2, k3 = design.terms[1 + m].k, design.terms[1 + m2].k
    lo2, lo3 = 0, design.terms[1].nlevels * k2
    zz = np.asarray(cp.rest.zz)
    for block, i, j in zip(np.asarray(sums["zz_pair"][0]), a, b):
        assert_close(block, zz[lo2 + i * k2 : lo2 + (i + 1) * k2, lo3 + j * k3 : lo3 + (j + 1) * k3])

OBJ = load_json("objective_at_theta.json")
OBJ_CASES = {"penicillin_crossed": "penicillin", "sleepstudy_slope": "sleepstudy", "pastes_nested": "pastes"}
_deviance = jax.jit(deviance)


def _scalar(v):
    return v[0] if isinstance(v, list) else v


@pytest.mark.parametrize("ref_case", list(OBJ_CASES))
def test_criterion_from_chunked_sums_matches_lme4(ref_case):
    cp = cross_products(design_of(OBJ_CASES[ref_case]), control=jaxlmm.Control(chunk_rows=SMALL_CHUNK))
    for pt in OBJ[ref_case]["points"]:
        value = _deviance(np.atleast_1d(np.asarray(pt["theta"], dtype=float)), cp, bool(_scalar(pt["reml"])))
        assert float(value) == pytest.approx(_scalar(pt["value"]), rel=1e-9)


def test_chunks_are_padded_with_zero_rows():
    design = design_of("penicillin")
    plan = row_plan(design)
    assert chunk_length(plan.n) == plan.n <= jaxlmm.Control().chunk_rows  # small data: one chunk, no padding
    assert chunk_length(10, 7, 4) == 8 and chunk_length(3, 7, 4) == 4 and chunk_length(100, 7) == 7
    chunks = list(device_chunks(plan, SMALL_CHUNK))
    assert len(chunks) == -(-plan.n // SMALL_CHUNK)
    last, used = chunks[-1], plan.n % SMALL_CHUNK
    for leaf in jax.tree.leaves(last):
        assert leaf.shape[0] == SMALL_CHUNK
        assert not np.any(np.asarray(leaf)[used:])
    assert row_sharding(jax.devices()[:1]) is None


CHILD = textwrap.dedent(
    """
    import json, sys
    from operator import attrgetter
    import jax, numpy as np, pandas as pd
    import jaxlmm
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxlmm.crossprod import cross_products, device_chunks, row_plan, row_sharding
    from jaxlmm.design import build_design

    assert len(jax.devices()) == 4, jax.devices()
    frames = {"penicillin": jaxlmm.datasets.load("penicillin"), "three_terms": pd.read_pickle(sys.argv[1])}
    formulas = json.loads(sys.argv[2])
    floats = json.loads(sys.argv[3])
    out = {"n_devices": len(jax.devices()), "chunks": {}, "cp": {}}
    for case, frame in frames.items():
        design = build_design(formulas[case], frame)
        sharding = row_sharding()
        chunk = next(device_chunks(row_plan(design), 7, sharding))
        out["chunks"][case] = [
            {
                "rows": leaf.shape[0],
                "named": isinstance(leaf.sharding, NamedSharding),
                "spec_rows": leaf.sharding.spec == PartitionSpec("rows"),
                "devices": sorted(s.device.id for s in leaf.addressable_shards),
                "shard_rows": [s.data.shape[0] for s in leaf.addressable_shards],
            }
            for leaf in jax.tree.leaves(chunk)
        ]
        for label, rows in [("small", 7), ("whole", None)]:
            cp = cross_products(design) if rows is None else cross_products(design, control=jaxlmm.Control(chunk_rows=rows))
            res = {k: np.asarray(attrgetter(k)(cp)).tolist() for k in floats}
            res["coupling.blocks"] = [np.asarray(c.blocks).tolist() for c in cp.coupling]
            out["cp"][f"{case}/{label}"] = res
    print(json.dumps(out))
    """
)


def test_sharded_over_four_devices_equals_one_device(tmp_path):
    frame = synthetic_frame()
    frame.to_pickle(tmp_path / "frame.pkl")
    formulas = {"penicillin": CASES["penicillin"][0], "three_terms": THREE_TERMS}
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_cpu_multi_thread_eigen=false",
        JAX_PLATFORMS="cpu",
    )
    args = [str(tmp_path / "frame.pkl"), json.dumps(formulas), json.dumps(FLOATS)]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["n_devices"] == 4
    for case, leaves in child["chunks"].items():
        assert leaves
        for leaf in leaves:  # 7 rows padded to 8, two on each device
            assert leaf["rows"] == 8 and leaf["named"] and leaf["spec_rows"]
            assert leaf["devices"] == [0, 1, 2, 3] and leaf["shard_rows"] == [2, 2, 2, 2]
    for case in formulas:
        design = design_of(case)
        one = cross_products(design)
        for label in ["small", "whole"]:
            sharded = child["cp"][f"{case}/{label}"]
            for name in FLOATS:
                assert_close(sharded[name], attrgetter(name)(one))
            assert len(sharded["coupling.blocks"]) == len(one.coupling)
            for a, b in zip(sharded["coupling.blocks"], one.coupling):
                assert_close(a, b.blocks)
        if case == "three_terms":
            check_against_dense(one, design)


SHARDED_FIT = textwrap.dedent(
    """
    import json, sys, warnings
    import jax, jax.numpy as jnp, numpy as np, pandas as pd
    import jaxlmm
    from jaxlmm.objective import deviance

    warnings.simplefilter("ignore")
    assert len(jax.devices()) == 4, jax.devices()
    out = {}
    for case, (formula, path, share) in json.loads(sys.argv[1]).items():
        model = jaxlmm.LinearMixedModel(formula, pd.read_pickle(path), control=jaxlmm.Control(dense_share=share))
        d = model.products
        theta = jnp.asarray(json.loads(sys.argv[2])[case])
        f, g = jax.value_and_grad(deviance)(theta, d, False)
        fit = model.fit(reml=False)
        out[case] = {
            "shards": [[s.data.shape[0] for s in a.addressable_shards] for a in (d.pairs.level, d.dense.C)],
            "n_pairs": d.n_pairs, "n_dense": d.n_dense, "f": float(f), "g": np.asarray(g).tolist(),
            "objective": fit.objective, "theta": fit.theta.tolist(),
        }
    print(json.dumps(out))
    """
)


def test_sharded_schur_update_and_fit_equal_one_device(tmp_path):
    """On four (forced CPU) devices the pairs and dense rows are split across them and padded; the
    criterion, its gradient and the ML fit equal one device's (1e-10)."""
    from jaxlmm import synthetic

    crossed = synthetic.crossed(600, (40, 30), seed=5, bounds=((5, 29), (1, None)))
    cases = {"three_terms": (THREE_TERMS, synthetic_frame(), None), "crossed": ("rating ~ 1 + (1 | user) + (1 | movie)", crossed, 0.5)}
    spec, thetas, ones = {}, {}, {}
    for case, (formula, frame, share) in cases.items():
        frame.to_pickle(tmp_path / f"{case}.pkl")
        spec[case] = (formula, str(tmp_path / f"{case}.pkl"), share)
        model = jaxlmm.LinearMixedModel(formula, frame, control=jaxlmm.Control(dense_share=share))
        thetas[case] = (0.5 + 0.1 * np.arange(model.theta0.size)).tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)  # three_terms: g3 at zero
            ones[case] = (model, model.fit(reml=False))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED_FIT, json.dumps(spec), json.dumps(thetas)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    for case, (model, fit) in ones.items():
        res, d = child[case], model.products
        assert res["n_pairs"] == -(-d.n_pairs // 4) * 4 and res["n_dense"] == -(-d.n_dense // 4) * 4
        assert all(len(s) == 4 and len(set(s)) == 1 for s in res["shards"])  # four equal shards each
        f, g = jax.value_and_grad(deviance)(jnp.asarray(thetas[case]), d, False)
        assert res["f"] == pytest.approx(float(f), rel=1e-12)
        np.testing.assert_allclose(res["g"], np.asarray(g), rtol=1e-9, atol=1e-9)
        assert res["objective"] == pytest.approx(fit.objective, rel=1e-10)
        np.testing.assert_allclose(res["theta"], fit.theta, rtol=1e-6)
    assert ones["crossed"][0].products.n_dense > 0 and ones["crossed"][0].products.n_pairs > 0
