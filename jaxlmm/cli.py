"""Command line: fit a model, bootstrap it, test two models, or compute intervals.

::

    jaxlmm --version
    jaxlmm fit "Reaction ~ Days + (Days | Subject)" --data sleepstudy [--ml] [--format text|json|csv]
    jaxlmm bootstrap "Yield ~ 1 + (1 | Batch)" --data dyestuff --n 1000 --seed 1
    jaxlmm pbtest "Yield ~ 1" "Yield ~ 1 + (1 | Batch)" --data dyestuff --n 1000 --seed 1
    jaxlmm confint "Reaction ~ Days + (Days | Subject)" --data sleepstudy --method profile --level 0.95

``--data`` is a data file or a bundled dataset's name; a file on disk wins
over a bundled dataset of the same name, and ``bundled:NAME`` always names
the bundled one. A file is Parquet (needs pyarrow, the optional extra
``parquet``), or text whose separator (comma, tab, semicolon, ...)
is sniffed unless ``--sep`` gives it; a file that cannot be read (binary,
empty, not UTF-8, no rows) is an error, status 2. ``--format json`` prints plain JSON (``fit``: ``LmmFit.to_dict``),
``--format csv`` a table (``fit``: ``LmmFit.tidy``). Bad input prints
``jaxlmm: error: ...`` and exits with status 2; each warning is printed as
one line, ``jaxlmm: warning: <Category>: message``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

from . import __version__, datasets
from .bootstrap import bootstrap
from .confint import confint, confint_method
from .errors import DataError, JaxLMMError
from .model import lmm
from .pbtest import pb_test
from .tidy import records

FORMATS = ("text", "json", "csv")
OPTIMIZERS = ("newton", "lbfgs")


def _separator(sep: str | None) -> str | None:
    """``--sep``: the text itself, with the spellings ``tab``, ``\\t`` for a tab."""
    if sep is None:
        return None
    if sep == "":
        raise DataError("--sep '' is empty: give the separator, e.g. --sep ';' or --sep tab.")
    return {"tab": "\t", "\\t": "\t", "TAB": "\t"}.get(sep, sep)


BUNDLED_PREFIX = "bundled:"
PARQUET_MAGIC = b"PAR1"


def _read_data(spec: str, sep: str | None = None):
    """``--data``: a file on disk (it wins over a bundled dataset of the same name), else a bundled
    dataset's name; ``bundled:NAME`` always names the bundled dataset. Every failure is a DataError."""
    if spec.lower().startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX):]
        if name.lower() not in datasets.NAMES:
            raise DataError(f"--data '{spec}': no bundled dataset '{name}'; they are {', '.join(datasets.NAMES)}.")
        return datasets.load(name)
    if not spec.strip():
        raise DataError(f"--data is empty: give a file or a bundled dataset ({', '.join(datasets.NAMES)}).")
    path = Path(spec)
    if path.is_file():
        return _read_file(path, spec, sep)
    if spec.lower() in datasets.NAMES:
        return datasets.load(spec)
    what = "a folder, not a file" if path.is_dir() else "neither a file nor a bundled dataset"
    raise DataError(f"--data '{spec}' is {what} (bundled datasets: {', '.join(datasets.NAMES)}).")


def _read_file(path: Path, spec: str, sep: str | None):
    """A data file as a frame: Parquet (by suffix or content) or delimited text; else a DataError."""
    import csv

    import pandas as pd

    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise DataError(f"Cannot read --data '{spec}': {exc.strerror or exc}.") from None
    if not head:
        raise DataError(f"--data '{spec}' is an empty file.")
    parquet = path.suffix.lower() in (".parquet", ".pq") or head.startswith(PARQUET_MAGIC)
    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(
                f"--data '{spec}' is a Parquet file; reading Parquet needs pyarrow, jaxlmm's optional "
                "extra 'parquet': pip install \".[parquet]\" in jaxlmm's folder, or pip install pyarrow "
                "(or convert the file to CSV)."
            ) from None
    elif b"\x00" in head:
        raise DataError(
            f"--data '{spec}' is not a text data file (it holds binary bytes); give a CSV/TSV "
            "text file with a header row, or a Parquet file."
        )
    try:
        if parquet:
            df = pd.read_parquet(path)
        elif sep is not None:
            df = pd.read_csv(path, sep=_separator(sep))
        else:  # the separator sniffed from the file (csv.Sniffer): comma, tab, semicolon, ...
            df = pd.read_csv(path, sep=None, engine="python")
    except UnicodeDecodeError:
        raise DataError(f"--data '{spec}' is not UTF-8 text; save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise DataError(
            f"Cannot read --data '{spec}': {exc} (give the separator with --sep, e.g. --sep ',')."
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"--data '{spec}' holds no data (no header row).") from None
    except Exception as exc:  # any other parser failure: pandas', pyarrow's
        raise DataError(f"Cannot read --data '{spec}': {type(exc).__name__}: {exc}") from None
    if len(df) == 0:
        raise DataError(f"--data '{spec}' has a header but no rows of data.")
    df.attrs["name"] = path.name
    return df


# ---- output ------------------------------------------------------------------------------


def _emit(fmt: str, text: str, frame=None, record=None) -> None:
    if fmt == "json":
        print(json.dumps(record, indent=2, allow_nan=False))
    elif fmt == "csv":
        print(frame.to_csv(index=False), end="")
    else:
        print(text)


def bootstrap_summary(fit, boot, level: float = 0.95):
    """Per parameter: the fit's estimate, the replicates' mean and SD, the percentile interval."""
    import numpy as np
    import pandas as pd

    sdcor = fit.sdcor.to_numpy()
    estimates = np.concatenate([sdcor, fit.fixef.to_numpy()])
    ok = boot.table[boot.table["converged"]]
    ci = boot.confint(level=level, method="percentile")
    rows = []
    for name, est in zip(boot.parameters, estimates):
        v = ok[name].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        rows.append(
            {
                "parameter": name,
                "estimate": float(est),
                "mean": float(np.mean(v)) if len(v) else np.nan,
                "sd": float(np.std(v, ddof=1)) if len(v) > 1 else np.nan,
                "lower": float(ci.loc[name, "lower"]),
                "upper": float(ci.loc[name, "upper"]),
            }
        )
    return pd.DataFrame(rows)


# ---- subcommands ---------------------------------------------------------------------------


@contextlib.contextmanager
def status(message: str, stream=None):
    """A one-line status on ``stream`` (default stderr) while the block runs, erased after it; only
    where the stream is a terminal (a pipe or a file gets nothing)."""
    stream = sys.stderr if stream is None else stream
    shown = bool(getattr(stream, "isatty", lambda: False)())
    if shown:
        stream.write(f"jaxlmm: {message} ...")
        stream.flush()
    try:
        yield
    finally:
        if shown:
            stream.write("\r\033[K")
            stream.flush()


def _fit(args, formula=None):
    data = _read_data(args.data, args.sep)
    formula = formula or args.formula
    with status(f"fitting {formula} (a new model compiles first: seconds)"):
        return lmm(formula, data, reml=not args.ml, method=args.optimizer)


def _cmd_fit(args) -> None:
    fit = _fit(args)
    if args.format == "text":
        with status("computing the summary (Satterthwaite's df)"):
            text = fit.summary()
        _emit("text", text)
    else:
        _emit(args.format, "", frame=fit.tidy(), record=fit.to_dict())


def _cmd_bootstrap(args) -> None:
    fit = _fit(args)
    boot = bootstrap(fit, n=args.n, seed=args.seed, progress=sys.stderr.isatty())
    table = bootstrap_summary(fit, boot, level=args.level)
    text = (
        f"Parametric bootstrap of {fit.formula} ({'REML' if fit.reml else 'ML'}): "
        f"{args.n} replicates, seed {args.seed}; {boot.n_used} used, {boot.n_failed} not converged\n"
        f"Percentile intervals at level {args.level:g}\n\n"
        + table.to_string(index=False, float_format=lambda v: f"{v:.6g}")
    )
    record = {
        "formula": fit.formula, "reml": bool(fit.reml), "n": args.n, "seed": args.seed,
        "n_used": boot.n_used, "n_failed": boot.n_failed, "level": args.level,
        "parameters": records(table),
    }
    _emit(args.format, text, frame=table, record=record)


def _cmd_pbtest(args) -> None:
    import pandas as pd

    data = _read_data(args.data, args.sep)
    null = lmm(args.null_formula, data, reml=False, method=args.optimizer)
    alt = lmm(args.alt_formula, data, reml=False, method=args.optimizer)
    res = pb_test(null, alt, n=args.n, seed=args.seed, progress=sys.stderr.isatty())
    record = {
        "null": null.formula, "alternative": alt.formula, "lrt": res.lrt, "df": res.df,
        "p_value": res.p_value, "p_chisq": res.p_chisq, "n": args.n, "seed": args.seed,
        "n_used": res.n_used, "n_failed": res.n_failed,
    }
    text = "\n".join(
        [
            "Parametric bootstrap likelihood-ratio test (ML fits)",
            f"  null:        {null.formula}",
            f"  alternative: {alt.formula}",
            f"LRT = {res.lrt:.4f} on {res.df} df; bootstrap p = {res.p_value:.4g} "
            f"({res.n_used} replicates used, {res.n_failed} not converged; seed {args.seed}); "
            f"chi-square p = {res.p_chisq:.4g}",
        ]
    )
    _emit(args.format, text, frame=pd.DataFrame([record]), record=record)


def _cmd_confint(args) -> None:
    method = confint_method(args.method)
    fit = _fit(args)
    ci = confint(fit, method=method, level=args.level, n=args.n, seed=args.seed)
    table = ci.reset_index(names="parameter")
    text = f"{method} intervals at level {args.level:g} ({fit.formula})\n" + ci.to_string(
        float_format=lambda v: f"{v:.6g}"
    )
    record = {"formula": fit.formula, "method": method, "level": args.level, "intervals": records(table)}
    _emit(args.format, text, frame=table, record=record)


# ---- the parser ------------------------------------------------------------------------------


def _level(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, not {text}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Fit linear mixed models with JAX.")
    parser.add_argument("--version", action="version", version=f"jaxlmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fit,bootstrap,pbtest,confint}")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", required=True, help="a CSV/TSV/Parquet file, or a bundled dataset's name (a file of that name wins; bundled:NAME forces it)")
    data.add_argument("--sep", default=None, help="separator of a text data file (default: sniffed); 'tab' for tabs")
    data.add_argument("--format", default="text", choices=FORMATS, help="output format (default text)")
    fitting = argparse.ArgumentParser(add_help=False)
    fitting.add_argument("--ml", action="store_true", help="fit by maximum likelihood (default REML)")
    replicates = argparse.ArgumentParser(add_help=False)
    replicates.add_argument("--n", type=_positive, default=1000, help="bootstrap replicates (default 1000)")
    replicates.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    formula_help = "lme4 formula, e.g. 'Reaction ~ Days + (Days | Subject)'"

    fit = sub.add_parser("fit", parents=[data, fitting], help="fit a model and print an lme4-style summary",
                         description="Fit a model; text: lmerTest's summary, json: every estimate, csv: tidy table.")
    fit.add_argument("formula", help=formula_help)
    fit.add_argument("--method", "--optimizer", dest="optimizer", default="newton", choices=OPTIMIZERS,
                     help="optimizer")
    fit.set_defaults(run=_cmd_fit)

    boot = sub.add_parser("bootstrap", parents=[data, fitting, replicates],
                          help="parametric bootstrap of a fit (lme4's bootMer)",
                          description="Parametric bootstrap: the replicates' mean, SD and percentile intervals.")
    boot.add_argument("formula", help=formula_help)
    boot.add_argument("--level", type=_level, default=0.95, help="interval level (default 0.95)")
    boot.add_argument("--optimizer", default="newton", choices=OPTIMIZERS, help="optimizer of the fit")
    boot.set_defaults(run=_cmd_bootstrap)

    pbt = sub.add_parser("pbtest", parents=[data, replicates],
                         help="parametric bootstrap LRT of two nested models (pbkrtest's PBmodcomp)",
                         description="Parametric bootstrap likelihood-ratio test; both models fitted by ML.")
    pbt.add_argument("null_formula", help="formula of the smaller model (H0)")
    pbt.add_argument("alt_formula", help="formula of the larger model")
    pbt.add_argument("--optimizer", default="newton", choices=OPTIMIZERS, help="optimizer of the fits")
    pbt.set_defaults(run=_cmd_pbtest)

    ci = sub.add_parser("confint", parents=[data, fitting, replicates],
                        help="confidence intervals of all parameters (lme4's confint)",
                        description="Confidence intervals by profile likelihood, Wald or the bootstrap.")
    ci.add_argument("formula", help=formula_help)
    ci.add_argument("--method", default="profile", type=str.lower,
                    choices=["profile", "wald", "boot", "bootstrap"], help="interval method (default profile)")
    ci.add_argument("--level", type=_level, default=0.95, help="interval level (default 0.95)")
    ci.add_argument("--optimizer", default="newton", choices=OPTIMIZERS, help="optimizer of the fit")
    ci.set_defaults(run=_cmd_confint)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"jaxlmm: warning: {category.__name__}: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            args.run(args)
        except JaxLMMError as exc:
            print(f"jaxlmm: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
