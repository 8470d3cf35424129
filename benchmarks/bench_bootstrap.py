"""Parametric bootstrap throughput: replicates per second, jaxlmm beside lme4 on the same machine.

Model: sleepstudy ``Reaction ~ Days + (Days | Subject)`` (random slopes).
jaxlmm: ``bootstrap(fit, n)`` for n = 1,000 and 10,000:

- cold: the first call in a process whose compilation cache starts empty
  (the benchmark points ``JAXLMM_CACHE_DIR`` at a new folder), so it
  compiles;
- cached: a new Python process (import, fit, bootstrap) with that cache
  filled, as a user's second session;
- warm: a second call in the same process.

``--devices N`` splits the CPU into N XLA devices
(``--xla_force_host_platform_device_count``) so that the replicates are
sharded across cores. lme4 (when ``Rscript`` with lme4 and pbkrtest is
installed): ``bootMer`` of the same model and ``PBmodcomp`` of the Days
test, timed inside R.

    python benchmarks/bench_bootstrap.py [--sizes 1000 10000] [--r-n 200] [--devices 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

FORMULA = "Reaction ~ Days + (Days | Subject)"
NULL = "Reaction ~ 1 + (Days | Subject)"

R_SCRIPT = r"""
suppressMessages({library(lme4); library(pbkrtest)})
d <- read.csv("{csv}"); d$Subject <- factor(d$Subject)
m <- lmer(Reaction ~ Days + (Days | Subject), d)
t0 <- proc.time()[["elapsed"]]
b <- bootMer(m, function(f) fixef(f), nsim = {n}, seed = 1)
t1 <- proc.time()[["elapsed"]]
m1 <- lmer(Reaction ~ Days + (Days | Subject), d, REML = FALSE)
m0 <- lmer(Reaction ~ 1 + (Days | Subject), d, REML = FALSE)
t2 <- proc.time()[["elapsed"]]
pb <- PBmodcomp(m1, m0, nsim = {n}, seed = 1)
t3 <- proc.time()[["elapsed"]]
cat(sprintf("RESULT bootMer %d %.4f\nRESULT PBmodcomp %d %.4f\n", {n}, t1 - t0, {n}, t3 - t2))
"""


CACHED = """
import time, warnings
t = time.perf_counter()
import jaxlmm
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fit = jaxlmm.lmm({formula!r}, jaxlmm.datasets.load("sleepstudy"))
    jaxlmm.bootstrap(fit, n={n}, seed=2, progress=False)
print("SECONDS", time.perf_counter() - t)
"""


def time_cached(n: int) -> float:
    """Seconds for import + fit + bootstrap(n) in a new process, compilation cache filled."""
    out = subprocess.run(
        [sys.executable, "-c", CACHED.format(formula=FORMULA, n=n)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split("SECONDS")[-1])


def machine() -> str:
    import jax

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    return (
        f"{cpu}; {os.cpu_count()} cores; jax {jax.__version__}; backend {jax.default_backend()} "
        f"({len(jax.devices())} x {dev.device_kind})"
    )


def time_jaxlmm(fit, n: int) -> tuple[float, float, int]:
    import jaxlmm

    t = time.perf_counter()
    jaxlmm.bootstrap(fit, n=n, seed=0, progress=False)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    res = jaxlmm.bootstrap(fit, n=n, seed=1, progress=False)
    warm = time.perf_counter() - t
    return cold, warm, res.n_failed


def time_pbtest(n: int) -> tuple[float, float]:
    import jaxlmm

    data = jaxlmm.datasets.load("sleepstudy")
    f0, f1 = (jaxlmm.lmm(f, data, reml=False) for f in (NULL, FORMULA))
    t = time.perf_counter()
    jaxlmm.pb_test(f0, f1, n=n, seed=0, progress=False)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    jaxlmm.pb_test(f0, f1, n=n, seed=1, progress=False)
    return cold, time.perf_counter() - t


def time_lme4(n: int) -> dict:
    """Seconds for n replicates of bootMer and PBmodcomp, or {} without R."""
    import jaxlmm

    if shutil.which("Rscript") is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "sleepstudy.csv")
        jaxlmm.datasets.load("sleepstudy").to_csv(csv, index=False)
        script = R_SCRIPT.replace("{csv}", csv).replace("{n}", str(n))
        out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
    res = {}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            _, name, _, sec = line.split()
            res[name] = float(sec)
    if not res:
        print("R failed:", out.stderr[-500:])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--r-n", type=int, default=200, help="replicates for lme4 (it is slow)")
    ap.add_argument("--devices", type=int, default=1, help="XLA CPU devices to shard replicates across")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="jaxlmm-bench-cache-")
    os.environ["JAXLMM_CACHE_DIR"] = cache  # cold: nothing compiled yet
    flags = os.environ.get("XLA_FLAGS", "")
    if args.devices > 1:
        flags += f" --xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = flags.strip()
    import jaxlmm

    print("machine:", machine(), "| XLA_FLAGS:", os.environ["XLA_FLAGS"] or "(none)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jaxlmm.lmm(FORMULA, jaxlmm.datasets.load("sleepstudy"))
    rows = []
    for n in args.sizes:
        cold, warm, failed = time_jaxlmm(fit, n)
        rows.append((n, cold, warm))
        cached = time_cached(n)
        first = "cold" if len(rows) == 1 else "1st call"  # later sizes reuse the compiled programs
        print(
            f"jaxlmm bootstrap  n={n:>7}: {first} {cold:8.2f} s, new process with cache (import+fit+bootstrap) "
            f"{cached:6.2f} s, warm {warm:8.2f} s = {n / warm:10.0f} rep/s (failed {failed})"
        )
    n = args.sizes[0]
    cold, warm = time_pbtest(n)
    print(f"jaxlmm pb_test    n={n:>7}: cold {cold:8.2f} s, warm {warm:8.2f} s = {n / warm:10.0f} rep/s (two refits each)")
    r = time_lme4(args.r_n)
    if r:
        for name, sec in r.items():
            print(f"lme4 {name:<12} n={args.r_n:>7}: {sec:8.2f} s = {args.r_n / sec:10.1f} rep/s")
        if "bootMer" in r:
            best = max(n_ / w for n_, _, w in rows)
            print(f"ratio jaxlmm bootstrap (warm) / lme4 bootMer: {best / (args.r_n / r['bootMer']):.1f}x")
        if "PBmodcomp" in r:
            print(f"ratio jaxlmm pb_test (warm) / pbkrtest PBmodcomp: {(n / warm) / (args.r_n / r['PBmodcomp']):.1f}x")
    else:
        print("lme4: Rscript with lme4 and pbkrtest not found; no side-by-side figures.")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
