"""The core's layering, read from the source (AST; imports at any level, also inside functions).

``bench/`` holds nothing but ``__init__.py``, ``__main__.py`` and one subpackage per stage of a
run. The stages import each other in one direction only, each from the stages before it:

    core < planning < store < engine < reports < studies < commands < cli

No module of ``bench`` imports a numerical framework or the layers above the core
(``bench.plugins``, ``bench.suites``, ``bench.frameworks``); the modules import each other without
a circle; none is over about 400 lines; each stage opens with a docstring saying what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
FRAMEWORKS = ("torch", "torchdiffeq", "jax", "jaxlib", "equinox", "diffrax", "optax")
UPPER_LAYERS = ("bench.plugins", "bench.suites", "bench.frameworks", "bench.claims")
#: The stages of a run, in the only direction they may import each other.
STAGES = ("core", "planning", "store", "engine", "reports", "studies", "commands", "cli")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(BENCH.rglob("*.py")):
        parts = list(path.relative_to(BENCH.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(path: Path) -> set[str]:
    """Every module a file imports (``from bench.x import y`` counts as ``bench.x.y`` too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def core_graph() -> dict[str, set[str]]:
    """bench module -> the bench modules it imports (packages left out: importing a submodule
    runs its packages first, which is no circle)."""
    known = {name for name, path in modules().items() if path.name != "__init__.py"}
    return {name: {n for n in imported_names(path) if n in known and n != name}
            for name, path in modules().items()}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


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


def test_bench_holds_only_its_stages():
    loose = sorted(p.name for p in BENCH.glob("*.py") if p.name not in ("__init__.py",
                                                                        "__main__.py"))
    assert not loose, f"modules directly in bench/: {loose} (put each in its stage)"
    folders = sorted(p.name for p in BENCH.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(STAGES)


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_says_what_it_owns(name):
    doc = ast.get_docstring(ast.parse((BENCH / name / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 12, f"bench.{name} has no docstring saying what it owns"


@pytest.mark.parametrize("name", sorted(modules()))
def test_core_imports_no_framework_and_no_upper_layer(name):
    wrong = sorted(n for n in imported_names(modules()[name])
                   if n.split(".")[0] in FRAMEWORKS or n.startswith(UPPER_LAYERS))
    assert not wrong, f"{name} imports {wrong}"


@pytest.mark.parametrize("name", sorted(n for n in modules() if stage(n)))
def test_stages_import_in_one_direction(name):
    own = STAGES.index(stage(name) or "")
    wrong = sorted(n for n in imported_names(modules()[name])
                   if stage(n) and STAGES.index(stage(n) or "") > own)
    assert not wrong, (f"{name} (stage {STAGES[own]}) imports later stages: {wrong}; "
                       f"the order is {' < '.join(STAGES)}")


def test_core_import_graph_is_acyclic():
    assert find_cycle(core_graph()) is None, " -> ".join(find_cycle(core_graph()) or [])


def test_find_cycle_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_stage_direction_check_can_fail(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("from bench.cli.main import main\n")
    assert "bench.cli.main" in imported_names(path)
    assert STAGES.index(stage("bench.cli.main") or "") > STAGES.index("core")


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_core_module_is_over_400_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it)"
