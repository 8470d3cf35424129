"""Memory (jaxlmm.memory): what is available, the estimates, and checks before allocating."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxlmm
from checks import raises
from jaxlmm import memory
from jaxlmm.crossprod import cross_products
from jaxlmm.errors import JaxLMMError
from jaxlmm.memory import check_fits, estimate_fit_bytes, pair_count
from models import dye_fit, get_fit, get_model
from oracle import DYE, ROOT


def test_available_memory_is_the_least_bound(monkeypatch):
    avail, source = memory.available_memory_bytes()
    assert 0 < avail <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(memory, "_cgroup_free", lambda: 3 * 2**30)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 5 * 2**30)
    monkeypatch.setattr(memory, "_address_space_free", lambda: None)
    assert memory.available_memory_bytes() == (3 * 2**30, "the cgroup's memory limit less its usage")
    monkeypatch.setattr(memory, "_address_space_free", lambda: 2**30)
    assert memory.available_memory_bytes()[0] == 2**30
    monkeypatch.setattr(memory, "_device_free", lambda device: 7)
    assert memory.available_memory_bytes()[0] == 7
    msg = raises(lambda: memory.check_fits(2**31, "A thing"), "A thing needs about 2.0 GiB", "0.0 GiB are available")
    assert "free memory of" in msg


def test_cgroup_limit_less_usage_counts_inactive_page_cache_as_free(monkeypatch):
    files = {
        "/sys/fs/cgroup/memory.max": str(8 * 2**30),
        "/sys/fs/cgroup/memory.current": str(7 * 2**30),
        "/sys/fs/cgroup/memory.stat": f"anon 100\ninactive_file {2 * 2**30}\nactive_file 5\n",
    }
    monkeypatch.setattr(memory, "_read", files.get)
    assert memory._cgroup_free() == 3 * 2**30
    files["/sys/fs/cgroup/memory.max"] = "max"
    assert memory._cgroup_free() is None
    v1 = {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(4 * 2**30),
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": str(3 * 2**30),
        "/sys/fs/cgroup/memory/memory.stat": "total_inactive_file 0\n",
    }
    monkeypatch.setattr(memory, "_read", v1.get)
    assert memory._cgroup_free() == 2**30


def test_address_space_limit_is_read():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        assert memory._address_space_free() is None
    else:
        assert memory._address_space_free() >= 0


# ---- estimates -----------------------------------------------------------------------------


def test_pair_count_matches_listed_pairs():
    """All pairs without dense rows; with them (the default here: every plate level is heavy), the
    pairs of the light levels' entries only."""
    frame = jaxlmm.datasets.load("penicillin")
    for share in (2.0, 0.5, None):
        d = jaxlmm.LinearMixedModel("diameter ~ 1 + (1 | plate) + (1 | sample)", frame,
                                    control=jaxlmm.Control(dense_share=share)).products
        level1 = np.asarray(d.entries.level1)
        light = ~np.isin(level1, np.asarray(d.dense.level))
        assert pair_count(level1[light]) == d.n_pairs
        assert (d.n_dense, d.n_pairs) == ((0, pair_count(level1)) if share == 2.0 else (24, 0))


def test_memory_estimate_grows_with_pairs_and_schur_size():
    from jaxlmm.memory import PAIR_TEMP

    dims = ((1000, 1), (500, 1))
    base = estimate_fit_bytes(dims, 2, 5000, 10_000, on="cpu")
    # per pair (k1 = 1): its argument (level, target, one product) and its temporaries
    per_pair = (4 + 8 + 8) + (PAIR_TEMP + 8)
    assert estimate_fit_bytes(dims, 2, 5000, 20_000, on="cpu") - base == pytest.approx(10_000 * per_pair)
    assert estimate_fit_bytes(((1000, 1), (1000, 1)), 2, 5000, 10_000, on="cpu") > base
    # the dense Schur complement alone: at least 8 (q2 + p + 1)^2 float64s
    assert base > 8 * 8 * 503**2


def test_estimates_grow_with_the_shape():
    small = memory.estimate_fit_bytes(((1000, 1), (100, 1)), 1, 5000, 50_000)
    pairs = memory.estimate_fit_bytes(((1000, 1), (100, 1)), 1, 5000, 5_000_000)
    dense = memory.estimate_fit_bytes(((1000, 1), (3000, 1)), 1, 5000, 50_000)
    assert small < pairs and small < dense
    # per pair: its arguments (20 bytes for k1 = 1), and its temporaries or its build on the host
    per_pair = (pairs - small) / (5_000_000 - 50_000)
    assert 40 <= per_pair <= 100


def test_estimate_bounds_the_measured_peak_of_a_small_crossed_fit():
    """A fresh process fits 30,000 rows of 3,000 x 300 crossed levels; the estimate covers its peak."""
    env = {**os.environ, "JAXLMM_CACHE_DIR": "off"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory_peak.py"), "--one", "fit", "30000", "3000", "300"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["estimate"] >= r["measured"], r
    assert r["estimate"] <= 2.0 * r["measured"], r


# ---- refused before allocating --------------------------------------------------------------


def test_huge_bootstrap_and_simulate_refused_before_allocating():
    fit = dye_fit()
    raises(lambda: jaxlmm.bootstrap(fit, n=10**12, progress=False), "bootstrap(n=1000000000000)", "GiB")
    raises(lambda: jaxlmm.pb_test(get_fit("Yield ~ 1", "dyestuff", reml=False), get_fit(DYE, "dyestuff", reml=False),
                                  n=10**12, progress=False), "pb_test(n=1000000000000)")
    raises(lambda: fit.simulate(10**12), "simulate(n=1000000000000)", "GiB")


def test_fit_refused_when_it_does_not_fit():
    from jaxlmm.crossprod import cross_products

    design = get_model(DYE, "dyestuff").design
    raises(lambda: cross_products(design, memory_limit=2**20), "needs about", "given limit")


def test_too_large_fit_raises_clear_error():
    m = get_model("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")
    with pytest.raises(JaxLMMError, match=r"plate.*sample.*GiB.*too large"):
        cross_products(m.design, memory_limit=1000)
    with pytest.raises(JaxLMMError, match="too large"):
        check_fits(2**31, "this fit", available=2**30)


def test_memory_check_counts_the_chunk_of_rows():
    """The refusal threshold lies between the fit's estimate and the estimate plus one chunk's working set."""
    from jaxlmm.crossprod import _families, row_plan
    from jaxlmm.memory import chunk_bytes, rows_bytes

    m = get_model("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")
    d = m.products
    # the fit's estimate and the design's rows (both counted before the rows are summed)
    level1, heavy = np.asarray(d.entries.level1), np.asarray(d.dense.level)
    fit_only = estimate_fit_bytes(d.term_dims, d.p, d.n_entries, pair_count(level1[~np.isin(level1, heavy)]),
                                  n_dense=len(heavy))
    fit_only += rows_bytes(m.design.n, 1 + 1 + 2)
    per_row = sum(f.ka * f.kb for f in _families(row_plan(m.design).layout, (1, 1), 1)[0])
    assert per_row == 1 * 3 + 1 * 3 + 1  # (1 | plate) and (1 | sample) against [z X y]; Z1'Z2
    chunk = chunk_bytes(m.design.n, per_row, 1 + 1 + 2 + 4)
    assert chunk == m.design.n * (12 * 7 + 8 * 8)
    cross_products(m.design, memory_limit=fit_only + chunk)  # fits exactly
    with pytest.raises(JaxLMMError, match="too large"):
        cross_products(m.design, memory_limit=fit_only + chunk - 1)


def test_dense_rows_enter_the_estimate():
    """Each heavy level of term 1 held as a dense row (k1 x q2 numbers) adds its argument and its
    DENSE_COPIES temporaries on the CPU, and the pairs it replaces are not counted."""
    dims = ((1000, 2), (300, 1), (20, 1))
    base = memory.estimate_fit_bytes(dims, 2, 5000, 10_000, on="cpu")
    more = memory.estimate_fit_bytes(dims, 2, 5000, 10_000, on="cpu", n_dense=7)
    assert more - base == pytest.approx(8 * 7 * 2 * 320 * (1 + memory.DENSE_COPIES))
    level1 = np.r_[np.zeros(50, dtype=int), np.arange(1, 101)]  # level 0: 50 entries, the others 1
    from jaxlmm.crossprod import heavy_levels

    assert heavy_levels(level1, 320, 0.1).tolist() == [0] and heavy_levels(level1, 320, 0.5).size == 0
    # past the share but lighter as pairs: 3 pairs (about 130 bytes) against a row of 8,000 bytes
    assert heavy_levels(np.array([0, 0, 1]), 1000, 0.001).size == 0
    assert heavy_levels(np.repeat([0, 1], [30, 1]), 1000, 0.001).tolist() == [0]  # 465 pairs: 20 kB
    assert memory.pair_count(level1[level1 != 0]) == 100
