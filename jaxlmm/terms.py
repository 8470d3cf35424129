"""Formula expressions as data: R's grammar read into a tree, evaluated without ``eval``.

A model formula is never executed as code. Each part of it (the response,
the fixed part, a random term's left side) is tokenized and parsed here into
a small tree of five node kinds: a column name, a number, a text literal, an
operator, and a call of a function from a fixed list (:data:`FUNCTIONS`).
Anything else (attributes ``a.b(...)``, subscripts ``a[1]``, ``$``, lambdas,
assignments) is a :class:`~jaxlmm.errors.FormulaError` raised while parsing,
before any data is touched. Evaluation walks that tree over numpy arrays:
names are looked up among the data's columns only, and calls dispatch to
the listed transforms; there is no ``eval``, no builtins, no attribute access.

The meaning is R's (R Core, *An Introduction to R*, ch. 11; Chambers &
Hastie, *Statistical Models in S*, ch. 2), the meaning lme4 gives a formula:

- at the top level of a formula, ``+ - * / : ^ %in%`` are Wilkinson's
  operators (``(a + b + c)^2`` is the main effects and the two-way
  interactions; ``a/b`` is ``a + a:b``); ``0``, ``1``, ``-1`` set the
  intercept; ``offset(x)`` adds a known term with coefficient 1;
- inside a call (``I(x^2)``, ``log(x + 1)``), they are arithmetic, with
  R's precedence (``^`` a power, binding tighter than unary minus);
- integer and boolean columns become float64 before any arithmetic;
- text and categorical columns, and ``factor(x)``, are factors, coded by
  treatment contrasts unless the term needs every level (R's rule in
  ``model.matrix``: a factor gets contrasts when the term without it is
  among the preceding terms, and the first factor of a model without an
  intercept gets all its levels).

The result of reading a formula part is an :class:`Encoding`, which builds
the model matrix for the data it was learned on and, with the same factor
levels, polynomial coefficients and centres, for new data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from .errors import DataError, FormulaError, closest_name

# ---- tokens ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?L?)
  | (?P<name>(?:[^\W\d]|\.(?![\d]))[\w.]*)
  | (?P<backtick>`(?:[^`\\]|\\.)*`)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>%in%|%%|%/%|\*\*|\|\||==|!=|<=|>=|<-|[-+*/^:(),=<>|~])
    """,
    re.VERBOSE,
)

# R's reserved words: never column names unless backticked
_RESERVED = {
    "if", "else", "repeat", "while", "function", "for", "next", "break", "in",
    "TRUE", "FALSE", "NULL", "Inf", "NaN", "NA", "NA_integer_", "NA_real_", "NA_character_",
}

# R's variables T and F: TRUE and FALSE, unless the data has a column of that name (which R reads first)
LOGICAL_NAMES = {"T": 1.0, "F": 0.0}


@dataclass(frozen=True)
class Token:
    kind: str  # name, number, string, op, end
    text: str
    pos: int


def tokenize(text: str, where: str) -> list[Token]:
    """The tokens of ``text``; a character outside R's formula language is a FormulaError."""
    out, i = [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            ch = text[i]
            hint = ""
            if ch in "[]":
                hint = " (subscripts are not part of the formula language)"
            elif ch == "$" or ch == "@":
                hint = " (use the column's name)"
            elif ch in "\"'`":
                hint = " (an unclosed quote)"
            raise FormulaError(f"Unknown operator '{ch}' in {where} '{text}'{hint}.")
        kind = m.lastgroup
        if kind != "space":
            tok = m.group(kind)
            if kind == "backtick":
                out.append(Token("name", _unescape(tok[1:-1]), i))
            elif kind == "string":
                out.append(Token("string", _unescape(tok[1:-1]), i))
            elif kind == "number":
                out.append(Token("number", tok.rstrip("L"), i))
            elif kind == "op" and tok == "**":  # R reads ** as ^
                out.append(Token("op", "^", i))
            elif kind == "op" and tok == "<-":
                raise FormulaError(
                    f"'<-' in {where} '{text}' is R's assignment, which a formula cannot hold "
                    "(for a comparison with a negative number, write x < -1 with a space)."
                )
            elif kind == "name" and tok in _RESERVED:
                out.append(Token("reserved", tok, i))
            else:
                out.append(Token(kind, tok, i))
        i = m.end()
    out.append(Token("end", "", len(text)))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


# ---- the tree ----------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    id: str


@dataclass(frozen=True)
class Num:
    value: float
    logical: bool = False  # TRUE or FALSE (1 and 0 in arithmetic)


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple
    kwargs: tuple  # ((name, node), ...)


@dataclass(frozen=True)
class BinOp:
    op: str
    left: object
    right: object


@dataclass(frozen=True)
class Unary:
    op: str
    operand: object


@dataclass(frozen=True)
class Paren:
    expr: object


# R's precedence (?Syntax), low to high; ``^`` is right-associative and
# binds tighter than unary minus, which binds tighter than ``:``.
_INFIX = {
    "|": 2, "||": 2,
    "==": 5, "!=": 5, "<": 5, ">": 5, "<=": 5, ">=": 5,
    "+": 10, "-": 10,
    "*": 20, "/": 20,
    "%in%": 30, "%%": 30, "%/%": 30,
    ":": 40,
    "^": 60,
}
_UNARY_BP = 50
MAX_DEPTH = 100
"""The deepest nesting of parentheses, calls and signs in a formula part."""
MAX_TERMS = 250
"""The deepest tree a formula part may have (a sum of 250 terms; a guard for the recursive walkers)."""


class _Parser:
    def __init__(self, text: str, where: str):
        self.text, self.where = text, where
        self.toks = tokenize(text, where)
        self.i = 0
        self.depth = 0

    def error(self, msg: str) -> FormulaError:
        return FormulaError(f"{msg} in {self.where} '{self.text}'.")

    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.kind != "op" or tok.text != text:
            found = f"'{tok.text}'" if tok.text else "the end"
            raise self.error(f"Expected '{text}' at position {tok.pos}, found {found}")

    def parse(self):
        if self.peek().kind == "end":
            raise self.error("Nothing to read")
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(f"Unexpected '{tok.text}' at position {tok.pos}")
        return node

    def expr(self, min_bp: int):
        left = self.prefix()
        while True:
            tok = self.peek()
            if tok.kind != "op" or tok.text not in _INFIX:
                if tok.kind in ("name", "number", "string", "reserved") or (tok.kind == "op" and tok.text == "("):
                    raise self.error(f"Unexpected '{tok.text}' at position {tok.pos} (an operator is missing)")
                return left
            bp = _INFIX[tok.text]
            if bp <= min_bp:
                return left
            self.next()
            right = self.expr(bp - 1 if tok.text == "^" else bp)
            left = BinOp(tok.text, left, right)

    def prefix(self):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.error(f"The expression is nested more than {MAX_DEPTH} levels deep")
            return self._prefix()
        finally:
            self.depth -= 1

    def _prefix(self):
        tok = self.next()
        if tok.kind == "op" and tok.text in "+-":
            return Unary(tok.text, self.expr(_UNARY_BP))
        if tok.kind == "op" and tok.text == "(":
            inner = self.expr(0)
            self.expect(")")
            return Paren(inner)
        if tok.kind == "number":
            return Num(float(tok.text))
        if tok.kind == "string":
            return Str(tok.text)
        if tok.kind == "name":
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text == "(" and self.text[tok.pos] != "`":
                self.next()
                return self.call(tok.text)
            return Name(tok.text)
        if tok.kind == "reserved":
            if tok.text in ("TRUE", "FALSE"):
                return Num(float(tok.text == "TRUE"), logical=True)
            raise self.error(f"'{tok.text}' is not allowed (write `{tok.text}` for a column of that name)")
        found = f"'{tok.text}'" if tok.text else "the end"
        raise self.error(f"Unexpected {found} at position {tok.pos}")

    def call(self, fn: str) -> Call:
        args, kwargs = [], []
        if self.peek().kind == "op" and self.peek().text == ")":
            self.next()
            return Call(fn, (), ())
        while True:
            tok, nxt = self.toks[self.i], self.toks[self.i + 1]
            if tok.kind == "name" and nxt.kind == "op" and nxt.text == "=":
                self.i += 2
                kwargs.append((tok.text, self.expr(0)))
            elif kwargs:
                raise self.error(f"A positional argument after a named one in {fn}(...)")
            else:
                args.append(self.expr(0))
            tok = self.next()
            if tok.kind == "op" and tok.text == ")":
                return Call(fn, tuple(args), tuple(kwargs))
            if not (tok.kind == "op" and tok.text == ","):
                found = f"'{tok.text}'" if tok.text else "the end"
                raise self.error(f"Expected ',' or ')' in {fn}(...) at position {tok.pos}, found {found}")


@lru_cache(maxsize=1024)
def parse(text: str, where: str):
    """The tree of one formula part (``where`` names it in error messages).

    Kept per (text, where): a formula's parts are read when it is parsed, when
    the design is built and when new data are encoded, and the trees are immutable."""
    node = _Parser(text, where).parse()
    if _depth(node) > MAX_TERMS:
        raise FormulaError(
            f"{where} has more than {MAX_TERMS} levels of operators; split it or build the "
            "columns in the data."
        )
    return node


def _children(node) -> tuple:
    if isinstance(node, BinOp):
        return (node.left, node.right)
    if isinstance(node, (Unary, Paren)):
        return (node.operand if isinstance(node, Unary) else node.expr,)
    if isinstance(node, Call):
        return tuple(node.args) + tuple(v for _, v in node.kwargs)
    return ()


def _depth(node) -> int:
    """Depth of the tree, without recursion (a long sum a + b + ... nests to the left)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in _children(n))
    return deepest


# ---- deparse: R's canonical text of an expression (names of columns) --------

_SYNTACTIC = re.compile(r"^(?:[^\W\d_]|\.(?!\d))[\w.]*$|^\.$")


def _name_text(name: str) -> str:
    if _SYNTACTIC.match(name) and name not in _RESERVED:
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _num_text(v: float) -> str:
    if not math.isfinite(v):
        return "NaN" if v != v else ("Inf" if v > 0 else "-Inf")
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.15g}"


def deparse(node) -> str:
    """The text R gives the expression (``deparse``): the label of a variable and its columns."""
    if isinstance(node, Name):
        return _name_text(node.id)
    if isinstance(node, Num):
        return ("TRUE" if node.value else "FALSE") if node.logical else _num_text(node.value)
    if isinstance(node, Str):
        return '"' + node.value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(node, Paren):
        return f"({deparse(node.expr)})"
    if isinstance(node, Unary):
        return f"{node.op}{deparse(node.operand)}"
    if isinstance(node, BinOp):
        sep = "" if node.op in ("^", ":", "/") else " "
        return f"{deparse(node.left)}{sep}{node.op}{sep}{deparse(node.right)}"
    if isinstance(node, Call):
        parts = [deparse(a) for a in node.args] + [f"{k} = {deparse(v)}" for k, v in node.kwargs]
        return f"{node.fn}({', '.join(parts)})"
    raise TypeError(node)  # pragma: no cover


def names_in(node, columns=None) -> list[str]:
    """Column names ``node`` reads, in order of appearance (function names excluded); with
    ``columns``, R's T and F count only where they are columns (otherwise TRUE and FALSE)."""
    out: list[str] = []

    def walk(n):
        if isinstance(n, Name):
            logical = columns is not None and n.id in LOGICAL_NAMES and n.id not in columns
            if n.id not in out and not logical:
                out.append(n.id)
        elif isinstance(n, Paren):
            walk(n.expr)
        elif isinstance(n, Unary):
            walk(n.operand)
        elif isinstance(n, BinOp):
            walk(n.left)
            walk(n.right)
        elif isinstance(n, Call):
            for i, a in enumerate(n.args):
                if not (n.fn == "C" and i == 1):  # C(f, contr.sum): a contrast, not a column
                    walk(a)
            for k, v in n.kwargs:
                if not (n.fn == "C" and k == "contr"):
                    walk(v)

    walk(node)
    return out


# ---- the functions a formula may call -------------------------------------------

_UNARY_FUNCS = {
    "log2": np.log2, "log10": np.log10, "log1p": np.log1p, "exp": np.exp, "expm1": np.expm1,
    "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "floor": np.floor, "ceiling": np.ceil, "trunc": np.trunc, "sign": np.sign,
}
_FACTOR_FUNCS = ("factor", "as.factor", "ordered", "as.ordered", "C", "relevel")
_CONTRASTS = {"treatment": "treatment", "contr.treatment": "treatment", "sum": "sum", "contr.sum": "sum",
              "helmert": "helmert", "contr.helmert": "helmert", "poly": "poly", "contr.poly": "poly"}
FUNCTIONS = (
    ("I", "log", "poly", "scale", "center", "offset", "as.numeric")
    + tuple(_UNARY_FUNCS) + _FACTOR_FUNCS
)
"""Every function a formula may call; any other call is a FormulaError."""

_SIGNATURES = {  # positional parameter names, in R's order
    "I": ("x",), "log": ("x", "base"), "poly": ("x", "degree", "raw"),
    "scale": ("x", "center", "scale"), "center": ("x",), "offset": ("x",), "as.numeric": ("x",),
    "factor": ("x",), "as.factor": ("x",), "ordered": ("x",), "as.ordered": ("x",),
    "C": ("object", "contr"), "relevel": ("x", "ref"),
    **{f: ("x",) for f in _UNARY_FUNCS},
}


def _contrast_name(node):
    if isinstance(node, Name) and node.id in _CONTRASTS:
        return _CONTRASTS[node.id]
    if isinstance(node, Str) and node.value in _CONTRASTS:
        return _CONTRASTS[node.value]
    return None


def _bound_args(call: Call, where: str) -> dict:
    """The arguments of ``call`` by R's parameter name (positional, then named)."""
    params = _SIGNATURES[call.fn]
    if len(call.args) > len(params):
        raise FormulaError(
            f"{call.fn}() takes at most {len(params)} argument(s) ({', '.join(params)}); "
            f"'{deparse(call)}' in {where} has {len(call.args)}."
        )
    out = dict(zip(params, call.args))
    for k, v in call.kwargs:
        if k not in params or k in out:
            raise FormulaError(
                f"'{deparse(call)}' in {where}: {call.fn}() has no argument '{k}' here "
                f"(its arguments: {', '.join(params)})."
            )
        out[k] = v
    if params[0] not in out:
        raise FormulaError(f"'{deparse(call)}' in {where} needs an argument.")
    return out


def vet(node, where: str, columns, inside_call: bool = False) -> None:
    """Refuse, before any evaluation, every call outside :data:`FUNCTIONS` and every unknown name."""
    if isinstance(node, Name):
        if columns is not None and node.id not in columns:
            if node.id in LOGICAL_NAMES and inside_call:
                return  # R's T and F: TRUE and FALSE where no column has the name
            raise FormulaError(f"Column '{node.id}' used in {where} is not in the data.{closest_name(node.id, columns)}")
    elif isinstance(node, Paren):
        vet(node.expr, where, columns, inside_call)
    elif isinstance(node, Unary):
        vet(node.operand, where, columns, inside_call)
    elif isinstance(node, BinOp):
        if node.op in ("|", "||"):
            raise FormulaError(
                f"A bar '{node.op}' in {where} '{deparse(node)}': random-effect terms are written in "
                "parentheses at the top level, e.g. y ~ x + (1 | g)."
            )
        vet(node.left, where, columns, inside_call)
        vet(node.right, where, columns, inside_call)
    elif isinstance(node, Call):
        if node.fn not in _SIGNATURES:
            raise FormulaError(
                f"'{node.fn}' in {where} is neither a column of the data nor a function the formula "
                f"language knows ({', '.join(sorted(FUNCTIONS, key=str.lower))})."
                f"{closest_name(node.fn, list(columns or ()) + list(FUNCTIONS))}"
            )
        args = _bound_args(node, where)
        if node.fn == "offset" and inside_call:
            raise FormulaError(f"offset(...) in {where} must stand at the top level of the fixed part.")
        if node.fn == "C" and "contr" in args and _contrast_name(args["contr"]) is None:
            raise FormulaError(
                f"Unknown contrasts '{deparse(args['contr'])}' in {where}: use one of "
                f"{', '.join(sorted(set(_CONTRASTS)))}."
            )
        for k, v in args.items():
            if node.fn == "C" and k == "contr":
                continue
            if k not in ("x", "object") and names_in(v, () if columns is None else columns):
                raise FormulaError(f"The argument '{k}' of '{deparse(node)}' in {where} must be a constant.")
            vet(v, where, columns, True)
    elif isinstance(node, (Num, Str)):
        pass
    else:  # pragma: no cover
        raise FormulaError(f"Cannot read {where}.")


# ---- Wilkinson's operators: a formula part to its terms ------------------------


@dataclass
class TermList:
    """The terms of a formula part: variables (by label), terms (tuples of labels), intercept, offsets."""

    variables: dict = field(default_factory=dict)  # label -> node, in order of appearance
    terms: list = field(default_factory=list)  # tuples of labels
    intercept: bool = True
    offsets: list = field(default_factory=list)  # nodes


def _constant(node):
    while isinstance(node, Paren):
        node = node.expr
    if isinstance(node, Num):
        return node.value
    return None


class _Expander:
    """R's ``terms.formula``: expands the operators into a list of terms."""

    def __init__(self, where: str, text: str):
        self.where, self.text = where, text
        self.variables: dict = {}
        self.offsets: list = []

    def var(self, node) -> frozenset:
        label = deparse(node)
        self.variables.setdefault(label, node)
        return frozenset([label])

    def expand(self, node):
        """(terms: list of frozensets, intercept: True/False/None meaning 'not said')."""
        if isinstance(node, Paren):
            return self.expand(node.expr)
        c = _constant(node)  # TRUE and FALSE too: R's terms() reads them as 1 and 0
        if c is not None:
            if c in (0.0, 1.0):
                return [], bool(c)
            raise FormulaError(f"The number {_num_text(c)} in {self.where} '{self.text}' is not a term; "
                               "write I(...) for arithmetic.")
        if isinstance(node, Unary):
            terms, icpt = self.expand(node.operand)
            if node.op == "-":
                return [], (None if icpt is None else not icpt)  # -1: no intercept; -x alone: nothing
            return terms, icpt
        if isinstance(node, Call) and node.fn == "offset":
            self.offsets.append(node.args[0] if node.args else dict(node.kwargs)["x"])
            return [], None
        if not isinstance(node, BinOp) or node.op not in ("+", "-", "*", "/", ":", "^", "%in%"):
            return [self.var(node)], None
        op = node.op
        if op == "^":
            power = _constant(node.right)
            if power is None or not math.isfinite(power) or power != int(power) or not 1 <= power <= 50:
                raise FormulaError(
                    f"'{deparse(node)}' in {self.where}: the power of a term must be a positive "
                    "integer; write I(x^2) for the square of a column."
                )
            base, icpt = self.expand(node.left)
            out = list(base)
            for _ in range(int(power) - 1):
                out = _union(out, [a | b for a in out for b in base])
            return out, icpt
        left, li = self.expand(node.left)
        if op == "-":
            right, ri = self.expand(node.right)
            icpt = li if ri is None else (not ri)
            return [t for t in left if t not in right], icpt
        right, ri = self.expand(node.right)
        if op == "+":
            return _union(left, right), (ri if ri is not None else li)
        if op == ":":
            return _union([], [a | b for a in left for b in right]), None
        if op == "*":
            return _union(_union(left, right), [a | b for a in left for b in right]), (ri if ri is not None else li)
        if op == "/":  # a/b: a + (all of a):b
            outer = frozenset().union(*left)
            return _union(left, [outer | b for b in right]), li
        # b %in% a: each term of b within all of a
        outer = frozenset().union(*right)
        return _union([], [b | outer for b in left]), None


MAX_MODEL_TERMS = 10_000


def _union(a: list, b: list) -> list:
    """``a`` then the terms of ``b`` not in it (order kept); at most MAX_MODEL_TERMS terms."""
    out = dict.fromkeys(a)
    for t in b:
        out.setdefault(t)
        if len(out) > MAX_MODEL_TERMS:
            raise FormulaError(f"The formula expands to more than {MAX_MODEL_TERMS:,} terms.")
    return list(out)


def expand_terms(node, where: str, text: str) -> TermList:
    """The terms of a right-hand side, sorted by order as R does (stable within an order)."""
    ex = _Expander(where, text)
    terms, icpt = ex.expand(node)
    order = {lab: i for i, lab in enumerate(ex.variables)}
    terms = [t for t in terms if t]
    terms.sort(key=len)
    labelled = [tuple(sorted(t, key=order.__getitem__)) for t in terms]
    return TermList(ex.variables, labelled, True if icpt is None else icpt, ex.offsets)


def term_label(term: tuple) -> str:
    return ":".join(term)


# ---- evaluation -----------------------------------------------------------------


@dataclass(frozen=True)
class Numeric:
    """A numeric variable: (n, k) values, and column suffixes when k > 1 (poly's 1, 2, ...)."""

    values: np.ndarray
    suffixes: tuple | None = None


@dataclass(frozen=True)
class Logical:
    """R's logical: 0/1 in arithmetic, a factor with levels FALSE, TRUE as a model variable."""

    values: np.ndarray  # bool (n,)

    def as_factor(self) -> "Factor":
        return Factor(self.values.astype(np.int64), ("FALSE", "TRUE"))


@dataclass(frozen=True)
class Factor:
    """A factor: integer codes into ``levels`` (labels), and its contrasts."""

    codes: np.ndarray
    levels: tuple
    contrasts: str = "treatment"


def _labels(values) -> tuple:
    return tuple(level_text(v) for v in values)


def numeric_levels(values) -> tuple[np.ndarray, tuple]:
    """R's ``factor()`` of numbers: (codes, labels), levels in numeric order, labelled as R prints
    them; numbers that print alike (0.1 + 0.2 and 0.3) are one level, as in R, whose levels are
    the labels."""
    uniq, codes = np.unique(values, return_inverse=True)
    labels = _labels(uniq)
    first = np.ones(len(labels), dtype=bool)  # rounding is monotone: equal labels are neighbours
    first[1:] = [a != b for a, b in zip(labels[1:], labels[:-1])]
    index = np.cumsum(first) - 1
    return index[codes.ravel()].astype(np.int64), tuple(lab for lab, f in zip(labels, first) if f)


def level_text(v) -> str:
    """R's label of a level: TRUE/FALSE, numbers to 15 digits without a trailing .0; integers whole
    (R has none beyond 2^31: an int64 identifier keeps every digit, so that no two share a label)."""
    if isinstance(v, (bool, np.bool_)):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return _num_text(f) if math.isfinite(f) else str(f)
    return str(v)


class Evaluator:
    """Evaluates formula trees on a data frame, learning (or applying) each transform's state.

    ``state`` maps an expression's label to what it learned on the training
    data: a factor's levels, poly's coefficients, scale's centre and scale.
    An Evaluator made with ``state`` from a fit applies that state to new data.
    """

    def __init__(self, data: pd.DataFrame, where: str, state: dict | None = None):
        self.data, self.where = data, where
        self.learn = state is None
        self.state = {} if state is None else state
        self.n = len(data)

    # -- public: a variable (numeric or factor) -----------------------------
    def variable(self, node) -> Numeric | Factor:
        label = deparse(node)
        value = self.value(node)
        if isinstance(value, Logical):
            value = value.as_factor()
        if isinstance(value, Factor):
            return self._factor_levels(label, value)
        suffixes = None
        if isinstance(value, Numeric):
            arr, suffixes = value.values, value.suffixes
        else:
            arr = np.asarray(value, dtype=np.float64)
            arr = arr if arr.ndim == 2 else np.broadcast_to(arr, (self.n,))
        if self.learn:
            self.state[("kind", label)] = "numeric"
        elif self.state.get(("kind", label)) == "factor":
            raise DataError(
                f"'{label}' in {self.where} is numeric in the new data but was a factor in the fit; "
                "give it the fit's levels (text or categorical)."
            )
        return Numeric(np.array(arr, dtype=np.float64).reshape(self.n, -1), suffixes)

    def numeric(self, node) -> np.ndarray:
        """A numeric vector (n,), for the response and offsets (a logical counts as 0/1)."""
        v = self.value(node)
        if isinstance(v, Factor):
            raise DataError(f"'{deparse(node)}' in {self.where} is a factor, not a numeric column.")
        v = self._number(node) if isinstance(v, Logical) else v
        v = v.values if isinstance(v, Numeric) else np.asarray(v, dtype=np.float64)
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]
        if v.ndim > 1:
            raise DataError(f"'{deparse(node)}' in {self.where} is not a single numeric column.")
        return np.array(np.broadcast_to(v, (self.n,)), dtype=np.float64)

    def _factor_levels(self, label: str, f: Factor) -> Factor:
        key = ("levels", label)
        if self.learn:
            used = np.unique(f.codes)
            levels = tuple(f.levels[i] for i in used)
            remap = np.full(len(f.levels), -1)
            remap[used] = np.arange(len(used))
            self.state[("kind", label)] = "factor"
            self.state[key] = levels
            self.state[("contrasts", label)] = f.contrasts
            return Factor(remap[f.codes], levels, f.contrasts)
        if self.state.get(("kind", label)) == "numeric":
            raise DataError(
                f"'{label}' in {self.where} is a factor in the new data but was numeric in the fit."
            )
        levels = self.state[key]
        index = {lv: i for i, lv in enumerate(levels)}
        labels = [f.levels[c] for c in f.codes]
        unseen = sorted({lv for lv in labels if lv not in index})
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
            raise DataError(
                f"'{label}' in {self.where} has level(s) {shown} that the fit has not seen "
                f"(its levels: {', '.join(levels[:10])}{' ...' if len(levels) > 10 else ''}); "
                "a fixed effect cannot be predicted for them."
            )
        # the fit's levels and contrasts, whatever the new data's column says (e.g. not ordered)
        return Factor(np.array([index[lv] for lv in labels], dtype=np.int64), levels, self.state[("contrasts", label)])

    # -- the tree ------------------------------------------------------------
    def value(self, node):
        """float, ndarray (n,), Numeric (n, k) or Factor."""
        if isinstance(node, Num):
            return node.value
        if isinstance(node, Str):
            raise FormulaError(f"The text \"{node.value}\" in {self.where} is not a value a model can use.")
        if isinstance(node, Name):
            return self._column(node.id)
        if isinstance(node, Paren):
            return self.value(node.expr)
        if isinstance(node, Unary):
            x = self._number(node.operand)
            return -x if node.op == "-" else x
        if isinstance(node, BinOp):
            return self._binop(node)
        if isinstance(node, Call):
            return self._call(node)
        raise FormulaError(f"Cannot evaluate '{node}' in {self.where}.")  # pragma: no cover

    def _column(self, name: str):
        if name in LOGICAL_NAMES:  # R's T or F: the column of that name where the fit's data had one
            key = ("logical", name)
            if self.learn:
                self.state[key] = name not in self.data.columns
            if self.state.get(key):
                return LOGICAL_NAMES[name]
        col = self.data[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = col.cat.categories
            kind = "poly" if col.cat.ordered else "treatment"  # R: an ordered factor has contr.poly
            return Factor(np.asarray(col.cat.codes, dtype=np.int64), _labels(cats), kind)
        if pd.api.types.is_bool_dtype(col):
            return Logical(col.to_numpy(dtype=bool))
        if pd.api.types.is_numeric_dtype(col):
            return col.to_numpy(dtype=np.float64)
        values = col.astype(str).to_numpy()
        levels, codes = np.unique(values, return_inverse=True)
        return Factor(codes.astype(np.int64), tuple(str(v) for v in levels))

    def _number(self, node):
        v = self.value(node)
        if isinstance(v, Logical):
            return v.values.astype(np.float64)
        if isinstance(v, Factor):
            raise (FormulaError if self.learn else DataError)(
                f"Arithmetic on the factor '{deparse(node)}' in {self.where}: a factor has levels, not values."
            )
        if isinstance(v, Numeric):
            return v.values if v.values.shape[1] > 1 else v.values[:, 0]
        return v

    def _binop(self, node: BinOp):
        op = node.op
        if op in ("==", "!=") and (isinstance(node.left, Str) or isinstance(node.right, Str)):
            return self._compare_labels(node)
        if op == ":":
            raise FormulaError(
                f"':' in {self.where} '{deparse(node)}' is R's sequence operator inside I(...) and "
                "functions, not an interaction or a product; write * for a product."
            )
        a, b = self._number(node.left), self._number(node.right)
        with np.errstate(all="ignore"):
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return np.divide(a, b)
            if op == "^":
                return np.power(a, b)
            if op == "%%":
                return np.mod(a, b)
            if op == "%/%":
                return np.floor_divide(a, b)
            if op in ("==", "!=", "<", ">", "<=", ">="):
                res = {"==": np.equal, "!=": np.not_equal, "<": np.less, ">": np.greater,
                       "<=": np.less_equal, ">=": np.greater_equal}[op](a, b)
                return Logical(np.broadcast_to(res, (self.n,)))
        raise FormulaError(f"The operator '{op}' in {self.where} '{deparse(node)}' is not arithmetic; "
                           "formula operators belong outside I(...).")

    def _compare_labels(self, node: BinOp) -> Logical:
        """``f == "b"``: a factor's (or text column's) labels against a text."""
        text, other = (node.right, node.left) if isinstance(node.right, Str) else (node.left, node.right)
        v = self.value(other)
        if isinstance(v, Logical):
            v = v.as_factor()
        if not isinstance(v, Factor):
            raise FormulaError(f"'{deparse(node)}' in {self.where} compares numbers with the text \"{text.value}\".")
        hit = np.array([lv == text.value for lv in v.levels], dtype=bool)
        res = hit[v.codes] if len(hit) else np.zeros(self.n, dtype=bool)
        return Logical(res if node.op == "==" else ~res)

    def _const(self, node, what: str):
        v = self.value(node)
        if isinstance(v, (Factor, Numeric)) or np.ndim(v) > 0:
            raise FormulaError(f"{what} in {self.where} must be a constant.")
        return v

    def _call(self, node: Call):
        fn, args = node.fn, _bound_args(node, self.where)
        label = deparse(node)
        if fn == "I":
            return self.value(args["x"])
        if fn in _UNARY_FUNCS:
            with np.errstate(all="ignore"):
                return _UNARY_FUNCS[fn](self._number(args["x"]))
        if fn == "log":
            x = self._number(args["x"])
            with np.errstate(all="ignore"):
                if "base" in args:
                    return np.log(x) / np.log(float(self._const(args["base"], "The base of log()")))
                return np.log(x)
        if fn == "as.numeric":
            return self._number(args["x"])
        if fn == "offset":
            raise FormulaError(f"offset(...) in {self.where} must stand at the top level of the fixed part.")
        if fn == "center":
            x = self._vector(args["x"], label)
            mean = self._learned(label, lambda: (float(np.mean(x)),))[0]
            return x - mean
        if fn == "scale":
            return self._scale(args, label)
        if fn == "poly":
            return self._poly(args, label)
        return self._factor_call(fn, args, label)

    def _vector(self, node, label):
        x = self._number(node)
        x = np.broadcast_to(np.asarray(x, dtype=np.float64), (self.n,) if np.ndim(x) < 2 else np.shape(x))
        if x.ndim != 1:
            raise FormulaError(f"'{label}' in {self.where} needs a single numeric column.")
        return x

    def _learned(self, label, compute):
        key = ("transform", label)
        if self.learn:
            self.state[key] = compute()
        return self.state[key]

    def _flag(self, args, name, default: bool) -> bool:
        if name not in args:
            return default
        return bool(self._const(args[name], f"The argument '{name}'"))

    def _flag_or_number(self, args, name, label) -> bool | float:
        """scale()'s ``center`` and ``scale``: TRUE (default) or FALSE, or a number to use (R)."""
        if name not in args:
            return True
        node = args[name]
        while isinstance(node, Paren):
            node = node.expr
        value = self._const(node, f"The argument '{name}'")
        if isinstance(node, Num) and node.logical or isinstance(node, Name) and node.id in LOGICAL_NAMES:
            return bool(value)
        value = float(value)
        if not math.isfinite(value) or (name == "scale" and value == 0):
            raise FormulaError(f"The argument '{name}' of '{label}' in {self.where} must be TRUE, FALSE or "
                               f"a finite number{' other than 0' if name == 'scale' else ''}.")
        return value

    def _scale(self, args, label):
        x = self._vector(args["x"], label)
        center, scale = self._flag_or_number(args, "center", label), self._flag_or_number(args, "scale", label)

        def compute():
            m = (float(np.mean(x)) if center else 0.0) if isinstance(center, bool) else center
            if isinstance(scale, bool):  # the SD about the centre (R: the root mean square without one)
                s = float(np.sqrt(np.sum((x - m) ** 2) / (len(x) - 1))) if scale else 1.0
            else:
                s = scale
            if scale is True and not s > 0:
                raise DataError(f"'{label}' in {self.where}: the column is constant, it cannot be scaled.")
            return m, s

        m, s = self._learned(label, compute)
        return (x - m) / s

    def _poly(self, args, label):
        x = self._vector(args["x"], label)
        degree = self._const(args["degree"], "The degree of poly()") if "degree" in args else 1
        if not math.isfinite(degree) or degree != int(degree) or not 1 <= degree <= 50:
            raise FormulaError(f"'{label}' in {self.where}: the degree must be a positive integer.")
        degree = int(degree)
        raw = self._flag(args, "raw", False)
        suffixes = tuple(str(i) for i in range(1, degree + 1))
        if raw:
            return Numeric(np.column_stack([x**i for i in range(1, degree + 1)]), suffixes)
        if self.learn:
            if degree >= len(np.unique(x)):
                raise DataError(
                    f"'{label}' in {self.where}: the degree must be less than the number of unique "
                    f"points ({len(np.unique(x))})."
                )
            alpha, norm2, Z = _poly_fit(x, degree)
            self.state[("transform", label)] = (alpha, norm2)
            return Numeric(Z, suffixes)
        alpha, norm2 = self.state[("transform", label)]
        return Numeric(_poly_predict(x, alpha, norm2), suffixes)

    def _factor_call(self, fn, args, label):
        x = args.get("x", args.get("object"))
        v = self.value(x)
        if isinstance(v, Factor):
            f = v
        else:
            vals = np.broadcast_to(np.asarray(self._number(x), dtype=np.float64), (self.n,))
            f = Factor(*numeric_levels(vals))
        if fn in ("factor", "as.factor", "ordered", "as.ordered", "relevel"):
            used = np.unique(f.codes)
            remap = np.full(len(f.levels), -1)
            remap[used] = np.arange(len(used))
            ordered = isinstance(v, Factor) and v.contrasts == "poly"  # R's factor() keeps an ordered factor ordered
            kind = {"factor": "poly" if ordered else "treatment", "ordered": "poly", "as.ordered": "poly"}.get(
                fn, f.contrasts
            )
            f = Factor(remap[f.codes], tuple(f.levels[i] for i in used), kind)
        if fn == "relevel":
            if "ref" not in args:
                raise FormulaError(f"'{label}' in {self.where} needs ref = the reference level.")
            ref = args["ref"]
            ref = level_text(ref.value) if isinstance(ref, (Num, Str)) else deparse(ref)
            if ref not in f.levels:
                if self.learn:
                    raise DataError(
                        f"'{label}' in {self.where}: '{ref}' is not a level ({', '.join(f.levels[:10])})."
                    )
                return f
            i = f.levels.index(ref)
            order = [i] + [j for j in range(len(f.levels)) if j != i]
            inv = np.argsort(order)
            return Factor(inv[f.codes], tuple(f.levels[j] for j in order), f.contrasts)
        if fn == "C" and "contr" in args:
            return Factor(f.codes, f.levels, _contrast_name(args["contr"]))
        return f


def _poly_fit(x: np.ndarray, degree: int):
    """R's ``poly(x, degree)``: orthonormal columns from a QR decomposition, and its coefficients."""
    xbar = x.mean()
    xc = x - xbar
    X = np.vander(xc, degree + 1, increasing=True)
    Q, R = np.linalg.qr(X)
    Z = Q * np.diag(R)
    norm2 = (Z**2).sum(axis=0)
    alpha = ((xc[:, None] * Z**2).sum(axis=0) / norm2 + xbar)[:degree]
    norm2 = np.concatenate([[1.0], norm2])
    Z = Z / np.sqrt(norm2[1:])
    return alpha, norm2, Z[:, 1:]


def _poly_predict(x: np.ndarray, alpha, norm2) -> np.ndarray:
    """R's ``predict`` of poly(): the three-term recurrence with the fit's coefficients."""
    degree = len(alpha)
    Z = np.ones((len(x), degree + 1))
    Z[:, 1] = x - alpha[0]
    for i in range(1, degree):
        Z[:, i + 1] = (x - alpha[i]) * Z[:, i] - (norm2[i + 1] / norm2[i]) * Z[:, i - 1]
    Z = Z / np.sqrt(norm2[1:])
    return Z[:, 1:]


# ---- model matrices ----------------------------------------------------------------


def _contrast_matrix(levels: tuple, kind: str, full: bool):
    """(matrix levels x columns, column suffixes)."""
    m = len(levels)
    if full:
        return np.eye(m), levels
    if kind == "treatment":
        return np.eye(m)[:, 1:], levels[1:]
    if kind == "sum":
        C = np.vstack([np.eye(m - 1), -np.ones((1, m - 1))])
        return C, tuple(str(i) for i in range(1, m))
    if kind == "poly":  # R's contr.poly: orthonormal polynomials in the scores 1..m
        Q, R = np.linalg.qr(np.vander(np.arange(m) - (m - 1) / 2, m, increasing=True))
        Z = Q * np.diag(R)
        Z = Z / np.sqrt((Z**2).sum(axis=0))
        names = tuple([".L", ".Q", ".C"][: m - 1]) + tuple(f"^{d}" for d in range(4, m))
        return Z[:, 1:], names
    # helmert
    C = np.zeros((m, m - 1))
    for j in range(1, m):
        C[:j, j - 1] = -1.0
        C[j, j - 1] = float(j)
    return C, tuple(str(i) for i in range(1, m))


def _coding(terms: list, intercept: bool, variables: dict) -> list:
    """Per term, per variable: True where a factor needs all its levels (R's code 2)."""
    codes = []
    for j, term in enumerate(terms):
        row = []
        for v in term:
            rest = set(term) - {v}
            contrasts = not rest or any(rest <= set(terms[i]) for i in range(j))
            row.append(not contrasts)
        codes.append(row)
    if not intercept:
        for j, term in enumerate(terms):
            hit = [i for i, v in enumerate(term) if isinstance(variables[v], Factor)]
            if hit:
                codes[j][hit[0]] = True
                break
    return codes


@dataclass(frozen=True)
class Encoding:
    """How one formula part becomes a model matrix: learned on the fit's data, reusable on new data."""

    text: str
    where: str
    nodes: dict  # label -> node
    terms: tuple  # tuples of labels
    intercept: bool
    state: dict
    names: tuple  # every column's name, before selection
    keep: tuple  # indices of the columns the model uses (collinear ones dropped)

    @property
    def columns(self) -> tuple:
        return tuple(self.names[i] for i in self.keep)

    @property
    def required(self) -> list[str]:
        out: list[str] = []
        for node in self.nodes.values():
            for c in names_in(node):
                if c not in out and not self.state.get(("logical", c)):  # T or F as TRUE or FALSE
                    out.append(c)
        return out

    def matrix(self, data: pd.DataFrame) -> np.ndarray:
        """The model matrix of new data, with the fit's levels and transforms, the fit's columns."""
        ev = Evaluator(data, self.where, self.state)
        values = {lab: ev.variable(node) for lab, node in self.nodes.items()}
        M, _ = _build(values, list(self.terms), self.intercept, len(data))
        return M[:, list(self.keep)]

    def with_keep(self, keep, names=None) -> "Encoding":
        """The same encoding with only the columns ``keep`` (and, if given, new names for all columns)."""
        return Encoding(self.text, self.where, self.nodes, self.terms, self.intercept, self.state,
                        tuple(self.names if names is None else names), tuple(int(i) for i in keep))


def _build(values: dict, terms: list, intercept: bool, n: int):
    cols, names = [], []
    if intercept:
        cols.append(np.ones((n, 1)))
        names.append("(Intercept)")
    for term, full in zip(terms, _coding(terms, intercept, values)):
        block, labels = np.ones((n, 1)), [""]
        for lab, all_levels in zip(term, full):
            v = values[lab]
            if isinstance(v, Factor):
                C, suffix = _contrast_matrix(v.levels, v.contrasts, all_levels)
                part = C[v.codes] if len(v.codes) else np.zeros((0, C.shape[1]))
                pnames = [lab + s for s in suffix]
            else:
                part = v.values
                pnames = [lab] if part.shape[1] == 1 else [lab + s for s in (v.suffixes or
                                                            tuple(str(i) for i in range(1, part.shape[1] + 1)))]
            # the earlier variables vary fastest (R's model.matrix)
            block = (part[:, :, None] * block[:, None, :]).reshape(n, -1)
            labels = [f"{a}:{b}" if a else b for b in pnames for a in labels]
        cols.append(block)
        names.extend(labels)
    M = np.concatenate(cols, axis=1) if cols else np.zeros((n, 0))
    return M, names


def unique_names(names) -> tuple[tuple, list]:
    """Names made unique as R's ``make.unique`` does (``fb``, ``fb.1``); the renamed ones listed."""
    seen: dict = {}
    out, renamed = [], []
    taken = set(names)
    for nm in names:
        if nm not in seen:
            seen[nm] = 0
            out.append(nm)
            continue
        k = seen[nm]
        while True:
            k += 1
            cand = f"{nm}.{k}"
            if cand not in taken:
                break
        seen[nm] = k
        taken.add(cand)
        out.append(cand)
        renamed.append((nm, cand))
    return tuple(out), renamed


def encode(text: str, terms: TermList, data: pd.DataFrame, where: str) -> tuple[np.ndarray, Encoding]:
    """The model matrix of ``terms`` on ``data`` and the Encoding that rebuilds it for new data."""
    ev = Evaluator(data, where)
    values = {lab: ev.variable(nd) for lab, nd in terms.variables.items() if any(lab in t for t in terms.terms)}
    nodes = {lab: terms.variables[lab] for lab in values}
    M, names = _build(values, terms.terms, terms.intercept, len(data))
    enc = Encoding(text, where, nodes, tuple(terms.terms), terms.intercept, ev.state, tuple(names),
                   tuple(range(len(names))))
    return M, enc
