"""Latency of a first answer: the programs jaxlmm compiles, and their compile times.

    python benchmarks/compile_times.py [sleepstudy] [insteval] [--rscript] [--bootstrap N]
        [--rounds N] [--json out.json]

Each case runs in a fresh Python process with the compilation cache off
(``JAXLMM_CACHE_DIR=off``: a new user's first session). The process times,
in order: ``import jaxlmm``, reading the bundled data, the fit (``lmm``),
``print(fit)`` (the summary), ``fit.simulate(10)``, ``bootstrap`` (N
replicates; InstEval: 2), and then a second call of each with the same
shapes, which should compile nothing. For every step it lists the programs
JAX compiled (``jax_log_compiles``): name, trace + lowering time and XLA
compile time, so that a regression in one program shows. With
``--rscript`` the same session times ``Rscript`` printing lme4's summary of
the same model (R start-up, ``library(lme4)``, the fit and the summary:
what a user waits for), for the ratio. The wait is given from ``import
jaxlmm`` and from the start of the Python process (its own start-up added,
as R's is in Rscript's time). ``--rounds N`` then repeats N fresh processes
up to the summary, each followed by Rscript, and prints the medians: the
machine's noise is larger than the differences measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", True),
    "insteval": ("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", "insteval", False),
}

R_DATA = {"sleepstudy": "sleepstudy", "insteval": "InstEval"}


def child(case: str, n_boot: int, summary_only: bool = False) -> dict:
    """Run in the fresh process: the steps, their wall times and the programs compiled in each."""
    t0 = time.perf_counter()
    import logging

    import jax

    programs: list[dict] = []

    class Compiles(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            for kind, key in (("trace", "Finished tracing "), ("lower", "Finished jaxpr to MLIR"),
                              ("compile", "Finished XLA compilation of ")):
                if msg.startswith(key):
                    words = msg[len(key):].replace("+ transforming ", "").split()
                    name = msg.split("jit(")[1].split(")")[0] if "jit(" in msg else words[0]
                    secs = float(msg.rsplit(" in ", 1)[1].split()[0])
                    if kind == "trace" or not programs or programs[-1]["name"] != name or kind in programs[-1]:
                        programs.append({"name": name})
                    programs[-1][kind] = secs

    jax.config.update("jax_log_compiles", True)
    for name in ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.pjit", "jax._src.stages"):
        log = logging.getLogger(name)
        log.addHandler(Compiles())
        log.setLevel(logging.DEBUG)
        log.propagate = False
    import jaxlmm

    steps: list[dict] = []

    def step(name, call):
        start, before = time.perf_counter(), len(programs)
        out = call()
        steps.append({"step": name, "seconds": time.perf_counter() - start, "programs": programs[before:]})
        return out

    steps.append({"step": "import", "seconds": time.perf_counter() - t0, "programs": []})
    formula, dataset, reml = CASES[case]
    data = step("data", lambda: jaxlmm.datasets.load(dataset))
    fit = step("fit", lambda: jaxlmm.lmm(formula, data, reml=reml))
    text = step("summary", lambda: str(fit))
    summary_epoch = time.time()  # the parent adds the process start (Python's own start-up) to the wait
    if summary_only:
        return {"case": case, "steps": steps, "summary_epoch": summary_epoch}
    step("simulate(10)", lambda: fit.simulate(10, seed=1))
    step(f"bootstrap({n_boot})", lambda: jaxlmm.bootstrap(fit, n=n_boot, seed=1, progress=False))
    step("fit again", lambda: jaxlmm.lmm(formula, data, reml=reml))
    step("simulate(10) again", lambda: fit.simulate(10, seed=2))
    step(f"bootstrap({n_boot}) again", lambda: jaxlmm.bootstrap(fit, n=n_boot, seed=2, progress=False))
    return {"case": case, "objective": fit.objective, "summary_lines": len(text.splitlines()), "steps": steps,
            "jax": jax.__version__, "device": str(jax.devices()[0]), "summary_epoch": summary_epoch}


def rscript(case: str) -> float | None:
    formula, dataset, reml = CASES[case]
    code = (
        f"suppressMessages(library(lme4)); print(summary(lmer({formula}, {R_DATA[dataset]}, "
        f"REML = {'TRUE' if reml else 'FALSE'})))"
    )
    try:
        start = time.perf_counter()
        out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return time.perf_counter() - start if out.returncode == 0 else None


def report(res: dict, r_seconds: float | None) -> None:
    print(f"\n## {res['case']} ({res['device']}, jax {res['jax']}; objective {res['objective']:.6f})")
    print("| step | wall s | programs | trace+lower s | XLA compile s | largest compiles |")
    print("|---|---:|---:|---:|---:|---|")
    for s in res["steps"]:
        progs = s["programs"]
        tl = sum(p.get("trace", 0.0) + p.get("lower", 0.0) for p in progs)
        comp = sum(p.get("compile", 0.0) for p in progs)
        top = sorted(progs, key=lambda p: -p.get("compile", 0.0))[:4]
        names = ", ".join(f"{p['name']} {p.get('compile', 0.0):.2f}" for p in top if p.get("compile", 0.0) >= 0.05)
        print(f"| {s['step']} | {s['seconds']:.2f} | {len(progs)} | {tl:.2f} | {comp:.2f} | {names} |")
    to_summary = _to_summary(res)
    line = f"import -> printed summary: {to_summary:.2f} s; process start -> printed summary: {res['start_to_summary']:.2f} s"
    if r_seconds:
        line += (f"; Rscript (start, library(lme4), fit, summary): {r_seconds:.2f} s; "
                 f"ratios {to_summary / r_seconds:.2f}, {res['start_to_summary'] / r_seconds:.2f}")
    print(line)


def _to_summary(res: dict) -> float:
    first = {s["step"]: s["seconds"] for s in res["steps"]}
    return first["import"] + first["data"] + first["fit"] + first["summary"]


def run_child(case: str, n_boot: int, summary_only: bool = False) -> dict:
    """One fresh process with the compilation cache off; the wait from its start to the printed summary added."""
    env = {**os.environ, "JAXLMM_CACHE_DIR": "off"}
    launched = time.time()
    extra = ["--summary-only"] if summary_only else []
    out = subprocess.run([sys.executable, __file__, "--child", case, "--bootstrap", str(n_boot)] + extra,
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stderr[-3000:])
        raise SystemExit(out.returncode)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["start_to_summary"] = res["summary_epoch"] - launched
    return res


def rounds(case: str, n: int, n_boot: int, with_r: bool) -> None:
    """``n`` rounds of a fresh process and (with_r) Rscript, one after the other, and their medians."""
    import statistics

    rows = []
    for i in range(n):
        res = run_child(case, n_boot, summary_only=True)
        r = rscript(case) if with_r else None
        rows.append((_to_summary(res), res["start_to_summary"], r))
        print(f"round {i + 1}: import -> summary {rows[-1][0]:.2f} s, process start -> summary {rows[-1][1]:.2f} s"
              + (f", Rscript {r:.2f} s" if r else ""))
    med = [statistics.median(c) for c in list(zip(*rows))[: 3 if with_r else 2]]
    line = f"medians of {n}: import -> summary {med[0]:.2f} s, process start -> summary {med[1]:.2f} s"
    if with_r:
        line += f", Rscript {med[2]:.2f} s; ratios {med[0] / med[2]:.2f}, {med[1] / med[2]:.2f}"
    print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", default=list(CASES))
    ap.add_argument("--rscript", action="store_true")
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=0,
                    help="then N more rounds (fresh process, then Rscript with --rscript), with medians")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--summary-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.bootstrap, args.summary_only)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    results = []
    for case in args.cases:
        n_boot = args.bootstrap if case == "sleepstudy" else 2
        res = run_child(case, n_boot)
        r_seconds = rscript(case) if args.rscript else None
        res["rscript_seconds"] = r_seconds
        report(res, r_seconds)
        results.append(res)
        if args.rounds:
            rounds(case, args.rounds, n_boot, args.rscript)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
