"""The layering, checked on the source (an AST walk of every module, imports inside functions
included):

- ``bench`` (the core) imports nothing from ``bench.plugins``, ``bench.suites`` or
  ``bench.frameworks``, and no numerical framework;
- ``bench.frameworks.<fw>`` imports the core, the neutral ``bench.frameworks`` modules and its own
  framework's libraries, never another framework's package, a plugin or a suite;
- a plugin module imports the core and the framework layer only: never another plugin, never a
  suite;
- a suite's modules import the core, the framework layer and modules of the same suite only (never
  a plugin), and no module of a suite imports its declaration module;
- no module imports a generic top-level ``plugins``, ``suites`` or ``frameworks``;
- the import graph of the framework layer, plugins and suites has no cycle (the core's internal
  imports are checked by its own test);
- no module of frameworks/, plugins/ or suites/ is longer than :data:`MAX_LINES`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Repository folder -> installed package name.
FOLDERS = {"bench": "bench", "frameworks": "bench.frameworks", "plugins": "bench.plugins",
           "suites": "bench.suites", "claims": "bench.claims"}
ABOVE_CORE = ("bench.frameworks", "bench.plugins", "bench.suites", "bench.claims")
FRAMEWORK_LIBRARIES = {
    "torch": {"torch", "torchdiffeq"},
    "jax": {"jax", "jaxlib", "diffrax", "equinox"},
}
ALL_FRAMEWORK_LIBRARIES = set().union(*FRAMEWORK_LIBRARIES.values())
MAX_LINES = 420


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for folder in FOLDERS
            for path in sorted((ROOT / folder).rglob("*.py"))}


SOURCES = _sources()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in its body (absolute names; ``from p import m``
    names the submodule ``p.m`` where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in SOURCES else base)
    return found


IMPORTS = {name: _imports(name, path) for name, path in SOURCES.items()}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_core(module: str) -> bool:
    return _within(module, "bench") and not any(_within(module, p) for p in ABOVE_CORE)


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _suite_declarations() -> set[str]:
    """The suite declaration modules: those registering a suite."""
    return {name for name, path in SOURCES.items()
            if _within(name, "bench.suites") and "def bench_register_suites" in path.read_text()}


def _suite_of(module: str, declarations: set[str]) -> str | None:
    owners = [d for d in declarations if module == d or module.startswith(d + "_")]
    return max(owners, key=len) if owners else None


def _violations(rule) -> list[str]:
    return [f"{name} imports {target}" for name in sorted(IMPORTS)
            for target in sorted(IMPORTS[name]) if rule(name, target)]


def test_the_walk_sees_every_layer():
    assert {"bench.core.interfaces", "bench.frameworks.torch", "bench.frameworks.jax",
            "bench.plugins.torch_adjoint", "bench.suites.cnf", "bench.suites.cnf_torch"} <= set(
        SOURCES)
    assert "bench.frameworks.torch._torchdiffeq" in IMPORTS["bench.frameworks.torch"]


def test_the_core_imports_nothing_above_it_and_no_framework():
    def rule(name: str, target: str) -> bool:
        return _is_core(name) and (any(_within(target, p) for p in ABOVE_CORE)
                                   or _top(target) in ALL_FRAMEWORK_LIBRARIES)

    assert _violations(rule) == []


def test_a_framework_package_imports_only_the_core_and_its_own_libraries():
    def rule(name: str, target: str) -> bool:
        if not _within(name, "bench.frameworks"):
            return False
        own = next((fw for fw in FRAMEWORK_LIBRARIES if _within(name, f"bench.frameworks.{fw}")),
                   None)
        if _within(target, "bench.plugins") or _within(target, "bench.suites"):
            return True
        for fw in FRAMEWORK_LIBRARIES:
            if fw != own and _within(target, f"bench.frameworks.{fw}"):
                return True
        allowed = FRAMEWORK_LIBRARIES.get(own, set()) if own else set()
        return _top(target) in ALL_FRAMEWORK_LIBRARIES - allowed

    assert _violations(rule) == []


def test_a_plugin_imports_only_the_core_and_the_framework_layer():
    def rule(name: str, target: str) -> bool:
        if not _within(name, "bench.plugins"):
            return False
        return _within(target, "bench.suites") or (
            _within(target, "bench.plugins") and target not in (name, "bench.plugins"))

    assert _violations(rule) == []


def test_a_suite_imports_only_the_core_the_framework_layer_and_its_own_modules():
    declarations = _suite_declarations()
    assert {"bench.suites.cnf", "bench.suites.latent_ode", "bench.suites.mnist",
            "bench.suites.memory_scaling"} <= declarations

    def rule(name: str, target: str) -> bool:
        if not _within(name, "bench.suites"):
            return False
        if _within(target, "bench.plugins"):
            return True
        if _within(target, "bench.suites") and target != "bench.suites":
            suite = _suite_of(name, declarations)
            # its own suite's modules only, and never its declaration module (the core
            # dispatches to the task modules: importing the declaration back is a circle)
            return _suite_of(target, declarations) != suite or target == suite
        return False

    assert _violations(rule) == []


def test_no_generic_top_level_names():
    generic = {"plugins", "suites", "frameworks"}
    offenders = []
    for folder in (*FOLDERS, "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom)
                         and not node.level else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                              if _top(n) in generic]
    assert offenders == []


def test_the_import_graph_above_the_core_has_no_cycle():
    """Depth-first search over frameworks, plugins and suites (the core imports none of them,
    so no cycle through it can reach them)."""
    nodes = {n for n in SOURCES if not _is_core(n)}
    graph = {n: {t for t in IMPORTS[n] if t in nodes and t != n} for n in nodes}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(nodes):
        if node not in state:
            visit(node, [])
    assert cycles == []


@pytest.mark.parametrize("folder", ["frameworks", "plugins", "suites", "claims"])
def test_no_module_is_too_long(folder):
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_torch_layer_and_backends_do_not_import_torch():
    """The registry imports backend modules where torch is missing: they must report
    ``unsupported``, not fail to import."""
    code = ("import sys, bench.frameworks.torch, bench.plugins.torch_adjoint, "
            "bench.plugins.torch_direct, bench.plugins.rknet, bench.plugins.resnet; "
            "print(sorted(m for m in ('torch', 'torchdiffeq') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
