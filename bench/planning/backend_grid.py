"""Backend configurations as an axis of a run: ``--backends 'torch-adjoint[rtol=1e-6]'``.

A backend declares its parameters once (:attr:`bench.core.interfaces.AbstractBackend.parameters`); a
run names backends with parameter values, and a list of values expands into a grid::

    torch-direct[rtol=[1e-3,1e-5,1e-7]]              three cells (one per rtol)
    torch-adjoint[rtol=[1e-3,1e-5],adjoint_norm=[default,seminorm]]   four
    --backend-set rtol=1e-5                          every selected backend that has rtol
    --backend-set tol=[1e-3,1e-5]                    rtol = atol, two cells per backend

Every value is converted and checked by its parameter's spec in the parent, before any cell
starts, and each configuration by the backend's own ``configure`` (e.g. a fixed-step solver
without ``fixed_steps``). A :class:`BackendChoice` is what a cell runs: the registered name and
the values set, in the backend's declaration order; its :attr:`~BackendChoice.label` names the
cell's backend in cell ids, rows and reports.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.core.errors import PLUGIN_FAULTS, BenchError, UnknownNameError
from bench.core.options import format_value

if TYPE_CHECKING:
    from bench.core.interfaces import AbstractBackend
    from bench.core.registry import Registry

SYNTAX = "name or name[key=value,key=[v1,v2,...]] (see `bench list` for each backend's parameters)"


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """A registered backend and the parameter values a user set on it (declaration order)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """``name`` or ``name[key=value,...]``: the cell's backend in ids, rows and reports."""
        if not self.params:
            return self.name
        return f"{self.name}[{','.join(f'{k}={format_value(v)}' for k, v in self.params)}]"

    def __str__(self) -> str:
        return self.label


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    """A backend and its parameter grid given as data, not ``--backends`` text (a run file's
    ``[[backends]]`` table): ``params`` maps each key to its values, already typed; nothing is
    parsed from text, so no value or key can splice another backend into the grid."""

    name: str
    params: tuple[tuple[str, tuple[Any, ...]], ...] = ()


#: A ``--backend-set`` assignment: ``key=value`` text, or (key, values) given as data.
Assignment = str | tuple[str, Sequence[Any]]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# -- text ------------------------------------------------------------------------------------------


def split_top_level(text: str, what: str) -> list[str]:
    """``text`` split at the commas outside brackets; unbalanced brackets raise."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise BenchError(f"{what}: a ']' without its '[' in {text!r}; write {SYNTAX}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise BenchError(f"{what}: a '[' without its ']' in {text!r}; write {SYNTAX}")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_assignment(text: str, what: str) -> tuple[str, list[str]]:
    """``key=value`` or ``key=[v1,v2]`` as ``(key, [values])``."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise BenchError(f"{what}: {text!r} is not key=value or key=[v1,v2,...]")
    if value.startswith("["):
        if not value.endswith("]"):
            raise BenchError(f"{what}: {text!r}: a list of values ends with ']'")
        values = split_top_level(value[1:-1], what)
        if not values:
            raise BenchError(f"{what}: {text!r}: an empty list of values")
        return key, values
    return key, [value]


_ITEM = re.compile(r"\s*([^\[\]=,\s]+)\s*(?:\[(.*)\])?\s*", re.S)


Assignments = list[tuple[str, list[str]]]


def parse_backends(text: str, what: str = "--backends") -> list[tuple[str, Assignments]]:
    """``--backends`` text as ``[(name, [(key, [values]), ...]), ...]`` (nothing checked yet)."""
    items = []
    for item in split_top_level(text, what):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise BenchError(f"{what}: cannot read {item!r}; write {SYNTAX}")
        name, inner = match.group(1), match.group(2)
        params = [parse_assignment(part, f"{what} {name}")
                  for part in split_top_level(inner or "", f"{what} {name}")]
        if inner is not None and not params:
            raise BenchError(f"{what}: {item!r} has empty brackets; write {SYNTAX}")
        keys = [key for key, _ in params]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise BenchError(f"{what}: {name} sets {', '.join(twice)} more than once "
                             "(a list of values is key=[v1,v2])")
        items.append((name, params))
    if not items:
        raise BenchError(f"{what}: no backend given; write {SYNTAX}")
    return items


# -- checking and expanding ------------------------------------------------------------------------


def canonical_key(backend: AbstractBackend, key: str) -> str:
    """``key`` as the backend declares it (its aliases resolved); an unknown one raises naming
    the backend's parameters and the closest match."""
    key = backend.parameter_aliases.get(key, key)
    names = [spec.name for spec in backend.parameters]
    if key not in names:
        if not names:
            raise BenchError(f"backend {backend.name!r} declares no parameters (it cannot take "
                             f"{key}=...)")
        raise UnknownNameError(f"parameter of backend {backend.name!r}", key, names)
    return key


def convert_values(backend: AbstractBackend, key: str, values: Sequence[Any]) -> list[Any]:
    """Each value converted and checked by the backend's spec of ``key``."""
    spec = next(s for s in backend.parameters if s.name == key)
    return [spec.parse(value, f"backend {backend.name}", what="parameter") for value in values]


#: ``tol=X`` sets ``rtol=X`` and ``atol=X`` together (a grid over it stays one axis), for
#: backends that declare both and no parameter ``tol`` of their own.
TIED = {"tol": ("rtol", "atol")}


def configurations(backend: AbstractBackend, grid: Mapping[str, list[Any]],
                   tied: Mapping[str, str] | None = None) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the grid's values, each in the backend's declaration order;
    ``tied`` maps a parameter to the one whose value it takes (``atol`` -> ``rtol``)."""
    tied = dict(tied or {})
    order = [spec.name for spec in backend.parameters
             if spec.name in grid and spec.name not in tied]
    combos = []
    for combo in itertools.product(*(grid[key] for key in order)):
        values = dict(zip(order, combo, strict=True))
        values.update({key: values[source] for key, source in tied.items()})
        combos.append(tuple((spec.name, values[spec.name]) for spec in backend.parameters
                            if spec.name in values))
    return combos


def _tied_keys(backend: AbstractBackend, key: str) -> tuple[str, ...] | None:
    declared = {spec.name for spec in backend.parameters}
    if key in TIED and key not in declared and set(TIED[key]) <= declared:
        return TIED[key]
    return None


def expand_backends(registry: Registry,
                    backends: str | Sequence[str | BackendChoice | BackendEntry],
                    backend_set: Iterable[Assignment] = (), echo: Callable[[str], None] = _stderr,
                    check_count: Callable[[int], None] | None = None) -> list[BackendChoice]:
    """The backend configurations a run asks for: ``backends`` as ``--backends`` text (``all``,
    names, ``name[key=value,...]`` with lists for grids) or a sequence of such texts,
    :class:`BackendChoice` or :class:`BackendEntry`; ``backend_set`` the ``--backend-set
    key=value`` assignments, applied to every selected backend that declares the key and has not
    set it (the others are named through ``echo``). Every value and configuration is checked
    here; duplicates are dropped. ``check_count`` is called with the number of configurations
    before any is built (it raises when the run would be too big), so an enormous grid is
    refused at once; building them takes time linear in their number."""
    items: list[tuple[str, list[tuple[str, list[Any]]]]] = []
    texts = [backends] if isinstance(backends, str) else list(backends)
    for entry in texts:
        if isinstance(entry, BackendChoice):
            items.append((entry.name, [(k, [v]) for k, v in entry.params]))
        elif isinstance(entry, BackendEntry):
            items.append((entry.name, [(k, list(values)) for k, values in entry.params]))
        elif entry.strip() == "all":
            if not registry.backends:
                raise BenchError("--backends all: no backends are loaded (see `bench list` and "
                                 "BENCH_LOAD_PLUGINS)")
            items.extend((name, []) for name in sorted(registry.backends)
                         if registry.backends[name].in_all)
        else:
            items.extend(parse_backends(entry))
    assignments = [parse_assignment(a, "--backend-set") if isinstance(a, str)
                   else (str(a[0]), list(a[1])) for a in backend_set]
    seen_keys: dict[str, None] = {}
    for key, _ in assignments:
        if key in seen_keys:
            raise BenchError(f"--backend-set {key}=... is given more than once; a list of values "
                             f"is one assignment: --backend-set '{key}=[v1,v2]'")
        seen_keys[key] = None
    used: dict[str, list[str]] = {key: [] for key, _ in assignments}
    grids: list[tuple[str, AbstractBackend, dict[str, list[Any]], dict[str, str]]] = []
    for name, params in items:
        backend = registry.backend(name)
        grid: dict[str, list[Any]] = {}
        tied: dict[str, str] = {}

        def put(key: str, values: list[Any], backend: Any = backend,
                grid: dict[str, list[Any]] = grid, tied: dict[str, str] = tied) -> None:
            pair = _tied_keys(backend, key)
            if pair:  # tol: rtol and atol, one axis
                first, second = pair
                grid[first] = convert_values(backend, first, values)
                grid[second] = convert_values(backend, second, values)
                tied[second] = first
            else:
                grid[key] = convert_values(backend, key, values)

        for key, values in params:
            key = key if _tied_keys(backend, key) else canonical_key(backend, key)
            if key in grid or (key in TIED and set(TIED[key]) & set(grid)):
                raise BenchError(f"backend {name}: parameter {key} is set twice")
            put(key, values)
        in_brackets = set(grid)
        by_set: dict[str, str] = {}  # parameter -> the --backend-set key that set it
        for key, values in assignments:
            canon = backend.parameter_aliases.get(key, key)
            names = set(TIED.get(canon, ())) if _tied_keys(backend, canon) else {canon}
            if not names <= {s.name for s in backend.parameters} or names & in_brackets:
                continue
            twice = sorted(names & set(by_set))
            if twice:
                raise BenchError(f"--backend-set {key}=... and --backend-set "
                                 f"{by_set[twice[0]]}=... both set {twice[0]} of backend "
                                 f"{name}: give one of them")
            by_set.update({n: key for n in names})
            put(canon, values)
            used[key].append(name)
        grids.append((name, backend, grid, tied))
    if check_count is not None:
        check_count(sum(configuration_count(grid, tied) for _, _, grid, tied in grids))
    choices: dict[BackendChoice, None] = {}  # insertion-ordered, membership in O(1)
    for name, backend, grid, tied in grids:
        for params_tuple in configurations(backend, grid, tied):
            choice = BackendChoice(name, params_tuple)
            if choice in choices:
                continue
            try:
                backend.configure(dict(params_tuple))
            except BenchError as exc:
                raise BenchError(f"backend {choice.label}: {exc}") from None
            except PLUGIN_FAULTS as exc:  # a plugin's bug: named, no traceback
                raise BenchError(f"backend {choice.label}: its plugin's configure() raised "
                                 f"{type(exc).__name__}: {exc}") from None
            choices[choice] = None
    selected = list(dict.fromkeys(name for name, _ in items))
    for key, applied in used.items():
        if not applied:
            raise BenchError(f"--backend-set {key}=...: no selected backend has the parameter "
                             f"{key} (selected: {', '.join(selected)}; see `bench list`)")
        skipped = [n for n in selected if n not in applied]
        if skipped:
            echo(f"--backend-set {key}: not applied to {', '.join(skipped)} (no such parameter, "
                 "or set in its brackets)")
    return list(choices)


def configuration_count(grid: Mapping[str, list[Any]], tied: Mapping[str, str] | None = None
                        ) -> int:
    """How many configurations :func:`configurations` makes of ``grid`` (without making them)."""
    count = 1
    for key, values in grid.items():
        if key not in (tied or {}):
            count *= len(values)
    return count


def configured_backend(registry: Registry, choice: BackendChoice) -> AbstractBackend:
    """The registered backend with the choice's parameters set (as the cell runs it)."""
    backend = registry.backend(choice.name)
    return backend.configure(dict(choice.params)) if choice.params else backend


def describe_parameters(backend: AbstractBackend) -> list[str]:
    """One line per declared parameter, for ``bench list``."""
    lines = []
    aliases = {v: k for k, v in backend.parameter_aliases.items()}
    for spec in backend.parameters:
        alias = f" (also {aliases[spec.name]})" if spec.name in aliases else ""
        default = format_value(spec.default)
        lines.append(f"{spec.name}{alias} = {default}: {spec.help} [{spec.describe_valid()}]"
                     if spec.help else f"{spec.name}{alias} = {default} [{spec.describe_valid()}]")
    return lines
