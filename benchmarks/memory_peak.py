"""Estimated memory (jaxlmm.memory) against the measured peak, on the CPU, for crossed shapes.

Each case runs in a fresh Python process: it builds the data, reads its
resident memory (``/proc/self/status``: VmRSS) as the baseline, runs the
operation (a fit; a bootstrap chunk; ``simulate``; the profile interval of sigma), and reads the peak
resident memory (VmHWM, reset before the operation through
``/proc/self/clear_refs`` where the kernel allows it; else ``ru_maxrss``).
The measured working set is peak minus baseline; the estimate is what
``jaxlmm.memory`` computes for it before any allocation.

    python benchmarks/memory_peak.py                    # the default shapes
    python benchmarks/memory_peak.py fit 200000 20000 2000

Figures in benchmarks/RESULTS.md ("Memory estimates").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SHAPES = [  # (operation, rows, levels of factor 1, levels of factor 2)
    ("fit", 50_000, 5_000, 500),
    ("fit", 200_000, 20_000, 1_000),
    ("fit", 200_000, 20_000, 3_000),
    ("fit", 400_000, 40_000, 2_000),
    ("bootstrap", 20_000, 2_000, 100),
    ("bootstrap", 200_000, 20_000, 1_000),
    ("simulate", 200_000, 20_000, 1_000),
    ("simulate", 400_000, 40_000, 2_000),
    ("profile", 20_000, 2_000, 100),
    ("profile", 200_000, 20_000, 1_000),
]


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(op: str, n: int, l1: int, l2: int) -> dict:
    """In this process: the estimate and the measured peak of one operation."""
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    import warnings

    import jaxlmm
    from jaxlmm import memory, synthetic

    warnings.simplefilter("ignore")
    data = synthetic.crossed(n, (l1, l2), seed=1, bounds=((1, max(2, l2 // 2)), (1, None)))
    formula = "rating ~ 1 + (1 | user) + (1 | movie)"
    if op == "fit":
        import jaxlmm.crossprod as cp

        seen = []
        check = cp.check_fits
        cp.check_fits = lambda needed, *a, **k: (seen.append(needed), check(needed, *a, **k))
        base = _status("VmRSS")
        reset = _reset_peak()
        jaxlmm.LinearMixedModel(formula, data).fit()
        estimate = seen[0]
    else:
        fit = jaxlmm.lmm(formula, data)
        if op == "bootstrap":
            from jaxlmm.replicates import chunk_length, target_of

            chunk = chunk_length((target_of(fit),), 10**9, None, fit.control)
            estimate = memory.bootstrap_bytes([fit.products], fit.nobs, chunk, chunk)
            print(f"chunk {chunk}", file=sys.stderr)
            base = _status("VmRSS")
            reset = _reset_peak()
            jaxlmm.bootstrap(fit, n=chunk, progress=False)
        elif op == "profile":
            estimate = memory.profile_bytes(fit)
            base = _status("VmRSS")
            reset = _reset_peak()
            fit.confint("profile", which=["sigma"])
        else:
            k = 100
            estimate = memory.simulate_bytes(k, fit.design)
            base = _status("VmRSS")
            reset = _reset_peak()
            fit.simulate(k)
    peak = _status("VmHWM")
    if not reset:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"op": op, "n": n, "levels": [l1, l2], "estimate": estimate, "measured": peak - base,
            "baseline": base, "peak": peak, "reset": reset}


def run(op: str, n: int, l1: int, l2: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", op, str(n), str(l1), str(l2)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "JAXLMM_CACHE_DIR": "off"},  # a first fit compiles: the worst case
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print(json.dumps(measure(argv[1], *map(int, argv[2:5]))))
        return
    shapes = [(argv[0], *map(int, argv[1:4]))] if argv else SHAPES
    print(f"{'operation':<10} {'rows':>9} {'levels':>15} {'estimate MiB':>13} {'peak MiB':>9} {'ratio':>6}")
    for op, n, l1, l2 in shapes:
        r = run(op, n, l1, l2)
        ratio = r["estimate"] / max(r["measured"], 1)
        print(f"{op:<10} {n:>9,} {f'{l1:,} x {l2:,}':>15} {r['estimate'] / 2**20:>13.0f} "
              f"{r['measured'] / 2**20:>9.0f} {ratio:>6.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
