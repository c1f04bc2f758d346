"""The shape of numd/ that docs/architecture.md promises: few modules at the top, subpackages
for the parts, no module over 500 lines, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

NUMD = Path(__file__).resolve().parent.parent / "numd"
MAX_LINES = 500
MAX_TOP_MODULES = 12


def modules() -> dict[str, Path]:
    """Every module of numd, by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(NUMD.rglob("*.py")):
        parts = path.relative_to(NUMD.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The numd modules `path` imports at module level or inside functions (types only aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found


def test_no_module_is_over_500_lines() -> None:
    """Every module of numd/ reads in one sitting."""
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_few_modules_at_the_top_and_the_rest_in_subpackages() -> None:
    """At most 12 modules at numd/'s top; the parts (at least 3) are subpackages."""
    top = [p for p in NUMD.glob("*.py") if p.name != "__init__.py"]
    packages = [p for p in NUMD.iterdir() if (p / "__init__.py").exists()]
    assert len(top) <= MAX_TOP_MODULES, sorted(p.name for p in top)
    assert len(packages) >= 3


def test_no_import_cycle() -> None:
    """No module of numd imports itself back through others (a package's ``__init__`` counts
    as importing nothing: numd's are docstrings only)."""
    found = modules()
    known = set(found)
    graph = {name: imports_of(path, known) - {name} for name, path in found.items()}
    for name, path in found.items():
        if path.name == "__init__.py":
            assert graph[name] == set(), f"{name}'s __init__ imports {graph[name]}"
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                cycles.append(stack[stack.index(other) :] + [other])
            elif other not in state:
                visit(other, [*stack, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
