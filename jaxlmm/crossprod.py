"""Cross-products A = [Z X y]'[Z X y], computed once per dataset, in blocks.

Layout (terms sorted largest first; term 1's block of Z'Z is block diagonal):

- ``d1``   (l1, k1, k1): the diagonal blocks of Z1'Z1, one per level;
- ``z1x``, ``z1y``: Z1'X and Z1'y per level of term 1;
- for each further term m, the nonzero k1 x km blocks of Z1'Zm in
  block-COO form (level of term 1, level of term m, block);
- ``zz``, ``zx``, ``zy``: the dense block of Zr'Zr, Zr'X, Zr'y for the
  further terms r = 2..M together (order: term, level, column);
- ``xtx``, ``xty``, ``yty``.

The only pieces that change with y are ``z1y``, ``zy``, ``xty`` and ``yty``
(``with_response`` swaps them), so a refit for a new response never touches
the rows again. Nothing of size n x q or n x n is ever formed: every block is
accumulated with ``np.bincount`` over integer group codes.

For the Schur complement of term 1 (see :mod:`jaxlmm.objective`) the
block-COO entries are flattened to scalar columns of the further terms
(``e_j1``, ``e_col``), and the pairs of entries that share a level of term 1
(``pair_a``, ``pair_b``, lower triangle) are listed once here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import register_dataclass

from .design import Design
from .memory import check_fits, estimate_fit_bytes, pair_count


@dataclass(frozen=True)
class CrossProducts:
    """The data argument of the objective: a pytree of float64 arrays.

    ``term_dims`` (static) holds (levels, columns) per sorted term.
    """

    d1: jax.Array
    z1x: jax.Array
    z1y: jax.Array
    c_j1: tuple
    c_jm: tuple
    c_val: tuple
    e_j1: jax.Array
    e_col: jax.Array
    pair_a: jax.Array
    pair_b: jax.Array
    pair_flat: jax.Array
    zz: jax.Array
    zx: jax.Array
    zy: jax.Array
    xtx: jax.Array
    xty: jax.Array
    yty: jax.Array
    n: jax.Array
    term_dims: tuple = field(metadata=dict(static=True))

    @property
    def p(self) -> int:
        return self.xtx.shape[0]

    @property
    def q_rest(self) -> int:
        return sum(l * k for l, k in self.term_dims[1:])

    @property
    def n_theta(self) -> int:
        return sum(k * (k + 1) // 2 for _, k in self.term_dims)


register_dataclass(
    CrossProducts,
    data_fields=[
        "d1", "z1x", "z1y", "c_j1", "c_jm", "c_val", "e_j1", "e_col", "pair_a", "pair_b",
        "pair_flat", "zz", "zx", "zy", "xtx", "xty", "yty", "n",
    ],
    meta_fields=["term_dims"],
)


def _block_sums(codes: np.ndarray, nseg: int, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """sum over rows r with codes[r] == s of outer(A[r], B[r]): shape (nseg, a, b)."""
    out = np.empty((nseg, A.shape[1], B.shape[1]))
    for i in range(A.shape[1]):
        for j in range(B.shape[1]):
            out[:, i, j] = np.bincount(codes, weights=A[:, i] * B[:, j], minlength=nseg)
    return out


def _pair_blocks(c1: np.ndarray, l2: int, c2: np.ndarray, A: np.ndarray, B: np.ndarray):
    """Nonzero blocks of Z_1'Z_2 for two terms: (level 1, level 2, block) in COO form."""
    key = c1 * l2 + c2
    uniq, inv = np.unique(key, return_inverse=True)
    vals = _block_sums(inv.ravel(), len(uniq), A, B)
    return uniq // l2, uniq % l2, vals


def _pairs_sharing_level(e_j1: np.ndarray, e_col: np.ndarray):
    """All pairs (a, b) of flattened entries with the same term-1 level and col[a] >= col[b]."""
    if len(e_j1) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    order = np.argsort(e_j1, kind="stable")
    sizes = np.bincount(e_j1)
    sizes = sizes[sizes > 0]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sq = sizes.astype(np.int64) ** 2
    grp = np.repeat(np.arange(len(sizes)), sq)
    local = np.arange(sq.sum()) - np.repeat(np.cumsum(sq) - sq, sq)
    s = sizes[grp]
    a = order[starts[grp] + local // s]
    b = order[starts[grp] + local % s]
    keep = e_col[a] >= e_col[b]
    return a[keep], b[keep]


def cross_products(design: Design, memory_limit: int | None = None) -> CrossProducts:
    """Accumulate all cross-products of ``design`` (see the module docstring).

    Before the pairs are listed, the memory of the fit is estimated
    (:mod:`jaxlmm.memory`) and a :class:`~jaxlmm.errors.JaxLMMError` raised
    when it exceeds ``memory_limit`` bytes (default: the device's memory).
    """
    X, y = design.X, design.y
    p = X.shape[1]
    terms = design.terms
    term_dims = tuple((t.nlevels, t.k) for t in terms)
    f64 = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
    i64 = lambda a: jnp.asarray(a, dtype=jnp.int64)  # noqa: E731
    y1 = y[:, None]
    if terms:
        t1 = terms[0]
        d1 = _block_sums(t1.codes, t1.nlevels, t1.X, t1.X)
        z1x = _block_sums(t1.codes, t1.nlevels, t1.X, X)
        z1y = _block_sums(t1.codes, t1.nlevels, t1.X, y1)[:, :, 0]
    else:
        d1, z1x, z1y = np.zeros((0, 0, 0)), np.zeros((0, 0, p)), np.zeros((0, 0))
    rest = terms[1:]
    offsets = np.concatenate([[0], np.cumsum([t.nlevels * t.k for t in rest])]).astype(np.int64)
    q2 = int(offsets[-1])
    c_j1, c_jm, c_val, e_j1, e_col = [], [], [], [], []
    zz = np.zeros((q2, q2))
    zx = np.zeros((q2, p))
    zy = np.zeros(q2)
    for m, tm in enumerate(rest):
        j1, jm, val = _pair_blocks(t1.codes, tm.nlevels, tm.codes, t1.X, tm.X)
        c_j1.append(i64(j1))
        c_jm.append(i64(jm))
        c_val.append(f64(val))
        e_j1.append(np.repeat(j1, tm.k))
        e_col.append((offsets[m] + jm[:, None] * tm.k + np.arange(tm.k)[None, :]).ravel())
        lo = offsets[m]
        zx[lo : offsets[m + 1]] = _block_sums(tm.codes, tm.nlevels, tm.X, X).reshape(-1, p)
        zy[lo : offsets[m + 1]] = _block_sums(tm.codes, tm.nlevels, tm.X, y1).reshape(-1)
        for m2 in range(m, len(rest)):
            t2 = rest[m2]
            a, b, v = _pair_blocks(tm.codes, t2.nlevels, t2.codes, tm.X, t2.X)
            rows = lo + a[:, None, None] * tm.k + np.arange(tm.k)[None, :, None]
            cols = offsets[m2] + b[:, None, None] * t2.k + np.arange(t2.k)[None, None, :]
            rows, cols = np.broadcast_arrays(rows, cols)
            zz[rows, cols] = v
            zz[cols, rows] = v
    e_j1 = np.concatenate(e_j1) if e_j1 else np.zeros(0, dtype=np.int64)
    e_col = np.concatenate(e_col) if e_col else np.zeros(0, dtype=np.int64)
    needed = estimate_fit_bytes(term_dims, p, len(e_j1), pair_count(e_j1))
    names = ", ".join(f"({t.name})" for t in terms)
    check_fits(needed, f"The fit of random-effect terms {names}", memory_limit)
    pa, pb = _pairs_sharing_level(e_j1, e_col)
    return CrossProducts(
        d1=f64(d1),
        z1x=f64(z1x),
        z1y=f64(z1y),
        c_j1=tuple(c_j1),
        c_jm=tuple(c_jm),
        c_val=tuple(c_val),
        e_j1=i64(e_j1),
        e_col=i64(e_col),
        pair_a=i64(pa),
        pair_b=i64(pb),
        pair_flat=i64(e_col[pa] * q2 + e_col[pb]),
        zz=f64(zz),
        zx=f64(zx),
        zy=f64(zy),
        xtx=f64(X.T @ X),
        xty=f64(X.T @ y),
        yty=f64(y @ y),
        n=f64(float(len(y))),
        term_dims=term_dims,
    )


def response_products(design: Design, y) -> dict:
    """The y-dependent cross-products (Z1'y, Zr'y, X'y, y'y) for a new response ``y``.

    ``y`` may carry leading batch dimensions (..., n); computed as dense
    products with the group indicator structure through segment sums.
    """
    y = jnp.asarray(y, dtype=jnp.float64)
    terms = design.terms
    out = {"xty": y @ jnp.asarray(design.X), "yty": jnp.sum(y * y, axis=-1)}

    def zty(t):
        w = y[..., :, None] * jnp.asarray(t.X)  # (..., n, k)
        w = jnp.moveaxis(w, -2, 0)
        s = jax.ops.segment_sum(w, jnp.asarray(t.codes), num_segments=t.nlevels)
        return jnp.moveaxis(s, 0, -2)  # (..., l, k)

    if terms:
        out["z1y"] = zty(terms[0])
        rest = [zty(t).reshape(y.shape[:-1] + (-1,)) for t in terms[1:]]
        out["zy"] = jnp.concatenate(rest, axis=-1) if rest else jnp.zeros(y.shape[:-1] + (0,))
    else:
        out["z1y"] = jnp.zeros(y.shape[:-1] + (0, 0))
        out["zy"] = jnp.zeros(y.shape[:-1] + (0,))
    return out


def with_response(data: CrossProducts, parts: dict) -> CrossProducts:
    """``data`` with its y-dependent cross-products replaced by ``parts``."""
    return replace(data, **parts)
