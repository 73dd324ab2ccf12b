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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib  # type: ignore[no-redef]

from bench.core.errors import BenchError, UnknownNameError
from bench.planning.backend_grid import format_value

#: The keys a run file may hold -> the RunRequest.for_run keyword they set.
KEYS = {"suites": "suites", "suite": "suites", "backends": "backends", "budget": "budget",
        "seeds": "seeds", "device": "device", "options": "options",
        "backend_set": "backend_set", "threads": "threads", "timeout_s": "timeout_s",
        "max_memory_mb": "max_memory_mb", "data_dir": "data_dir", "out": "out"}


def load_run_config(path: Path) -> dict[str, Any]:
    """The run file's settings as :meth:`bench.planning.request.RunRequest.for_run` keywords; a file
    that cannot be read, or an unknown key, raises naming it."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise BenchError(f"--config {str(path)!r}: cannot read it ({exc.strerror or exc})"
                         ) from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"--config {str(path)!r} is not valid TOML: {exc}") from None
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise UnknownNameError(f"key of run file {str(path)!r}", key, KEYS)
        kwargs[KEYS[key]] = _convert(key, value, path)
    return kwargs


def _convert(key: str, value: Any, path: Path) -> Any:
    where = f"--config {str(path)!r}: {key}"
    if key in ("suites", "suite"):
        return ",".join(value) if isinstance(value, list) else str(value)
    if key == "seeds":
        return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if key == "backends":
        entries = value if isinstance(value, list) else [value]
        return [backend_text(entry, where) for entry in entries]
    if key == "backend_set":
        if not isinstance(value, dict):
            raise BenchError(f"{where} must be a table, e.g. backend_set = {{ rtol = 1e-5 }}")
        return [f"{k}={_values_text(v)}" for k, v in value.items()]
    if key == "options":
        if not isinstance(value, dict):
            raise BenchError(f"{where} must be a table of suite options")
        return [(k, v) for k, v in value.items()]
    if key in ("data_dir", "out"):
        return Path(value)
    return value


def backend_text(entry: Any, where: str) -> str:
    """One ``[[backends]]`` table (``name`` and parameters) or string as ``--backends`` text."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict) or "name" not in entry:
        raise BenchError(f"{where}: each backend is a name or a table with a name, got {entry!r}")
    params = [f"{k}={_values_text(v)}" for k, v in entry.items() if k != "name"]
    return f"{entry['name']}[{','.join(params)}]" if params else str(entry["name"])


def _values_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return format_value(value)
