"""generator/'s import graph has no cycle, and nothing imports the command-line dispatcher (issue 14).

Every `import` of a generator module is counted, at module level or inside a function: an import moved into a
function to dodge a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "generator"


def imports_of(path: Path) -> set[str]:
    """The generator modules `path` imports (`from . import x`, `from .x import y`, `import generator.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("generator."):
            found.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("generator."))
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    return {path.stem: imports_of(path) for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"}


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle, as a path of modules, or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if state.get(target) is None and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if state.get(node) is None and (found := visit(node)):
            return found
    return []


def test_generator_has_no_import_cycle() -> None:
    assert cycle(graph()) == []


def test_nothing_imports_the_dispatcher() -> None:
    importers = sorted(m for m, targets in graph().items() if "cli" in targets and m != "__main__")
    assert importers == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycle({"cli": {"packer_runner"}, "packer_runner": {"cli", "model"}, "model": set()}) == [
        "cli",
        "packer_runner",
        "cli",
    ]
    assert cycle({"a": {"b"}, "b": set()}) == []
