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

from bench.core.errors import BenchError, UnknownNameError
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


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# -- text ------------------------------------------------------------------------------------------


def split_top_level(text: str, what: str) -> list[str]:
    """``text`` split at the commas outside brackets; unbalanced brackets raise."""
    parts, depth, current = [], 0, []
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


def expand_backends(registry: Registry, backends: str | Sequence[str | BackendChoice],
                    backend_set: Iterable[str] = (), echo: Callable[[str], None] = _stderr
                    ) -> list[BackendChoice]:
    """The backend configurations a run asks for: ``backends`` as ``--backends`` text (``all``,
    names, ``name[key=value,...]`` with lists for grids) or a sequence of such texts or
    :class:`BackendChoice`; ``backend_set`` the ``--backend-set key=value`` assignments, applied
    to every selected backend that declares the key and has not set it (the others are named
    through ``echo``). Every value and configuration is checked here; duplicates are dropped."""
    items: list[tuple[str, list[tuple[str, list[Any]]]]] = []
    texts = [backends] if isinstance(backends, str) else list(backends)
    for entry in texts:
        if isinstance(entry, BackendChoice):
            items.append((entry.name, [(k, [v]) for k, v in entry.params]))
        elif entry.strip() == "all":
            if not registry.backends:
                raise BenchError("--backends all: no backends are loaded (see `bench list` and "
                                 "BENCH_LOAD_PLUGINS)")
            items.extend((name, []) for name in sorted(registry.backends)
                         if registry.backends[name].in_all)
        else:
            items.extend(parse_backends(entry))
    assignments = [parse_assignment(text, "--backend-set") for text in backend_set]
    used: dict[str, list[str]] = {key: [] for key, _ in assignments}
    choices: list[BackendChoice] = []
    for name, params in items:
        backend = registry.backend(name)
        grid: dict[str, list[Any]] = {}
        tied: dict[str, str] = {}

        def put(key: str, values: list[Any], backend: Any = backend, grid: dict = grid,
                tied: dict = tied) -> None:
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
        for key, values in assignments:
            canon = backend.parameter_aliases.get(key, key)
            names = set(TIED.get(canon, ())) if _tied_keys(backend, canon) else {canon}
            if names <= {s.name for s in backend.parameters} and not names & set(grid):
                put(canon, values)
                used[key].append(name)
        for params_tuple in configurations(backend, grid, tied):
            choice = BackendChoice(name, params_tuple)
            try:
                backend.configure(dict(params_tuple))
            except BenchError as exc:
                raise BenchError(f"backend {choice.label}: {exc}") from None
            if choice not in choices:
                choices.append(choice)
    names = list(dict.fromkeys(name for name, _ in items))
    for key, applied in used.items():
        if not applied:
            raise BenchError(f"--backend-set {key}=...: no selected backend has the parameter "
                             f"{key} (selected: {', '.join(names)}; see `bench list`)")
        skipped = [n for n in names if n not in applied]
        if skipped:
            echo(f"--backend-set {key}: not applied to {', '.join(skipped)} (no such parameter, "
                 "or set in its brackets)")
    return choices


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
