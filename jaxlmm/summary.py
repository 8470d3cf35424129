"""lme4-style text summary of a fit. Formats numbers computed elsewhere only."""

from __future__ import annotations

import numpy as np
import pandas as pd


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


def format_summary(fit) -> str:
    """The text lme4's ``summary(lmer(...))`` prints, for a jaxlmm fit."""
    kind = "REML" if fit.reml else "maximum likelihood"
    lines = [f"Linear mixed model fit by {kind} (jaxlmm, {fit.method})"]
    lines.append(f"Formula: {fit.formula}")
    name = getattr(fit.model, "data_name", None)
    if name:
        lines.append(f"   Data: {name}")
    lines.append("")
    if fit.reml:
        lines.append(f"REML criterion at convergence: {fit.objective:.4f}")
    else:
        stats = pd.DataFrame(
            [[fit.aic, fit.bic, fit.loglik, fit.objective, fit.df_resid]],
            columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
        )
        lines.append(stats.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    lines.append("")
    res = fit.residuals(scaled=True)
    q = np.quantile(res, [0, 0.25, 0.5, 0.75, 1])
    lines.append("Scaled residuals:")
    lines.append(
        pd.DataFrame([q], columns=["Min", "1Q", "Median", "3Q", "Max"]).to_string(
            index=False, float_format=lambda v: f"{v:.4f}"
        )
    )
    lines.append("")
    lines.append("Random effects:")
    lines.extend(_random_effects_block(fit))
    groups = {}
    for t in fit.terms:
        groups.setdefault(t.name, t.nlevels)
    grp_txt = "; ".join(f"{g}, {n}" for g, n in groups.items())
    lines.append(f"Number of obs: {fit.nobs}" + (f", groups:  {grp_txt}" if groups else ""))
    if fit.n_dropped:
        lines.append(f"({fit.n_dropped} observation(s) deleted due to missingness)")
    lines.append("")
    lines.append("Fixed effects:")
    table = fit_fixed_table(fit)
    lines.append(table.to_string(float_format=lambda v: f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"))
    notes = []
    if fit.singular:
        notes.append("boundary (singular) fit: see fit.varcorr")
    if not fit.converged:
        notes.append(f"optimizer ({fit.method}) did not converge in {fit.n_iter} iterations")
    dropped = fit.model.design.dropped_columns
    if dropped:
        notes.append(f"fixed-effect model matrix is rank deficient: dropped {', '.join(dropped)}")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def fit_fixed_table(fit) -> pd.DataFrame:
    """Estimate, SE, Satterthwaite df, t value and p-value, with lmerTest's headers."""
    return fit.coef_table(ddf="satterthwaite").rename(
        columns={"estimate": "Estimate", "se": "Std. Error", "df": "df", "t": "t value", "p": "Pr(>|t|)"}
    )
