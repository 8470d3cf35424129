"""The package's layers (docs/architecture.md): each module imports only modules of its own or lower layers,
and the import graph has no cycle. Read from the source with ``ast``, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxlmm"

# lowest first; within a layer a module may import another of the same layer (the graph stays acyclic)
LAYERS = {
    "support": ["errors", "_config", "ahead", "distributions", "linalg"],
    "data": ["terms", "formula", "validate", "control", "design"],
    "parameters": ["theta", "varcorr"],
    "cross-products": ["memory", "crossprod"],
    "criteria": ["objective", "likelihood"],
    "fitting": ["optimize", "fitting"],
    "results": ["results", "summary", "model"],
    "inference": [
        "satterthwaite", "predict", "simulate", "replicates", "bootstrap", "anova", "pbtest", "profile",
        "confint", "submodels", "ranova", "rlrt", "icc", "oneway",
    ],
    "presentation": ["tidy", "plotting", "datasets", "synthetic", "cli", "__init__"],
}
LEVEL = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}

# The one exception: the fit's accessor methods (fit.summary(), fit.confint(), fit.plot, ...) reach
# the modules that compute what they return, importing them when called.
ACCESSOR_CLASS = ("results", "LmmFit")


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if rel.parts else "__init__"


def _target(node, path: Path) -> list[str]:
    """The top-level jaxlmm modules an import statement names."""
    rel = path.relative_to(PACKAGE)
    depth = len(rel.parts) - 1  # 0 for jaxlmm/x.py, 1 for jaxlmm/plotting/x.py
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("jaxlmm.")]
    if node.level == 0:
        if not (node.module or "").startswith("jaxlmm"):
            return []
        parts = node.module.split(".")[1:]
    elif node.level - 1 < depth:  # inside the same subpackage
        return []
    else:
        parts = (node.module or "").split(".") if node.module else []
    if parts and parts[0]:
        return [parts[0]]
    # ``from . import x``: a module, or a name of the package's __init__
    return [a.name if (PACKAGE / f"{a.name}.py").exists() or (PACKAGE / a.name).is_dir() else "__init__"
            for a in node.names]


def _edges():
    """(importer, imported, line, in_accessor) for every import of a jaxlmm module in the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        mod = _module_of(path) if path.name != "__init__.py" or path.parent != PACKAGE else "__init__"
        accessor_lines = set()
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and (mod, cls.name) == ACCESSOR_CLASS:
                for fn in cls.body:
                    if isinstance(fn, ast.FunctionDef):
                        accessor_lines |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for dep in _target(node, path):
                    if dep != mod and dep != "__version__":
                        out.append((mod, dep, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}",
                                    node.lineno in accessor_lines))
    return out


EDGES = _edges()


def test_every_module_has_a_layer():
    modules = {_module_of(p) for p in PACKAGE.rglob("*.py")} | {d for _, d, _, _ in EDGES}
    assert sorted(modules - set(LEVEL)) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = [
        f"{where}: {a} ({_layer(a)}) imports {b} ({_layer(b)})"
        for a, b, where, accessor in EDGES
        if LEVEL[b] > LEVEL[a] and not accessor
    ]
    assert upward == []


def test_the_accessor_exception_is_used_only_by_the_fit():
    assert all(a == ACCESSOR_CLASS[0] for a, _, _, accessor in EDGES if accessor)


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, _, accessor in EDGES:
        if not accessor:
            graph.setdefault(a, set()).add(b)
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def _layer(m: str) -> str:
    return list(LAYERS)[LEVEL[m]]


def _find_cycle(graph):
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


@pytest.mark.parametrize("graph,has_cycle", [
    ({"a": {"b"}, "b": {"c"}}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a2"}, "a2": set(), "b": {"a", "a2"}}, False),
])
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (_find_cycle(graph) is not None) == has_cycle
