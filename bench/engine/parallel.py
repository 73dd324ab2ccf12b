"""Several cells at once: ``bench run --jobs N`` on this machine, or on a Dask cluster.

The parent keeps the run directory: it hands the cells to a pool, and appends each row durably
as it comes back, in completion order (:func:`run_cells`). Every cell is still its own fresh
process, started and watched by :func:`bench.engine.cell_watch.watch_cell` (limits, clean-up and the
parent-death signal hold per cell):

- :class:`LocalPool` (``--jobs N``): N threads of the parent, each watching one cell at a time,
  pinned to its own cores (``--threads`` each) and, with ``--device cuda``, its own GPU. Threads
  rather than a Dask ``LocalCluster``: on one host they add no process between the parent and
  its cells (a cell dies with the parent, a step's progress reaches the live view at once, the
  slots are the parent's to assign) and need no extra installed.
- :class:`bench.engine.dask_engine.DaskPool` (``--scheduler``, ``--cluster``): Dask's workers.

Ctrl-C (or SIGTERM) cancels the cells not started, stops the running ones and keeps every
finished row; ``--resume`` then runs what is left.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from bench.core.rows import ResultRow
from bench.engine.cell import base_row
from bench.engine.cell_watch import Slot, watch_cell
from bench.engine.progress import ProgressView
from bench.engine.runner import Runner
from bench.planning.backend_grid import configured_backend
from bench.planning.cells import CellSpec
from bench.planning.concurrency import plan_slots, usable_cores, visible_gpus


class CellPool(Protocol):
    """Runs cells somewhere; a future's result is the row, or None for a stopped cell."""

    jobs: int

    def submit(self, spec: CellSpec, view: ProgressView) -> cf.Future: ...

    def failure(self, spec: CellSpec, exc: BaseException) -> ResultRow: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class ParallelOptions:
    """How cells run at once: ``jobs`` of them; locally, or on a Dask ``scheduler`` address or
    a ``cluster`` started for the run (local, slurm, pbs, sge, lsf)."""

    jobs: int = 1
    scheduler: str | None = None
    cluster: str | None = None

    @property
    def sequential(self) -> bool:
        return self.jobs == 1 and not self.scheduler and not self.cluster


class LocalPool:
    """``jobs`` threads of the parent, each with its :class:`Slot` (cores, GPU)."""

    def __init__(self, runner: Runner, slots: Sequence[Slot]):
        self.runner = runner
        self.jobs = len(slots)
        self._slots: queue.Queue[Slot] = queue.Queue()
        for slot in slots:
            self._slots.put(slot)
        self._stop = threading.Event()
        self._executor = cf.ThreadPoolExecutor(len(slots), thread_name_prefix="bench-cell")

    @classmethod
    def for_request(cls, runner: Runner, jobs: int, threads: int, device: str) -> LocalPool:
        gpus = visible_gpus() if device in ("cuda", "auto") else []
        plan = plan_slots(jobs, threads, device, usable_cores(), gpus)
        return cls(runner, [Slot(k, cpus, gpu, f"local/{k}")
                            for k, (cpus, gpu) in enumerate(plan)])

    def submit(self, spec: CellSpec, view: ProgressView) -> cf.Future:
        return self._executor.submit(self._run, spec, view)

    def _run(self, spec: CellSpec, view: ProgressView) -> ResultRow | None:
        slot = self._slots.get()
        try:
            if self._stop.is_set():
                return None
            view.started(spec.cell_id, slot.worker)
            registry = self.runner.registry
            backend = configured_backend(registry, spec.choice)
            return watch_cell(spec, backend, registry.suite(spec.suite),
                              self.runner.selection, self.runner.run_dir.cell_dir(spec.cell_id),
                              self.runner.limits, slot, name=f"bench-cell-{slot.index}",
                              on_progress=lambda step, n, loss: view.step(spec.cell_id, step, n),
                              stopped=self._stop.is_set)
        finally:
            self._slots.put(slot)

    def failure(self, spec: CellSpec, exc: BaseException) -> ResultRow:
        return failed_row(self.runner, spec, f"the parent could not run the cell: "
                          f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def failed_row(runner: Runner, spec: CellSpec, reason: str) -> ResultRow:
    registry = runner.registry
    backend = configured_backend(registry, spec.choice)
    return base_row(spec, backend, registry.suite(spec.suite), "failed", reason)


def run_cells(runner: Runner, pool: CellPool, cells: Sequence[CellSpec], resume: bool = False,
              live: bool = False) -> list[ResultRow]:
    """Run the cells through ``pool``; each row is appended as it comes back. Returns the rows
    written by this call; Ctrl-C stops the pool and re-raises once every finished row is
    saved."""
    todo = runner.pending(cells, resume)
    view = ProgressView(len(todo), pool.jobs, runner.echo, live=live)
    echo, runner.echo = runner.echo, view.message  # the runner's lines go above the view
    rows: list[ResultRow] = []
    futures: dict[cf.Future, CellSpec] = {}

    def save(spec: CellSpec, row: ResultRow | None) -> None:
        if row is None:  # stopped before it finished
            return
        runner._save(row)
        rows.append(row)
        measured = row.status != "unsupported"
        view.finished(spec.cell_id, _line(runner, view, row, measured), measured)

    def collect(done: set[cf.Future]) -> None:
        for future in done:
            spec = futures.pop(future)
            if future.cancelled():
                continue
            exc = future.exception()
            save(spec, pool.failure(spec, exc) if exc is not None else future.result())

    try:
        for spec in todo:
            row = runner.unsupported(spec)
            if row is not None:
                save(spec, row)
            else:
                futures[pool.submit(spec, view)] = spec
        while futures:
            done, _ = cf.wait(list(futures), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            collect(done)
            view._draw()  # the clocks move on between events
    except KeyboardInterrupt:
        pool.stop()  # pending cells cancelled, running ones stopped (their rows: None)
        collect({f for f in futures if f.done()})
        view.close()
        echo(f"interrupted: {len(rows)} finished rows are saved in "
                    f"{runner.run_dir.path}; run again with --resume to finish the rest")
        raise
    finally:
        pool.close()
        view.close()
        runner.echo = echo
    return rows


def _line(runner: Runner, view: ProgressView, row: ResultRow, measured: bool) -> str:
    """A finished cell's line: the sequential runner's, its ETA for ``jobs`` cells at once."""
    line = runner._progress_line(view.done + 1, view.total, row, view.started_at,
                                 [s / view.jobs for s in view.measured])
    return line + (f" [{row.worker}]" if row.worker and view.jobs > 1 else "")


def make_pool(runner: Runner, options: ParallelOptions, threads: int, device: str) -> Any:
    """The pool for ``options``: local threads, or Dask (imported only then)."""
    if options.scheduler or options.cluster:
        from bench.engine.dask_engine import DaskPool

        return DaskPool.start(runner, options, device)
    return LocalPool.for_request(runner, options.jobs, threads, device)
