"""Crossed random effects at MovieLens scale: build and fit times, compile time, peak device memory.

    python benchmarks/gpu_crossed.py [--shapes 1m,10m] [--dense-share S] [--reml] [--json out.json]

Model ``rating ~ 1 + (1 | user) + (1 | movie)`` (ML) on the synthetic shapes
of :mod:`jaxlmm.synthetic` (``small``: 100,000 rows of 2,000 x 500, for a
try on the CPU; ``1m``, ``10m``, ``25m``: the MovieLens shapes). For each
shape, in this process: data generation (not part of the figures), the
cross-products' build (``LinearMixedModel``: the rows summed on the device,
the Schur update's pairs and dense rows), the first fit (compilation
included) and the XLA compile time within it (JAX's monitoring events), the
number of heavy levels held as dense rows (``Control.dense_share``, by
backend unless given) and of pairs, the iterations, the objective, and the
device's peak memory where the backend reports it. Prints the device and
versions first; one line per shape, flushed, so that a run cut short by a
time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

SHAPES = {"small": None, "1m": "movielens_1m", "10m": "movielens_10m", "25m": "movielens_25m"}


def _peak_bytes(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # the CPU backend reports none
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def run_shape(name: str, reml: bool, dense_share: float | None) -> dict:
    import jax

    import jaxlmm
    from jaxlmm import synthetic

    compiles: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(secs) if event == "/jax/core/compile/backend_compile_duration" else None
    )
    t = time.perf_counter()
    frame = (synthetic.crossed(100_000, (2_000, 500), seed=0, bounds=((5, 400), (1, None))) if name == "small"
             else getattr(synthetic, SHAPES[name])())
    generate = time.perf_counter() - t
    control = jaxlmm.Control(dense_share=dense_share)
    t = time.perf_counter()
    model = jaxlmm.LinearMixedModel("rating ~ 1 + (1 | user) + (1 | movie)", frame, control=control)
    build = time.perf_counter() - t
    before = len(compiles)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(reml=reml)
    fit_s = time.perf_counter() - t
    d = model.products
    return {
        "shape": name, "rows": len(frame), "levels": list(d.term_dims), "generate_s": round(generate, 1),
        "build_s": round(build, 2), "fit_s": round(fit_s, 2), "fit_compile_s": round(sum(compiles[before:]), 2),
        "build_plus_fit_s": round(build + fit_s, 2), "dense_levels": d.n_dense, "pairs": d.n_pairs,
        "iterations": fit.n_iter, "converged": fit.converged, "objective": fit.objective,
        "theta": [float(v) for v in fit.theta], "peak_device_bytes": _peak_bytes(jax.devices()[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="1m,10m")
    ap.add_argument("--dense-share", type=float, default=None)
    ap.add_argument("--reml", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    import jax

    import jaxlmm

    dev = jax.devices()[0]
    print(f"device {dev.device_kind} ({dev.platform}, {len(jax.devices())} visible), jax {jax.__version__}, "
          f"jaxlmm {getattr(jaxlmm, '__version__', '?')}, Python {platform.python_version()}", flush=True)
    out = []
    for name in args.shapes.split(","):
        res = run_shape(name.strip(), args.reml, args.dense_share)
        print(json.dumps(res), flush=True)
        out.append(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
