"""Exact RLRT null-law draws per second: jaxlmm's ``exact_rlrt`` beside RLRsim's ``exactRLRT``.

Cases (RLRsim's two forms):

- Dyestuff ``Yield ~ 1 + (1 | Batch)``: ``exactRLRT(m)`` (6 eigenvalues, n = 30);
- sleepstudy, the slope of ``Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)``
  with the intercept in both models: ``exactRLRT(m, mA, m0)`` (18 eigenvalues, n = 180).

jaxlmm: ``exact_rlrt(fit, nsim=N)`` after one call that compiles (the
compile time is printed apart: ``first call``, with a compilation cache
that starts empty); the fits are made before timing. RLRsim: ``exactRLRT`` with the same ``nsim``, timed inside R
(``proc.time``), the fits made before timing. Both run in this process's
run, one after the other, on the same machine.

    python benchmarks/bench_rlrt.py [--sizes 100000 1000000] [--r-sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings

R_SCRIPT = r"""
suppressMessages({library(lme4); library(RLRsim)})
dye <- lmer(Yield ~ 1 + (1 | Batch), Dyestuff)
mA <- lmer(Reaction ~ Days + (1 | Subject) + (0 + Days | Subject), sleepstudy)
m0 <- lmer(Reaction ~ Days + (1 | Subject), sleepstudy)
m <- lmer(Reaction ~ Days + (0 + Days | Subject), sleepstudy)
for (n in c({sizes})) {
  t0 <- proc.time()[["elapsed"]]
  a <- exactRLRT(dye, nsim = n, seed = 1)
  t1 <- proc.time()[["elapsed"]]
  b <- exactRLRT(m, mA, m0, nsim = n, seed = 1)
  t2 <- proc.time()[["elapsed"]]
  cat(sprintf("RESULT dyestuff %d %.4f %.6g\nRESULT sleepstudy_slope %d %.4f %.6g\n",
              n, t1 - t0, a$p.value, n, t2 - t1, b$p.value))
}
"""

CASES = {
    "dyestuff": ("Yield ~ 1 + (1 | Batch)", "dyestuff", None),
    "sleepstudy_slope": ("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", "sleepstudy", "Subject.Days"),
}


def run_jaxlmm(sizes):
    import jaxlmm

    out = {}
    for case, (formula, data, term) in CASES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = jaxlmm.lmm(formula, jaxlmm.datasets.load(data))
        t = time.perf_counter()
        jaxlmm.exact_rlrt(fit, term=term, nsim=10, seed=1)
        first = time.perf_counter() - t
        for n in sizes:
            t = time.perf_counter()
            res = jaxlmm.exact_rlrt(fit, term=term, nsim=n, seed=1)
            out[(case, n)] = (time.perf_counter() - t, res.p_value, first)
    return out


def run_r(sizes):
    if not shutil.which("Rscript"):
        return {}
    script = R_SCRIPT.replace("{sizes}", ", ".join(str(int(n)) for n in sizes))
    proc = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=False)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, case, n, sec, p = line.split()
            out[(case, int(n))] = (float(sec), float(p))
    if not out:
        print("RLRsim did not run:", proc.stderr.strip()[-500:])
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--r-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    os.environ["JAXLMM_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlmm-bench-rlrt-")
    import jax

    print(f"machine: {platform.machine()} {_cpu_name()}, {os.cpu_count()} cores; "
          f"jax {jax.__version__} ({jax.default_backend()})")
    ours = run_jaxlmm(args.sizes)
    theirs = run_r(args.r_sizes)
    print("| case | nsim | jaxlmm | draws/s | RLRsim | draws/s | ratio | p jaxlmm | p RLRsim |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        for n in sorted(set(args.sizes) | set(args.r_sizes)):
            o, r = ours.get((case, n)), theirs.get((case, n))
            cells = [case, f"{n:,}"]
            cells += [f"{o[0]:.2f} s", f"{n / o[0]:,.0f}"] if o else ["", ""]
            cells += [f"{r[0]:.2f} s", f"{n / r[0]:,.0f}"] if r else ["", ""]
            cells += [f"{r[0] / o[0]:.1f}" if o and r else ""]
            cells += [f"{o[1]:.4g}" if o else "", f"{r[1]:.4g}" if r else ""]
            print("| " + " | ".join(cells) + " |")
    for case in CASES:
        o = ours.get((case, args.sizes[0]))
        if o:
            print(f"{case}: first call (compiles, 10 draws) {o[2]:.2f} s")


if __name__ == "__main__":
    main()
