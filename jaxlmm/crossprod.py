"""Cross-products A = [Z X y]'[Z X y], computed once per dataset, in blocks.

Layout (:class:`CrossProducts`; terms sorted largest first, term 1's block
of Z'Z is block diagonal; l1 levels and k1 columns of term 1, q2 columns of
the further terms, p of X):

- ``first`` (:class:`FirstTerm`): per level of term 1, its diagonal block
  of Z1'Z1 (``blocks``, (l1, k1, k1)) and of Z1'X (``zx``, (l1, k1, p));
- ``coupling``: for each further term m, the nonzero k1 x km blocks of
  Z1'Zm in block-COO form (:class:`Coupling`: level of term 1, level of
  term m, block);
- ``rest`` (:class:`Rest`): the dense Zr'Zr and Zr'X of the further terms
  r = 2..M together (order: term, level, column);
- ``xtx``: X'X;
- ``response`` (:class:`Response`): everything that depends on y: Z1'y,
  Zr'y, X'y and y'y, of the response less its least-squares fit on X,
  y - X beta0 (``beta0``, :meth:`~jaxlmm.design.Design.least_squares`): a response far from zero
  (a mean of 1e9 beside an SD of 1) would otherwise lose its r^2 to
  cancellation in y'y. Nothing of the criterion changes (beta is profiled
  out); :func:`jaxlmm.objective.solve` adds beta0 back to beta.

With prior weights w (``Design.weights``) every row of [Z X y] is scaled by
sqrt(w_i) first, so that A = [Z X y]'W[Z X y]: the weighted least-squares
form of lme4's ``lmerResp`` (its ``sqrtXwt``); ``ldw`` = sum log w_i enters
the criteria (:func:`jaxlmm.objective.deviance`).

The only pieces that change with y are in ``response`` (``with_response``
swaps it for that of :func:`response_products`), so a refit for a new
response never touches the rows again. Nothing of size n x q or n x n is
ever formed.

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
are unpacked on the host and the dense ``rest.zz`` filled from its nonzero
blocks.

For the Schur complement of term 1 (see :mod:`jaxlmm.objective`) the
block-COO entries are flattened to scalar columns of the further terms
(``entries``, :class:`Entries`: level of term 1, column), and the pairs of
entries that share a level of term 1 (lower triangle, :class:`Pairs`: their
level, their target in Zr'Zr and the outer product of their blocks,
:func:`schur_pairs`) are listed once here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import register_dataclass

from ._config import on_device
from .control import Control
from .design import Design
from .memory import F64, check_fits, chunk_bytes, estimate_fit_bytes, pair_bytes, pair_count, rows_bytes


@register_dataclass
@dataclass(frozen=True)
class FirstTerm:
    """Term 1's blocks, one per level j (its block of Z'Z is block diagonal).

    ``blocks`` (l1, k1, k1): the diagonal blocks Z1_j'Z1_j of Z1'Z1;
    ``zx`` (l1, k1, p): Z1_j'X.
    """

    blocks: jax.Array
    zx: jax.Array


@register_dataclass
@dataclass(frozen=True)
class Coupling:
    """The nonzero k1 x km blocks of Z1'Zm for one further term m, in block-COO form.

    Block b lies at level ``level1[b]`` of term 1 and level ``level_m[b]``
    of term m (both (B,), int64, sorted by the pair of levels); ``blocks``
    (B, k1, km) holds the blocks.
    """

    level1: jax.Array
    level_m: jax.Array
    blocks: jax.Array


@register_dataclass
@dataclass(frozen=True)
class Entries:
    """The blocks of every :class:`Coupling` flattened to scalar columns of the further terms.

    Entry e is the k1-vector of Z1'Zr at level ``level1[e]`` of term 1 and
    column ``column[e]`` of Zr (both (E,), int64), in the order of the
    terms, their blocks and each block's columns.
    """

    level1: jax.Array
    column: jax.Array


@register_dataclass
@dataclass(frozen=True)
class Pairs:
    """The pairs (a, b) of entries that share a level of term 1, for the Schur update (:func:`schur_pairs`).

    ``level`` (P,) int32: their level of term 1; ``target`` (P,) int32 or
    int64: column[a] * q2 + column[b], their place in the lower triangle of
    the flat (q2 x q2) Zr'Zr; ``product`` (P, k1*k1): the outer product
    C[a] C[b]' of their k1-vectors, flattened.
    """

    level: jax.Array
    target: jax.Array
    product: jax.Array


@register_dataclass
@dataclass(frozen=True)
class Dense:
    """Term 1's heavy levels, whose share of the Schur update is one dense product (:func:`heavy_levels`).

    ``level`` (H,) int64: the levels; ``C`` (H, k1, q2): their rows of Z1'Zr, dense (zeros where
    a level has no entry). Their entries have no :class:`Pairs`.
    """

    level: jax.Array
    C: jax.Array


@register_dataclass
@dataclass(frozen=True)
class Rest:
    """The further terms r = 2..M together, dense (columns ordered by term, level, column).

    ``zz`` (q2, q2): Zr'Zr, both triangles; ``zx`` (q2, p): Zr'X.
    """

    zz: jax.Array
    zx: jax.Array


@register_dataclass
@dataclass(frozen=True)
class Response:
    """The cross-products that depend on y (with prior weights: of W y); leading axes (...) batch responses.

    ``z1y`` (..., l1, k1): Z1'y per level of term 1; ``zy`` (..., q2): Zr'y;
    ``xty`` (..., p): X'y; ``yty`` (...): y'y.
    """

    z1y: jax.Array
    zy: jax.Array
    xty: jax.Array
    yty: jax.Array

    def scaled(self, c) -> Response:
        """The cross-products of the response c y."""
        return Response(z1y=self.z1y * c, zy=self.zy * c, xty=self.xty * c, yty=self.yty * (c * c))


@register_dataclass
@dataclass(frozen=True)
class CrossProducts:
    """The data argument of the objective: a pytree of the cross-products of [Z X y] (float64) and their indices.

    ``first``, ``coupling`` (a tuple: one :class:`Coupling` per further
    term), ``entries``, ``pairs``, ``dense``, ``rest`` and ``response`` as in the
    module docstring; ``xtx`` (p, p): X'X; ``n`` (): the number of rows;
    ``ldw`` (): sum_i log w_i of the prior weights (lme4's ldW; 0 without
    weights); ``beta0`` (p,): the coefficients whose fit X beta0 ``response``
    is of y less. ``term_dims`` (static) holds (levels, columns) per sorted term.
    """

    first: FirstTerm
    coupling: tuple
    entries: Entries
    pairs: Pairs
    dense: Dense
    rest: Rest
    xtx: jax.Array
    response: Response
    n: jax.Array
    ldw: jax.Array
    beta0: jax.Array
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

    @property
    def n_entries(self) -> int:
        """The number of flattened entries of Z1'Zr (:class:`Entries`)."""
        return int(np.shape(self.entries.level1)[0])

    @property
    def n_pairs(self) -> int:
        """The number of Schur pairs (:class:`Pairs`)."""
        return int(np.shape(self.pairs.level)[0])

    @property
    def n_dense(self) -> int:
        """The number of heavy levels of term 1 (:class:`Dense`)."""
        return int(np.shape(self.dense.level)[0])

    def sharded(self, devices=None) -> CrossProducts:
        """These cross-products with the Schur update's pairs and dense rows split across ``devices``
        (default: all of JAX's; unchanged on one), everything else replicated on them.

        The pairs and rows are padded to a multiple of the device count with pairs and rows of
        zeros, which add nothing. The compiled criterion then runs each device's share of the
        update and XLA sums the shares (an all-reduce); the rest is computed on every device.
        """
        split = row_sharding(devices)
        if split is None:
            return self
        n = split.mesh.size
        pad = lambda a: _padded(np.asarray(a), -(-len(a) // n) * n)  # noqa: E731
        pairs = Pairs(level=pad(self.pairs.level), target=pad(self.pairs.target), product=pad(self.pairs.product))
        data = replace(self, pairs=pairs, dense=Dense(level=pad(self.dense.level), C=pad(self.dense.C)))
        whole = NamedSharding(split.mesh, PartitionSpec())
        placement = replace(
            jax.tree.map(lambda _: whole, data), pairs=Pairs(split, split, split), dense=Dense(split, split)
        )
        return jax.device_put(data, placement)


def heavy_levels(level1: np.ndarray, q2: int, share: float, k1: int = 1) -> np.ndarray:
    """The levels of term 1 with entries in more than ``share`` of the further terms' q2 columns,
    and whose dense row takes no more memory than their pairs.

    A level with m entries adds m (m + 1) / 2 pairs to the Schur update, each
    gathered, multiplied and scattered at every evaluation of the criterion;
    as a dense row it adds k1 q2^2 multiply-adds to one matrix product. From
    a share of q2 on the product is cheaper (``Control.dense_share``). The
    row's k1 q2 numbers must also not outweigh the pairs' bytes
    (:func:`jaxlmm.memory.pair_bytes`), so that no model needs more memory
    with dense rows than without (many levels of a few entries each against
    a small q2, with a small share).
    """
    if len(level1) == 0 or q2 == 0:
        return np.zeros(0, dtype=np.int64)
    m = np.bincount(np.asarray(level1, dtype=np.int64))
    lighter = m * (m + 1) // 2 * pair_bytes(k1) >= F64 * k1 * q2
    return np.flatnonzero((m > share * q2) & lighter).astype(np.int64)


def light_entries(level1: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """Which flattened entries belong to a light level (not among the sorted ``heavy`` levels): those
    the Schur update takes by pairs."""
    is_heavy = np.zeros(int(np.max(level1, initial=-1)) + 1, dtype=bool)
    is_heavy[heavy] = True
    return ~is_heavy[level1]


def schur_pairs(level1: np.ndarray, column: np.ndarray, C: np.ndarray, q2: int, pair_chunk: int = Control.pair_chunk):
    """The pairs of flattened entries that share a term-1 level, for the Schur update.

    Entry e of the off-diagonal block Z1'Zr is the k1-vector ``C[e]`` at
    term-1 level ``level1[e]`` and column ``column[e]`` of the further terms
    (:class:`Entries`). The Schur complement of term 1 subtracts
    G = sum_j C_j' W_j C_j (W_j from term 1's factor, see
    :func:`jaxlmm.objective.factorize`), which is linear in W: its lower
    triangle is, over the pairs (a, b) with the same level j and
    column[a] >= column[b], the sum of <W_j, C[a] C[b]'> into
    (column[a], column[b]).

    Returns ``(level, target, product)``, the arrays of :class:`Pairs`: the
    level of each pair (int32), its target ``column[a] * q2 + column[b]``
    and the outer product C[a] C[b]' (pairs, k1*k1), which does not depend
    on theta. The pairs are listed by target row column[a] (within a row by
    level, then column), so that the sum into G writes one row of it at a
    time. Built ``pair_chunk`` pairs at a time (``Control.pair_chunk``).
    """
    E, k1 = C.shape
    flat_dtype = np.int32 if q2 * q2 < 2**31 else np.int64
    if E == 0:
        return np.zeros(0, np.int32), np.zeros(0, flat_dtype), np.zeros((0, k1 * k1))
    idx = np.int32 if E < 2**31 else np.int64
    level1 = np.asarray(level1, dtype=np.int64)
    column = np.asarray(column, dtype=np.int64)
    by_level = np.lexsort((column, level1))  # each level's entries, by column
    sizes = np.bincount(level1)
    starts = np.cumsum(sizes) - sizes
    rank = np.empty(E, dtype=np.int64)  # position of an entry among its level's, by column
    rank[by_level] = np.arange(E) - starts[level1[by_level]]
    by_col = np.argsort(column, kind="stable")
    counts = rank[by_col] + 1  # entry a pairs with its level's entries of columns <= column[a]
    ends = np.cumsum(counts)
    # Entry a's side in the order of the pairs (by column: repeated, read in sequence) and entry
    # b's side in level order (b runs over its level's first entries: one gather each), in the
    # narrowest integers that hold them.
    lev_a = level1[by_col].astype(np.int32)
    row_a = (column[by_col] * q2).astype(flat_dtype)
    first_b = starts[level1[by_col]].astype(idx)
    C_a = C[by_col]
    col_b = column[by_level].astype(flat_dtype)
    C_b = C[by_level]
    total = int(ends[-1])
    j_out = np.empty(total, dtype=np.int32)
    flat_out = np.empty(total, dtype=flat_dtype)
    prod_out = np.empty((total, k1 * k1))
    lo = 0
    while lo < E:  # a run of entries a whose pairs fill at most pair_chunk slots (at least one entry)
        base = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + pair_chunk, side="right")))
        cnt = counts[lo:hi]
        n = int(ends[hi - 1]) - base
        sl = slice(base, base + n)
        # entry a's partners b: first_b[a] + 0, 1, ..., cnt[a] - 1
        b = np.repeat(first_b[lo:hi] - (np.cumsum(cnt) - cnt).astype(idx), cnt) + np.arange(n, dtype=idx)
        j_out[sl] = np.repeat(lev_a[lo:hi], cnt)
        flat_out[sl] = np.repeat(row_a[lo:hi], cnt) + col_b[b]
        if k1 == 1:
            prod_out[sl, 0] = np.repeat(C_a[lo:hi, 0], cnt) * C_b[b, 0]
        else:
            Ca = np.repeat(C_a[lo:hi], cnt, axis=0)
            prod_out[sl] = (Ca[:, :, None] * C_b[b][:, None, :]).reshape(n, k1 * k1)
        lo = hi
    return j_out, flat_out, prod_out


class TermPair(NamedTuple):
    """A pair a < b of further terms (their indices among terms 2..M) and the nonzero blocks of Za'Zb."""

    a: int
    b: int
    blocks: int


class Layout(NamedTuple):
    """The numbers of segments of the flat sums (static for :func:`chunk_sums`)."""

    levels1: int  # levels of term 1
    coupling_blocks: tuple  # per further term m, the nonzero blocks of Z1'Zm
    rest_levels: tuple  # per further term, its levels
    pairs: tuple  # per pair of further terms, a TermPair


class Family(NamedTuple):
    """One family of blocks of the flat sums (:func:`_families`): per segment, the sum of A_r B_r' (ka x kb)."""

    key: str  # the rows' segment indices (:attr:`RowPlan.rows`): "g" (levels), "coo" or "pair" (blocks)
    index: int  # which of them: the term, the further term, the pair of further terms
    segments: int
    ka: int
    kb: int
    offset: int  # where in the flat sums its blocks start

    @property
    def size(self) -> int:
        """Its length in the flat sums."""
        return self.segments * self.ka * self.kb


@dataclass(frozen=True)
class RowPlan:
    """The host side of the accumulation: per-row arrays and segment indices, and the layout.

    ``rows`` holds arrays with one entry per row: ``X`` (n, p), ``y`` (n,),
    ``z`` (each term's columns, (n, k) per term), ``g`` (each term's level),
    ``coo`` (for each further term m, the index of the row's block among the
    nonzero blocks of Z1'Zm) and ``pair`` (for each pair m < m2 of further
    terms, the index of the row's block among the nonzero blocks of Zm'Zm2).
    ``layout`` (:class:`Layout`) holds the numbers of segments, static for
    :func:`chunk_sums`. ``coo`` holds the (level of term 1, level of
    term m) of each block of Z1'Zm, ``pair_blocks`` the (m, m2, level of m,
    level of m2) of the blocks of each pair of further terms.
    """

    rows: dict
    layout: Layout
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


def row_plan(design: Design, beta0: np.ndarray | None = None) -> RowPlan:
    """The integer work of the accumulation, in numpy: block-COO patterns and per-row segments.

    The rows of X, y and the terms' columns are those of the design scaled by sqrt(w_i)
    (prior weights; unscaled without); y less X ``beta0`` where given.
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
    layout = Layout(
        levels1=terms[0].nlevels if terms else 0,
        coupling_blocks=tuple(len(j1) for j1, _ in coo),
        rest_levels=tuple(t.nlevels for t in terms[1:]),
        pairs=tuple(TermPair(m, m2, len(a)) for m, m2, a, _ in pair_blocks),
    )
    size = _families(layout, tuple(t.k for t in terms), design.X.shape[1])[1]  # of the flat sums
    index = np.int32 if size < 2**31 else np.int64
    rows = {
        "X": design.weighted(design.X),
        "y": design.weighted(design.y_net if beta0 is None else design.y_net - design.X @ beta0),
        "z": tuple(design.weighted(t.X) for t in terms),
        "g": tuple(t.codes.astype(index) for t in terms),
        "coo": tuple(i.astype(index) for i in coo_idx),
        "pair": tuple(i.astype(index) for i in pair_idx),
    }
    return RowPlan(rows=rows, layout=layout, coo=tuple(coo), pair_blocks=tuple(pair_blocks))


def _families(layout: Layout, ks: tuple, p: int) -> tuple[list[Family], int]:
    """The families of blocks summed by :func:`flat_sums` (:class:`Family`), and the length of the flat sums.

    Families, in order: each term t against [Z_t X y] per level of t; Z1'Zm
    per block of each further term m; Za'Zb per block of each pair of
    further terms.
    """
    levels = (layout.levels1, *layout.rest_levels)
    fams = [("g", t, lt, k, k + p + 1) for t, (lt, k) in enumerate(zip(levels, ks))]
    fams += [("coo", m, nb, ks[0], ks[1 + m]) for m, nb in enumerate(layout.coupling_blocks)]
    fams += [("pair", j, pr.blocks, ks[1 + pr.a], ks[1 + pr.b]) for j, pr in enumerate(layout.pairs)]
    out, offset = [], 0
    for key, i, nseg, ka, kb in fams:
        out.append(Family(key, i, nseg, ka, kb, offset))
        offset += out[-1].size
    return out, offset


def flat_sums(rows: dict, layout: Layout, xp=jnp):
    """All cross-products of one chunk of rows, as (flat group sums, [X y]'[X y]).

    ``rows`` is a dict as :attr:`RowPlan.rows`. Every sum over groups is a
    sum of per-row outer products A_r B_r' into the row's segment; all of
    them are done by a single ``jax.ops.segment_sum`` into one flat vector,
    each family of blocks at its own offset (:func:`_families`), which keeps
    the compiled program small; [X y]'[X y] is one matmul. Rows of zeros add
    nothing, so a chunk may be padded with them. With the row axis sharded
    across devices, each device sums its rows and XLA reduces the sums
    across devices. With ``xp=numpy`` the same sums on the host (``np.bincount``).
    """
    X, y, z = rows["X"], rows["y"], rows["z"]
    c, p = X.shape
    W = xp.concatenate([X, y[:, None]], axis=1)
    fams, size = _families(layout, tuple(Zt.shape[1] for Zt in z), p)
    values, index = [], []
    for fam in fams:
        if fam.key == "g":
            A, B = z[fam.index], xp.concatenate([z[fam.index], W], axis=1)
        elif fam.key == "coo":
            A, B = z[0], z[1 + fam.index]
        else:
            pair = layout.pairs[fam.index]
            A, B = z[1 + pair.a], z[1 + pair.b]
        seg = rows[fam.key][fam.index]
        width = fam.ka * fam.kb
        values.append((A[:, :, None] * B[:, None, :]).reshape(c, width))
        index.append(fam.offset + seg[:, None] * width + xp.arange(width, dtype=seg.dtype)[None, :])
    if not values:
        return xp.zeros(0, dtype=W.dtype), W.T @ W
    values, index = xp.concatenate(values, axis=1).ravel(), xp.concatenate(index, axis=1).ravel()
    if xp is np:
        flat = np.bincount(index, weights=values, minlength=size)
    else:
        flat = jax.ops.segment_sum(values, index, num_segments=size)
    return flat, W.T @ W


def unpack(flat, wtw, layout: Layout, ks: tuple) -> dict:
    """The arrays of :class:`CrossProducts` in the output of :func:`flat_sums` (views, no sums).

    Keyed by their place in :class:`CrossProducts`: ``xtx``, ``first.blocks``,
    ``first.zx``, ``coupling.blocks`` (a tuple: one per further term),
    ``rest.zx`` and ``response.z1y``, ``response.zy``, ``response.xty``,
    ``response.yty``; and Zr'Zr as its nonzero blocks: ``zz_diag`` (per
    further term, its (levels, k, k) diagonal blocks) and ``zz_pair`` (per
    pair of further terms, its COO blocks). Without random-effect terms
    (``ks``: their numbers of columns) the terms' arrays are empty.
    """
    xp = jnp if isinstance(flat, jax.Array) else np
    p = wtw.shape[0] - 1
    blocks = {"g": [], "coo": [], "pair": []}
    for fam in _families(layout, ks, p)[0]:
        blocks[fam.key].append(flat[fam.offset : fam.offset + fam.size].reshape(fam.segments, fam.ka, fam.kb))
    per_term = [(s[:, :, : s.shape[1]], s[:, :, s.shape[1] : -1], s[:, :, -1]) for s in blocks["g"]]
    empty = (xp.zeros((0, 0, 0)), xp.zeros((0, 0, p)), xp.zeros((0, 0)))
    first_blocks, first_zx, first_zy = per_term[0] if per_term else empty
    rest = per_term[1:]
    return {
        "xtx": wtw[:p, :p],
        "first.blocks": first_blocks,
        "first.zx": first_zx,
        "coupling.blocks": tuple(blocks["coo"]),
        "rest.zx": xp.concatenate([zx.reshape(-1, p) for _, zx, _ in rest]) if rest else xp.zeros((0, p)),
        "response.z1y": first_zy,
        "response.zy": xp.concatenate([zy.reshape(-1) for _, _, zy in rest]) if rest else xp.zeros(0),
        "response.xty": wtw[:p, p],
        "response.yty": wtw[p, p],
        "zz_diag": tuple(diag for diag, _, _ in rest),
        "zz_pair": tuple(blocks["pair"]),
    }


def chunk_sums(rows: dict, layout: Layout) -> dict:
    """The partial sums of every float array of :class:`CrossProducts` over one chunk of rows.

    :func:`flat_sums` and :func:`unpack` together; see there for the arrays.
    """
    ks = tuple(Zt.shape[1] for Zt in rows["z"])
    return unpack(*flat_sums(rows, layout), layout, ks)


def _add_chunk(acc: tuple, rows: dict, layout: Layout) -> tuple:
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


HOST_PRODUCTS = 2**22
"""Up to this many products of entries (rows times products per row), one device and one chunk,
:func:`accumulate` sums on the host."""


def accumulate(plan: RowPlan, chunk_rows: int | None = None, devices=None) -> dict:
    """:func:`chunk_sums` added up over all chunks of rows on the device(s); numpy arrays back.

    The flat sums of :func:`flat_sums` are accumulated on the device(s) and
    unpacked on the host at the end.

    ``devices`` defaults to all of JAX's devices; with more than one, the
    rows of each chunk are sharded across them (:func:`row_sharding`).

    Small data (one device, one chunk, at most :data:`HOST_PRODUCTS`
    products) are summed by numpy instead: the same sums without a program
    to compile, which in a new process took longer than the sums (sleepstudy:
    0.15 s against milliseconds).
    """
    sharding = row_sharding(devices)
    ks = tuple(Zt.shape[1] for Zt in plan.rows["z"])
    p1 = plan.rows["X"].shape[1] + 1
    fams, size = _families(plan.layout, ks, p1 - 1)
    per_row = sum(f.ka * f.kb for f in fams) + p1 * p1
    if sharding is None and chunk_length(plan.n, chunk_rows) >= plan.n and plan.n * per_row <= HOST_PRODUCTS:
        return unpack(*flat_sums(plan.rows, plan.layout, xp=np), plan.layout, ks)
    replicated = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())
    step = _accumulator(replicated)
    acc = (np.zeros(size), np.zeros((p1, p1)))
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


def _as_f64(a) -> jax.Array:
    return on_device(a, np.float64)


def _as_i64(a) -> jax.Array:
    return on_device(a, np.int64)


def _entries(plan: RowPlan, rest, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The blocks of Z1'Zr flattened to entries: their levels of term 1 and columns of Zr (:class:`Entries`)."""
    level1 = [np.repeat(j1, tm.k) for (j1, _), tm in zip(plan.coo, rest)]
    column = [
        (offsets[m] + jm[:, None] * tm.k + np.arange(tm.k)[None, :]).ravel()
        for m, ((_, jm), tm) in enumerate(zip(plan.coo, rest))
    ]
    level1 = np.concatenate(level1) if level1 else np.zeros(0, dtype=np.int64)
    column = np.concatenate(column) if column else np.zeros(0, dtype=np.int64)
    return level1, column


def _check_memory(design: Design, plan: RowPlan, level1: np.ndarray, heavy: np.ndarray, control: Control,
                  memory_limit) -> None:
    """Raise when the fit's estimated memory (:mod:`jaxlmm.memory`) exceeds ``memory_limit``.

    ``level1``: the level of term 1 of each flattened entry (:func:`_entries`); ``heavy``: the
    levels whose entries make dense rows instead of pairs (:func:`heavy_levels`).
    """
    p = design.X.shape[1]
    terms = design.terms
    term_dims = tuple((t.nlevels, t.k) for t in terms)
    ks = tuple(t.k for t in terms)
    per_row = sum(fam.ka * fam.kb for fam in _families(plan.layout, ks, p)[0])
    chunk = chunk_bytes(chunk_length(design.n, control.chunk_rows), per_row, p + 1 + sum(ks) + 2 * len(terms))
    light = light_entries(level1, heavy)
    needed = chunk + estimate_fit_bytes(term_dims, p, len(level1), pair_count(level1[light]),
                                        pair_chunk=control.pair_chunk, n_dense=len(heavy))
    needed += rows_bytes(design.n, p + 1 + sum(ks))
    names = ", ".join(f"({t.name})" for t in terms)
    check_fits(needed, f"The fit of random-effect terms {names}", memory_limit)


def _entry_vectors(coupling_blocks: tuple, k1: int) -> np.ndarray:
    """The k1-vector of each flattened entry (:class:`Entries`), from the blocks of each Z1'Zm."""
    C = [np.swapaxes(np.asarray(v), 1, 2).reshape(-1, k1) for v in coupling_blocks]  # per entry, as column
    return np.concatenate(C) if C else np.zeros((0, k1))


def schur_parts(level1: np.ndarray, column: np.ndarray, coupling_blocks: tuple, k1: int, q2: int,
                heavy: np.ndarray, pair_chunk: int) -> tuple[Pairs, Dense]:
    """The Schur update's data: the pairs (:func:`schur_pairs`) of the entries of light levels,
    and the dense rows of the ``heavy`` levels (:class:`Dense`)."""
    C = _entry_vectors(coupling_blocks, k1)
    light = light_entries(level1, heavy)
    level, target, product = schur_pairs(level1[light], column[light], C[light], q2, pair_chunk)
    rows = np.zeros((len(heavy), k1, q2))
    where = np.searchsorted(heavy, level1[~light])
    rows[where, :, column[~light]] = C[~light]
    pairs = Pairs(level=on_device(level), target=on_device(target), product=_as_f64(product))
    return pairs, Dense(level=_as_i64(heavy), C=_as_f64(rows))


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
    terms = design.terms
    beta0 = design.least_squares()
    plan = row_plan(design, beta0)
    rest = terms[1:]
    offsets = np.concatenate([[0], np.cumsum([t.nlevels * t.k for t in rest])]).astype(np.int64)
    level1, column = _entries(plan, rest, offsets)
    q2 = int(offsets[-1])
    k1 = terms[0].k if terms else 0
    heavy = heavy_levels(level1, q2, control.schur_dense_share(jax.default_backend()), max(k1, 1))
    _check_memory(design, plan, level1, heavy, control, memory_limit)
    sums = accumulate(plan, control.chunk_rows)
    pairs, dense = schur_parts(level1, column, sums["coupling.blocks"], k1, q2, heavy, control.pair_chunk)
    return CrossProducts(
        first=FirstTerm(blocks=_as_f64(_symmetric(sums["first.blocks"])), zx=_as_f64(sums["first.zx"])),
        coupling=tuple(
            Coupling(level1=_as_i64(j1), level_m=_as_i64(jm), blocks=_as_f64(v))
            for (j1, jm), v in zip(plan.coo, sums["coupling.blocks"], strict=True)
        ),
        entries=Entries(level1=_as_i64(level1), column=_as_i64(column)),
        pairs=pairs,
        dense=dense,
        rest=Rest(zz=_as_f64(_dense_zz(plan, sums, rest, offsets)), zx=_as_f64(sums["rest.zx"])),
        xtx=_as_f64(sums["xtx"]),
        response=Response(**{name: _as_f64(sums[f"response.{name}"]) for name in ("z1y", "zy", "xty", "yty")}),
        n=_as_f64(float(design.n)),
        ldw=_as_f64(design.log_det_weights),
        beta0=_as_f64(beta0),
        term_dims=tuple((t.nlevels, t.k) for t in terms),
    ).sharded()


def response_products(design: Design, y) -> Response:
    """The y-dependent cross-products (Z1'Wy, Zr'Wy, X'Wy, y'Wy) for a new response ``y``.

    ``y`` may carry leading batch dimensions (..., n), and so then does every
    array of the :class:`Response`; computed as dense products with the
    group indicator structure through segment sums. ``design`` is a
    :class:`~jaxlmm.design.Design` or anything with its ``X``, ``terms`` and
    ``weights`` (W = diag(weights), the identity when None), and a ``beta0`` (not None) where the
    products are to be of y - X beta0, as :func:`cross_products` makes them.
    """
    y = jnp.asarray(y, dtype=jnp.float64)
    beta0 = getattr(design, "beta0", None)
    if beta0 is not None:  # rows of a refit target: the products are of y less X beta0 (cross_products)
        y = y - jnp.asarray(design.X) @ beta0
    terms = design.terms
    weights = getattr(design, "weights", None)
    wy = y if weights is None else y * jnp.asarray(weights, dtype=jnp.float64)

    def zty(t):
        w = wy[..., :, None] * jnp.asarray(t.X)  # (..., n, k)
        w = jnp.moveaxis(w, -2, 0)
        s = jax.ops.segment_sum(w, jnp.asarray(t.codes), num_segments=t.nlevels)
        return jnp.moveaxis(s, 0, -2)  # (..., l, k)

    if terms:
        z1y = zty(terms[0])
        rest = [zty(t).reshape(y.shape[:-1] + (-1,)) for t in terms[1:]]
        zy = jnp.concatenate(rest, axis=-1) if rest else jnp.zeros(y.shape[:-1] + (0,))
    else:
        z1y = jnp.zeros(y.shape[:-1] + (0, 0))
        zy = jnp.zeros(y.shape[:-1] + (0,))
    return Response(z1y=z1y, zy=zy, xty=wy @ jnp.asarray(design.X), yty=jnp.sum(wy * y, axis=-1))


def with_response(data: CrossProducts, response: Response) -> CrossProducts:
    """``data`` with its y-dependent cross-products replaced by ``response``."""
    return replace(data, response=response)
