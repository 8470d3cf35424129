"""Command line: ``jaxlmm fit "Reaction ~ Days + (Days | Subject)" --data sleepstudy``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _read_data(spec: str):
    import pandas as pd

    from . import datasets
    from .errors import DataError

    if spec.lower() in datasets.NAMES:
        return datasets.load(spec)
    path = Path(spec)
    if not path.is_file():
        raise DataError(
            f"--data '{spec}' is neither a bundled dataset ({', '.join(datasets.NAMES)}) nor a file."
        )
    if path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path)
    df.attrs["name"] = path.name
    return df


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Fit linear mixed models with JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a model and print an lme4-style summary")
    fit.add_argument("formula", help="lme4 formula, e.g. 'Reaction ~ Days + (Days | Subject)'")
    fit.add_argument("--data", required=True, help="bundled dataset name or a CSV/Parquet path")
    fit.add_argument("--ml", action="store_true", help="fit by maximum likelihood (default REML)")
    fit.add_argument("--method", default="newton", choices=["newton", "lbfgs"], help="optimizer")
    args = parser.parse_args(argv)

    from . import lmm
    from .errors import JaxLMMError

    try:
        data = _read_data(args.data)
        result = lmm(args.formula, data, reml=not args.ml, method=args.method)
    except JaxLMMError as exc:
        print(f"jaxlmm: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
