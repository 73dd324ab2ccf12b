"""The engine: every run's cells go through :meth:`Runner.run` (the parent's side).

A run hands its cells to a pool (:mod:`bench.engine.parallel`): local slots of this machine (one
slot for a serial run, ``--jobs N`` slots for N at once) or Dask workers
(:mod:`bench.engine.dask_engine`). Whatever the pool, the same code starts, watches, collects and
records a cell: each cell runs in its own fresh process (``spawn``, through
:func:`bench.engine.cell_watch.watch_cell`), so its peak memory is its own and a crash, hang or
out-of-memory stays inside it; each finished row is appended to the run directory at once, in
completion order. Any exception about one cell (a plugin's ``supports()`` raising, a cell folder
the file system refuses, a row that cannot be encoded) becomes that cell's ``failed`` row; no
other cell's row is lost. Ctrl-C (or SIGTERM) cancels the cells not started, stops the running
ones and keeps every finished row; ``--resume`` then runs what is left.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.core.errors import PLUGIN_FAULTS
from bench.core.interfaces import AbstractBackend
from bench.core.registry import PluginSelection, Registry
from bench.core.rows import ResultRow, Status, finite_metrics, metric_problem
from bench.engine.cell import base_row, check_support
from bench.engine.cell_watch import CELL_ENVIRONMENT, CellLimits, thread_environment
from bench.engine.progress import ProgressView, fmt_duration
from bench.planning.backend_grid import BackendChoice, configured_backend
from bench.planning.cells import CellSpec
from bench.store.results import RunDirectory

if TYPE_CHECKING:
    from bench.engine.parallel import CellPool

__all__ = ["CELL_ENVIRONMENT", "Runner", "thread_environment"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Runner:
    """Runs a run's cells through a pool and records their rows in ``run_dir``."""

    registry: Registry
    selection: PluginSelection
    run_dir: RunDirectory
    timeout_s: float | None = None
    max_memory_bytes: int | None = None
    #: CPU threads of each cell (OMP/MKL for torch, XLA's Eigen pool for JAX); None: defaults.
    threads: int | None = None
    echo: Callable[[str], None] = _stderr
    #: The cells' persistent compilation cache: a folder, ``off``, or '' (the cells inherit
    #: the environment; see :mod:`bench.engine.compile_cache`).
    compile_cache: str = ""
    #: Rows that could not be appended to rows.jsonl (printed as JSON on stderr instead).
    unsaved_rows: list[ResultRow] = dataclasses.field(default_factory=list)
    #: Each backend choice configured once in the parent (see :meth:`backend`).
    _backends: dict[BackendChoice, AbstractBackend] = dataclasses.field(default_factory=dict,
                                                                        repr=False)

    def backend(self, spec: CellSpec) -> AbstractBackend:
        """The cell's backend with its parameters set, configured once per choice (the support
        check, the cell's watcher and a failed row share it)."""
        choice = spec.choice
        if choice not in self._backends:
            self._backends[choice] = configured_backend(self.registry, choice)
        return self._backends[choice]

    def cell_selection(self, spec: CellSpec) -> PluginSelection:
        """The plugins the cell's process loads: those of its backend, its suite and its
        backend's gradient reference, not every plugin of the run."""
        origin = self.registry.origin
        names = [spec.backend, spec.suite]
        reference = getattr(self.backend(spec), "gradient_reference", None)
        if reference:
            names.append(str(reference).split("[", 1)[0].strip())
        if any(name not in origin for name in names):  # a registry built by hand: load them all
            return self.selection
        plugins = frozenset(origin[name] for name in names)
        if self.selection.only is not None:
            plugins &= self.selection.only
        return dataclasses.replace(self.selection, only=plugins)

    @property
    def limits(self) -> CellLimits:
        return CellLimits(self.timeout_s, self.max_memory_bytes, self.threads,
                          str(self.run_dir.path.resolve()), self.compile_cache)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, cells: Sequence[CellSpec], resume: bool = False,
            pool: CellPool | None = None, live: bool = False) -> list[ResultRow]:
        """Run the cells through ``pool`` (default: one local slot, a cell at a time); each row is
        appended as it comes back. With ``resume``, cells that already have an ``ok`` row are
        skipped. Returns the rows written by this call; Ctrl-C stops the pool and re-raises once
        every finished row is saved."""
        if pool is None:
            from bench.engine.parallel import LocalPool

            pool = LocalPool.serial(self)
        todo = self.pending(cells, resume)
        view = ProgressView(len(todo), pool.jobs, self.echo, live=live)
        echo, self.echo = self.echo, view.message  # the engine's lines go above the view
        rows: list[ResultRow] = []
        futures: dict[cf.Future[ResultRow | None], CellSpec] = {}

        def record(spec: CellSpec, row: ResultRow | None) -> None:
            if row is None:  # stopped before it finished
                return
            row = self._save(spec, row)
            rows.append(row)
            measured = row.status != Status.UNSUPPORTED
            view.finished(spec.cell_id, self._finished_line(view, row), measured)

        def collect(done: set[cf.Future[ResultRow | None]]) -> None:
            for future in done:
                spec = futures.pop(future)
                if future.cancelled():
                    continue
                exc = future.exception()
                record(spec, self.failed_row(spec, pool.describe_failure(exc))
                       if exc is not None else future.result())

        try:
            for spec in todo:
                try:
                    row = self.unsupported(spec)
                    if row is None:
                        futures[pool.submit(spec, view)] = spec
                except PLUGIN_FAULTS as exc:  # about this cell only
                    row = self.failed_row(spec, f"the parent could not start the cell: "
                                                f"{type(exc).__name__}: {exc}")
                if row is not None:
                    record(spec, row)
            while futures:
                done, _ = cf.wait(list(futures), timeout=0.5, return_when=cf.FIRST_COMPLETED)
                collect(done)
                view.tick()  # the clocks move on between events
        except KeyboardInterrupt:
            pool.stop()  # pending cells cancelled, running ones stopped (their rows: None)
            collect({f for f in futures if f.done()})
            view.close()
            echo(f"interrupted: {len(rows)} finished rows are saved in {self.run_dir.path}; "
                 "run again with --resume to finish the rest")
            raise
        finally:
            pool.close()
            view.close()
            self.echo = echo
        return rows

    def pending(self, cells: Sequence[CellSpec], resume: bool) -> list[CellSpec]:
        """The cells to run: with ``resume``, those without an ``ok`` row in the run directory
        (said through ``echo``)."""
        done = ({r.cell_id for r in self.run_dir.rows() if r.status == Status.OK}
                if resume else set())
        todo = [c for c in cells if c.cell_id not in done]
        if done:
            self.echo(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already ok")
        return todo

    # -- rows the parent makes ------------------------------------------------------------------
    def unsupported(self, spec: CellSpec) -> ResultRow | None:
        """The ``unsupported`` row of a pair that cannot run (no process needed), else None."""
        suite = self.registry.suite(spec.suite)
        try:
            backend = self.backend(spec)
        except PLUGIN_FAULTS as exc:  # checked before the run; a resumed run's
            # plugin may differ
            return base_row(spec, None, suite, Status.FAILED, f"{type(exc).__name__}: {exc}")
        reason = check_support(backend, suite)
        if reason:
            return dataclasses.replace(base_row(spec, backend, suite, Status.UNSUPPORTED, reason),
                                       host=socket.gethostname())
        return None

    def failed_row(self, spec: CellSpec, reason: str) -> ResultRow:
        """A ``failed`` row for ``spec`` made in the parent; the backend's and suite's columns
        are filled in where they can be (a plugin that raises here costs only those columns)."""
        backend = suite = None
        try:
            suite = self.registry.suite(spec.suite)
            backend = self.backend(spec)
        except PLUGIN_FAULTS:  # noqa: S110 - the identifying columns are enough
            pass
        return base_row(spec, backend, suite, Status.FAILED, reason)

    def _save(self, spec: CellSpec, row: ResultRow) -> ResultRow:
        """Append the row and return it. A row that cannot be encoded becomes the cell's
        ``failed`` row saying why; a row that cannot be written is printed as JSON on stderr
        (never lose a measured row) and the run carries on with the other cells. An ``ok`` row
        whose metric is not a finite number becomes ``failed``, saying which."""
        problem = metric_problem(row.metrics)
        if problem:  # an ok row's metric is a finite number, or the row is failed
            failed = row.status == Status.OK
            row = dataclasses.replace(
                row, metrics=finite_metrics(row.metrics),
                status=Status.FAILED if failed else row.status,
                error=problem if failed else f"{row.error}; {problem}".lstrip("; "))
        try:
            row.to_json()
        except Exception as exc:  # noqa: BLE001 - e.g. an object in another field
            row = self.failed_row(spec, f"the cell's row could not be recorded: "
                                        f"{type(exc).__name__}: {exc}")
        try:
            self.run_dir.append_row(row)
        except OSError as exc:
            self.unsaved_rows.append(row)
            self.echo(f"error: could not append the row of {row.cell_id} to "
                      f"{self.run_dir.path / 'rows.jsonl'} ({exc}); the row follows as JSON:")
            self.echo(row.to_json())
        return row

    # -- what is printed ------------------------------------------------------------------------
    def _finished_line(self, view: ProgressView, row: ResultRow) -> str:
        """A finished cell's line, with the ETA of the cells left, ``jobs`` at once."""
        elapsed = time.monotonic() - view.started_at
        i, n = view.done + 1, view.total
        parts = [f"[{i}/{n}] {row.cell_id}: {row.status}"]
        if row.status == Status.OK and row.metric is not None:
            parts.append(f"{row.metric_name}={row.metric:.4g}")
        if row.train_step_time_s is not None:
            parts.append(f"step={row.train_step_time_s:.3g}s")
        if row.error:
            parts.append(f"({row.error.splitlines()[0]})")
            if row.status in (Status.FAILED, Status.TIMEOUT, Status.DIVERGED):
                log = self._cell_log(row.cell_id)
                if log is not None:
                    parts.append(f"[log: {log}]")
        measured = [s / view.jobs for s in view.measured]
        eta = ""
        if measured and i < n:
            eta = f", ~{fmt_duration(sum(measured) / len(measured) * (n - i))} left"
        parts.append(f"[elapsed {fmt_duration(elapsed)}{eta}]")
        line = " ".join(parts)
        return line + (f" [{row.worker}]" if row.worker and view.jobs > 1 else "")

    def _cell_log(self, cell_id: str) -> Path | None:
        """The cell's error.log (the traceback), else its cell.log (the crash's stack)."""
        try:
            work = self.run_dir.cell_dir(cell_id, create=False)
        except (OSError, TypeError):
            return None
        for name in ("error.log", "cell.log"):
            if (work / name).is_file() and (work / name).stat().st_size:
                return work / name
        return None
