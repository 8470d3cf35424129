"""Parse lme4 model formulas into a fixed part and random-effect terms.

The fixed part and each term's left-hand side are ordinary Wilkinson
formulas, read by :mod:`jaxlmm.terms` (parsed into a tree, never executed;
every part is parsed and its calls checked here, before any data is
touched); this module finds and expands the random-effect bars, following
lme4's rules
(Bates et al., JSS 2015, section 2.1, Table 2):

- ``(expr | g)``: correlated effects ``expr`` for each level of ``g``;
- ``(expr || g)``: one independent term per formula term of ``expr``
  (``(1 + x || g)`` is ``(1 | g) + (0 + x | g)``);
- ``(expr | a/b)``: nested, ``(expr | a) + (expr | b:a)`` (lme4's naming);
- ``(expr | a:b)``: grouping by the interaction of ``a`` and ``b``;
- a bar outside parentheses binds more loosely than ``+``, as in R:
  ``y ~ x + 1 | g`` is ``y ~ 1 + (x + 1 | g)`` (with a warning where the
  fixed part thereby loses terms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import DataError, FormulaError, JaxLMMWarning, warn
from .terms import BinOp, expand_terms, parse, term_label, vet

_FACTOR_CALL = re.compile(r"^(?:as\.)?factor\(\s*([^()]*?)\s*\)$")
_NAME = re.compile(r"^(?:[^\W\d]|\.(?!\d))[\w.]*$|^`[^`]+`$")


@dataclass(frozen=True)
class RandomTerm:
    """One random-effect term ``(expr | g)`` after expansion.

    ``expr`` is a right-hand side (:mod:`jaxlmm.terms`) for the per-row model matrix of
    the term; ``factors`` are the data columns whose interaction groups the
    rows; ``name`` is lme4's label of the grouping factor.
    """

    expr: str
    factors: tuple[str, ...]
    name: str


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed right-hand side and random terms."""

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]


_QUOTED = re.compile(r"`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")


def _squash_space(text: str) -> str:
    """``text`` with each run of white space outside quotes and backticks made one space, and none at
    the ends (a backticked name or a quoted level keeps its own spaces and tabs)."""
    out, last = [], 0
    for m in _QUOTED.finditer(text):
        out += [re.sub(r"\s+", " ", text[last : m.start()]), m.group(0)]
        last = m.end()
    out.append(re.sub(r"\s+", " ", text[last:]))
    return "".join(out).strip()


def _check_parens(text: str) -> None:
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(
                    f"Unbalanced parentheses in formula '{text}': ')' at position {i} has no '('."
                )
    if depth:
        raise FormulaError(f"Unbalanced parentheses in formula '{text}': {depth} '(' not closed.")


def _top_level_split(text: str, sep: str) -> list[str]:
    """Split ``text`` at occurrences of ``sep`` outside parentheses."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _matching_paren(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise FormulaError(f"Unbalanced parentheses in formula '{text}'.")  # pragma: no cover


def _strip_outer(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and _matching_paren(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _find_bars(rhs: str, full: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """Remove the top-level ``(lhs | g)`` groups from ``rhs``.

    Returns the remaining fixed part and a list of ``(lhs, group, double)``.
    """
    bars, fixed, i = [], [], 0
    while i < len(rhs):
        ch = rhs[i]
        if ch == "(" and re.search(r"[\w.`]\s*$", rhs[:i]):  # a call's parentheses: f(...)
            j = _matching_paren(rhs, i)
            fixed.append(rhs[i : j + 1])
            i = j + 1
            continue
        if ch == "(":
            j = _matching_paren(rhs, i)
            inner = rhs[i + 1 : j]
            if not inner.strip():
                raise FormulaError(
                    f"Empty parentheses '()' in '{full}': write a term inside them, "
                    "e.g. (1 | g) for a random intercept."
                )
            if "|" in inner:
                bars.extend(_bars_in(inner, full))
                fixed.append(" ")
            else:
                fixed.append(rhs[i : j + 1])
            i = j + 1
            continue
        fixed.append(ch)
        i += 1
    return "".join(fixed), bars


def _bars_in(inner: str, full: str) -> list[tuple[str, str, bool]]:
    """The ``(lhs, group, double)`` of the parenthesized group ``(inner)``, which holds a bar."""
    pieces = _top_level_split(inner, "||")
    double = len(pieces) == 2
    if not double:
        pieces = _top_level_split(inner, "|")
    if len(pieces) == 1:
        # the bar sits inside a further pair of parentheses: ((x | g))
        sub_fixed, sub_bars = _find_bars(inner, full)
        if sub_fixed.strip(" +"):
            raise FormulaError(f"Cannot read the random-effect term '({inner})' in '{full}'.")
        return sub_bars
    if len(pieces) != 2:
        raise FormulaError(
            f"Random-effect term '({inner})' in '{full}' has more than one bar; "
            "write one term per grouping factor, e.g. (1 | a) + (1 | b)."
        )
    lhs, grp = pieces[0].strip(), pieces[1].strip()
    if not lhs:
        raise FormulaError(
            f"Empty random-effect term '({inner})' in '{full}': put the effects "
            "left of the bar, e.g. (1 | g) for a random intercept."
        )
    if not grp:
        raise FormulaError(
            f"Random-effect term '({inner})' in '{full}' names no grouping factor right of the bar."
        )
    return [(lhs, grp, double)]


def _clean_fixed(text: str) -> str:
    """Drop the empty summands left behind by removed random terms."""
    parts = [p.strip() for p in _top_level_split(text, "+")]
    kept = [p for p in parts if p]
    return " + ".join(kept) if kept else "1"


def _grouping(grp: str, full: str) -> list[tuple[tuple[str, ...], str]]:
    """Expand a grouping expression into ``(factors, lme4 name)`` pairs.

    ``a/b/c`` gives ``a``, ``b:a`` and ``c:(b:a)`` (lme4's names; the last groups by the levels of
    c, b and a together); ``a:b`` is one interaction; ``factor(g)`` is ``g``, named as written.
    """
    grp = _strip_outer(grp)
    nest = [p.strip() for p in _top_level_split(grp, "/")]
    out, outer, name = [], [], ""
    for level in nest:
        texts = [_strip_outer(c).strip() for c in _top_level_split(_strip_outer(level), ":")]
        cols = []
        for c in texts:
            call = _FACTOR_CALL.match(c)  # factor(g): a grouping factor is a factor anyway
            inner = call.group(1) if call else c
            if not inner or not _NAME.match(inner):
                raise FormulaError(
                    f"Grouping factor '{grp}' in '{full}' is not a column name, factor(column) or an "
                    "interaction a:b of them."
                )
            cols.append(inner.strip("`"))
        outer = outer + cols
        # lme4 labels the nested terms b:a, c:(b:a), ... (inner first); their levels read the same way
        factors = tuple(reversed(outer)) if len(nest) > 1 else tuple(outer)
        this = ":".join(reversed(texts)) if len(nest) > 1 else ":".join(texts)
        this = this.replace("`", "")
        name = this if not name else f"{this}:({name})" if ":" in name else f"{this}:{name}"
        out.append((factors, name))
    return out


def _split_double(lhs: str, full: str) -> list[str]:
    """The per-term left-hand sides of ``(lhs || g)`` (lme4's expansion)."""
    where = f"the random-effect term ({lhs} || ...)"
    tl = expand_terms(parse(lhs, where), where, lhs)
    return (["1"] if tl.intercept else []) + [f"0 + {term_label(t)}" for t in tl.terms]


def _check_part(text: str, where: str, top_level_offset: bool = False):
    """Parse one part of the formula and refuse unknown functions: nothing is evaluated yet."""
    node = parse(text, where)
    vet(node, where, None)
    tl = expand_terms(node, where, text)
    if not top_level_offset:
        if tl.offsets:
            raise FormulaError(f"offset(...) in {where} '{text}': offsets belong in the fixed part.")
    return node


def _check_response(response: str, full: str) -> None:
    """The response is one expression: a column or a transform of columns, not a sum of terms."""
    where = "the response"
    node = parse(response, where)
    vet(node, where, None)
    if isinstance(node, BinOp) and node.op in ("+", "-", "*", "/", ":", "^", "%in%"):
        raise DataError(
            f"The response '{response}' of '{full}' is several terms; a linear mixed model has one "
            f"numeric response (write I({response}) for arithmetic on columns)."
        )


def parse_formula(text: str) -> ParsedFormula:
    """Parse an lme4 formula such as ``'y ~ x + (x | g)'``.

    Raises :class:`FormulaError` naming the problem for a missing ``~``,
    unbalanced parentheses, a bar in the response, an empty random term
    or a malformed grouping factor.
    """
    if not isinstance(text, str):
        raise FormulaError(f"The formula must be a string like 'y ~ x + (1 | g)', not {type(text).__name__}.")
    full = _squash_space(text)
    _check_parens(full)
    sides = _top_level_split(full, "~")
    if len(sides) != 2:
        raise FormulaError(
            f"The formula '{full}' needs exactly one '~' separating the response from the "
            "predictors, e.g. 'y ~ x + (1 | g)'."
        )
    response, rhs = sides[0].strip(), sides[1].strip()
    if not response:
        raise FormulaError(f"The formula '{full}' has no response left of '~'.")
    if not rhs:
        raise FormulaError(f"The formula '{full}' has nothing right of '~'.")
    if "|" in response:
        raise FormulaError(f"A bar '|' in the response of '{full}': random effects go right of '~'.")
    whole = len(_top_level_split(rhs, "|")) > 1
    if whole:
        # R's precedence: '|' binds more loosely than '+', so y ~ x + 1 | g is y ~ (x + 1 | g), and
        # lme4's fixed part is the intercept alone
        rhs = f"({rhs})"
    fixed, bars = _find_bars(rhs, full)
    fixed = _clean_fixed(fixed)
    if re.search(r"(?<![\w.`])\.(?![\w.`])", fixed):
        raise FormulaError(
            f"'.' (all other columns) in '{full}' is not supported: name the predictors, "
            "e.g. y ~ x1 + x2 + (1 | g)."
        )
    try:
        _check_response(response, full)
        _check_part(fixed, "the fixed-effect formula", top_level_offset=True)
        for lhs, grp, _ in bars:
            _check_part(lhs, f"the random-effect term ({lhs} | {grp})")
    except FormulaError as exc:
        raise FormulaError(f"{exc} (Formula: '{full}')") from None
    terms: list[RandomTerm] = []
    for lhs, grp, double in bars:
        exprs = _split_double(lhs, full) if double else [lhs]
        for factors, name in _grouping(grp, full):
            for expr in exprs:
                terms.append(RandomTerm(expr=expr, factors=factors, name=name))
    if whole:
        lhs, grp, double = bars[0]
        labels = [term_label(t) for t in expand_terms(parse(lhs, "the random-effect term"), "", lhs).terms]
        if labels:
            bar = f"({lhs} {'||' if double else '|'} {grp})"
            warn(
                f"'|' binds more loosely than '+', as in R: '{full}' is {response} ~ 1 + {bar}, with the "
                f"intercept as its only fixed effect; for {' + '.join(labels)} as fixed effects too, write "
                f"{response} ~ {' + '.join(labels)} + {bar}.",
                JaxLMMWarning,
            )
    return ParsedFormula(text=full, response=response, fixed=fixed, random=tuple(terms))
