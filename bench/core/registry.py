"""Plugin discovery: built-in plugin modules, entry points, and the registry of names.

No plugin manager exists at import time: :meth:`Registry.load` builds a fresh one each call, so
the runner's child processes rebuild the same registry from the same :class:`PluginSelection`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import traceback
from collections.abc import Iterable
from typing import Any

import pluggy

from bench.core import hookspecs
from bench.core.errors import UnknownNameError
from bench.core.interfaces import AbstractBackend, AbstractSuite

ENTRY_POINT_GROUP = "bench"
#: Comma-separated plugin names to load (built-in module names or entry-point names). Unset: all.
LOAD_PLUGINS_ENV = "BENCH_LOAD_PLUGINS"

#: Built-in plugins, registered exactly like third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "bench.plugins.torch_adjoint",
    "bench.plugins.torch_direct",
    "bench.plugins.rknet",
    "bench.plugins.resnet",
    "bench.plugins.jax_diffrax",
    "bench.plugins.jax_rknet",
    "bench.suites.mnist",
    "bench.suites.cnf",
    "bench.suites.latent_ode",
    "bench.suites.memory_scaling",
)


@dataclasses.dataclass(frozen=True)
class PluginSelection:
    """Which plugins to load; picklable, so a child process rebuilds the same registry."""

    builtins: bool = True
    entry_points: bool = True
    extra_modules: tuple[str, ...] = ()
    only: frozenset[str] | None = None

    @classmethod
    def from_environment(cls, **kwargs: Any) -> PluginSelection:
        """Read :data:`LOAD_PLUGINS_ENV` (``BENCH_LOAD_PLUGINS``)."""
        raw = os.environ.get(LOAD_PLUGINS_ENV)
        only = None if raw is None else frozenset(p.strip() for p in raw.split(",") if p.strip())
        return cls(only=only, **kwargs)

    def wants(self, name: str) -> bool:
        return self.only is None or name in self.only


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # "builtin", "entry point", "module"
    error: str = ""  # non-empty: failed to load or to register


@dataclasses.dataclass
class Registry:
    backends: dict[str, AbstractBackend]
    suites: dict[str, AbstractSuite]
    plugins: list[PluginInfo]
    #: Where each backend or suite came from: name -> plugin name.
    origin: dict[str, str]
    #: The selection it was loaded with.
    selection: PluginSelection = dataclasses.field(default_factory=PluginSelection)
    #: Every plugin name that could have been loaded (before the selection's ``only``).
    available: tuple[str, ...] = ()

    @property
    def load_errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def backend(self, name: str) -> AbstractBackend:
        if name not in self.backends:
            raise UnknownNameError("backend", name, self.backends)
        return self.backends[name]

    def suite(self, name: str) -> AbstractSuite:
        if name not in self.suites:
            raise UnknownNameError("suite", name, self.suites)
        return self.suites[name]

    @classmethod
    def load(cls, selection: PluginSelection | None = None) -> Registry:
        selection = selection or PluginSelection.from_environment()
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        infos: list[PluginInfo] = []
        available: list[str] = []
        for name, source, loader in _candidates(selection, available):
            try:
                plugin = loader()
                pm.register(plugin, name=name)
            except Exception as exc:  # a broken plugin is listed, never fatal
                infos.append(PluginInfo(name, source, _describe(exc)))
                continue
            problem = _check_hooks(pm, name)
            if problem:  # e.g. a misspelt hook name: listed like a failed import
                pm.unregister(name=name)
                infos.append(PluginInfo(name, source, problem))
                continue
            infos.append(PluginInfo(name, source))
        registry = cls({}, {}, [], {}, selection, tuple(available))
        for info in infos:
            if not info.error:
                info = registry._collect(pm, info)
            registry.plugins.append(info)
        return registry

    def unmatched_plugin_names(self) -> list[str] | None:
        """The names in ``BENCH_LOAD_PLUGINS`` that match no plugin (None: the variable is not
        set; an empty list when set but empty only if nothing was asked for)."""
        if self.selection.only is None:
            return None
        unmatched = sorted(self.selection.only - set(self.available))
        if unmatched or not self.selection.only:
            return unmatched
        return None

    def available_plugin_names(self) -> list[str]:
        return list(self.available)

    def _collect(self, pm: pluggy.PluginManager, info: PluginInfo) -> PluginInfo:
        """Call one plugin's hooks in isolation, so one failing plugin spoils nothing else."""
        plugin = pm.get_plugin(info.name)
        others = [p for p in pm.get_plugins() if p is not plugin]
        problems: list[str] = []
        for hook, kind, interface, table in (
            ("bench_register_backends", "backend", AbstractBackend, self.backends),
            ("bench_register_suites", "suite", AbstractSuite, self.suites),
        ):

            def register(obj: Any, kind: str = kind,
                         interface: type[AbstractBackend | AbstractSuite] = interface,
                         table: dict[str, Any] = table) -> None:
                if not isinstance(obj, interface):
                    raise TypeError(
                        f"register() takes an instance of {interface.__name__}, "
                        f"got {type(obj).__name__}"
                    )
                if obj.name in table:
                    problems.append(
                        f"{kind} {obj.name!r} is already registered by plugin "
                        f"{self.origin[obj.name]!r}; this one is ignored"
                    )
                    return
                table[obj.name] = obj
                self.origin[obj.name] = info.name

            caller = pm.subset_hook_caller(hook, remove_plugins=others)
            try:
                caller(register=register)
            except Exception as exc:
                problems.append(f"{hook} failed: {_describe(exc)}")
        return dataclasses.replace(info, error="; ".join(problems))


def _check_hooks(pm: pluggy.PluginManager, name: str) -> str:
    """pluggy's check that every hook implementation matches a spec, for the plugin just
    registered (the earlier ones passed): '' when it does, else what is wrong."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        hooks = ", ".join(n for n in dir(hookspecs) if n.startswith("bench_"))
        return f"PluginValidationError: {exc} (the hooks are: {hooks}; a misspelt name?)"
    return ""


def _candidates(selection: PluginSelection, available: list[str] | None = None
                ) -> Iterable[tuple[str, str, Any]]:
    """Plugins to load; every name seen (wanted or not) is appended to ``available``."""
    seen: set[str] = set()

    def entries() -> Iterable[tuple[str, str, Any]]:
        if selection.builtins:
            for module in DEFAULT_PLUGINS:
                yield module, "builtin", lambda m=module: importlib.import_module(m)
        for module in selection.extra_modules:
            yield module, "module", lambda m=module: importlib.import_module(m)
        if selection.entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                yield ep.name, f"entry point {ep.value}", ep.load

    for name, source, loader in entries():
        if available is not None and name not in available:
            available.append(name)
        if name in seen or not selection.wants(name):
            continue
        seen.add(name)
        yield name, source, loader


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"
