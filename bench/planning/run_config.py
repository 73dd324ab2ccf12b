"""``bench run --config grid.toml``: a whole run (suites, backends with parameter grids, budget,
seeds, options) in a file, for grids too big to type. Example::

    suites = ["cnf"]
    budget = "quick"
    seeds = [0, 1]                  # or "0-4"
    backend_set = { rtol = [1e-3, 1e-5] }   # every backend that has rtol

    [options]                       # suite options (--set)
    dataset = "8gaussians"

    [[backends]]
    name = "torch-adjoint"
    adjoint_norm = ["default", "seminorm"]   # a list: one cell per value

    [[backends]]
    name = "diffrax-checkpoint"

A backend may also be a string in ``--backends`` syntax (``"torch-direct[rtol=1e-6]"``).
Arguments given on the command line win over the file's.

The file is checked against a small schema (:data:`SCHEMA`) before anything else: only a
regular file is read (a FIFO or a device would block or never end), every key must be known and
every value of its type, and each message names the file and the key. A ``[[backends]]`` table
becomes a :class:`bench.planning.backend_grid.BackendEntry` directly, never ``--backends``
text, so no key or value can splice another backend into the grid. (A hand-written checker:
the schema is a dozen keys, too small for a validation library's dependencies.)
"""

from __future__ import annotations

import math
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from bench.core.errors import BenchError, UnknownNameError
from bench.planning.backend_grid import BackendEntry

#: The largest run file read (a run file is a few lines; anything bigger is the wrong file).
MAX_BYTES = 1 << 20

#: The keys a run file may hold -> the RunRequest.for_run keyword they set.
KEYS = {"suites": "suites", "suite": "suites", "backends": "backends", "budget": "budget",
        "seeds": "seeds", "device": "device", "options": "options",
        "backend_set": "backend_set", "threads": "threads", "timeout_s": "timeout_s",
        "max_memory_mb": "max_memory_mb", "data_dir": "data_dir", "out": "out",
        "max_cells": "max_cells"}

Scalar = str | int | float | bool


class _Bad(Exception):
    """What is wrong with one value (the caller adds the file and the key)."""


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a non-empty string, got {_shown(value)}")
    return value


def _names(value: Any) -> str:
    """A string, or a list of names (no commas: each is one name)."""
    if isinstance(value, str):
        return _text(value)
    if not isinstance(value, list) or not value:
        raise _Bad(f"expected a string or a non-empty list of strings, got {_shown(value)}")
    for item in value:
        if "," in _text(item):
            raise _Bad(f"{item!r}: a name in a list holds no comma (one name per item)")
    return ",".join(value)


def _seeds(value: Any) -> str | list[int]:
    if isinstance(value, str):
        return _text(value)
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise _Bad(f"expected integers (a list, e.g. [0, 1, 2]) or a string such as '0-4', got "
                   f"{_shown(value)}")
    return list(items)


def _count(minimum: int, auto: bool = False) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if auto and value == "auto":
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            extra = " or 'auto'" if auto else ""
            raise _Bad(f"expected an integer >= {minimum}{extra}, got {_shown(value)}")
        return value
    return check


def _number(minimum: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < minimum or value <= 0):
            raise _Bad(f"expected a finite positive number (at least {minimum:g}), got "
                       f"{_shown(value)}")
        return float(value)
    return check


def _path(value: Any) -> Path:
    if "\0" in _text(value):
        raise _Bad("a path holds no NUL character")
    return Path(value)


def _values(value: Any) -> tuple[Scalar, ...]:
    """One value (a string, number or boolean) or a non-empty list of them (a grid)."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(_is_scalar(v) for v in items):
        raise _Bad(f"expected a string, number or boolean, or a non-empty list of them, got "
                   f"{_shown(value)}")
    return tuple(items)


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"expected a table of {what}, got {_shown(value)}")
    return value


def _backend_set(value: Any) -> list[tuple[str, tuple[Scalar, ...]]]:
    table = _table(value, "backend parameters, e.g. backend_set = { rtol = 1e-5 }")
    return [(key, _keyed(key, _values, item)) for key, item in table.items()]


def _options(value: Any) -> list[tuple[str, Scalar]]:
    table = _table(value, "suite options, e.g. [options] dataset = '8gaussians'")
    return [(key, _keyed(key, _scalar, item)) for key, item in table.items()]


def _scalar(value: Any) -> Scalar:
    if not _is_scalar(value):
        raise _Bad(f"expected a string, number or boolean, got {_shown(value)}")
    return cast(Scalar, value)


def _backends(value: Any) -> list[str | BackendEntry]:
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise _Bad("an empty list: name at least one backend")
    return [_keyed(f"[{i}]", _backend, entry, join="") for i, entry in enumerate(entries)]


def _backend(entry: Any) -> str | BackendEntry:
    """One backend: ``--backends`` text, or a table with a ``name`` and parameter values."""
    if isinstance(entry, str):
        return _text(entry)
    if not isinstance(entry, dict) or "name" not in entry:
        raise _Bad(f"each backend is a name or a table with a name, got {_shown(entry)}")
    name = _keyed("name", _text, entry["name"])
    if any(c in name for c in "[],= "):
        raise _Bad(f"name {name!r} is a backend name, without brackets or parameters (set "
                   "those as keys of the table)")
    params = tuple((key, _keyed(key, _values, item)) for key, item in entry.items()
                   if key != "name")
    return BackendEntry(name, params)


def _keyed(key: str, check: Callable[[Any], Any], value: Any, join: str = ".") -> Any:
    """``check(value)``, its problem prefixed with ``key`` (a table's key or a list index)."""
    try:
        return check(value)
    except _Bad as exc:
        raise _Bad(f"{join}{key}{_joint(str(exc))}") from None


def _joint(text: str) -> str:
    """``text`` after a key: a nested key or index directly, a message after a colon."""
    return text if text[:1] in ".[" else f": {text}"


def _shown(value: Any) -> str:
    text = repr(value)
    return (text if len(text) <= 60 else text[:57] + "...") + f" ({type(value).__name__})"


#: Each key's check: it returns the RunRequest.for_run value or raises what is wrong.
SCHEMA: dict[str, Callable[[Any], Any]] = {
    "suites": _names, "suite": _names, "backends": _backends, "budget": _text, "seeds": _seeds,
    "device": _text, "options": _options, "backend_set": _backend_set,
    "threads": _count(0, auto=True), "timeout_s": _number(0.0), "max_memory_mb": _number(1.0),
    "data_dir": _path, "out": _path, "max_cells": _count(1),
}


def read_regular_file(path: Path, what: str, limit: int = MAX_BYTES) -> str:
    """The text of ``path`` if it is a regular file of at most ``limit`` bytes (UTF-8), else
    :class:`BenchError` naming it (``what``: how the user gave it, e.g. ``--config``). A FIFO,
    socket or device is refused without blocking on it."""
    shown = f"{what} {str(path)!r}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BenchError(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a folder" if stat.S_ISDIR(info.st_mode) else
                    "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else
                    "a socket" if stat.S_ISSOCK(info.st_mode) else "a device")
            raise BenchError(f"{shown} is {kind}, not a regular file: give the path of a TOML "
                             "run file")
        if info.st_size > limit:
            raise BenchError(f"{shown} is {info.st_size:,} bytes, more than a run file's limit "
                             f"of {limit:,}: is it the right file?")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise BenchError(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(f"{shown} is not UTF-8 text (byte {exc.start}): a run file is TOML"
                         ) from None


def load_run_config(path: Path) -> dict[str, Any]:
    """The run file's settings as :meth:`bench.planning.request.RunRequest.for_run` keywords,
    each checked against :data:`SCHEMA`; a file that cannot be read, is not TOML, has an
    unknown key or a value of the wrong type raises naming the file and the key."""
    text = read_regular_file(Path(path), "--config")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"--config {str(path)!r} is not valid TOML: {exc}") from None
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise UnknownNameError(f"key of run file {str(path)!r}", key, KEYS)
        if KEYS[key] in kwargs:
            raise BenchError(f"{origin(path, key)}: given twice (suite and suites are the same "
                             "key)")
        try:
            kwargs[KEYS[key]] = SCHEMA[key](value)
        except _Bad as exc:
            raise BenchError(f"{origin(path, key)}{_joint(str(exc))}") from None
    return kwargs


def origin(path: Path, key: str) -> str:
    """How errors name a setting that came from the run file ``path``."""
    return f"--config {str(path)!r}: {key}"
