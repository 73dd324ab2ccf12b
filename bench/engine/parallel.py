"""Where cells run: the pools the engine (:meth:`bench.engine.runner.Runner.run`) hands them to.

Every cell is its own fresh process, started and watched by
:func:`bench.engine.cell_watch.watch_cell` (limits, clean-up and the parent-death signal hold per
cell); a pool only decides where and how many at once:

- :class:`LocalPool`: slots of this machine, each a thread of the parent watching one cell at a
  time. One unpinned slot is a serial run (``--jobs 1``); ``--jobs N`` gives N slots, each pinned
  to its own cores (``--threads`` each) and, with ``--device cuda``, its own GPU. Threads rather
  than a Dask ``LocalCluster``: on one host they add no process between the parent and its cells
  (a cell dies with the parent, a step's progress reaches the live view at once, the slots are the
  parent's to assign) and need no extra installed.
- :class:`bench.engine.dask_engine.DaskPool` (``--scheduler``, ``--cluster``): Dask's workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from bench.core.interfaces import AbstractBackend
from bench.core.registry import PluginSelection, Registry
from bench.core.rows import ResultRow
from bench.engine.cell_watch import CellLimits, Slot, watch_cell
from bench.engine.progress import ProgressView
from bench.planning.cells import CellSpec
from bench.planning.concurrency import plan_slots, usable_cores, visible_gpus
from bench.store.results import RunDirectory


class CellLauncher(Protocol):
    """What a pool needs of the engine (:class:`bench.engine.runner.Runner`) to start a cell: a
    protocol, so that the pools do not import the engine that imports them."""

    @property
    def registry(self) -> Registry: ...

    @property
    def run_dir(self) -> RunDirectory: ...

    @property
    def echo(self) -> Callable[[str], None]: ...

    @property
    def limits(self) -> CellLimits: ...

    def backend(self, spec: CellSpec) -> AbstractBackend: ...

    def cell_selection(self, spec: CellSpec) -> PluginSelection: ...


class CellPool(Protocol):
    """Runs cells somewhere; a future's result is the row, or None for a stopped cell."""

    #: How many cells run at once (for the progress view's ETA).
    jobs: int

    def submit(self, spec: CellSpec, view: ProgressView) -> cf.Future[ResultRow | None]:
        """Start (or queue) the supported cell ``spec``; report its start to ``view``."""
        ...

    def describe_failure(self, exc: BaseException) -> str:
        """The ``failed`` row's reason when a submitted cell's future raised ``exc``."""
        ...

    def stop(self) -> None:
        """Cancel the cells not started; stop the running ones (their futures give None)."""
        ...

    def close(self) -> None:
        """Release the pool's threads, clients and clusters."""
        ...


@dataclasses.dataclass(frozen=True)
class ParallelOptions:
    """How cells run at once: ``jobs`` of them; locally, or on a Dask ``scheduler`` address or
    a ``cluster`` started for the run (local, slurm, pbs, sge, lsf)."""

    jobs: int = 1
    scheduler: str | None = None
    cluster: str | None = None


class LocalPool:
    """Slots of this machine, each a thread of the parent with its :class:`Slot` (cores, GPU)."""

    def __init__(self, runner: CellLauncher, slots: Sequence[Slot]):
        self.runner = runner
        self.jobs = len(slots)
        self._slots: queue.Queue[Slot] = queue.Queue()
        for slot in slots:
            self._slots.put(slot)
        self._stop = threading.Event()
        self._executor = cf.ThreadPoolExecutor(len(slots), thread_name_prefix="bench-cell")

    @classmethod
    def serial(cls, runner: CellLauncher) -> LocalPool:
        """One unpinned slot: a cell at a time, with the cores the run has."""
        return cls(runner, [Slot(0, (), None, "local")])

    @classmethod
    def for_request(cls, runner: CellLauncher, jobs: int, threads: int, device: str) -> LocalPool:
        if jobs == 1:
            return cls.serial(runner)
        gpus = visible_gpus() if device in ("cuda", "auto") else []
        plan = plan_slots(jobs, threads, device, usable_cores(), gpus)
        return cls(runner, [Slot(k, cpus, gpu, f"local/{k}")
                            for k, (cpus, gpu) in enumerate(plan)])

    def submit(self, spec: CellSpec, view: ProgressView) -> cf.Future[ResultRow | None]:
        return self._executor.submit(self._run, spec, view)

    def _run(self, spec: CellSpec, view: ProgressView) -> ResultRow | None:
        slot = self._slots.get()
        try:
            if self._stop.is_set():
                return None
            view.started(spec.cell_id, slot.worker)
            runner = self.runner
            return watch_cell(spec, runner.backend(spec), runner.registry.suite(spec.suite),
                              runner.cell_selection(spec),
                              runner.run_dir.cell_dir(spec.cell_id), runner.limits, slot,
                              name=f"bench-cell-{slot.index}",
                              on_progress=lambda step, n, loss: view.step(spec.cell_id, step, n),
                              stopped=self._stop.is_set)
        finally:
            self._slots.put(slot)

    def describe_failure(self, exc: BaseException) -> str:
        return f"the parent could not run the cell: {type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def make_pool(runner: CellLauncher, options: ParallelOptions, threads: int, device: str
              ) -> CellPool:
    """The pool for ``options``: local slots (one for ``--jobs 1``), or Dask (imported only
    then)."""
    if options.scheduler or options.cluster:
        from bench.engine.dask_engine import DaskPool

        return DaskPool.start(runner, options, device)
    return LocalPool.for_request(runner, options.jobs, threads, device)
