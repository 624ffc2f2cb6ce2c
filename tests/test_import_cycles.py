"""No import cycle inside rtools: read from the source (AST), every ``import rtools.x``, ``from rtools.x
import y`` and relative ``from .x import y`` is an edge, whether it sits at module level or inside a
function (a function-level import does not make a cycle go away, it only hides it until the call)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "rtools"


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(module: str, path: pathlib.Path, known: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from . import distributed` imports a module; `from .x import name`, module x
            names = [f"{name}.{a.name}" if f"{name}.{a.name}" in known else name for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] == PACKAGE:
                targets.add(name)
    return targets


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imported(m, p, known) for m, p in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module
    (Tarjan), each sorted, and a module that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_rtools():
    graph = import_graph()
    assert "rtools.model.training" in graph and "rtools.model.objective" in graph["rtools.model.training"]
    found = cycles(graph)
    assert not found, "import cycles (module-level and function-level imports):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """The checker on a package of its own: a cycle made by a function-level import is found, and so
    are the spellings of an import (relative, absolute, ``from . import``); an acyclic one passes."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import rtools.d\n")
    (pkg / "d.py").write_text("x = 1\n")
    assert cycles(import_graph(tmp_path)) == []
    (pkg / "d.py").write_text("def h():\n    from . import a\n")  # d -> a -> sub.b -> c -> d
    assert cycles(import_graph(tmp_path)) == [["rtools.a", "rtools.c", "rtools.d", "rtools.sub.b"]]
