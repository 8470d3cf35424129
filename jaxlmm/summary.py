"""lme4-style text summary of a fit. Formats numbers computed elsewhere only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .control import Hessian
from .errors import JaxLMMError


def _fmt_table(df: pd.DataFrame, index: bool = True) -> str:
    return df.to_string(index=index)


def _random_effects_block(fit) -> list[str]:
    vc = fit.varcorr
    rows = []
    for grp, sub in vc.groupby("group", sort=False):
        diag = sub[sub["term2"].isna()]
        k = len(diag)
        names = list(diag["term1"]) if grp != "Residual" else [""]
        cors = np.full((k, k), np.nan)
        for _, r in sub[sub["term2"].notna()].iterrows():
            i, j = names.index(r["term1"]), names.index(r["term2"])
            cors[j, i] = r["sd_cor"]
        for i, (_, r) in enumerate(diag.iterrows()):
            corr = " ".join(f"{cors[i, j]:5.2f}" for j in range(i))
            rows.append([grp if i == 0 else "", names[i], f"{r['variance']:.4g}", f"{r['sd_cor']:.4g}", corr])
    has_corr = any(r[4] for r in rows)
    header = ["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] if has_corr else [])
    table = [header] + [r if has_corr else r[:4] for r in rows]
    widths = [max(len(str(row[c])) for row in table) for c in range(len(header))]
    out = []
    for row in table:
        cells = []
        for c, cell in enumerate(row):
            cells.append(str(cell).ljust(widths[c]) if c < 2 or c == 4 else str(cell).rjust(widths[c]))
        out.append(" " + " ".join(cells).rstrip())
    return out


SUMMARY_DDF = ("satterthwaite", "residual", "wald", "none")
"""The fixed-effects tables of a summary: a :meth:`~jaxlmm.results.LmmFit.coef_table` method, or
``"none"``: lme4's (estimate, standard error, t value; no df, no p-value)."""

_TESTS = {
    "satterthwaite": "t-tests use Satterthwaite's method [lmerModLmerTest]",
    "residual": "t-tests use the residual df (n - p)",
    "wald": "Wald z-tests (the normal law)",
    "none": "['lmerMod']",
}


def satterthwaite_by_default(control, products) -> bool:
    """Whether the default summary of a fit of ``products`` under ``control`` computes
    Satterthwaite's df: where its optimizer uses exact Hessians (:func:`default_ddf`)."""
    return control.newton_hessian(products.q_rest) is Hessian.EXACT


def default_ddf(fit) -> str:
    """The summary's df when none is asked for: Satterthwaite's (lmerTest's table) where the fit's
    optimizer used exact Hessians (``fit.control.newton_hessian``), else ``"none"`` (lme4's table).

    Satterthwaite's df need the Hessian of the criterion in (theta, sigma) and the Jacobian of
    Var(beta-hat), whose program compiles in seconds for a large dense Schur complement (InstEval):
    a printed summary is then immediate, and ``fit.summary(ddf="satterthwaite")`` or
    ``fit.coef_table()`` computes them on request.
    """
    return "satterthwaite" if satterthwaite_by_default(fit.control, fit.products) else "none"


def format_summary(fit, correlation: bool | None = None, ddf: str | None = None) -> str:
    """The text lme4's ``summary(lmer(...))`` prints, for a jaxlmm fit; with lmerTest's df and p-values.

    ``correlation``: print the correlation of the fixed effects (lme4's
    default: when there are at most 12 of them). ``ddf``: the fixed-effects
    table (:data:`SUMMARY_DDF`); by default :func:`default_ddf`.
    """
    if correlation is not None and not isinstance(correlation, (bool, np.bool_)):
        raise JaxLMMError(f"correlation must be True, False or None, not {correlation!r}.")
    if ddf is None:
        ddf = default_ddf(fit)
    if not isinstance(ddf, str) or ddf not in SUMMARY_DDF:
        raise JaxLMMError(f"ddf must be one of {SUMMARY_DDF} (or None: the default), not {ddf!r}.")
    lines = _heading(fit, ddf) + [""] + _criterion(fit) + [""] + _scaled_residuals(fit) + [""]
    lines += ["Random effects:"] + _random_effects_block(fit) + _counts(fit) + [""]
    lines += ["Fixed effects:", _fixed_effects(fit, ddf)] + correlation_block(fit, correlation)
    notes = _notes(fit)
    if ddf == "none":
        notes.append("df and p-values (Satterthwaite's, as lmerTest): fit.summary(ddf=\"satterthwaite\")")
    return "\n".join(lines + ([""] + notes if notes else []))


def _heading(fit, ddf: str) -> list[str]:
    kind = "REML" if fit.reml else "maximum likelihood"
    sep = " " if ddf == "none" else ". "
    lines = [f"Linear mixed model fit by {kind}{sep}{_TESTS[ddf]}"]
    lines.append(f"Fitted by jaxlmm ({fit.method} optimizer)")
    lines.append(f"Formula: {fit.formula}")
    if fit.data_name:
        lines.append(f"   Data: {fit.data_name}")
    weights = fit.design.weights_arg
    if weights is not None:
        lines.append(f"Weights: {weights if weights != 'numbers' else '(one number per row)'}")
    return lines


def _criterion(fit) -> list[str]:
    """The REML criterion, or AIC, BIC, logLik, deviance and df.resid of an ML fit."""
    if fit.reml:
        return [f"REML criterion at convergence: {fit.objective:.4f}"]
    stats = pd.DataFrame(
        [[fit.aic, fit.bic, fit.loglik, fit.objective, fit.df_resid]],
        columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
    )
    return [stats.to_string(index=False, float_format=lambda v: f"{v:.4f}")]


def _scaled_residuals(fit) -> list[str]:
    res = fit.residuals(type="pearson", scaled=True)  # as lme4's summary
    q = np.quantile(res, [0, 0.25, 0.5, 0.75, 1])
    table = pd.DataFrame([q], columns=["Min", "1Q", "Median", "3Q", "Max"])
    return ["Scaled residuals:", table.to_string(index=False, float_format=lambda v: f"{v:.4f}")]


def _counts(fit) -> list[str]:
    """Observations, levels per grouping factor, rows dropped."""
    groups = {}
    for t in fit.terms:
        groups.setdefault(t.name, t.nlevels)
    grp_txt = "; ".join(f"{g}, {n}" for g, n in groups.items())
    lines = [f"Number of obs: {fit.nobs}" + (f", groups:  {grp_txt}" if groups else "")]
    if fit.n_dropped:
        lines.append(f"({fit.n_dropped} observation(s) deleted due to missingness)")
    return lines


def _fixed_effects(fit, ddf: str) -> str:
    number = lambda v: f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"  # noqa: E731
    return fit_fixed_table(fit, ddf).to_string(float_format=number, formatters={"df": lambda v: f"{v:.2f}"})


def _notes(fit) -> list[str]:
    notes = []
    if fit.singular:
        notes.append("boundary (singular) fit: see fit.varcorr")
    if not fit.converged:
        notes.append(f"optimizer ({fit.method}) did not converge in {fit.n_iter} iterations")
    dropped = fit.design.dropped_columns
    if dropped:
        notes.append(f"fixed-effect model matrix is rank deficient: dropped {', '.join(dropped)}")
    return notes


def fit_fixed_table(fit, ddf: str = "satterthwaite") -> pd.DataFrame:
    """Estimate, SE, df, t value and p-value with lmerTest's headers; lme4's three columns for ``"none"``."""
    if ddf == "none":
        est, se = fit.fixef.to_numpy(), fit.se.to_numpy()
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "t value": est / se}, index=fit.fixef.index)
    return fit.coef_table(ddf=ddf).rename(
        columns={"estimate": "Estimate", "se": "Std. Error", "df": "df", "t": "t value", "p": "Pr(>|t|)"}
    )


MAX_CORRELATION = 12  # lme4's print.summary.merMod shows the correlations for p <= 12


def abbreviate(name: str, minlength: int) -> str:
    """R's ``abbreviate(name, minlength)``: lower-case vowels, then lower-case letters, dropped from the right.

    The first character is kept; what is still too long is truncated.
    """
    chars = list(str(name).strip())
    for drop in (lambda c: c in "aeiou", lambda c: c.islower()):
        i = len(chars) - 1
        while len(chars) > minlength and i > 0:
            if drop(chars[i]):
                del chars[i]
            i -= 1
    return "".join(chars[: max(minlength, 1)]) if len(chars) > minlength else "".join(chars)


def abbreviate_all(names, minlength: int) -> list[str]:
    """Abbreviations of ``names`` that stay distinct (longer ones where needed, as R)."""
    out = [abbreviate(n, minlength) for n in names]
    while len(set(out)) < len(out) and minlength < max(len(str(n)) for n in names):
        minlength += 1
        out = [abbreviate(n, minlength) for n in names]
    return out


def fixef_correlation(fit) -> pd.DataFrame:
    """The correlation matrix of the fixed-effect estimates, cov2cor(vcov)."""
    v = fit.vcov.to_numpy()
    d = np.sqrt(np.diag(v))
    return pd.DataFrame(v / np.outer(d, d), index=fit.vcov.index, columns=fit.vcov.columns)


def correlation_block(fit, correlation: bool | None = None) -> list[str]:
    """lme4's "Correlation of Fixed Effects:" lines (lower triangle, 3 decimals, abbreviated names)."""
    p = len(fit.fixef)
    if p < 2 or correlation is False:
        return []
    if correlation is None and p > MAX_CORRELATION:
        return [
            "",
            f"Correlation matrix not shown by default, as p = {p} > {MAX_CORRELATION}.",
            "Use fit.summary(correlation=True) or fit.vcov if you need it.",
        ]
    names = list(fit.fixef.index)
    cor = fixef_correlation(fit).to_numpy()
    rows, cols = abbreviate_all(names, 11), abbreviate_all(names, 6)
    cells = [[f"{cor[i, j]:.3f}" if j < i else "" for j in range(p - 1)] for i in range(1, p)]
    numbers = [c for row in cells for c in row if c]
    width = max(len(c) for c in numbers)
    cells = [[c.rjust(width) if c else c for c in row] for row in cells]
    widths = [max(len(cols[j]), width) for j in range(p - 1)]
    label = max(len(r) for r in rows[1:])
    out = ["", "Correlation of Fixed Effects:"]
    out.append((" " * label + " " + " ".join(cols[j].ljust(widths[j]) for j in range(p - 1))).rstrip())
    for i, row in enumerate(cells):
        out.append((rows[i + 1].ljust(label) + " " + " ".join(c.ljust(widths[j]) for j, c in enumerate(row))).rstrip())
    return out
