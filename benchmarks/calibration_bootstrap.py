"""Calibration of the bootstrap LRT: its rejection rate under a true null.

Datasets are simulated from the ML fit of ``Yield ~ 1`` to Dyestuff (so
H0: sigma_A^2 = 0 holds); on each, ``pb_test`` of ``Yield ~ 1`` against
``Yield ~ 1 + (1 | Batch)`` with B bootstrap replicates. A test of nominal
level alpha should reject in a fraction alpha of the datasets, within the
Monte-Carlo error sqrt(alpha (1 - alpha) / N).

    python benchmarks/calibration_bootstrap.py [--datasets 500] [--b 200]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import jaxlmm

NULL, ALT = "Yield ~ 1", "Yield ~ 1 + (1 | Batch)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=500)
    ap.add_argument("--b", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    data = jaxlmm.datasets.load("dyestuff")
    null = jaxlmm.lmm(NULL, data, reml=False)
    rng = np.random.default_rng(2024)
    t = time.perf_counter()
    p_boot, p_chisq = [], []
    for i in range(args.datasets):
        frame = data.copy()
        frame["Yield"] = null.fixef.iloc[0] + null.sigma * rng.standard_normal(len(frame))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f0, f1 = jaxlmm.lmm(NULL, frame, reml=False), jaxlmm.lmm(ALT, frame, reml=False)
            res = jaxlmm.pb_test(f0, f1, n=args.b, seed=i, progress=False)
        p_boot.append(res.p_value)
        p_chisq.append(res.p_chisq)
    p_boot, p_chisq = np.array(p_boot), np.array(p_chisq)
    se = np.sqrt(args.alpha * (1 - args.alpha) / args.datasets)
    print(f"{args.datasets} datasets under H0, B = {args.b} each, {time.perf_counter() - t:.0f} s")
    print(f"bootstrap LRT rejects at {args.alpha}: {np.mean(p_boot <= args.alpha):.3f} (Monte-Carlo SE {se:.3f})")
    print(f"chi^2(1) LRT rejects at {args.alpha}: {np.mean(p_chisq <= args.alpha):.3f} (conservative on the boundary)")


if __name__ == "__main__":
    main()
