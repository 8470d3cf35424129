"""Fit benchmark: jaxlmm cold and warm wall time, peak memory, beside lme4.

    python benchmarks/bench_fit.py [case ...]      (cases: see CASES)

Each case runs in a fresh subprocess so that "cold" includes import and JIT
compilation; lme4 runs through Rscript when it is installed
(benchmarks/lme4_fit.R). Prints one line per case with the ratio.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", True),
    "insteval_ml": ("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", "insteval", False),
    "insteval_reml": ("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", "insteval", True),
    "insteval_fixed": ("y ~ service * dept + (1 | s) + (1 | d)", "insteval", True),
}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import jaxlmm
formula, dataset, reml = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
df = jaxlmm.datasets.load(dataset)
m = jaxlmm.LinearMixedModel(formula, df)
fit = m.fit(reml=reml)
cold = time.perf_counter() - t0
t1 = time.perf_counter()
fit = m.fit(reml=reml)
warm = time.perf_counter() - t1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(cold=cold, warm=warm, peak_mb=peak, objective=fit.objective, n_iter=int(fit.n_iter))))
"""


def run_jaxlmm(formula, dataset, reml):
    out = subprocess.run([sys.executable, "-c", CHILD, formula, dataset, "1" if reml else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_lme4(formula, dataset, reml):
    if not shutil.which("Rscript"):
        return None
    import jaxlmm

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.csv")
        df = jaxlmm.datasets.load(dataset)
        df.to_csv(path, index=False)
        factors = ",".join(c for c in df.columns if str(df[c].dtype) in ("category", "object"))
        script = os.path.join(os.path.dirname(__file__), "lme4_fit.R")
        out = subprocess.run(["Rscript", script, path, formula, "TRUE" if reml else "FALSE", factors],
                             capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(names):
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}")
    for name in names or CASES:
        formula, dataset, reml = CASES[name]
        ours = run_jaxlmm(formula, dataset, reml)
        ref = run_lme4(formula, dataset, reml)
        line = f"{name:15s} jaxlmm cold {ours['cold']:7.2f}s warm {ours['warm']:7.2f}s peak {ours['peak_mb']:6.0f} MB"
        if ref:
            rel = abs(ours["objective"] - ref["objective"]) / abs(ref["objective"])
            line += (f" | lme4 {ref['seconds']:6.2f}s: warm x{ref['seconds'] / ours['warm']:.2f}, "
                     f"cold x{ref['seconds'] / ours['cold']:.2f}, objective rel diff {rel:.1e}")
        print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
