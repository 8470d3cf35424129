"""Every figure of the batched bootstrap on one accelerator, in one run (a few minutes on an H100/H200).

For each case: the first call with the same number of replicates (it
compiles: ``compile+run``), then the timed call (``run``; the same chunk
shapes), split into the first batched pass (simulation included) and the
later batched passes (``BootstrapResult.passes``):

- sleepstudy ``Reaction ~ Days + (Days | Subject)`` (REML): ``bootstrap`` of
  ``--boot`` replicates (default 1,000,000);
- the ``Days`` test by ``pb_test`` (ML fits) with ``--pb`` replicates;
- InstEval ``y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)`` (ML):
  ``bootstrap`` of ``--insteval`` replicates (default 1,000), after a
  first call of ``--insteval-warmup`` replicates that compiles.

Prints the device, versions and one line per case, then the same as JSON
(``--json FILE`` writes it). Try it on a CPU first with small sizes::

    python benchmarks/gpu_bootstrap.py --boot 2000 --pb 2000 --insteval 4 --insteval-warmup 2

(``--boot 0``, ``--pb 0``, ``--insteval 0`` skip a case.) The two sleepstudy
cases run as vectorized batches (the default on accelerators) and then, with
``--lanes-n`` replicates, on Newton's lanes (``Control(lanes=True)``, a
``--lane-rounds``-th of a chunk per lane), for the choice of the default.
InstEval's calls use chunks of ``--insteval-chunk`` replicates.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

SLEEP = "Reaction ~ Days + (Days | Subject)"
SLEEP0 = "Reaction ~ 1 + (Days | Subject)"
INST = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)"


def _timed(call):
    t = time.perf_counter()
    out = call()
    return out, time.perf_counter() - t


def _case(name: str, run, warm_n: int, n: int) -> dict:
    """``run(n, seed)`` once with ``warm_n`` replicates (compiles; the chunks of the timed call's
    shapes), then with ``n``: the timed call."""
    first, first_s = _timed(lambda: run(warm_n, 0))
    res, secs = _timed(lambda: run(n, 1))
    p = res.passes
    row = {
        "case": name, "replicates": n, "first_call_replicates": warm_n, "first_call_seconds": first_s,
        "seconds": secs, "replicates_per_second": n / secs, "chunk": p.chunk,
        "first_pass_seconds": p.first_seconds, "later_replicates": list(p.later),
        "later_seconds": p.later_seconds, "failed": res.n_failed,
    }
    print(
        f"{name:28s} n={n:>9,d}  first call ({warm_n:,d}, compiles) {first_s:7.2f} s  run {secs:7.2f} s "
        f"({n / secs:>11,.0f}/s; first pass {p.first_seconds:.2f} s, later {sum(p.later):,d} in "
        f"{p.later_seconds:.2f} s, chunk {p.chunk:,d})  failed {res.n_failed}",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", type=int, default=1_000_000)
    ap.add_argument("--pb", type=int, default=1_000_000)
    ap.add_argument("--insteval", type=int, default=1000)
    ap.add_argument("--insteval-warmup", type=int, default=128)
    ap.add_argument("--insteval-chunk", type=int, default=128)
    ap.add_argument("--lanes-n", type=int, default=200_000)
    ap.add_argument("--lane-rounds", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import jax
    import jaxlib

    import jaxlmm

    dev = jax.devices()[0]
    head = {
        "device": f"{len(jax.devices())} x {dev.device_kind} ({jax.default_backend()})",
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "python": platform.python_version(),
    }
    print(head, flush=True)
    rows = []
    sleep = jaxlmm.datasets.load("sleepstudy")
    fit, fit_s = _timed(lambda: jaxlmm.lmm(SLEEP, sleep))
    print(f"sleepstudy fit (compiles) {fit_s:.2f} s", flush=True)
    f0, f1 = (jaxlmm.lmm(f, sleep, reml=False) for f in (SLEEP0, SLEEP))
    batches = fit.control.replace(lanes=False)
    lanes = fit.control.replace(lanes=True, lane_rounds=args.lane_rounds)
    for tag, control, size in (("", batches, None), (" on lanes", lanes, args.lanes_n)):
        if args.boot:
            n = args.boot if size is None else min(size, args.boot)
            rows.append(_case("sleepstudy bootstrap" + tag, lambda n, s, c=control: jaxlmm.bootstrap(
                fit, n=n, seed=s, progress=False, control=c), n, n))
        if args.pb:
            n = args.pb if size is None else min(size, args.pb)
            rows.append(_case("sleepstudy pb_test Days" + tag, lambda n, s, c=control: jaxlmm.pb_test(
                f0, f1, n=n, seed=s, progress=False, control=c), n, n))
    if args.insteval:
        inst = jaxlmm.datasets.load("insteval")
        ifit, ifit_s = _timed(lambda: jaxlmm.lmm(INST, inst, reml=False))
        again, again_s = _timed(lambda: ifit.refit(theta0=ifit.theta * 1.01))
        print(f"InstEval ML fit: first {ifit_s:.2f} s, a refit {again_s:.2f} s", flush=True)
        head["insteval_fit_seconds"], head["insteval_refit_seconds"] = ifit_s, again_s
        rows.append(_case("InstEval bootstrap (ML)",
                          lambda n, s: jaxlmm.bootstrap(ifit, n=n, seed=s, progress=False,
                                                        chunk_size=args.insteval_chunk),
                          args.insteval_warmup, args.insteval))
    out = {**head, "cases": rows}
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
