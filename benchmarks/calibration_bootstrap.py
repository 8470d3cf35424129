"""Calibration of the bootstrap LRT: its rejection rate under a true null.

``--case dyestuff`` (default): datasets are simulated from the ML fit of
``Yield ~ 1`` to Dyestuff (so H0: sigma_A^2 = 0 holds); on each, ``pb_test``
of ``Yield ~ 1`` against ``Yield ~ 1 + (1 | Batch)``. ``--case sleepstudy``:
datasets simulated from the ML fit of ``Reaction ~ 1 + (Days | Subject)``
(H0: no fixed effect of Days), ``pb_test`` of it against ``Reaction ~ Days +
(Days | Subject)`` (both models with random effects: refitted on Newton's
lanes on the CPU). B bootstrap replicates each. A test of nominal level alpha
should reject in a fraction alpha of the datasets, within the Monte-Carlo
error sqrt(alpha (1 - alpha) / N).

    python benchmarks/calibration_bootstrap.py [--case dyestuff|sleepstudy] [--datasets 500] [--b 200]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import jaxlmm

CASES = {
    "dyestuff": ("dyestuff", "Yield", "Yield ~ 1", "Yield ~ 1 + (1 | Batch)"),
    "sleepstudy": ("sleepstudy", "Reaction", "Reaction ~ 1 + (Days | Subject)", "Reaction ~ Days + (Days | Subject)"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=500)
    ap.add_argument("--b", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--case", choices=sorted(CASES), default="dyestuff")
    args = ap.parse_args()
    name, response, NULL, ALT = CASES[args.case]
    data = jaxlmm.datasets.load(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        null = jaxlmm.lmm(NULL, data, reml=False)
    responses = null.simulate(args.datasets, seed=2024)
    t = time.perf_counter()
    p_boot, p_chisq = [], []
    for i in range(args.datasets):
        frame = data.copy()
        frame[response] = responses[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f0, f1 = jaxlmm.lmm(NULL, frame, reml=False), jaxlmm.lmm(ALT, frame, reml=False)
            res = jaxlmm.pb_test(f0, f1, n=args.b, seed=i, progress=False)
        p_boot.append(res.p_value)
        p_chisq.append(res.p_chisq)
    p_boot, p_chisq = np.array(p_boot), np.array(p_chisq)
    se = np.sqrt(args.alpha * (1 - args.alpha) / args.datasets)
    print(f"{args.case}: {NULL} against {ALT}")
    print(f"{args.datasets} datasets under H0, B = {args.b} each, {time.perf_counter() - t:.0f} s")
    print(f"bootstrap LRT rejects at {args.alpha}: {np.mean(p_boot <= args.alpha):.3f} (Monte-Carlo SE {se:.3f})")
    print(f"chi^2 LRT rejects at {args.alpha}: {np.mean(p_chisq <= args.alpha):.3f}"
          + (" (conservative on the boundary)" if args.case == "dyestuff" else ""))


if __name__ == "__main__":
    main()
