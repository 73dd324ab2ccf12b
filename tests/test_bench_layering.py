"""The core's layering, read from the source (AST; imports at any level, also inside functions):
bench/ imports no numerical framework and nothing of the layers above it (bench.plugins,
bench.suites, bench.frameworks), its modules import each other without a circle, and none is
over about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
FRAMEWORKS = ("torch", "torchdiffeq", "jax", "jaxlib", "equinox", "diffrax", "optax")
UPPER_LAYERS = ("bench.plugins", "bench.suites", "bench.frameworks")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    return {f"bench.{p.stem}" if p.stem != "__init__" else "bench": p
            for p in sorted(BENCH.glob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module a file imports (``from bench import x`` counts as ``bench.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def core_graph() -> dict[str, set[str]]:
    """bench module -> the bench modules it imports (the package ``bench`` itself left out:
    every submodule's import runs it first, which is no circle)."""
    known = set(modules())
    return {name: {n for n in imported_names(path) if n in known and n not in ("bench", name)}
            for name, path in modules().items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("name", sorted(modules()))
def test_core_imports_no_framework_and_no_upper_layer(name):
    wrong = sorted(n for n in imported_names(modules()[name])
                   if n.split(".")[0] in FRAMEWORKS or n.startswith(UPPER_LAYERS))
    assert not wrong, f"{name} imports {wrong}"


def test_core_import_graph_is_acyclic():
    assert find_cycle(core_graph()) is None, " -> ".join(find_cycle(core_graph()) or [])


def test_find_cycle_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_core_module_is_over_400_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it)"
