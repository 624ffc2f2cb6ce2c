"""The code's shape, held: no module of rtools/ over 700 lines, no function over 120, and rt-lora's
training loop (rtools.model.training.train) short enough to read top to bottom (80 lines at most).
A module or function that grows past these is split by job (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "rtools"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 120
MAX_TRAIN_LINES = 80


def modules() -> list[pathlib.Path]:
    return sorted(ROOT.rglob("*.py"))


def functions(path: pathlib.Path) -> list[tuple[str, int]]:
    """Each function of ``path`` (methods and nested functions too): its name and its length in lines,
    from ``def`` to its last line (decorators not counted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None
    ]


def test_the_checks_see_the_code():
    assert len(modules()) > 50
    assert "train" in dict(functions(ROOT / "model" / "training.py"))


def test_no_module_over_700_lines():
    long = {}
    for path in modules():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            long[path.relative_to(ROOT).as_posix()] = n
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_120_lines():
    long = {}
    for path in modules():
        for name, n in functions(path):
            if n > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(ROOT).as_posix()}:{name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_train_reads_top_to_bottom():
    (n,) = [n for name, n in functions(ROOT / "model" / "training.py") if name == "train"]
    assert n <= MAX_TRAIN_LINES, f"train() is {n} lines (at most {MAX_TRAIN_LINES})"
