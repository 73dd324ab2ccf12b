"""The checks of a request's values, each before anything is written or run: numeric limits
(the command line's argument types call these too), devices, lists of integers (``--seeds``,
``--steps``: ASCII digits only, in range), how many cells a request may make, and
:func:`given_by`, which names where a value came from (a run file's key) in its error."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, UnknownNameError
from bench.planning import concurrency
from bench.planning.concurrency import _ranges

#: The devices a run may ask for; each backend maps them to its own (``resolve_device``).
DEVICES = ("cpu", "cuda", "auto")
#: The most values ``--seeds`` / ``--steps`` may expand to (each is at least one cell).
MAX_LIST_VALUES = 1000
#: The smallest ``--max-memory-mb``: below it no Python process can run, so it is a typo.
MIN_MEMORY_MB = 1.0
#: The most cells a request may expand to unless ``--max-cells`` allows more: a grid that big is
#: almost always a typo (a list where a value was meant), and would run for days.
MAX_CELLS = 10_000
#: The largest seed: every framework takes it (numpy's legacy seeding and torch stop near here).
MAX_SEED = 2**32 - 1


# -- numeric limits (the CLI's argument types call these) -------------------------------------


def timeout_problem(value: float | None, shown: str | None = None) -> str | None:
    """What is wrong with a per-cell time limit in seconds (None: fine); ``shown``: the value
    as the user wrote it."""
    shown = repr(value) if shown is None else shown
    if value is None:
        return None
    if not math.isfinite(value):
        return f"{shown} must be a finite positive number"
    return None if value > 0 else f"{shown} must be positive"


def memory_problem(value: float | None, shown: str | None = None) -> str | None:
    """What is wrong with a per-cell resident-memory limit in MiB (None: fine)."""
    problem = timeout_problem(value, shown)
    if problem or value is None or value >= MIN_MEMORY_MB:
        return problem
    shown = repr(value) if shown is None else shown
    return f"{shown} MiB is below the minimum of {MIN_MEMORY_MB:g} MiB (the limit is in MiB)"


def threads_problem(value: int, shown: str | None = None,
                    cores: Sequence[int] | None = None) -> str | None:
    """What is wrong with a thread count (0: the frameworks' own choice); ``cores``: the CPU
    cores a cell may use here (None: not known, e.g. on Dask workers), at most one thread each."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        shown = repr(value) if shown is None else shown
        return f"{shown} must be a positive integer, or auto (or 0) for the frameworks' own"
    if cores is not None and value > len(cores):
        return (f"--threads {value}: more threads than the {len(cores)} CPU core(s) this process "
                f"may use ({_ranges(cores)}); give at most {len(cores)}, or auto (0) for the "
                "frameworks' own")
    return None


def max_cells_problem(value: int, shown: str | None = None) -> str | None:
    """What is wrong with a ``--max-cells`` limit (None: fine)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    shown = repr(value) if shown is None else shown
    return f"--max-cells {shown}: expected a positive integer (default {MAX_CELLS})"


def too_many_cells(count: int, parts: str, limit: int) -> BenchError:
    """The error of a request that expands to more than ``limit`` cells."""
    return BenchError(f"this request expands to {count:,} cells ({parts}), more than the limit "
                      f"of {limit:,}: narrow the grid (fewer suites, backend values or seeds), "
                      f"or allow it with --max-cells {count}")


def check_device(device: str, distributed: bool = False) -> None:
    """Raise unless ``device`` is one a run may ask for here (:func:`device_problem`); an
    unknown name is an :class:`UnknownNameError` with the choices."""
    if device not in DEVICES:
        raise UnknownNameError("device", device, DEVICES)
    problem = device_problem(device, distributed)
    if problem:
        raise BenchError(problem)


def device_problem(device: str, distributed: bool = False) -> str | None:
    """What is wrong with ``--device`` here (None: fine): ``cuda`` needs a visible GPU on this
    machine (Dask workers, ``distributed``, may have GPUs this machine lacks)."""
    if device not in DEVICES:
        return str(UnknownNameError("device", device, DEVICES))
    if device != "cuda" or distributed or concurrency.visible_gpus() or Path("/dev/kfd").exists():
        return None  # /dev/kfd: an AMD GPU (ROCm's torch calls it cuda)
    return ("--device cuda: no GPU is visible on this machine (CUDA_VISIBLE_DEVICES is "
            + ("empty" if "CUDA_VISIBLE_DEVICES" in os.environ else "unset")
            + ", and no NVIDIA driver lists one); the devices found: cpu. Run with --device "
            "cpu, or --device auto (a GPU where there is one)")


@contextlib.contextmanager
def given_by(origin: str | None) -> Iterator[None]:
    """Prefix a :class:`BenchError` raised inside with where the value came from (``origin``,
    e.g. ``--config 'grid.toml': seeds``); None: the command line, whose messages name their
    option already."""
    try:
        yield
    except BenchError as exc:
        if origin is None:
            raise
        raise BenchError(f"{origin}: {exc}") from None


# -- lists of integers ---------------------------------------------------------------------------


#: An integer or an inclusive range of ``parse_int_list``: ASCII digits only (Python's ``int``
#: also reads other scripts' digits, ``int("\u0663") == 3``, and ``1_000``).
_INT_OR_RANGE = re.compile(r"(-?[0-9]+)(?:\s*-\s*(-?[0-9]+))?")


def parse_int_list(value: str, option: str, minimum: int = 0, limit: int = MAX_LIST_VALUES,
                   maximum: int | None = None) -> list[int]:
    """Integers of ``option`` written as ``0,1,2`` or inclusive ranges ``0-4`` (mixed: ``0-2,7``),
    each at least ``minimum`` (and at most ``maximum``), at most ``limit`` values in all
    (duplicates dropped, order kept). Only the digits 0-9 are read. Negative numbers, reversed
    ranges, values out of range and too many values raise :class:`BenchError` saying so."""
    valid = ("positive integers" if minimum == 1 else
             "non-negative integers" if minimum == 0 else f"integers >= {minimum}")
    if maximum is not None:
        valid += f" up to {maximum}"
    example = f"e.g. {minimum},{minimum + 1},{minimum + 2} or a range {minimum}-{minimum + 4}"
    values: list[int] = []
    shown = _short(value)
    for raw in value.split(","):
        part = raw.strip()
        if not part:
            continue
        match = _INT_OR_RANGE.fullmatch(part)
        if match is None:
            raise BenchError(f"{option} {shown}: {_short(part)} is not an integer or a range "
                             f"(digits 0-9); expected {valid}, {example}")
        if max(len(g or "") for g in match.groups()) > 30:
            raise BenchError(f"{option} {shown}: {_short(part)} is too large; expected {valid}")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if lo < minimum or hi < minimum:
            raise BenchError(f"{option} {shown}: {min(lo, hi)} is below {minimum}; "
                             f"expected {valid}, {example}")
        if maximum is not None and max(lo, hi) > maximum:
            raise BenchError(f"{option} {shown}: {max(lo, hi)} is above {maximum}; "
                             f"expected {valid}, {example}")
        if hi < lo:
            raise BenchError(f"{option} {shown}: the range {part} is reversed (write {hi}-{lo})")
        if hi - lo + 1 + len(values) > limit:
            raise BenchError(f"{option} {shown}: more than {limit} values (each is at least "
                             "one cell); split the run")
        values.extend(range(lo, hi + 1))
    if not values:
        raise BenchError(f"{option} {shown}: no value given; expected {valid}, {example}")
    return list(dict.fromkeys(values))


def _short(text: str, limit: int = 60) -> str:
    """``text`` quoted, cut to ``limit`` characters (a pasted megabyte stays off the screen)."""
    return repr(text) if len(text) <= limit else repr(text[:limit - 3]) + "..."


def origin_of(origins: Mapping[str, str], **given: bool) -> str | None:
    """The origin of a check that reads several settings (each named with whether it is
    given): their origins joined when every one given came from a run file, else None (the
    command line's own messages name their options)."""
    keys = [key for key, present in given.items() if present]
    if not keys or any(key not in origins for key in keys):
        return None
    return "; ".join(dict.fromkeys(origins[key] for key in keys))


def checked_ints(values: Sequence[Any], what: str, minimum: int, maximum: int | None = None
                 ) -> list[int]:
    """A sequence of integers given as data (a run file's list), each in range; anything else
    raises naming ``what``."""
    checked = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BenchError(f"{what}: {value!r} is not an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise BenchError(f"{what}: {value} is out of range (valid: {bound})")
        checked.append(value)
    if not checked:
        raise BenchError(f"{what}: no value given")
    if len(checked) > MAX_LIST_VALUES:
        raise BenchError(f"{what}: more than {MAX_LIST_VALUES} values (each is at least one "
                         "cell); split the run")
    return list(dict.fromkeys(checked))
