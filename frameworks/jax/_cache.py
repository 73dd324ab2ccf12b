"""JAX's persistent compilation cache in a cell's process: switched on or off from the engine's
``BENCH_COMPILE_CACHE`` variable, and its compile requests and hits counted.

The engine sets ``BENCH_COMPILE_CACHE`` in every cell's environment (``bench run
--compile-cache DIR``, on by default; ``off`` with ``--no-compile-cache``); importing
:mod:`bench.frameworks.jax` applies it before jax is imported where it can (jax and equinox
read their settings from the environment when they are imported), else through
``jax.config``. Outside a cell (the variable unset) nothing changes: a user's own JAX settings
stand.

With the cache on:

- the executables go to ``DIR/jax`` (made with mode 0700; refused, with the cache off and a
  warning, when it is a link, not a folder, another user's, or writable by others: JAX loads
  executables from it);
- every compilation is written (:data:`MIN_COMPILE_TIME_S`; JAX's default, 1 s, would leave
  out the evaluation and gradient-reference programs a grid shares);
- ``EQX_ON_ERROR=nan`` (unless set): JAX writes no executable that contains a host callback,
  and equinox's runtime errors (diffrax's ``max_steps`` reached, for one) are host callbacks,
  so a diffrax training step was never cached. A failed solve then returns NaN (its counts
  garbage) instead of raising: :meth:`JaxBackend.complete_step_stats` turns that into the
  cell's error, naming the likely causes and ``--no-compile-cache`` for the solver's message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.core.interfaces import StepStats

#: The engine's variable: a folder (the cache on) or ``off``.
ENV = "BENCH_COMPILE_CACHE"
#: The compilations written to the cache: those that took at least this long (seconds). All
#: of them: a first step also compiles a few tiny programs (argument conversions, 10-40 ms
#: each), and one left out would make every later cell's step a ``partial`` hit.
MIN_COMPILE_TIME_S = 0.0
#: Subfolder of the cache folder that holds JAX's executables.
SUBFOLDER = "jax"

_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": 0,
           "/jax/compilation_cache/cache_hits": 1}
#: [compile requests through the cache, hits] in this process, once the listener is on.
_COUNTS = [0, 0]
_STATE: dict[str, Any] = {"enabled": False, "listening": False, "folder": None, "problem": ""}


def folder_problem(folder: Path) -> str:
    """Why ``folder`` cannot hold a compilation cache ('' when it can): a link, not a folder,
    another user's, or writable by group or others (JAX runs what it loads from it)."""
    try:
        info = os.lstat(folder)
    except OSError as exc:
        return f"{folder}: {exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return f"{folder} is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder} is not a folder"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{folder} is owned by user {info.st_uid}, not by this user ({os.getuid()})"
    if info.st_mode & 0o022:
        return (f"{folder} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}): "
                "JAX runs the executables it loads from it")
    return ""


def prepare_folder(root: Path) -> tuple[Path, str]:
    """``root/jax``, made where missing (``root`` with its parents, the last two with mode
    0700), and the problem that makes it unusable ('' when none)."""
    folder = root / SUBFOLDER
    with contextlib.suppress(OSError):
        root.parent.mkdir(parents=True, exist_ok=True)
    for path in (root, folder):  # each checked before anything is made inside it
        with contextlib.suppress(OSError):
            os.mkdir(path, 0o700)
        problem = folder_problem(path)
        if problem:
            return folder, problem
    return folder, ""


def _set(name: str, value: Any) -> None:
    """A jax setting: in the environment before jax is imported (it reads it then), else in
    ``jax.config``."""
    if "jax" in sys.modules:
        import jax

        jax.config.update(name, value)
    else:
        os.environ[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)


def configure_from_environment() -> None:
    """Apply ``BENCH_COMPILE_CACHE`` (see the module's docstring); nothing when it is unset."""
    value = os.environ.get(ENV)
    if value is None or _STATE["folder"] is not None or _STATE["problem"]:
        return
    if value == "off":
        _STATE["problem"] = "off"
        _set("jax_enable_compilation_cache", False)
        return
    folder, problem = prepare_folder(Path(value))
    if problem:
        _STATE["problem"] = problem
        print(f"warning: compile cache not used: {problem}", file=sys.stderr, flush=True)
        _set("jax_enable_compilation_cache", False)
        return
    _STATE["folder"], _STATE["enabled"] = folder, True
    _set("jax_enable_compilation_cache", True)
    _set("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        _set("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    if "equinox" not in sys.modules:  # equinox reads it once, when imported
        os.environ.setdefault("EQX_ON_ERROR", "nan")


def enabled() -> bool:
    """The persistent cache is on in this process (set from ``BENCH_COMPILE_CACHE``)."""
    return bool(_STATE["enabled"])


def folder() -> Path | None:
    """The folder of JAX's executables when the cache is on in this process (None: off)."""
    return _STATE["folder"] if enabled() else None


def errors_are_nan() -> bool:
    """Equinox's runtime errors (diffrax's failed solves) return NaN here instead of raising."""
    return os.environ.get("EQX_ON_ERROR") == "nan"


def _listen(event: str, **kwargs: Any) -> None:
    index = _EVENTS.get(event)
    if index is not None:
        _COUNTS[index] += 1


def start_counting() -> None:
    """Count the cache's compile requests and hits from now on (JAX's monitoring events;
    imports jax; once per process)."""
    if _STATE["listening"]:
        return
    import jax

    jax.monitoring.register_event_listener(_listen)
    _STATE["listening"] = True


def counts() -> tuple[int, int] | None:
    """``(compile requests through the cache, hits)`` so far (counting starts at the first
    call), or None when the cache is off in this process."""
    if not enabled():
        return None
    start_counting()
    return _COUNTS[0], _COUNTS[1]


# -- a solve that failed into NaN -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FailedStepStats(StepStats):
    """A step whose solve failed: no count can be trusted; ``problem`` says what happened."""

    problem: str = ""


#: An int32 count that a failed solve's NaN turned into (equinox's ``EQX_ON_ERROR=nan``).
_NAN_INT = 2**31 - 1


def failed_solve(solves: list[Mapping[str, Any]], probe: Any) -> str:
    """Why a step's fetched counts cannot be a solve's ('' when they can): with
    ``EQX_ON_ERROR=nan`` (the compile cache's setting) a
    solve that fails returns NaN everywhere, its int32 counts the largest int32 and its probe
    NaN, instead of raising diffrax's error."""
    import numpy as np

    bad = any(np.any(np.asarray(value) >= _NAN_INT) for record in solves
              for value in record.values() if np.issubdtype(np.asarray(value).dtype, np.integer))
    if not bad and probe is not None and errors_are_nan():
        bad = not bool(np.all(np.isfinite(np.asarray(probe, dtype=np.float64))))
    if not bad:
        return ""
    why = ("a solve failed and returned NaN, with garbage counts: the cells run with "
           "EQX_ON_ERROR=nan while the compile cache is on (equinox's runtime errors are host "
           "callbacks, which JAX does not cache), which turns a solver's error into NaN. The "
           "usual cause is diffrax reaching max_steps (a stiff or diverging solve, too tight "
           "tolerances); rerun the cell with --no-compile-cache for the solver's own message")
    return why if errors_are_nan() else "a solve returned garbage counts (NaN)"


def nan_hint() -> str:
    """What to add to a NaN metric's or loss's message where a failed solve returns NaN
    (``EQX_ON_ERROR=nan``); '' otherwise."""
    if not errors_are_nan():
        return ""
    return ("; with the compile cache on, a JAX solve that fails (diffrax reaching max_steps, "
            "for one) returns NaN instead of raising (EQX_ON_ERROR=nan): rerun the cell with "
            "--no-compile-cache for the solver's own message")
