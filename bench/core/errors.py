"""Errors the harness raises for bad input, each naming the problem and the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class BenchError(Exception):
    """An error caused by the user's input or configuration (shown without a traceback)."""


#: What a plugin's code can raise that the harness contains (its cell ``failed``, its plugin
#: listed as broken): any exception, and ``SystemExit`` (a ``sys.exit()`` in a plugin would
#: otherwise end the whole run, its running cells' rows lost). Ctrl-C is never contained.
PLUGIN_FAULTS: tuple[type[BaseException], ...] = (Exception, SystemExit)


#: A plugin that failed to load: ``(plugin name, module, error)``. The plugin name is its
#: built-in module name or its entry-point name; ``module`` the module it was imported from.
FailedPlugin = tuple[str, str, str]


class UnknownNameError(BenchError, KeyError):
    """A suite, backend, budget or format name that does not exist.

    ``failed_plugins``: the plugins that failed to load (``(name, module, error)``). A name such a
    plugin would have registered is unknown because its import failed, so the message says so:
    a plugin whose name matches the requested one (loosely: case, ``-``/``_`` and a
    ``bench_``/``bench-`` prefix or ``_plugin``/``_backend`` suffix ignored, or one name contained
    in the other) is named first as the likely provider; every failed plugin is listed with its
    error either way."""

    def __init__(self, kind: str, name: str, choices: Iterable[str],
                 failed_plugins: Sequence[FailedPlugin] = ()):
        self.kind = kind
        self.name = name
        self.choices = sorted(choices)
        self.failed_plugins = list(failed_plugins)
        likely = [p for p in self.failed_plugins if _loosely_same(name, p[0], p[1])]
        message = f"unknown {kind} {name!r}."
        if likely:
            message += "".join(
                f" Plugin {plugin!r} (module {module!r}), which may provide it, failed to load: "
                f"{error}." for plugin, module, error in likely)
        else:
            close = difflib.get_close_matches(name, self.choices, n=1, cutoff=0.5)
            if close:
                message += f" Did you mean {close[0]!r}?"
        choices = (", ".join(self.choices) if self.choices
                   else "(none loaded: see `bench list` and BENCH_LOAD_PLUGINS)")
        message += f" Valid choices: {choices}."
        others = [p for p in self.failed_plugins if p not in likely]
        if others:
            listed = "; ".join(f"{plugin!r} (module {module!r}): {error}"
                               for plugin, module, error in others)
            what = "plugin" if len(others) == 1 else "plugins"
            message += (f" {len(others)} {what} failed to load, and any of them may provide it: "
                        f"{listed}.")
        if self.failed_plugins:
            message += " Fix the import (see `bench list`), then run again."
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DuplicateNameError(BenchError):
    """A backend or suite name registered by more than one plugin: which one a run means cannot
    be decided, so using the name is an error (``bench list`` shows the clash)."""

    def __init__(self, kind: str, name: str, plugins: Sequence[tuple[str, str]]):
        self.kind = kind
        self.name = name
        self.plugins = list(plugins)
        owners = " and ".join(f"plugin {plugin!r} (module {module!r})"
                              for plugin, module in self.plugins)
        names = ", ".join(plugin for plugin, _ in self.plugins)
        super().__init__(
            f"{kind} {name!r} is registered by more than one plugin: {owners}; the harness cannot "
            f"tell which one to run. Rename it in one of them, uninstall one (pip uninstall), or "
            f"load only one of them with BENCH_LOAD_PLUGINS (a comma-separated list of plugin "
            f"names that leaves out one of {names}; `bench list` shows every plugin).")


def _normalised(name: str) -> str:
    """``name`` lower-case with ``-`` and ``.`` as ``_``, without a ``bench_`` prefix or a
    ``_plugin``/``_plugins``/``_backend``/``_backends`` suffix."""
    text = name.strip().lower().replace("-", "_").replace(".", "_")
    for prefix in ("bench_",):
        if text.startswith(prefix) and len(text) > len(prefix):
            text = text[len(prefix):]
    for suffix in ("_plugins", "_plugin", "_backends", "_backend"):
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
    return text


def _loosely_same(requested: str, *plugin_names: str) -> bool:
    """Whether ``requested`` (a backend or suite name) looks like one of a plugin's names (its
    entry-point or module name, its module's last part): the same after :func:`_normalised`,
    one contained in the other (3 characters at least), or close (difflib ratio 0.8)."""
    want = _normalised(requested)
    if not want:
        return False
    for plugin_name in plugin_names:
        if not plugin_name:
            continue
        candidates = {_normalised(plugin_name), _normalised(plugin_name.split(":")[0]
                                                            .rsplit(".", 1)[-1])}
        for have in candidates:
            if have == want:
                return True
            short, long = sorted((want, have), key=len)
            if len(short) >= 3 and short in long:
                return True
            if difflib.SequenceMatcher(None, want, have).ratio() >= 0.8:
                return True
    return False
