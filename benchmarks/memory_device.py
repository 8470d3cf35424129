"""Estimated memory (jaxlmm.memory) against the device's measured peak, for crossed fits on an accelerator.

Each shape runs in a fresh process: the estimate the fit checks
(:func:`jaxlmm.memory.estimate_fit_bytes`, captured from
``jaxlmm.crossprod.check_fits``), its parts (the compiled fit's arguments and
temporaries), XLA's own ``memory_analysis`` of the compiled fit, and the
allocator's ``peak_bytes_in_use`` after the fit (``Device.memory_stats``).

    python benchmarks/memory_device.py [rows l1 l2 ...]
    python benchmarks/memory_device.py --batched rows l1 l2   # a bootstrap chunk and simulate(100)

Figures in benchmarks/RESULTS.md ("Memory estimates").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

SHAPES = [(1_000_000, 50_000, 3_000), (1_000_000, 50_000, 6_000)]


def one(n: int, l1: int, l2: int) -> dict:
    import warnings

    import jax
    import jax.numpy as jnp

    import jaxlmm
    import jaxlmm.crossprod as cp
    from jaxlmm import memory, synthetic
    from jaxlmm.fitting import optimize_theta

    warnings.simplefilter("ignore")
    data = synthetic.crossed(n, (l1, l2), seed=1, bounds=((1, max(2, l2 // 2)), (1, None)))
    seen = []
    check = cp.check_fits
    cp.check_fits = lambda needed, *a, **k: (seen.append(needed), check(needed, *a, **k))
    t0 = time.perf_counter()
    out = {"rows": n, "levels": [l1, l2], "device": str(jax.devices()[0])}
    try:
        model = jaxlmm.LinearMixedModel("rating ~ 1 + (1 | user) + (1 | movie)", data)
        d = model.products
        out["pairs"] = d.n_pairs
        out["parts"] = memory.fit_parts(d.term_dims, d.p, d.n_entries, out["pairs"], n_dense=d.n_dense)
        lowered = optimize_theta.lower(
            jnp.asarray(model.theta0), jnp.asarray(model.lower), d, True, method="newton", max_iter=200,
            scale=None, hessian=model.control.newton_hessian(d.q_rest).value,
        )
        ma = lowered.compile().memory_analysis()
        out["xla_arguments"] = int(ma.argument_size_in_bytes)
        out["xla_temporaries"] = int(ma.temp_size_in_bytes)
        fit = model.fit()
        out["objective"] = fit.objective
        out["ok"] = True
    except Exception as exc:  # RESOURCE_EXHAUSTED and the like: reported
        out["ok"] = False
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out["seconds"] = time.perf_counter() - t0
    out["estimate"] = seen[0] if seen else None
    stats = jax.devices()[0].memory_stats() or {}
    out["device_peak"] = stats.get("peak_bytes_in_use")
    out["device_limit"] = stats.get("bytes_limit")
    return out


def batched(n: int, l1: int, l2: int) -> dict:
    """A bootstrap chunk and simulate(100): XLA's memory_analysis of the compiled programs against the estimates."""
    import warnings

    import jax
    import jax.numpy as jnp

    import jaxlmm
    from jaxlmm import memory, synthetic
    from jaxlmm.replicates import chunk_length, fit_params, refit_batch, rows_of, simulate_products, target_of
    from jaxlmm.replicates import simulate as simulate_one

    warnings.simplefilter("ignore")
    data = synthetic.crossed(n, (l1, l2), seed=1, bounds=((1, max(2, l2 // 2)), (1, None)))
    fit = jaxlmm.lmm("rating ~ 1 + (1 | user) + (1 | movie)", data)
    tg = target_of(fit)
    chunk = chunk_length((tg,), 10**9, None, fit.control)
    keys = jax.random.split(jax.random.key(0), chunk)
    (parts,) = simulate_products(keys, tg.rows, fit_params(fit), (tg.rows,))
    starts = jnp.broadcast_to(tg.theta0, (chunk,) + tg.theta0.shape)
    ma = refit_batch.lower(parts, starts, tg.data, tg.lower, True, jnp.asarray(fit.control.first_pass or 8)).compile().memory_analysis()
    boot_est = memory.bootstrap_bytes([fit.products], fit.nobs, chunk, chunk)
    k = 100
    draw = jax.jit(jax.vmap(simulate_one, in_axes=(0, None, None)))
    ms = draw.lower(jax.random.split(jax.random.key(0), k), rows_of(fit.design), fit_params(fit)).compile().memory_analysis()
    return {
        "rows": n, "levels": [l1, l2], "device": str(jax.devices()[0]), "chunk": chunk,
        "bootstrap_xla": int(ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes),
        "bootstrap_estimate": boot_est,
        "simulate_xla": int(ms.argument_size_in_bytes + ms.temp_size_in_bytes + ms.output_size_in_bytes),
        "simulate_estimate": memory.simulate_bytes(k, fit.design),
    }


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print(json.dumps(one(*map(int, argv[1:4]))))
        return
    if argv[:1] == ["--batched"]:
        print(json.dumps(batched(*map(int, argv[1:4]))))
        return
    shapes = [tuple(map(int, argv[i : i + 3])) for i in range(0, len(argv), 3)] or SHAPES
    for n, l1, l2 in shapes:
        res = subprocess.run([sys.executable, __file__, "--one", str(n), str(l1), str(l2)], capture_output=True, text=True)
        lines = res.stdout.strip().splitlines()
        print(lines[-1] if lines else json.dumps({"rows": n, "levels": [l1, l2], "stderr": res.stderr[-1500:]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
