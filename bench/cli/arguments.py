"""The command line's argument types: each value checked with the request's own checks
(:mod:`bench.planning.request`), so a bad one is argparse's error (exit 2) naming the problem."""

from __future__ import annotations

import argparse
import ast
import os
import re
from pathlib import Path
from typing import Any

from bench.planning.checks import (
    max_cells_problem,
    memory_problem,
    threads_problem,
    timeout_problem,
)

#: A whole number as a user types it: the digits 0-9 only, maybe signed (Python's ``int``
#: also reads other scripts' digits, ``int("\u0663") == 3``, and ``1_000``).
_DIGITS = re.compile(r"-?[0-9]{1,18}")
#: The longest path and path component most file systems take (Linux: PATH_MAX, NAME_MAX).
PATH_MAX = 4096
NAME_MAX = 255
#: The bytes a run folder's own files add to its path: ``/cells/``, a cell folder name (at most
#: 200, :data:`bench.store.results.MAX_CELL_FOLDER`) and a temporary file's name in it.
RUN_DIR_ROOM = 300


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # not a literal
        value = raw
    return key.strip(), value


def _threads(text: str) -> int:
    """A positive thread count, or ``auto`` / ``0``: the frameworks' own choice (stored as 0)."""
    if text.strip().lower() == "auto":
        return 0
    if not _DIGITS.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a thread count: give a positive integer (digits 0-9), or auto (or "
            "0) for the frameworks' own")
    value = int(text)
    return _checked(value, threads_problem(value, repr(text)))


def _jobs(text: str) -> int:
    """A positive number of cells at once."""
    value = int(text) if _DIGITS.fullmatch(text.strip()) else 0
    return _checked(value, None if value >= 1 else
                    f"{text!r} is not a number of cells at once: give a positive integer")


def _max_cells(text: str) -> int:
    """``--max-cells``: a positive integer."""
    value = int(text) if _DIGITS.fullmatch(text.strip()) else 0
    return _checked(value, max_cells_problem(value, repr(text)))


def _number(text: str) -> float:
    if not text.isascii():  # float() reads other scripts' digits too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (digits 0-9)")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def path_problem(path: Path | str, room: int = 0) -> str | None:
    """What makes ``path`` unusable as a file or folder name before the file system says so
    with a traceback (None: fine): a NUL character, a name over :data:`NAME_MAX` bytes or a
    path over :data:`PATH_MAX` bytes (UTF-8, as the file system stores them), ``room`` bytes
    for the files written below it included (a run folder: :data:`RUN_DIR_ROOM`)."""
    text = os.fspath(path)
    if "\0" in text:
        return "a path holds no NUL character"
    if not text:
        return "an empty path"
    try:
        absolute = os.fsencode(os.path.abspath(text))
    except (UnicodeError, ValueError):
        return "the path cannot be written in the file system's encoding"
    if len(absolute) > PATH_MAX - 1:
        return (f"the path is {len(absolute):,} bytes long (made absolute), more than the file "
                f"system's limit of {PATH_MAX - 1:,}")
    if len(absolute) + room > PATH_MAX - 1:
        return (f"the path is {len(absolute):,} bytes long (made absolute): with the {room} "
                f"bytes of the files the harness writes inside it, more than the file system's "
                f"limit of {PATH_MAX - 1:,}; choose a shorter one")
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            shown = part if len(part) <= 40 else part[:37] + "..."
            return (f"the name {shown!r} is {size} bytes long, more than the file system's "
                    f"limit of {NAME_MAX} bytes per name")
    return None


def _path(text: str) -> Path:
    """A path argument, checked for what the file system would refuse (:func:`path_problem`)."""
    problem = path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def _run_dir(text: str) -> Path:
    """A run folder argument (``--out``): :func:`_path` with room for the cells' files."""
    problem = path_problem(text, RUN_DIR_ROOM)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def _positive_float(text: str) -> float:
    value = _number(text)
    return _checked(value, timeout_problem(value, repr(text)))


def _memory_mb(text: str) -> float:
    value = _number(text)
    return _checked(value, memory_problem(value, repr(text)))


def add_compile_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compile-cache DIR`` and ``--no-compile-cache`` (bench run, memory, gradients)."""
    parser.add_argument("--compile-cache", dest="compile_cache", type=_path, default=None,
                        metavar="DIR", help="the frameworks' persistent compilation cache, "
                        "shared by the cells of a run and by later runs (default: on, in "
                        "~/.cache/neural-ode-bench/compile-cache or $XDG_CACHE_HOME's)")
    parser.add_argument("--no-compile-cache", dest="no_compile_cache", action="store_true",
                        help="compile everything in every cell (cold compilations: "
                        "compile_time_s as a fresh machine sees it)")


def compile_cache_of(args: argparse.Namespace) -> str:
    """The cells' compile-cache setting from ``--compile-cache``/``--no-compile-cache``."""
    from bench.engine.compile_cache import cache_setting

    return cache_setting(getattr(args, "compile_cache", None),
                         bool(getattr(args, "no_compile_cache", False)))


def _checked(value: Any, problem: str | None) -> Any:
    """``value``, or argparse's error when the request's check finds a ``problem``."""
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value
