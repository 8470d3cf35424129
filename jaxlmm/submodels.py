"""Submodels of a fitted model: a random-effect term removed, or reduced.

The likelihood-ratio tests of variance components (:mod:`jaxlmm.ranova`,
:mod:`jaxlmm.rlrt`) compare a fit with fits of the same fixed effects and
data, less one random-effect term (lmerTest's ``update(model, . ~ . - (x | g))``)
or with the term's left-hand side reduced (``(1 + x | g)`` to ``(1 | g)``).
The data frame is not kept by a fit; the submodel is built from the fit's
:class:`~jaxlmm.design.Design` (rows, X, y, offset, the other terms' codes and
columns unchanged), so no formula is parsed or evaluated again.

Terms are named as lme4's ``findbars`` deparses them: ``(0 + Days | Subject)``.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .errors import JaxLMMError
from .formula import ParsedFormula, RandomTerm
from .model import LinearMixedModel


def bar_label(term) -> str:
    """``(expr | g)``: a random-effect term as lme4's ``findbars`` prints it."""
    return f"({term.expr} | {term.name})"


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).strip("()")


def formula_order(design) -> list[int]:
    """Indices of ``design.terms`` in the order of the formula (the design sorts them by levels)."""
    order, used = [], set()
    for rt in design.formula.random:
        for i, t in enumerate(design.terms):
            if i not in used and (t.expr, t.factors, t.name) == (rt.expr, rt.factors, rt.name):
                order.append(i)
                used.add(i)
                break
    order += [i for i in range(len(design.terms)) if i not in used]
    return order


def find_term(design, term) -> int:
    """The index in ``design.terms`` of ``term``.

    ``term``: the term as lme4 prints it (``"(0 + Days | Subject)"``, spaces and
    outer parentheses optional), ``"group.column"`` for a term of one column
    (``"Subject.Days"``, ``"Batch.(Intercept)"``), or an index into the
    terms in the formula's order.
    """
    terms = design.terms
    labels = [bar_label(t) for t in terms]
    if isinstance(term, (int, np.integer)) and not isinstance(term, bool):
        order = formula_order(design)
        if not 0 <= term < len(order):
            raise JaxLMMError(f"term index {term} is out of range: the model has {len(order)} random-effect terms.")
        return order[int(term)]
    if not isinstance(term, str):
        raise JaxLMMError(f"term must be a string such as {labels[0]!r} or an index, not {term!r}.")
    hits = [i for i, lab in enumerate(labels) if _squash(lab) == _squash(term)]
    if not hits:
        hits = [i for i, t in enumerate(terms) if t.k == 1 and f"{t.name}.{t.colnames[0]}" == term.strip()]
    if len(hits) != 1:
        what = "matches several terms" if hits else "is not a random-effect term of the model"
        raise JaxLMMError(f"{term!r} {what}; the terms are {', '.join(labels)}.")
    return hits[0]


def term_labels(term) -> list[str]:
    """The formula terms of a random-effect term's left-hand side, intercept excluded (R's ``term.labels``)."""
    if term.spec is not None:
        return [":".join(labs) for labs in term.spec.terms]
    return [c for c in term.colnames if c != "(Intercept)"]


def reduced_term(term, label: str):
    """``term`` with the formula term ``label`` dropped from its left-hand side (lmerTest's ``get_newforms``).

    Dropping the only formula term leaves ``(1 | g)``, even where the term had
    no intercept (``(0 + x | g)`` becomes ``(1 | g)``), as lmerTest does.
    Each formula term must be one column (a numeric variable, not a factor).
    """
    labels = term_labels(term)
    if any(lab not in term.colnames for lab in labels):
        raise JaxLMMError(
            f"Reducing {bar_label(term)} needs one column per formula term; its columns are "
            f"{list(term.colnames)} for the terms {labels} (a factor slope cannot be reduced yet)."
        )
    if labels == [label]:
        cols, X, expr = ("(Intercept)",), np.ones((term.X.shape[0], 1)), "1"
    else:
        keep = [j for j, c in enumerate(term.colnames) if c != label]
        cols = tuple(term.colnames[j] for j in keep)
        X = term.X[:, keep]
        rest = [lab for lab in labels if lab != label]
        expr = " + ".join(rest) if "(Intercept)" in cols else " + ".join(["0"] + rest)
    return dataclasses.replace(term, expr=expr, colnames=cols, X=np.ascontiguousarray(X), spec=None)


def with_terms(fit, terms) -> LinearMixedModel:
    """The :class:`~jaxlmm.model.LinearMixedModel` of ``fit``'s rows and fixed effects with random-effect
    ``terms`` (and ``fit``'s control)."""
    d = fit.design
    pf = d.formula
    random = tuple(RandomTerm(expr=t.expr, factors=t.factors, name=t.name) for t in terms)
    text = f"{pf.response} ~ {pf.fixed}" + "".join(f" + {bar_label(t)}" for t in terms)
    formula = dataclasses.replace(pf, text=text, random=random) if isinstance(pf, ParsedFormula) else pf
    design = dataclasses.replace(d, formula=formula, terms=tuple(terms))
    return LinearMixedModel(text, None, design=design, control=fit.control)
