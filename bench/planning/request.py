"""A run request (``bench run`` / ``bench memory``), validated once and expanded into cells.

Every check of what a run asks for lives here, in the parent, before anything is written or run:
names (suites, backends, budget), seeds and solver steps, the device, the suite options (each
converted and checked by its suite), the numeric limits and each suite's data. A
:class:`RunRequest` that exists is valid; :mod:`bench.commands.session` runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, FailedPlugin, UnknownNameError
from bench.core.options import format_value
from bench.core.registry import LOAD_PLUGINS_ENV, Registry
from bench.planning import concurrency
from bench.planning.backend_grid import Assignment, BackendChoice, BackendEntry, expand_backends
from bench.planning.cells import CellSpec
from bench.planning.concurrency import _ranges, default_threads, parallel_problem

#: The devices a run may ask for; each backend maps them to its own (``resolve_device``).
DEVICES = ("cpu", "cuda", "auto")
DEFAULT_BUDGET = "quick"
#: The suite ``bench memory`` runs, and its default solver steps L.
MEMORY_SUITE = "memory-scaling"
DEFAULT_MEMORY_STEPS = (8, 16, 32, 64, 128, 256, 512)
#: The most values ``--seeds`` / ``--steps`` may expand to (each is at least one cell).
MAX_LIST_VALUES = 1000
#: The smallest ``--max-memory-mb``: below it no Python process can run, so it is a typo.
MIN_MEMORY_MB = 1.0
#: The most cells a request may expand to unless ``--max-cells`` allows more: a grid that big is
#: almost always a typo (a list where a value was meant), and would run for days.
MAX_CELLS = 10_000
#: The largest seed: every framework takes it (numpy's legacy seeding and torch stop near here).
MAX_SEED = 2**32 - 1


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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


# -- names, lists ---------------------------------------------------------------------------------


def parse_names(value: str | Sequence[str], kind: str, choices: Sequence[str],
                failed_plugins: Sequence[FailedPlugin] = ()) -> list[str]:
    """``all`` or a comma-separated list (or a sequence of names), each checked; an unknown
    name's error lists ``failed_plugins`` (``Registry.failed_plugins()``), whose names it may
    be."""
    if isinstance(value, str) and value.strip() == "all":
        if not choices:
            raise BenchError(f"--{kind} all: no {kind}s are loaded (see `bench list` and "
                             f"{LOAD_PLUGINS_ENV})")
        return list(choices)
    parts = value.split(",") if isinstance(value, str) else value
    names = [n.strip() for n in parts if n.strip()]
    if not names:
        raise BenchError(f"no {kind} given")
    for name in names:
        if name not in choices:
            raise UnknownNameError(kind, name, choices, failed_plugins)
    return list(dict.fromkeys(names))


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


def suites_with_budget(registry: Registry, suites: list[str], budget: str,
                       echo: Callable[[str], None] = _stderr) -> list[str]:
    """``--suite all``: the suites that have ``budget``; the others are named through ``echo``."""
    kept = [name for name in suites if budget in registry.suite(name).budgets]
    left_out = [name for name in suites if name not in kept]
    if not kept:
        have = sorted({b for name in suites for b in registry.suite(name).budgets})
        raise UnknownNameError("budget of any loaded suite", budget, have)
    if left_out:
        detail = "; ".join(f"{name} has {', '.join(registry.suite(name).budgets)}"
                           for name in left_out)
        echo(f"--suite all: left out {', '.join(left_out)} (no budget {budget!r}: {detail})")
    return kept


def recorded_data_dir(run: Path) -> str | None:
    """The ``--data-dir`` a run was started with (config.json), if that folder still exists."""
    try:
        config = json.loads((run / "config.json").read_text())
        folder = config.get("options", {}).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return folder if isinstance(folder, str) and Path(folder).is_dir() else None


# -- expansion ------------------------------------------------------------------------------------


def expand(registry: Registry, suites: Sequence[str],
           backends: Sequence[str | BackendChoice], budget: str, seeds: Sequence[int],
           device: str, options: dict[str, Any] | None = None) -> list[CellSpec]:
    """The cells of a run, suite-major. The one check of the device, the names, the budget and
    the options (each converted by its suite); unknown ones raise with the choices. A backend is
    a name or a :class:`BackendChoice` (a name with parameters, see
    :mod:`bench.planning.backend_grid`).
    """
    if device not in DEVICES:
        raise UnknownNameError("device", device, DEVICES)
    if not suites:
        raise BenchError("no suite selected")
    if not backends:
        raise BenchError("no backend selected")
    suite_objs = [registry.suite(name) for name in suites]
    choices = [b if isinstance(b, BackendChoice) else BackendChoice(b) for b in backends]
    for choice in choices:
        registry.backend(choice.name)
    for suite in suite_objs:
        if budget not in suite.budgets:
            raise UnknownNameError(f"budget for suite {suite.name!r}", budget, suite.budgets)
    options = dict(options or {})
    known = {k for suite in suite_objs for k in suite.options}
    for key in options:
        if key not in known:
            names = ", ".join(repr(s.name) for s in suite_objs)
            raise UnknownNameError(f"option of suite {names}", key, known)
    cells = []
    for suite in suite_objs:
        # each option is converted and checked here, in the parent, before any cell starts
        given = suite.validate_options({k: v for k, v in options.items() if k in suite.options})
        suite_options = tuple(sorted(given.items()))
        for choice in choices:
            for seed in seeds:
                cells.append(CellSpec(suite.name, choice.name, budget, int(seed), device,
                                      suite_options, tuple(suite.location_options),
                                      choice.params))
    return cells


def check_data(registry: Registry, cells: Sequence[CellSpec]) -> None:
    """Each suite's data, checked once in the parent before any cell starts (a suite may
    download it here); a missing dataset is one whole message with its remedy."""
    checked: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()
    for cell in cells:
        key = (cell.suite, cell.options)
        if key in checked:
            continue
        checked.add(key)
        problem = registry.suite(cell.suite).check_data(dict(cell.options))
        if problem:
            raise BenchError(f"{problem}\nNo cell was run.")


# -- the request ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What a run asks for, checked: build it with :meth:`for_run` or :meth:`for_memory`.

    ``command`` is ``run`` or ``memory``; ``cells`` the expanded cells (for ``memory``, every L
    of every backend, backends interleaved); ``options`` the suite options as given (with
    ``data_dir``), recorded in config.json; ``steps`` the memory study's L; ``threads`` 0 means
    the frameworks' own choice.
    """

    command: str
    suites: tuple[str, ...]
    backends: tuple[str, ...]
    budget: str
    seeds: tuple[int, ...]
    device: str
    options: Mapping[str, Any]
    cells: tuple[CellSpec, ...]
    out: Path | None = None
    resume: bool = False
    timeout_s: float | None = None
    max_memory_mb: float | None = None
    threads: int = 1
    steps: tuple[int, ...] = ()
    #: The ``--backend-set`` assignments (already applied to ``cells``), for config.json.
    backend_set: tuple[str, ...] = ()
    #: Cells at once (``--jobs``), and where: a running Dask scheduler's address or a cluster
    #: started for the run (bench.engine.parallel); 1 and neither: one cell after the other.
    jobs: int = 1
    scheduler: str | None = None
    cluster: str | None = None
    #: The most cells the request may expand to (``--max-cells``).
    max_cells: int = MAX_CELLS
    #: Seconds a cluster started for the run (``--cluster``) may take to give its first worker
    #: before the run ends with a message (``--cluster-timeout``).
    cluster_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        distributed = bool(self.scheduler or self.cluster)
        cores = None if distributed else concurrency.usable_cores()
        for problem in (timeout_problem(self.timeout_s), memory_problem(self.max_memory_mb),
                        timeout_problem(self.cluster_timeout_s, "--cluster-timeout "
                                        f"{self.cluster_timeout_s!r}"),
                        threads_problem(self.threads, cores=cores),
                        max_cells_problem(self.max_cells),
                        device_problem(self.device, distributed),
                        parallel_problem(self.jobs, self.threads, self.device, self.scheduler,
                                         self.cluster)):
            if problem:
                raise BenchError(problem)
        if len(self.cells) > self.max_cells:
            raise too_many_cells(len(self.cells), f"{len(self.suites)} suite(s)",
                                 self.max_cells)
        if self.resume and self.out is None:
            raise BenchError("--resume needs --out RUN_DIR (the run to finish)")

    @property
    def max_memory_bytes(self) -> int | None:
        return int(self.max_memory_mb * 1024 * 1024) if self.max_memory_mb else None

    @classmethod
    def for_run(cls, registry: Registry, *, suites: str | Sequence[str] = "all",
                backends: str | Sequence[str | BackendChoice | BackendEntry] = "all",
                budget: str = DEFAULT_BUDGET, seeds: str | Sequence[int] = "0",
                device: str = "cpu",
                options: Mapping[str, Any] | Sequence[tuple[str, Any]] = (),
                data_dir: Path | None = None, out: Path | None = None, resume: bool = False,
                timeout_s: float | None = None, max_memory_mb: float | None = None,
                threads: int | None = None, check: bool = True,
                backend_set: Sequence[Assignment] = (),
                echo: Callable[[str], None] = _stderr, jobs: int = 1,
                scheduler: str | None = None, cluster: str | None = None,
                max_cells: int = MAX_CELLS, cluster_timeout_s: float = 300.0,
                origins: Mapping[str, str] | None = None) -> RunRequest:
        """``bench run``'s request: names, seeds and options checked and expanded into cells;
        with ``check``, each suite's data too (nothing is written or run). ``backends``:
        ``--backends`` text with parameter grids
        (:func:`bench.planning.backend_grid.expand_backends`),
        ``backend_set`` the ``--backend-set key=value`` assignments; ``threads`` None: the
        usable cores split among the ``jobs``
        (:func:`bench.planning.concurrency.default_threads`). More than ``max_cells`` cells
        are refused before they are made. ``origins``: where a setting came from when not the
        command line (``{"seeds": "--config 'grid.toml': seeds"}``), named in its errors."""
        origins = dict(origins or {})
        problem = max_cells_problem(max_cells)
        if problem:
            raise BenchError(problem)
        with given_by(origins.get("device")):
            check_device(device, bool(scheduler or cluster))
        if threads is None:
            threads = default_threads(jobs, bool(scheduler or cluster))
        with given_by(origins.get("suites")):
            suite_names = parse_names(suites, "suite", sorted(registry.suites),
                                  registry.failed_plugins())
        with given_by(origins.get("budget") or origins.get("suites")):
            if isinstance(suites, str) and suites.strip() == "all":
                suite_names = suites_with_budget(registry, suite_names, budget, echo)
        with given_by(origins.get("seeds")):
            seed_list = (parse_int_list(seeds, "--seeds", minimum=0, maximum=MAX_SEED)
                         if isinstance(seeds, str) else checked_ints(seeds, "seeds", 0, MAX_SEED))

        def check_count(configurations: int) -> None:
            count = len(suite_names) * configurations * len(seed_list)
            if count > max_cells:
                raise too_many_cells(count, f"{len(suite_names)} suite(s) x {configurations:,} "
                                     f"backend configuration(s) x {len(seed_list)} seed(s)",
                                     max_cells)

        with given_by(_origin(origins, backends=True, backend_set=bool(backend_set))):
            choices = expand_backends(registry, backends, backend_set, echo, check_count)
        given = dict(options)
        if data_dir is not None:
            given["data_dir"] = str(data_dir)
        elif resume and out is not None and "data_dir" not in given:
            earlier = recorded_data_dir(out)  # a resumed run finds its data where it did
            if earlier is not None:
                given["data_dir"] = earlier
        with given_by(origins.get("budget")):
            for name in suite_names:
                if budget not in registry.suite(name).budgets:
                    raise UnknownNameError(f"budget for suite {name!r}", budget,
                                           registry.suite(name).budgets)
        with given_by(_origin(origins, options=bool(options), data_dir=data_dir is not None)):
            cells = expand(registry, suite_names, choices, budget, seed_list, device, given)
        if check:
            check_data(registry, cells)
        return cls("run", tuple(suite_names), tuple(c.label for c in choices), budget,
                   tuple(seed_list), device, given, tuple(cells), out, resume, timeout_s,
                   max_memory_mb, threads, backend_set=assignment_texts(backend_set),
                   jobs=jobs, scheduler=scheduler, cluster=cluster, max_cells=max_cells,
                   cluster_timeout_s=cluster_timeout_s)

    @classmethod
    def for_memory(cls, registry: Registry, *, backends: str | Sequence[str] = "all",
                   steps: str | Sequence[int] = DEFAULT_MEMORY_STEPS, device: str = "cpu",
                   options: Mapping[str, Any] | Sequence[tuple[str, Any]] = (),
                   out: Path | None = None, resume: bool = False,
                   timeout_s: float | None = None, max_memory_mb: float | None = None,
                   threads: int = 1, check: bool = True, backend_set: Sequence[str] = (),
                   max_cells: int = MAX_CELLS) -> RunRequest:
        """``bench memory``'s request: the memory-scaling suite at every L for every backend
        (at most ``max_cells`` measurements)."""
        if MEMORY_SUITE not in registry.suites:
            raise BenchError(f"the {MEMORY_SUITE!r} suite is not loaded (see `bench list`); it "
                             "comes with the built-in plugins (bench.suites.memory_scaling)")
        problem = max_cells_problem(max_cells)
        if problem:
            raise BenchError(problem)
        check_device(device)
        budget = next(iter(registry.suite(MEMORY_SUITE).budgets))
        step_list = (parse_int_list(steps, "--steps", minimum=1) if isinstance(steps, str)
                     else checked_ints(steps, "--steps", 1))

        def check_count(configurations: int) -> None:
            if configurations * len(step_list) > max_cells:
                raise too_many_cells(configurations * len(step_list),
                                     f"{configurations:,} backend configuration(s) x "
                                     f"{len(step_list)} step count(s)", max_cells)

        choices = expand_backends(registry, backends, backend_set, check_count=check_count)
        given = dict(options)
        if "steps" in given:
            raise BenchError("set L with --steps, not --set steps=...")
        cells = [cell for L in step_list for cell in expand(
            registry, [MEMORY_SUITE], choices, budget, [0], device, {**given, "steps": L})]
        cells.sort(key=lambda c: (dict(c.options)["steps"], c.backend_label))  # interleave backends
        if check:
            check_data(registry, cells)
        return cls("memory", (MEMORY_SUITE,), tuple(c.label for c in choices), budget, (0,),
                   device, given, tuple(cells), out, resume, timeout_s, max_memory_mb, threads,
                   tuple(step_list), tuple(backend_set), max_cells=max_cells)


def _origin(origins: Mapping[str, str], **given: bool) -> str | None:
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


def assignment_texts(assignments: Sequence[Assignment]) -> tuple[str, ...]:
    """``--backend-set`` assignments as text (for config.json), data ones written out."""
    texts = []
    for item in assignments:
        if isinstance(item, str):
            texts.append(item)
        else:
            key, values = item
            shown = [format_value(v) for v in values]
            texts.append(f"{key}={shown[0]}" if len(shown) == 1 else
                         f"{key}=[{','.join(shown)}]")
    return tuple(texts)
