"""The frameworks' persistent compilation cache, as the engine hands it to the cells.

A grid of seeds or tolerances runs the same compiled programs in every cell, each a fresh
process; with the cache, the first cell compiles them and the others (and later runs) load
them. ``bench run``, ``bench memory`` and ``bench gradients`` switch it on by default in this
user's cache folder (:func:`default_folder`), ``--compile-cache DIR`` puts it elsewhere and
``--no-compile-cache`` switches it off (to measure cold compilations). The engine only passes
the choice on, as :data:`COMPILE_CACHE_ENV` in each cell's environment; a framework layer
applies it in the cell (JAX: :mod:`bench.frameworks.jax._cache`, which writes into
``DIR/jax``), and the row's ``compile_cache`` says whether the warm-up step's compilations came
from it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bench.core.errors import BenchError

#: The cells' variable: the cache folder, or ``off``.
COMPILE_CACHE_ENV = "BENCH_COMPILE_CACHE"
OFF = "off"


def default_folder() -> Path:
    """``$XDG_CACHE_HOME/neural-ode-bench/compile-cache`` (an absolute XDG_CACHE_HOME), else
    ``~/.cache/neural-ode-bench/compile-cache``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "neural-ode-bench" / "compile-cache"


def folder_problem(folder: Path) -> str | None:
    """Why an existing ``folder`` cannot hold the cache (None: it can, or it does not exist
    yet and the cells will make it): a link, not a folder, another user's, or writable by group
    or others (the frameworks run the executables they load from it)."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"it is owned by user {info.st_uid}, not by this user ({os.getuid()})"
    if info.st_mode & 0o022:
        return (f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}), and "
                "the frameworks run the executables they load from it")
    return None


def cache_setting(folder: Path | None, off: bool = False) -> str:
    """The cells' :data:`COMPILE_CACHE_ENV`: ``off``, or the folder (default
    :func:`default_folder`) made absolute. A folder that exists and cannot hold the cache is
    refused (:class:`BenchError`, naming the problem and the choices)."""
    if off:
        if folder is not None:
            raise BenchError("--compile-cache DIR and --no-compile-cache contradict each other: "
                             "give one of them")
        return OFF
    chosen = folder if folder is not None else default_folder()
    path = Path(os.path.abspath(chosen))
    problem = folder_problem(path)
    if problem:
        raise BenchError(f"--compile-cache {str(chosen)!r}: {problem}; give a private folder of "
                         "yours (it is made, mode 0700, when missing) or --no-compile-cache")
    return str(path)
