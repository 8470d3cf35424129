"""How much memory a fit, a bootstrap, ``simulate`` and a profile need, checked before allocating.

Every estimate is of the peak resident memory the operation adds to the
process (on the CPU backend the device's buffers are host memory), and is
compared with the memory *available* (:func:`available_memory_bytes`): the
least of the cgroup's limit less its usage, the kernel's MemAvailable, the
address-space limit (RLIMIT_AS) less the address space in use, and, on an
accelerator, its allocator's free bytes (``Device.memory_stats``). A fit
that does not fit raises :class:`~jaxlmm.errors.JaxLMMError` before the
rows are summed.

The fit (:func:`estimate_fit_bytes`). The compiled fit's arguments are the
cross-products (:mod:`jaxlmm.crossprod`): per pair of off-diagonal entries
sharing a level of the first term (``CrossProducts.pairs``) two integer
indices and k1^2 products; per entry its indices and k1 values; the dense
``rest.zz`` of the further terms, X and y, ``s = q_2 + p + 1`` on a side. Its
temporaries (XLA's ``memory_analysis`` of the compiled Newton fit agrees
within a few percent on the shapes of ``benchmarks/memory_peak.py``) are
about 24 + 8 k1^2 bytes per pair (their terms, tangents and cotangents),
``TEMP_COPIES`` s x s float64 work arrays and the blocked Cholesky's
trailing matrices kept for the reverse pass (``s^3 / (3 b)`` numbers for
block ``b``). Before the fit, the host builds the pairs
(:func:`jaxlmm.crossprod.schur_pairs`, at most ``Control.pair_chunk`` at a time, with
about ``PAIR_BUILD_BYTES`` of index work per pair) and copies them to the
device; the rows are summed in chunks (:func:`chunk_bytes`). The peak is the
design's rows, the arguments, and the larger of the build's transients and
the fit's temporaries, plus ``RUNTIME_BYTES`` for XLA's compilation of the
fit (measured at 300 to 490 MiB on the CPU with XLA's default options;
``LEAN_RUNTIME_BYTES`` with the lean ones, :func:`jaxlmm._config.lean_jit`,
measured at 80 to 110 MiB), and ``AHEAD_BYTES`` more where the programs after
the fit compile beside it (:mod:`jaxlmm.ahead`; measured about 40 MiB). On an accelerator the device
holds the arguments and the temporaries only, and XLA fuses the pairs' terms
there: ``GPU_TEMP_COPIES`` s x s arrays and the Cholesky's trailing
matrices (an H200's ``peak_bytes_in_use`` equals XLA's arguments plus
temporaries). ``benchmarks/memory_peak.py`` (CPU) and
``benchmarks/memory_device.py`` (accelerator) compare the estimates with the
measured peaks (``benchmarks/RESULTS.md``).

A bootstrap (:func:`bootstrap_bytes`) holds its keys and the replicates'
results for all ``n`` replicates and, per replicate of a chunk, a simulated
response and a batched refit; ``simulate`` (:func:`simulate_bytes`) the
``n`` responses and their draws; a profile (:func:`profile_bytes`) one fit's
working set of the ML deviance in (theta, sigma, beta).
"""

from __future__ import annotations

import os
import resource

import jax
import numpy as np

from . import ahead
from ._config import lean_compiles
from .control import Control
from .errors import JaxLMMError
from .linalg import BLOCK

F64 = 8
ENTRY_BYTES = 2 * 8  # level of term 1 and column of an off-diagonal entry
WORK_COPIES = 8  # s x s arrays alive at once (matrix, factor, cotangents, tangents)
TEMP_COPIES = 13  # s x s float64 temporaries of the compiled fit (XLA's memory_analysis: 12.5)
PAIR_TEMP = 24  # bytes of temporaries per pair in the compiled fit (besides its k1^2 products)
PAIR_BUILD_BYTES = 40  # host index work per pair while building them
ROW_OVERHEAD = 64  # bytes per row of the design beyond its columns (codes, masks, frame copies)
RUNTIME_BYTES = 512 * 2**20  # XLA's compilation of a fit, and the runtime's own buffers (measured 300-490 MiB)
LEAN_RUNTIME_BYTES = 160 * 2**20  # the same with the lean CPU options of jaxlmm._config.lean_jit (80-110 MiB)
AHEAD_BYTES = 80 * 2**20  # the programs compiled beside a fit's (jaxlmm.ahead; measured about 40 MiB)
DENSE_COPIES = 3  # temporaries per dense row of a heavy level: W C, its cotangent and its tangent
GPU_TEMP_COPIES = 8.5  # s x s float64 temporaries of the fit compiled for a GPU (pairs' terms fused)
GPU_BATCH_FACTOR = 1.4  # a vmapped refit's temporaries per replicate on a GPU, relative to a fit's (measured 1.06-1.3)


def platform() -> str:
    """JAX's default backend: ``"cpu"``, ``"gpu"``, ``"tpu"``, ..."""
    return jax.default_backend()


def _runtime() -> int:
    """Compilation and runtime bytes counted against the memory checked: host memory, so on the CPU only."""
    return _compile_bytes() if platform() == "cpu" else 0


def _compile_bytes() -> int:
    """Host bytes of XLA's compilation of a fit and the CPU runtime's buffers, by the compile options,
    and of the programs compiled beside it where they are (:func:`jaxlmm.ahead.enabled`)."""
    return (LEAN_RUNTIME_BYTES if lean_compiles() else RUNTIME_BYTES) + (AHEAD_BYTES if ahead.enabled() else 0)


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


def fit_parts(term_dims, p: int, n_entries: int, n_pairs: int, on: str | None = None,
              pair_chunk: int = Control.pair_chunk, n_dense: int = 0) -> dict:
    """The compiled fit's ``arguments`` and ``temporaries`` and the host's ``build`` transients, in bytes.

    ``on``: the platform (default JAX's backend). On an accelerator XLA fuses
    the pairs' terms (no temporaries per pair) and keeps fewer s x s arrays;
    the build is host memory, not the device's. ``n_dense``: heavy levels of
    term 1 held as dense k1 x q2 rows (:class:`jaxlmm.crossprod.Dense`), with
    ``DENSE_COPIES`` more of them as temporaries (their products with W, their
    cotangents and tangents).
    """
    on = platform() if on is None else on
    if not term_dims:
        s = p + 1
        return {"arguments": F64 * s * s, "temporaries": WORK_COPIES * F64 * s * s, "build": 0}
    l1, k1 = term_dims[0]
    q2 = sum(l * k for l, k in term_dims[1:])
    s = q2 + p + 1
    first = F64 * l1 * k1 * (k1 + p + 1)
    per_pair = 4 + 8 + F64 * k1 * k1
    dense = F64 * n_dense * k1 * q2
    arguments = n_pairs * per_pair + n_entries * (ENTRY_BYTES + F64 * k1) + F64 * s * s + first + dense
    temporaries = (
        n_pairs * (PAIR_TEMP + F64 * k1 * k1)
        + F64 * (TEMP_COPIES * s * s + s**3 / (3 * BLOCK))
        + 6 * first
        + n_entries * F64 * 4 * k1
        + DENSE_COPIES * dense
    )
    build = n_pairs * per_pair + min(n_pairs, pair_chunk) * (PAIR_BUILD_BYTES + F64 * k1 * k1) + F64 * s * s + dense
    if on != "cpu":
        temporaries = (F64 * (GPU_TEMP_COPIES * s * s + s**3 / (3 * BLOCK)) + 6 * first + n_entries * F64 * 4 * k1
                       + DENSE_COPIES * dense)
        build = 0
    return {"arguments": int(arguments), "temporaries": int(temporaries), "build": int(build)}


def estimate_fit_bytes(term_dims, p: int, n_entries: int, n_pairs: int, on: str | None = None,
                       pair_chunk: int = Control.pair_chunk, n_dense: int = 0) -> int:
    """Estimated peak bytes a fit adds, besides its rows and chunks (see the module docstring).

    On the CPU: arguments, the larger of the build's transients and the
    temporaries, and the compilation's allowance (:func:`_compile_bytes`); on an accelerator, its memory only:
    arguments and temporaries.
    """
    on = platform() if on is None else on
    parts = fit_parts(term_dims, p, n_entries, n_pairs, on, pair_chunk, n_dense)
    if on != "cpu":
        return int(parts["arguments"] + parts["temporaries"])
    return int(parts["arguments"] + max(parts["build"], parts["temporaries"]) + _compile_bytes())


def rows_bytes(n: int, columns: int) -> int:
    """The design's rows on the host (and their copy for the summation): float64 columns and overhead."""
    return int(n * (2 * F64 * columns + ROW_OVERHEAD))


def fit_bytes_of(data) -> int:
    """:func:`estimate_fit_bytes` for a model's :class:`~jaxlmm.crossprod.CrossProducts`."""
    return estimate_fit_bytes(data.term_dims, data.p, data.n_entries, data.n_pairs, n_dense=data.n_dense)


def simulate_bytes(n: int, design) -> int:
    """Peak bytes of ``simulate(n)``: per response its result, the terms' draws and one more copy with
    an offset (``Design.offset``: zeros without one), the keys, and a quarter of a fit's compilation."""
    rows = int(design.n)
    kmax = max([t.k for t in design.terms] or [1])
    levels = sum(t.nlevels * t.k for t in design.terms)
    offset = 0 if getattr(design, "offset", None) is None else 1
    per = F64 * (rows * (kmax + 1 + offset) + 2 * levels)
    return int(n * (per + 16) + _runtime() // 4)


def replicate_bytes(data, rows: int) -> int:
    """Working bytes of one replicate in a batched refit: its response, products and one fit's temporaries."""
    parts = fit_parts(data.term_dims, data.p, data.n_entries, data.n_pairs, n_dense=data.n_dense)
    kmax = max([k for _, k in data.term_dims] or [1])
    q = sum(l * k for l, k in data.term_dims)
    batched = 1.0 if platform() == "cpu" else GPU_BATCH_FACTOR
    return int(F64 * (rows * (kmax + 3) + 2 * (q + data.p + 1)) + batched * parts["temporaries"])


RESULT_BYTES = 8  # per number kept per replicate (objective, theta, beta, sigma, counts, table)


def bootstrap_bytes(datas, rows: int, n: int, chunk: int) -> int:
    """Peak bytes of a bootstrap of ``n`` replicates of ``rows`` rows in chunks of ``chunk``.

    ``datas``: the cross-products of each model refitted per replicate. The
    keys (16 bytes per replicate), the results of every replicate (objective,
    theta, beta, sigma, convergence; twice: arrays and table), and one
    chunk's batched refits, and a quarter of a fit's compilation (the
    batched refit's programs are smaller than a fit's, measured).
    """
    per_result = sum(2 * RESULT_BYTES * (2 * d.n_theta + d.p + 6) for d in datas)
    per_chunk = sum(replicate_bytes(d, rows) for d in datas)
    return int(16 * n + per_result * n + chunk * per_chunk + _runtime() // 4)


PROFILE_SHARE = 0.4  # a profile's Newton temporaries, as a share of the fit's (measured: 0.3 to 0.55)


def profile_bytes(fit) -> int:
    """Peak bytes of profiling ``fit``: its Newton's temporaries (the ML deviance in theta, sigma, beta;
    a share of the fit's) and two thirds of a fit's compilation (measured, benchmarks/memory_peak.py)."""
    data = fit.products
    parts = fit_parts(data.term_dims, data.p, data.n_entries, data.n_pairs, n_dense=data.n_dense)
    return int(PROFILE_SHARE * parts["temporaries"] + 2 * _runtime() // 3)


# ---- what is available -------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _cgroup_stat(path: str, key: str) -> int:
    """A counter of the cgroup's memory.stat (0 when absent)."""
    text = _read(path)
    if text:
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                try:
                    return int(value)
                except ValueError:
                    return 0
    return 0


def _cgroup_free() -> int | None:
    """The cgroup's memory limit less its usage (cgroup v2, else v1); None without a limit.

    The usage counts the page cache; its inactive part (``inactive_file``),
    which the kernel reclaims first, is counted as free, as ``docker stats``
    does.
    """
    for limit, usage, stat, key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
         "inactive_file"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
    ):
        lim, use = _read(limit), _read(usage)
        if lim is None or lim == "max":
            continue
        try:
            lim_b, use_b = int(lim), int(use or 0)
        except ValueError:
            continue
        if lim_b >= 2**60:  # v1's "no limit"
            continue
        use_b = max(use_b - _cgroup_stat(stat, key), 0)
        return max(lim_b - use_b, 0)
    return None


def _meminfo_available() -> int | None:
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_free() -> int | None:
    """RLIMIT_AS less the address space in use (VmSize); None without a limit."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    used = 0
    text = _read("/proc/self/status")
    if text:
        for line in text.splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    return max(soft - used, 0)


def _device_free(device) -> int | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without memory statistics (CPU)
        return None
    if stats.get("bytes_limit"):
        return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)
    return None


def available_memory_bytes(device=None) -> tuple[int, str]:
    """The memory available to an operation, and where the bound comes from.

    On an accelerator with memory statistics, its allocator's free bytes;
    otherwise (the CPU) the least of the cgroup's free memory, the kernel's
    MemAvailable and RLIMIT_AS's free address space.
    """
    device = device or jax.devices()[0]
    free = _device_free(device)
    if free is not None:
        return free, f"free memory of {device.platform.upper()} device {device.id}"
    bounds = [
        (v, what)
        for v, what in (
            (_cgroup_free(), "the cgroup's memory limit less its usage"),
            (_meminfo_available(), "available memory (MemAvailable)"),
            (_address_space_free(), "the address-space limit (RLIMIT_AS) less the space in use"),
        )
        if v is not None
    ]
    if not bounds:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "total memory"
    return min(bounds)


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
    """Raise :class:`JaxLMMError` when ``needed`` bytes exceed the memory available (or ``available``)."""
    if available is None:
        available, source = available_memory_bytes()
    else:
        source = "the given limit"
    if needed > available:
        raise JaxLMMError(
            f"{what} needs about {needed / 2**30:.1f} GiB, but only {available / 2**30:.1f} GiB "
            f"are available ({source}): too large to run here. Use fewer levels, rows or "
            "replicates (a bootstrap: smaller n, or several runs with different seeds)."
        )
