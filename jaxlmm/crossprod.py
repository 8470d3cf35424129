"""Cross-products A = [Z X y]'[Z X y], computed once per dataset, in blocks.

Layout (terms sorted largest first; term 1's block of Z'Z is block diagonal):

- ``d1``   (l1, k1, k1): the diagonal blocks of Z1'Z1, one per level;
- ``z1x``, ``z1y``: Z1'X and Z1'y per level of term 1;
- for each further term m, the nonzero k1 x km blocks of Z1'Zm in
  block-COO form (level of term 1, level of term m, block);
- ``zz``, ``zx``, ``zy``: the dense block of Zr'Zr, Zr'X, Zr'y for the
  further terms r = 2..M together (order: term, level, column);
- ``xtx``, ``xty``, ``yty``.

With prior weights w (``Design.weights``) every row of [Z X y] is scaled by
sqrt(w_i) first, so that A = [Z X y]'W[Z X y]: the weighted least-squares
form of lme4's ``lmerResp`` (its ``sqrtXwt``); ``ldw`` = sum log w_i enters
the criteria (:func:`jaxlmm.objective.deviance`).

The only pieces that change with y are ``z1y``, ``zy``, ``xty`` and ``yty``
(``with_response`` swaps them), so a refit for a new response never touches
the rows again. Nothing of size n x q or n x n is ever formed.

How the rows are read. The integer work is done once on the host, in numpy
(:func:`row_plan`): the block-COO pattern of each pair of terms (``np.unique``
of the pairs of levels the rows belong to) and, per row, the segment each of
its products belongs to (the level of each term, the COO block of each
further term's pair with term 1, the COO block of each pair of further
terms). The memory check (:mod:`jaxlmm.memory`) follows, before any
floating-point work. The sums themselves are one jitted JAX function
(:func:`flat_sums`, unpacked by :func:`unpack`; both together are
:func:`chunk_sums`): the per-row outer products go into one flat vector of
block sums by a single ``jax.ops.segment_sum``, and [X y]'[X y] is a matmul.
It is applied to chunks of a fixed number of rows (``Control.chunk_rows``, or n
when fewer; the last chunk is padded with rows of zeros, which add nothing,
so that one compilation serves every chunk), and the partial sums are added
up on the device. When JAX sees several devices, each chunk's row axis is
sharded across all of them (:func:`row_sharding`: a one-axis ``Mesh`` named
``"rows"``): every device sums its share of the rows and XLA adds the
partial sums across devices (an all-reduce), so the rows are never on one
device all at once and the sums come back replicated. At the end the sums
are unpacked on the host and the dense ``zz`` filled from its nonzero
blocks.

For the Schur complement of term 1 (see :mod:`jaxlmm.objective`) the
block-COO entries are flattened to scalar columns of the further terms
(``e_j1``, ``e_col``), and the pairs of entries that share a level of term 1
(lower triangle: level ``pair_j``, target ``pair_flat`` and the outer
product ``pair_prod`` of their blocks, :func:`schur_pairs`) are listed once
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import register_dataclass

from .control import Control
from .design import Design
from .memory import check_fits, chunk_bytes, estimate_fit_bytes, pair_count, rows_bytes

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
    pair_j: jax.Array
    pair_flat: jax.Array
    pair_prod: jax.Array
    zz: jax.Array
    zx: jax.Array
    zy: jax.Array
    xtx: jax.Array
    xty: jax.Array
    yty: jax.Array
    n: jax.Array
    ldw: jax.Array  # sum_i log w_i of the prior weights (lme4's ldW; 0 without weights)
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
        "d1", "z1x", "z1y", "c_j1", "c_jm", "c_val", "e_j1", "e_col", "pair_j", "pair_flat",
        "pair_prod", "zz", "zx", "zy", "xtx", "xty", "yty", "n", "ldw",
    ],
    meta_fields=["term_dims"],
)


def schur_pairs(e_j1: np.ndarray, e_col: np.ndarray, C: np.ndarray, q2: int, pair_chunk: int = Control.pair_chunk):
    """The pairs of flattened entries that share a term-1 level, for the Schur update.

    Entry e of the off-diagonal block Z1'Zr is the k1-vector ``C[e]`` at
    term-1 level ``e_j1[e]`` and column ``e_col[e]`` of the further terms. The
    Schur complement of term 1 subtracts G = sum_j C_j' W_j C_j (W_j from
    term 1's factor, see :func:`jaxlmm.objective.factorize`), which is linear
    in W: its lower triangle is, over the pairs (a, b) with the same level j
    and col[a] >= col[b], the sum of <W_j, C[a] C[b]'> into (col[a], col[b]).

    Returns ``(j, flat, prod)``: the level of each pair (int32), its target
    ``col[a] * q2 + col[b]`` and the outer product C[a] C[b]' (pairs, k1*k1),
    which does not depend on theta. The pairs are listed by target row
    col[a] (within a row by level, then column), so that the sum into G
    writes one row of it at a time. Built ``pair_chunk`` pairs at a time
    (``Control.pair_chunk``).
    """
    E, k1 = C.shape
    flat_dtype = np.int32 if q2 * q2 < 2**31 else np.int64
    if E == 0:
        return np.zeros(0, np.int32), np.zeros(0, flat_dtype), np.zeros((0, k1 * k1))
    e_j1 = np.asarray(e_j1, dtype=np.int64)
    e_col = np.asarray(e_col, dtype=np.int64)
    by_level = np.lexsort((e_col, e_j1))  # each level's entries, by column
    sizes = np.bincount(e_j1)
    starts = np.cumsum(sizes) - sizes
    rank = np.empty(E, dtype=np.int64)  # position of an entry among its level's, by column
    rank[by_level] = np.arange(E) - starts[e_j1[by_level]]
    by_col = np.argsort(e_col, kind="stable")
    counts = rank[by_col] + 1  # entry a pairs with its level's entries of columns <= col[a]
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    j_out = np.empty(total, dtype=np.int32)
    flat_out = np.empty(total, dtype=flat_dtype)
    prod_out = np.empty((total, k1 * k1))
    lo = 0
    while lo < E:  # a run of entries a whose pairs fill at most pair_chunk slots (at least one entry)
        base = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + pair_chunk, side="right")))
        a_idx = by_col[lo:hi]
        cnt = counts[lo:hi]
        a = np.repeat(a_idx, cnt)
        local = np.arange(len(a)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        b = by_level[starts[e_j1[a]] + local]
        sl = slice(base, base + len(a))
        j_out[sl] = e_j1[a]
        flat_out[sl] = e_col[a] * q2 + e_col[b]
        prod_out[sl] = (C[a][:, :, None] * C[b][:, None, :]).reshape(len(a), k1 * k1)
        lo = hi
    return j_out, flat_out, prod_out


@dataclass(frozen=True)
class RowPlan:
    """The host side of the accumulation: per-row arrays and segment indices, and the layout.

    ``rows`` holds arrays with one entry per row: ``X`` (n, p), ``y`` (n,),
    ``z`` (each term's columns, (n, k) per term), ``g`` (each term's level),
    ``coo`` (for each further term m, the index of the row's block among the
    nonzero blocks of Z1'Zm) and ``pair`` (for each pair m < m2 of further
    terms, the index of the row's block among the nonzero blocks of Zm'Zm2).
    ``layout`` holds the numbers of segments, static for :func:`chunk_sums`:
    (levels of term 1, blocks of each Z1'Zm, levels of each further term,
    (m, m2, blocks) of each pair). ``coo`` holds the (level of term 1, level of
    term m) of each block of Z1'Zm, ``pair_blocks`` the (m, m2, level of m,
    level of m2) of the blocks of each pair of further terms.
    """

    rows: dict
    layout: tuple
    coo: tuple
    pair_blocks: tuple

    @property
    def n(self) -> int:
        return len(self.rows["y"])


def _blocks_of(c1: np.ndarray, c2: np.ndarray, l2: int):
    """The nonzero blocks of Z_1'Z_2 for two terms with codes c1, c2.

    Returns the level pairs (level of term 1, level of term 2) of the blocks,
    sorted, and for each row the index of its block.
    """
    uniq, inv = np.unique(c1.astype(np.int64) * l2 + c2, return_inverse=True)
    return uniq // l2, uniq % l2, inv.ravel()


def row_plan(design: Design) -> RowPlan:
    """The integer work of the accumulation, in numpy: block-COO patterns and per-row segments.

    The rows of X, y and the terms' columns are those of the design scaled by sqrt(w_i)
    (prior weights; unscaled without).
    """
    terms = design.terms
    coo, coo_idx, pair_blocks, pair_idx = [], [], [], []
    if terms:
        t1, rest = terms[0], terms[1:]
        for tm in rest:
            j1, jm, inv = _blocks_of(t1.codes, tm.codes, tm.nlevels)
            coo.append((j1, jm))
            coo_idx.append(inv)
        for m, tm in enumerate(rest):
            for m2 in range(m + 1, len(rest)):
                a, b, inv = _blocks_of(tm.codes, rest[m2].codes, rest[m2].nlevels)
                pair_blocks.append((m, m2, a, b))
                pair_idx.append(inv)
    layout = (
        terms[0].nlevels if terms else 0,
        tuple(len(j1) for j1, _ in coo),
        tuple(t.nlevels for t in terms[1:]),
        tuple((m, m2, len(a)) for m, m2, a, _ in pair_blocks),
    )
    size = _families(layout, tuple(t.k for t in terms), design.X.shape[1])[1]  # of the flat sums
    index = np.int32 if size < 2**31 else np.int64
    sw = design.sqrt_weights
    scaled = (lambda a: a) if sw is None else (lambda a: a * (sw if a.ndim == 1 else sw[:, None]))  # noqa: E731
    rows = {
        "X": scaled(np.asarray(design.X, dtype=np.float64)),
        "y": scaled(np.asarray(design.y_net, dtype=np.float64)),
        "z": tuple(scaled(np.asarray(t.X, dtype=np.float64)) for t in terms),
        "g": tuple(t.codes.astype(index) for t in terms),
        "coo": tuple(i.astype(index) for i in coo_idx),
        "pair": tuple(i.astype(index) for i in pair_idx),
    }
    return RowPlan(rows=rows, layout=layout, coo=tuple(coo), pair_blocks=tuple(pair_blocks))


def _families(layout: tuple, ks: tuple, p: int):
    """The families of blocks summed by :func:`flat_sums`, and the length of the flat sums.

    Each family is (rows key, index, segments, ka, kb, offset): the sums of
    A_r B_r' (ka x kb) per segment, stored from ``offset`` on. Families, in
    order: each term t against [Z_t X y] per level of t; Z1'Zm per block of
    each further term m; Zm'Zm2 per block of each pair of further terms.
    """
    l1, coo_sizes, rest_levels, pair_sizes = layout
    fams = [("g", t, lt, k, k + p + 1) for t, (lt, k) in enumerate(zip((l1, *rest_levels), ks))]
    fams += [("coo", m, nb, ks[0], ks[1 + m]) for m, nb in enumerate(coo_sizes)]
    fams += [("pair", j, nb, ks[1 + m], ks[1 + m2]) for j, (m, m2, nb) in enumerate(pair_sizes)]
    out, offset = [], 0
    for key, i, nseg, ka, kb in fams:
        out.append((key, i, nseg, ka, kb, offset))
        offset += nseg * ka * kb
    return out, offset


def flat_sums(rows: dict, layout: tuple):
    """All cross-products of one chunk of rows, as (flat group sums, [X y]'[X y]).

    ``rows`` is a dict as :attr:`RowPlan.rows`. Every sum over groups is a
    sum of per-row outer products A_r B_r' into the row's segment; all of
    them are done by a single ``jax.ops.segment_sum`` into one flat vector,
    each family of blocks at its own offset (:func:`_families`), which keeps
    the compiled program small; [X y]'[X y] is one matmul. Rows of zeros add
    nothing, so a chunk may be padded with them. With the row axis sharded
    across devices, each device sums its rows and XLA reduces the sums
    across devices.
    """
    X, y, z = rows["X"], rows["y"], rows["z"]
    c, p = X.shape
    W = jnp.concatenate([X, y[:, None]], axis=1)
    fams, size = _families(layout, tuple(Zt.shape[1] for Zt in z), p)
    values, index = [], []
    for key, i, _, ka, kb, offset in fams:
        if key == "g":
            A, B = z[i], jnp.concatenate([z[i], W], axis=1)
        elif key == "coo":
            A, B = z[0], z[1 + i]
        else:
            m, m2, _ = layout[3][i]
            A, B = z[1 + m], z[1 + m2]
        seg = rows[key][i]
        values.append((A[:, :, None] * B[:, None, :]).reshape(c, ka * kb))
        index.append(offset + seg[:, None] * (ka * kb) + jnp.arange(ka * kb, dtype=seg.dtype)[None, :])
    if values:
        flat = jax.ops.segment_sum(
            jnp.concatenate(values, axis=1).ravel(), jnp.concatenate(index, axis=1).ravel(), num_segments=size
        )
    else:
        flat = jnp.zeros(0, dtype=W.dtype)
    return flat, W.T @ W


def unpack(flat, wtw, layout: tuple, ks: tuple) -> dict:
    """The arrays of :class:`CrossProducts` in the output of :func:`flat_sums` (views, no sums).

    Returns ``xtx``, ``xty``, ``yty`` and, with random-effect terms
    (``ks``: their numbers of columns), ``d1``, ``z1x``, ``z1y``, ``c_val``
    (one per further term), ``zx``, ``zy``, and ``zz`` as its nonzero blocks:
    ``zz_diag`` (per further term, its (levels, k, k) diagonal blocks) and
    ``zz_pair`` (per pair of further terms, its COO blocks).
    """
    xp = jnp if isinstance(flat, jax.Array) else np
    p = wtw.shape[0] - 1
    out = {"xtx": wtw[:p, :p], "xty": wtw[:p, p], "yty": wtw[p, p]}
    if not ks:
        return out
    fams, _ = _families(layout, ks, p)
    blocks = {}
    for key, i, nseg, ka, kb, offset in fams:
        blocks.setdefault(key, []).append(flat[offset : offset + nseg * ka * kb].reshape(nseg, ka, kb))
    per_term = [(s[:, :, : s.shape[1]], s[:, :, s.shape[1] : -1], s[:, :, -1]) for s in blocks["g"]]
    out["d1"], out["z1x"], out["z1y"] = per_term[0]
    rest = per_term[1:]
    out["c_val"] = tuple(blocks.get("coo", ()))
    out["zx"] = xp.concatenate([zx.reshape(-1, p) for _, zx, _ in rest]) if rest else xp.zeros((0, p))
    out["zy"] = xp.concatenate([zy.reshape(-1) for _, _, zy in rest]) if rest else xp.zeros(0)
    out["zz_diag"] = tuple(diag for diag, _, _ in rest)
    out["zz_pair"] = tuple(blocks.get("pair", ()))
    return out


def chunk_sums(rows: dict, layout: tuple) -> dict:
    """The partial sums of every float array of :class:`CrossProducts` over one chunk of rows.

    :func:`flat_sums` and :func:`unpack` together; see there for the arrays.
    """
    ks = tuple(Zt.shape[1] for Zt in rows["z"])
    return unpack(*flat_sums(rows, layout), layout, ks)


def _add_chunk(acc: tuple, rows: dict, layout: tuple) -> tuple:
    """The running sums ``acc`` (flat sums, [X y]'[X y]) plus those of one chunk of rows."""
    flat, wtw = flat_sums(rows, layout)
    return acc[0] + flat, acc[1] + wtw


@lru_cache(maxsize=None)
def _accumulator(replicated: NamedSharding | None):
    """``_add_chunk`` jitted, once per output sharding; the accumulator is donated."""
    kw = {} if replicated is None else {"out_shardings": replicated}
    return jax.jit(_add_chunk, static_argnames=("layout",), donate_argnums=(0,), **kw)


def row_sharding(devices=None) -> NamedSharding | None:
    """The sharding of a chunk's row axis across ``devices`` (default: all of JAX's).

    ``None`` for a single device; otherwise a ``NamedSharding`` over a one-axis
    mesh ``("rows",)`` that splits axis 0 of every array of a chunk (rows of
    data here; replicates in :mod:`jaxlmm.bootstrap`).
    """
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) < 2:
        return None
    return NamedSharding(Mesh(np.asarray(devices), ("rows",)), PartitionSpec("rows"))


def chunk_length(n: int, chunk_rows: int | None = None, n_devices: int = 1) -> int:
    """Rows per chunk: ``chunk_rows`` (default ``Control.chunk_rows``), or n if fewer.

    Rounded up to a multiple of ``n_devices``, so that a chunk splits evenly.
    """
    c = max(1, min(int(Control.chunk_rows if chunk_rows is None else chunk_rows), n))
    return -(-c // n_devices) * n_devices


def _padded(a: np.ndarray, length: int) -> np.ndarray:
    if len(a) == length:
        return a
    out = np.zeros((length,) + a.shape[1:], dtype=a.dtype)
    out[: len(a)] = a
    return out


def device_chunks(plan: RowPlan, chunk_rows: int | None = None, sharding: NamedSharding | None = None):
    """The rows of ``plan`` in chunks of :func:`chunk_length` rows, placed on the device(s).

    The last chunk is padded with rows of zeros (term columns, X and y zero,
    segment 0). With a ``sharding`` (:func:`row_sharding`), every array of a
    chunk is split along its rows across the devices of the mesh.
    """
    n_devices = 1 if sharding is None else sharding.mesh.size
    c = chunk_length(plan.n, chunk_rows, n_devices)
    for start in range(0, plan.n, c):
        chunk = jax.tree.map(lambda a: _padded(a[start : start + c], c), plan.rows)
        yield jax.device_put(chunk, sharding)


def accumulate(plan: RowPlan, chunk_rows: int | None = None, devices=None) -> dict:
    """:func:`chunk_sums` added up over all chunks of rows on the device(s); numpy arrays back.

    The flat sums of :func:`flat_sums` are accumulated on the device(s) and
    unpacked on the host at the end.

    ``devices`` defaults to all of JAX's devices; with more than one, the
    rows of each chunk are sharded across them (:func:`row_sharding`).
    """
    sharding = row_sharding(devices)
    replicated = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())
    step = _accumulator(replicated)
    ks = tuple(Zt.shape[1] for Zt in plan.rows["z"])
    p1 = plan.rows["X"].shape[1] + 1
    acc = (np.zeros(_families(plan.layout, ks, p1 - 1)[1]), np.zeros((p1, p1)))
    acc = jax.device_put(acc, replicated)
    for rows in device_chunks(plan, chunk_rows, sharding):
        acc = step(acc, rows, layout=plan.layout)
    return unpack(*jax.device_get(acc), plan.layout, ks)


def _symmetric(blocks: np.ndarray) -> np.ndarray:
    """(B + B') / 2 per block: exact for sums that are symmetric already, as on the CPU."""
    return (blocks + np.swapaxes(blocks, -1, -2)) / 2


def _dense_zz(plan: RowPlan, sums: dict, rest, offsets: np.ndarray) -> np.ndarray:
    """The dense Zr'Zr of the further terms, filled (both triangles) from its nonzero blocks."""
    q2 = int(offsets[-1])
    zz = np.zeros((q2, q2))
    if not rest:
        return zz
    blocks = [
        (m, m, np.arange(t.nlevels), np.arange(t.nlevels), _symmetric(v))
        for m, (t, v) in enumerate(zip(rest, sums["zz_diag"]))
    ]
    blocks += [(m, m2, a, b, v) for (m, m2, a, b), v in zip(plan.pair_blocks, sums["zz_pair"])]
    for m, m2, a, b, v in blocks:
        k, k2 = rest[m].k, rest[m2].k
        rows = offsets[m] + a[:, None, None] * k + np.arange(k)[None, :, None]
        cols = offsets[m2] + b[:, None, None] * k2 + np.arange(k2)[None, None, :]
        rows, cols = np.broadcast_arrays(rows, cols)
        zz[rows, cols] = v
        zz[cols, rows] = v
    return zz


def cross_products(design: Design, memory_limit: int | None = None, control: Control | None = None) -> CrossProducts:
    """Accumulate all cross-products of ``design`` (see the module docstring).

    The block-COO pattern and the per-row segments are found on the host
    (:func:`row_plan`); then the memory of the fit is estimated
    (:mod:`jaxlmm.memory`) and a :class:`~jaxlmm.errors.JaxLMMError` raised
    when it exceeds ``memory_limit`` bytes (default: the device's memory);
    only then are the rows summed on the device(s), ``control.chunk_rows`` at a
    time (see :func:`accumulate`), and the Schur pairs built ``control.pair_chunk``
    at a time.
    """
    control = Control() if control is None else control
    chunk_rows = control.chunk_rows
    p = design.X.shape[1]
    terms = design.terms
    term_dims = tuple((t.nlevels, t.k) for t in terms)
    f64 = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
    i64 = lambda a: jnp.asarray(a, dtype=jnp.int64)  # noqa: E731
    plan = row_plan(design)
    rest = terms[1:]
    offsets = np.concatenate([[0], np.cumsum([t.nlevels * t.k for t in rest])]).astype(np.int64)
    q2 = int(offsets[-1])
    e_j1 = [np.repeat(j1, tm.k) for (j1, _), tm in zip(plan.coo, rest)]
    e_col = [
        (offsets[m] + jm[:, None] * tm.k + np.arange(tm.k)[None, :]).ravel()
        for m, ((_, jm), tm) in enumerate(zip(plan.coo, rest))
    ]
    e_j1 = np.concatenate(e_j1) if e_j1 else np.zeros(0, dtype=np.int64)
    e_col = np.concatenate(e_col) if e_col else np.zeros(0, dtype=np.int64)
    ks = tuple(t.k for t in terms)
    per_row = sum(ka * kb for _, _, _, ka, kb, _ in _families(plan.layout, ks, p)[0])
    chunk = chunk_bytes(chunk_length(design.n, chunk_rows), per_row, p + 1 + sum(ks) + 2 * len(terms))
    needed = estimate_fit_bytes(term_dims, p, len(e_j1), pair_count(e_j1), pair_chunk=control.pair_chunk) + chunk
    needed += rows_bytes(design.n, p + 1 + sum(ks))
    names = ", ".join(f"({t.name})" for t in terms)
    check_fits(needed, f"The fit of random-effect terms {names}", memory_limit)
    sums = accumulate(plan, chunk_rows)
    if terms:
        d1, z1x, z1y = _symmetric(sums["d1"]), sums["z1x"], sums["z1y"]
        zx, zy = sums["zx"], sums["zy"]
    else:
        d1, z1x, z1y = np.zeros((0, 0, 0)), np.zeros((0, 0, p)), np.zeros((0, 0))
        zx, zy = np.zeros((0, p)), np.zeros(0)
    k1 = terms[0].k if terms else 0
    C = [np.swapaxes(v, 1, 2).reshape(-1, k1) for v in sums.get("c_val", ())]  # per entry, as e_col
    C = np.concatenate(C) if C else np.zeros((0, k1))
    pair_j, pair_flat, pair_prod = schur_pairs(e_j1, e_col, C, q2, control.pair_chunk)
    return CrossProducts(
        d1=f64(d1),
        z1x=f64(z1x),
        z1y=f64(z1y),
        c_j1=tuple(i64(j1) for j1, _ in plan.coo),
        c_jm=tuple(i64(jm) for _, jm in plan.coo),
        c_val=tuple(f64(v) for v in sums.get("c_val", ())),
        e_j1=i64(e_j1),
        e_col=i64(e_col),
        pair_j=jnp.asarray(pair_j),
        pair_flat=jnp.asarray(pair_flat),
        pair_prod=f64(pair_prod),
        zz=f64(_dense_zz(plan, sums, rest, offsets)),
        zx=f64(zx),
        zy=f64(zy),
        xtx=f64(sums["xtx"]),
        xty=f64(sums["xty"]),
        yty=f64(sums["yty"]),
        n=f64(float(design.n)),
        ldw=f64(design.log_det_weights),
        term_dims=term_dims,
    )


def response_products(design: Design, y) -> dict:
    """The y-dependent cross-products (Z1'Wy, Zr'Wy, X'Wy, y'Wy) for a new response ``y``.

    ``y`` may carry leading batch dimensions (..., n); computed as dense
    products with the group indicator structure through segment sums.
    ``design`` is a :class:`~jaxlmm.design.Design` or anything with its
    ``X``, ``terms`` and ``weights`` (W = diag(weights), the identity when None).
    """
    y = jnp.asarray(y, dtype=jnp.float64)
    terms = design.terms
    weights = getattr(design, "weights", None)
    wy = y if weights is None else y * jnp.asarray(weights, dtype=jnp.float64)
    out = {"xty": wy @ jnp.asarray(design.X), "yty": jnp.sum(wy * y, axis=-1)}

    def zty(t):
        w = wy[..., :, None] * jnp.asarray(t.X)  # (..., n, k)
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
