"""How much memory a fit needs, estimated before any large array is built.

The working set of one Newton iteration (criterion, gradient and
Hessian-vector products, see :mod:`jaxlmm.objective`) is dominated by

- the pairs of off-diagonal entries that share a level of the first term
  (the update of the Schur complement, ``CrossProducts.pair_*``): per
  pair two integer indices and k1^2 float64 products, stored, and a few
  float64 values (its term, tangents, cotangents) while differentiating;
- the dense Schur complement of the further terms, X and y,
  ``s = q_2 + p + 1`` on a side: the blocked Cholesky keeps its trailing
  matrices for the reverse pass (about ``s^3 / (3 b)`` numbers for block
  ``b``) besides a handful of s x s work arrays;
- the first term's blocks and the block-COO entries (small).

The rows themselves do not count: the cross-products are summed on the
device in chunks of a fixed number of rows (``jaxlmm.crossprod.CHUNK_ROWS``,
sharded across the devices when there are several), before the fit and
with the check made before they start. Their working set is one chunk
(:func:`chunk_bytes`): per row, its columns and segment indices, and its
products (sum over the blocks of k_a k_b; float64 values and their int32
targets, about 12 bytes each), besides the block sums themselves; it is
added to the estimate.

The estimate is deliberately generous (a factor for the tangents of the
forward-over-reverse Hessian products); it serves to refuse, with a clear
message, a fit that cannot fit the device instead of crashing out of memory.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from .errors import JaxLMMError
from .linalg import BLOCK

F64 = 8
ENTRY_BYTES = 2 * 8  # level of term 1 and column of an off-diagonal entry
WORK_COPIES = 8  # s x s arrays alive at once (matrix, factor, cotangents, tangents)


def pair_count(e_j1: np.ndarray, e_col: np.ndarray | None = None) -> int:
    """Number of lower-triangle pairs of entries sharing a term-1 level: sum_j m_j (m_j + 1) / 2."""
    if len(e_j1) == 0:
        return 0
    m = np.bincount(e_j1).astype(np.int64)
    return int(np.sum(m * (m + 1) // 2))


def pair_bytes(k1: int) -> int:
    """Bytes per pair: level (int32) and target (up to int64) indices, k1^2 products, 3 transient values."""
    return 4 + 8 + F64 * k1 * k1 + 3 * F64


def chunk_bytes(rows: int, products_per_row: int, columns_per_row: int) -> int:
    """Working bytes of one chunk of rows: its products (value and int32 target) and its columns."""
    return int(rows * (12 * products_per_row + F64 * columns_per_row))


def estimate_fit_bytes(term_dims, p: int, n_entries: int, n_pairs: int) -> int:
    """Estimated peak bytes of the device working set of a fit (see the module docstring)."""
    if not term_dims:
        return int(WORK_COPIES * (p + 1) ** 2 * F64)
    l1, k1 = term_dims[0]
    q2 = sum(l * k for l, k in term_dims[1:])
    s = q2 + p + 1
    dense = WORK_COPIES * s * s + s**3 / (3 * BLOCK) + 4 * s * s
    first = 6 * l1 * k1 * (k1 + p + 1)
    entries = n_entries * (ENTRY_BYTES / F64 + 4 * k1)
    return int(F64 * (dense + first + entries) + pair_bytes(k1) * n_pairs)


def device_memory_bytes(device=None) -> int:
    """Memory of ``device`` (default: JAX's first device): the allocator's limit, else host RAM."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without memory statistics (CPU)
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(needed: int, what: str, available: int | None = None) -> None:
    """Raise :class:`JaxLMMError` when ``needed`` bytes exceed the device's memory."""
    available = device_memory_bytes() if available is None else available
    if needed > available:
        raise JaxLMMError(
            f"{what} needs about {needed / 2**30:.1f} GiB, but the device has "
            f"{available / 2**30:.1f} GiB: too large to fit on this device."
        )
