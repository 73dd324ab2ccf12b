"""A run request (``bench run`` / ``bench memory``), validated once and expanded into cells.

Every check of what a run asks for lives here, in the parent, before anything is written or run:
names (suites, backends, budget), seeds and solver steps, the device, the suite options (each
converted and checked by its suite), the numeric limits and each suite's data. A
:class:`RunRequest` that exists is valid; :mod:`bench.commands.session` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, FailedPlugin, UnknownNameError
from bench.core.options import format_value
from bench.core.registry import LOAD_PLUGINS_ENV, Registry
from bench.planning import concurrency
from bench.planning.backend_grid import Assignment, BackendChoice, BackendEntry, expand_backends
from bench.planning.cells import CellSpec
from bench.planning.checks import (
    DEVICES,
    MAX_SEED,
    check_device,
    checked_ints,
    device_problem,
    given_by,
    max_cells_problem,
    memory_problem,
    origin_of,
    threads_problem,
    timeout_problem,
    too_many_cells,
)

# re-exported: the values and the list parser callers have always taken from here
from bench.planning.checks import MAX_CELLS as MAX_CELLS
from bench.planning.checks import MIN_MEMORY_MB as MIN_MEMORY_MB
from bench.planning.checks import parse_int_list as parse_int_list
from bench.planning.concurrency import default_threads, parallel_problem

DEFAULT_BUDGET = "quick"
#: The suite ``bench memory`` runs, and its default solver steps L.
MEMORY_SUITE = "memory-scaling"
DEFAULT_MEMORY_STEPS = (8, 16, 32, 64, 128, 256, 512)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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
    """The ``--data-dir`` a run was started with (config.json), if that folder still exists.
    Read only as a regular file, not through a link (a FIFO planted there never blocks)."""
    try:
        fd = os.open(run / "config.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            config = json.loads(handle.read())
        folder = config.get("options", {}).get("data_dir")
    except (OSError, ValueError, AttributeError, RecursionError):
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

        with given_by(origin_of(origins, backends=True, backend_set=bool(backend_set))):
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
        with given_by(origin_of(origins, options=bool(options), data_dir=data_dir is not None)):
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
