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
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from bench.core import hookspecs
from bench.core.claims import AbstractClaim, claim_problem
from bench.core.errors import (
    PLUGIN_FAULTS,
    DuplicateNameError,
    FailedPlugin,
    UnknownNameError,
)
from bench.core.interfaces import AbstractBackend, AbstractSuite, Budget
from bench.core.options import OptionSpec
from bench.core.rows import GradientMethod

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
    "bench.plugins.torchode_backends",
    "bench.plugins.torchdiffeqpack_backends",
    "bench.suites.mnist",
    "bench.suites.cnf",
    "bench.suites.latent_ode",
    "bench.suites.memory_scaling",
    "bench.claims.builtin",
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
    """One plugin the registry tried to load."""

    #: The built-in or extra module's name, or the entry point's name.
    name: str
    #: ``"builtin"``, ``"module"`` or ``"entry point <module>"``.
    source: str
    #: Non-empty: it failed to import, or a hook failed or registered something invalid.
    error: str = ""
    #: The module the plugin is imported from (an entry point's module).
    module: str = ""


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
    #: Names registered by more than one plugin: ``(kind, name)`` -> the plugins' names, in the
    #: order they registered it (``backends``/``suites`` hold the first one's object, but
    #: :meth:`backend`/:meth:`suite` refuse the name: see :class:`DuplicateNameError`).
    clashes: dict[tuple[str, str], list[str]] = dataclasses.field(default_factory=dict)
    #: The plugin that registered each ``(kind, name)`` first.
    owners: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    #: The claims (``bench_register_claims``), by name: ``bench claims`` judges them.
    claims: dict[str, AbstractClaim] = dataclasses.field(default_factory=dict)

    @property
    def load_errors(self) -> list[PluginInfo]:
        """The plugins that failed to import, or whose hooks failed or registered something
        invalid."""
        return [p for p in self.plugins if p.error]

    def failed_plugins(self) -> list[FailedPlugin]:
        """``(name, module, error)`` of each plugin in :attr:`load_errors` (for the messages of
        an unknown name: the name may be one that a failed plugin would have registered)."""
        return [(p.name, p.module or p.name, p.error) for p in self.load_errors]

    def module_of(self, plugin: str) -> str:
        """The module plugin ``plugin`` was imported from (its name when unknown)."""
        for info in self.plugins:
            if info.name == plugin:
                return info.module or info.name
        return plugin

    def unknown_name(self, kind: str, name: str) -> UnknownNameError:
        """The error for a ``kind`` (``"backend"``/``"suite"``) name that is not registered: the
        valid names, and the plugins that failed to load with their errors."""
        tables: dict[str, Mapping[str, object]] = {
            "backend": self.backends, "suite": self.suites, "claim": self.claims}
        return UnknownNameError(kind, name, tables[kind], self.failed_plugins())

    def duplicate_name(self, kind: str, name: str) -> DuplicateNameError | None:
        """The error for a ``kind`` name registered by more than one plugin (None: it is not)."""
        plugins = self.clashes.get((kind, name))
        if not plugins:
            return None
        return DuplicateNameError(kind, name, [(p, self.module_of(p)) for p in plugins])

    def backend(self, name: str) -> AbstractBackend:
        """The backend registered as ``name``. Raises :class:`UnknownNameError` (with the valid
        names and the plugins that failed to load) or :class:`DuplicateNameError` (two plugins
        registered it)."""
        clash = self.duplicate_name("backend", name)
        if clash is not None:
            raise clash
        if name not in self.backends:
            raise self.unknown_name("backend", name)
        return self.backends[name]

    def suite(self, name: str) -> AbstractSuite:
        """The suite registered as ``name``; raises as :meth:`backend` does."""
        clash = self.duplicate_name("suite", name)
        if clash is not None:
            raise clash
        if name not in self.suites:
            raise self.unknown_name("suite", name)
        return self.suites[name]

    def claim(self, name: str) -> AbstractClaim:
        """The claim registered as ``name``; raises as :meth:`backend` does."""
        clash = self.duplicate_name("claim", name)
        if clash is not None:
            raise clash
        if name not in self.claims:
            raise self.unknown_name("claim", name)
        return self.claims[name]

    def problems(self) -> list[str]:
        """What is wrong with the loaded plugins, one line each, for ``bench list``: every name
        registered twice (using it is an error) and every plugin that failed to load."""
        lines = [str(self.duplicate_name(kind, name)) for kind, name in sorted(self.clashes)]
        lines += [f"plugin {p.name!r} (module {p.module or p.name!r}) failed to load: {p.error}"
                  for p in self.load_errors]
        return lines

    @classmethod
    def load(cls, selection: PluginSelection | None = None) -> Registry:
        selection = selection or PluginSelection.from_environment()
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        infos: list[PluginInfo] = []
        available: list[str] = []
        for name, source, module, loader in _candidates(selection, available):
            try:
                plugin = loader()
                pm.register(plugin, name=name)
            except PLUGIN_FAULTS as exc:  # a broken plugin is listed, never fatal
                infos.append(PluginInfo(name, source, _describe(exc), module))
                continue
            problem = _check_hooks(pm, name)
            if problem:  # e.g. a misspelt hook name: listed like a failed import
                pm.unregister(name=name)
                infos.append(PluginInfo(name, source, problem, module))
                continue
            infos.append(PluginInfo(name, source, "", module))
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
            ("bench_register_claims", "claim", AbstractClaim, self.claims),
        ):

            def register(obj: Any, kind: str = kind,
                         interface: type[AbstractBackend | AbstractSuite | AbstractClaim]
                         = interface, table: dict[str, Any] = table) -> None:
                if not isinstance(obj, interface):
                    raise TypeError(
                        f"register() takes an instance of {interface.__name__}, "
                        f"got {type(obj).__name__}"
                    )
                problem = contract_problem(obj, kind)
                if problem:
                    problems.append(f"{problem}; it is not registered")
                    return
                if obj.name in table:  # both stay known; using the name is an error
                    owners = self.clashes.setdefault((kind, obj.name),
                                                     [self.owners[(kind, obj.name)]])
                    owners.append(info.name)
                    return
                table[obj.name] = obj
                if kind != "claim":  # origin names backends and suites only
                    self.origin[obj.name] = info.name
                self.owners[(kind, obj.name)] = info.name

            caller = pm.subset_hook_caller(hook, remove_plugins=others)
            try:
                caller(register=register)
            except PLUGIN_FAULTS as exc:
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
                ) -> Iterable[tuple[str, str, str, Any]]:
    """Plugins to load, as ``(name, source, module, loader)``; every name seen (wanted or not) is
    appended to ``available``."""
    seen: set[str] = set()

    def entries() -> Iterable[tuple[str, str, str, Any]]:
        if selection.builtins:
            for module in DEFAULT_PLUGINS:
                yield module, "builtin", module, lambda m=module: importlib.import_module(m)
        for module in selection.extra_modules:
            yield module, "module", module, lambda m=module: importlib.import_module(m)
        if selection.entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                yield ep.name, f"entry point {ep.value}", ep.module, ep.load

    for name, source, module, loader in entries():
        if available is not None and name not in available:
            available.append(name)
        if name in seen or not selection.wants(name):
            continue
        seen.add(name)
        yield name, source, module, loader


#: Characters a backend or suite name cannot hold: ``--backends 'a,b[k=v]'`` splits on them.
_NAME_SEPARATORS = frozenset(",[]= \t\n")


def contract_problem(obj: AbstractBackend | AbstractSuite | AbstractClaim, kind: str
                     ) -> str | None:
    """What in the declared contract a registered ``kind`` (``"backend"``/``"suite"``/
    ``"claim"``) object lacks, or None: the attributes the core reads without a default (see
    :class:`bench.core.interfaces.AbstractBackend`, ``AbstractSuite`` and
    :class:`bench.core.claims.AbstractClaim`). Checked at registration, so an author meets the
    problem in ``bench list``, not in a cell."""
    if kind == "claim":
        return claim_problem(obj)  # type: ignore[arg-type]
    cls = type(obj)
    where = f"{kind} class {cls.__module__}.{cls.__qualname__}"
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name.strip():
        return (f"{where} has no name: set the class attribute (or, in __init__, the instance "
                f"attribute) name = '<unique {kind} name>'")
    bad = sorted(set(name) & _NAME_SEPARATORS)
    if bad:
        return (f"{where}: its name {name!r} holds {' '.join(map(repr, bad))}, which "
                "`--backends`/`--suite` use to split names and parameters")
    where = f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__})"
    if kind == "backend":
        return _backend_problem(obj, where)  # type: ignore[arg-type]
    return _suite_problem(obj, where)  # type: ignore[arg-type]


def _backend_problem(backend: AbstractBackend, where: str) -> str | None:
    framework = getattr(backend, "framework", None)
    if not isinstance(framework, str) or not framework:
        return (f"{where} has no framework: set framework = 'torch' (or 'jax', ...): the suites "
                "build their task for it (a torch backend subclasses "
                "bench.frameworks.torch.TorchBackend, which sets it)")
    method = getattr(backend, "gradient_method", "")
    methods = [m.value for m in GradientMethod]
    if method not in methods:
        return (f"{where}: gradient_method {method!r} is not one of {', '.join(methods)} "
                "(bench.core.rows.GradientMethod: the tables compare gradient methods by this "
                "column, so it takes one of these values)")
    specs = list(backend.parameters)
    wrong = [spec for spec in specs if not isinstance(spec, OptionSpec)]
    if wrong:
        return (f"{where}: parameters must be bench.OptionSpec instances, got "
                f"{', '.join(type(spec).__name__ for spec in wrong)}")
    names = [spec.name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"{where} declares parameter(s) {', '.join(twice)} more than once"
    dangling = sorted(f"{alias}->{target}" for alias, target in backend.parameter_aliases.items()
                      if target not in names)
    if dangling:
        return (f"{where}: parameter_aliases name undeclared parameters ({', '.join(dangling)}; "
                f"declared: {', '.join(names) or 'none'})")
    return None


def _suite_problem(suite: AbstractSuite, where: str) -> str | None:
    metric = getattr(suite, "metric_name", None)
    if not isinstance(metric, str) or not metric:
        return f"{where} has no metric_name: set metric_name = '<headline metric, with its unit>'"
    budgets = getattr(suite, "budgets", None)
    if not budgets or not all(isinstance(b, Budget) for b in budgets.values()):
        return (f"{where} needs budgets: a mapping of budget name -> bench.Budget, at least one "
                "(e.g. smoke)")
    if not suite.tasks and type(suite).build_task is AbstractSuite.build_task:
        return (f"{where} has no task: set tasks = {{'<framework>': 'module:TaskClass'}} or "
                "override build_task")
    return None


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame outside importlib's
    own machinery (where a plugin's import actually failed)."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    frames = [f for f in frames if not f.filename.startswith("<frozen")] or frames
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
