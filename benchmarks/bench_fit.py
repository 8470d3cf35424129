"""Fit benchmark: jaxlmm cold and warm wall time, peak memory, beside lme4 and statsmodels.

    python benchmarks/bench_fit.py [case ...] [--peers lme4,statsmodels]
        [--lme4-timeout 3600] [--statsmodels-timeout 600] [--statsmodels-mem-gb 8] [--statsmodels-sparse]
        [--json out.json]

(cases: see CASES; default all.) Each case runs in a fresh subprocess so that
"cold" includes import and JIT compilation (with jaxlmm's compilation cache
pointed at a new, empty folder), then in a second fresh process that finds
the compiled programs in that cache ("cached": a user's next session). Peers:

* lme4 runs through Rscript when it is installed (benchmarks/lme4_fit.R); its
  time is that of the ``lmer`` call (R start-up and ``library(lme4)`` excluded).
* statsmodels ``MixedLM`` (``pip install ".[bench]"``) runs in its own
  subprocess under a wall-clock timeout and an address-space limit
  (``RLIMIT_AS``), so that a fit that would take hours or exhaust memory is
  reported as "did not finish in N s" or "out of memory" instead of a number.
  Crossed random effects are variance components within one group holding
  every row (statsmodels' only way to express them); their design matrices
  are dense unless ``--statsmodels-sparse`` (``use_sparse=True``). Python has
  no compile step, so one fit per fresh process is run: "cold" is import +
  data read + model build + fit, and "fit" (build + fit) is set against
  jaxlmm's warm time.

Prints one line per case and then a Markdown table. Ratios are peer/jaxlmm
(above 1: jaxlmm is faster). Agreement is the relative difference between the
peer's objective (-2 log-likelihood, restricted for REML) and jaxlmm's, and for
statsmodels also the largest relative difference of the fixed effects and of
the variance parameters (random-effect (co)variances and residual variance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", True),
    "insteval_ml": ("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", "insteval", False),
    "insteval_reml": ("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", "insteval", True),
    "insteval_fixed": ("y ~ service * dept + (1 | s) + (1 | d)", "insteval", True),
    # jaxlmm.synthetic.movielens_1m(): 1,000,209 rows, 6,040 users x 3,706 movies (seed 0)
    "movielens_1m": ("rating ~ 1 + (1 | user) + (1 | movie)", "synthetic:movielens_1m", False),
}

# statsmodels' spelling of each case. groups=None: one group holding every row,
# with the crossed factors as variance components (vc_formula) and no random
# coefficients of the group itself (re_formula="0"). dept's reference level is
# set to jaxlmm's (the first level of the stored factor, "15") so that the
# fixed effects are the same parameters.
_VC3 = {"s": "0 + C(s)", "d": "0 + C(d)", "dept": "0 + C(dept)"}
STATSMODELS_CASES = {
    "sleepstudy": dict(formula="Reaction ~ Days", groups="Subject", re_formula="~Days", vc_formula=None),
    "insteval_ml": dict(formula="y ~ 1 + C(service)", groups=None, re_formula="0", vc_formula=_VC3),
    "insteval_reml": dict(formula="y ~ 1 + C(service)", groups=None, re_formula="0", vc_formula=_VC3),
    "insteval_fixed": dict(
        formula="y ~ C(service) * C(dept, Treatment(reference=15))",
        groups=None,
        re_formula="0",
        vc_formula={"s": "0 + C(s)", "d": "0 + C(d)"},
    ),
    "movielens_1m": dict(formula="rating ~ 1", groups=None, re_formula="0",
                         vc_formula={"user": "0 + C(user)", "movie": "0 + C(movie)"}),
}

PEERS = ("lme4", "statsmodels")

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import jaxlmm
import jaxlmm.synthetic
formula, dataset, reml = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
generate = 0.0
if dataset.startswith("synthetic:"):  # generating the data is not counted (a user's data is read, not made)
    tg = time.perf_counter()
    df = getattr(jaxlmm.synthetic, dataset.split(":", 1)[1])()
    generate = time.perf_counter() - tg
else:
    df = jaxlmm.datasets.load(dataset)
m = jaxlmm.LinearMixedModel(formula, df)
fit = m.fit(reml=reml)
cold = time.perf_counter() - t0 - generate
t1 = time.perf_counter()
fit = m.fit(reml=reml)
warm = time.perf_counter() - t1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
s = lambda x: x if isinstance(x, str) else None  # pandas stores the missing names as NaN
vc = [[r.group, s(r.term1), s(r.term2), float(r.variance)] for r in fit.varcorr.itertuples()]
print(json.dumps(dict(cold=cold, warm=warm, peak_mb=peak, objective=fit.objective, n_iter=int(fit.n_iter),
                      fixef={k: float(v) for k, v in fit.fixef.items()}, varcorr=vc)))
"""

STATSMODELS_CHILD = r"""
import json, resource, sys, time, warnings
t0 = time.perf_counter()
path, spec, reml, mem_gb = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
if mem_gb > 0:
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
stage = "import"
try:
    import numpy as np
    import pandas as pd
    import statsmodels
    import statsmodels.formula.api as smf
    stage = "read"
    data = pd.read_csv(path)
    groups = data[spec["groups"]] if spec["groups"] else np.ones(len(data))
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage = "build"
        model = smf.mixedlm(spec["formula"], data, groups=groups, re_formula=spec["re_formula"],
                            vc_formula=spec["vc_formula"], use_sparse=spec.get("use_sparse", False))
        t2 = time.perf_counter()
        stage = "fit"
        res = model.fit(reml=reml)
        t3 = time.perf_counter()
        stage = "results"
        llf = float(res.llf)
except MemoryError:
    print(json.dumps(dict(status="oom", stage=stage, seconds=time.perf_counter() - t0)))
    sys.exit(0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
msgs = sorted({str(w.message).splitlines()[0][:120] for w in caught
               if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
print(json.dumps(dict(
    status="ok", version=statsmodels.__version__, cold=t3 - t0, fit=t3 - t1, build=t2 - t1, peak_mb=peak,
    llf=llf, objective=-2.0 * llf, converged=bool(res.converged),
    fixef={k: float(v) for k, v in res.fe_params.items()},
    cov_re=np.asarray(res.cov_re, dtype=float).tolist(),
    vcomp=dict(zip(model.exog_vc.names, map(float, np.atleast_1d(res.vcomp)))),
    scale=float(res.scale), warnings=msgs)))
"""


def run_jaxlmm(formula, dataset, reml):
    """Two fresh processes sharing a new compilation cache: cold (it starts empty), then cached."""
    args = [sys.executable, "-c", CHILD, formula, dataset, "1" if reml else "0"]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, JAXLMM_CACHE_DIR=cache)
        runs = [json.loads(subprocess.run(args, capture_output=True, text=True, check=True, env=env)
                           .stdout.strip().splitlines()[-1]) for _ in range(2)]
    out = runs[0]
    out["cached"] = runs[1]["cold"]
    return out


def write_csv(dataset, path):
    """The data set as CSV, and the names of its factor columns."""
    import jaxlmm
    import jaxlmm.synthetic

    if dataset.startswith("synthetic:"):
        df = getattr(jaxlmm.synthetic, dataset.split(":", 1)[1])()
    else:
        df = jaxlmm.datasets.load(dataset)
    df.to_csv(path, index=False)
    return [c for c in df.columns if str(df[c].dtype) in ("category", "object")]


def run_lme4(csv, factors, formula, reml, timeout=None):
    """lme4's fit through Rscript: a dict (seconds, objective), {"timeout": s}, or None (not run or failed)."""
    if not shutil.which("Rscript"):
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lme4_fit.R")
    try:
        out = subprocess.run(["Rscript", script, csv, formula, "TRUE" if reml else "FALSE", ",".join(factors)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_statsmodels(csv, spec, reml, timeout, mem_gb):
    """statsmodels MixedLM in a fresh process; a dict with status ok / oom / timeout / error."""
    args = [sys.executable, "-c", STATSMODELS_CHILD, csv, json.dumps(spec), "1" if reml else "0", str(mem_gb)]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", seconds=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = out.stderr.strip()
    # the exception line of a traceback: the last line that is not indented
    last = [x for x in err.splitlines() if x and not x[0].isspace()]
    detail = last[-1][:200] if last else f"exit status {out.returncode}"
    if "ModuleNotFoundError" in err and "statsmodels" in err:
        return dict(status="missing", detail='statsmodels is not installed (pip install ".[bench]")')
    oom = ("MemoryError", "Unable to allocate", "bad_alloc", "memory allocation", "Cannot allocate memory",
           "failed to map segment")
    if any(x in err for x in oom):
        return dict(status="oom", detail=detail)
    return dict(status="error", detail=detail)


def _sm_name(name):
    """statsmodels' fixed-effect name in jaxlmm's (lme4's) spelling: C(x, ...)[T.a] -> xa."""
    if name == "Intercept":
        return "(Intercept)"
    return ":".join(re.sub(r"^C\((\w+)[^\[]*\)\[T\.(.+)\]$", r"\1\2", part) for part in name.split(":"))


def _variances_jaxlmm(varcorr):
    """{key: value}: scalar terms by group name, vector terms by (group, i, j), 'Residual'."""
    out, index = {}, {}
    for group, t1, t2, v in varcorr:
        if group == "Residual":
            out["Residual"] = v
            continue
        names = index.setdefault(group, [])
        if t2 is None:
            names.append(t1)
    for group, t1, t2, v in varcorr:
        if group == "Residual":
            continue
        names = index[group]
        if len(names) == 1:
            out[group] = v
        else:
            i = names.index(t1)
            j = i if t2 is None else names.index(t2)
            out[(group, max(i, j), min(i, j))] = v
    return out


def _variances_statsmodels(sm, spec):
    out = dict(sm["vcomp"])
    out["Residual"] = sm["scale"]
    for i, row in enumerate(sm["cov_re"]):
        for j in range(i + 1):
            out[(spec["groups"], i, j)] = row[j]
    return out


def _max_rel(a, b):
    """Largest |a - b| / |b| over the shared keys of b; None when the keys differ."""
    if set(a) != set(b) or not b:
        return None
    return max(abs(a[k] - b[k]) / abs(b[k]) if b[k] != 0 else abs(a[k]) for k in b)


def compare_statsmodels(sm, ours, spec):
    fe = _max_rel({_sm_name(k): v for k, v in sm["fixef"].items()}, ours["fixef"])
    var = _max_rel(_variances_statsmodels(sm, spec), _variances_jaxlmm(ours["varcorr"]))
    obj = abs(sm["objective"] - ours["objective"]) / abs(ours["objective"])
    return obj, fe, var


def _sec(x):
    """Seconds to 3 significant digits (warm sleepstudy fits take milliseconds)."""
    return f"{x:.3g} s" if x < 100 else f"{x:.0f} s"


def _fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def not_finished(sm, timeout, mem_gb):
    s = sm["status"]
    if s == "timeout":
        return f"did not finish in {timeout:.0f} s"
    if s == "oom":
        where = f" in {sm['stage']}" if sm.get("stage") else ""
        after = f" after {sm['seconds']:.0f} s" if sm.get("seconds") else ""
        return f"out of memory{where}{after} ({mem_gb:g} GiB address-space limit)"
    if s == "missing":
        return sm["detail"]
    return f"failed: {sm.get('detail', '')}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="*", metavar="case",
                   help=f"cases to run (default: all of {', '.join(CASES)})")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="comma-separated peers beside jaxlmm: lme4, statsmodels, or none (default: %(default)s)")
    p.add_argument("--lme4-timeout", type=float, default=3600.0,
                   help="wall-clock limit in seconds for one lme4 fit (default: %(default)s)")
    p.add_argument("--statsmodels-timeout", type=float, default=600.0,
                   help="wall-clock limit in seconds for one statsmodels fit (default: %(default)s)")
    p.add_argument("--statsmodels-mem-gb", type=float, default=8.0,
                   help="address-space limit of the statsmodels process in GiB, 0 for none (default: %(default)s)")
    p.add_argument("--statsmodels-sparse", action="store_true",
                   help="build statsmodels' variance-component matrices sparse (use_sparse=True)")
    p.add_argument("--json", metavar="PATH", help="also write the raw measurements here")
    a = p.parse_args(argv)
    for c in a.cases:
        if c not in CASES:
            p.error(f"unknown case {c!r} (choose from {', '.join(CASES)})")
    peers = [x.strip() for x in a.peers.split(",") if x.strip() and x.strip() != "none"]
    for x in peers:
        if x not in PEERS:
            p.error(f"unknown peer {x!r} (choose from {', '.join(PEERS)})")

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}")
    rows = []
    for name in a.cases or CASES:
        formula, dataset, reml = CASES[name]
        ours = run_jaxlmm(formula, dataset, reml)
        ref = sm = None
        line = (f"{name:15s} jaxlmm cold {ours['cold']:7.2f}s cached {ours['cached']:7.2f}s "
                f"warm {ours['warm']:7.3f}s peak {ours['peak_mb']:6.0f} MB")
        with tempfile.TemporaryDirectory() as tmp:
            csv = os.path.join(tmp, "data.csv")
            factors = write_csv(dataset, csv) if peers else []
            if "lme4" in peers:
                ref = run_lme4(csv, factors, formula, reml, a.lme4_timeout)
                if ref and "timeout" in ref:
                    line += f" | lme4 did not finish in {ref['timeout']:.0f} s"
                elif ref:
                    rel = abs(ours["objective"] - ref["objective"]) / abs(ref["objective"])
                    ref["rel"] = rel
                    line += (f" | lme4 {ref['seconds']:6.2f}s: warm x{ref['seconds'] / ours['warm']:.2f}, "
                             f"cold x{ref['seconds'] / ours['cold']:.2f}, objective rel diff {rel:.1e}")
                else:
                    line += " | lme4 not run (no Rscript or lme4 failed)"
            if "statsmodels" in peers:
                spec = dict(STATSMODELS_CASES[name], use_sparse=a.statsmodels_sparse)
                sm = run_statsmodels(csv, spec, reml, a.statsmodels_timeout, a.statsmodels_mem_gb)
                if sm["status"] == "ok":
                    sm["rel"], sm["fe_rel"], sm["var_rel"] = compare_statsmodels(sm, ours, spec)
                    line += (f" | statsmodels cold {sm['cold']:7.2f}s fit {sm['fit']:7.2f}s "
                             f"peak {sm['peak_mb']:6.0f} MB: warm x{sm['fit'] / ours['warm']:.2f}, "
                             f"cold x{sm['cold'] / ours['cold']:.2f}, objective rel diff {sm['rel']:.1e}, "
                             f"fixef {_fmt(sm['fe_rel'], '.1e')}, variances {_fmt(sm['var_rel'], '.1e')}"
                             f"{'' if sm['converged'] else ' (not converged)'}")
                    if sm["warnings"]:
                        line += f" [warnings: {'; '.join(sm['warnings'])}]"
                else:
                    line += f" | statsmodels {not_finished(sm, a.statsmodels_timeout, a.statsmodels_mem_gb)}"
        print(line, flush=True)
        rows.append(dict(case=name, formula=formula, reml=reml, jaxlmm=ours, lme4=ref, statsmodels=sm))

    print()
    head = ["case", "jaxlmm cold", "jaxlmm cached", "jaxlmm warm", "peak"]
    if "lme4" in peers:
        head += ["lme4", "lme4/ours warm", "lme4/ours cold", "lme4 objective rel. diff"]
    if "statsmodels" in peers:
        head += ["statsmodels cold", "statsmodels fit", "statsmodels peak", "sm/ours warm", "sm/ours cold",
                 "sm objective rel. diff", "sm fixef / variances rel. diff"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        o = r["jaxlmm"]
        cells = [r["case"], _sec(o["cold"]), _sec(o["cached"]), _sec(o["warm"]), f"{o['peak_mb']:.0f} MB"]
        if "lme4" in peers:
            f = r["lme4"]
            if f and "timeout" in f:
                cells += [f"did not finish in {f['timeout']:.0f} s", f"> {f['timeout'] / o['warm']:.3g}",
                          f"> {f['timeout'] / o['cold']:.3g}", ""]
            else:
                cells += ([_sec(f["seconds"]), f"{f['seconds'] / o['warm']:.3g}",
                           f"{f['seconds'] / o['cold']:.3g}", f"{f['rel']:.1e}"] if f else ["not run"] + [""] * 3)
        if "statsmodels" in peers:
            s = r["statsmodels"]
            if s["status"] == "ok":
                cells += [_sec(s["cold"]), _sec(s["fit"]), f"{s['peak_mb']:.0f} MB",
                          f"{s['fit'] / o['warm']:.3g}", f"{s['cold'] / o['cold']:.3g}", f"{s['rel']:.1e}",
                          f"{_fmt(s['fe_rel'], '.1e')} / {_fmt(s['var_rel'], '.1e')}"]
            else:
                cells += [not_finished(s, a.statsmodels_timeout, a.statsmodels_mem_gb)] + [""] * 6
        print("| " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
