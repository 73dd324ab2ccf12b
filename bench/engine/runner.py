"""Run each cell of a run in its own fresh process (the parent's side).

A cell's process (its entry point: :func:`bench.engine.cell_process.cell_process_main`) is started
with
``spawn``, so its peak memory is its own and a crash, hang or out-of-memory stays inside it. Each
finished row is appended to the run directory at once.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.core.registry import PluginSelection, Registry
from bench.core.rows import ResultRow
from bench.engine.cell import base_row, check_support
from bench.engine.cell_watch import CELL_ENVIRONMENT, CellLimits, thread_environment, watch_cell
from bench.engine.progress import fmt_duration
from bench.planning.backend_grid import configured_backend
from bench.planning.cells import CellSpec
from bench.store.results import RunDirectory, safe_name

__all__ = ["CELL_ENVIRONMENT", "Runner", "thread_environment"]


@dataclasses.dataclass
class Runner:
    registry: Registry
    selection: PluginSelection
    run_dir: RunDirectory
    timeout_s: float | None = None
    max_memory_bytes: int | None = None
    #: CPU threads of each cell (OMP/MKL for torch, XLA's Eigen pool for JAX); None: defaults.
    threads: int | None = None
    echo: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)
    #: Rows that could not be appended to rows.jsonl (printed as JSON on stderr instead).
    unsaved_rows: list[ResultRow] = dataclasses.field(default_factory=list)

    def run(self, cells: Sequence[CellSpec], resume: bool = False) -> list[ResultRow]:
        """Run the cells; return the rows written by this call. With ``resume``, cells that
        already have an ``ok`` row in the run directory are skipped."""
        todo = self.pending(cells, resume)
        rows: list[ResultRow] = []
        started = time.monotonic()
        measured_seconds: list[float] = []
        try:
            for i, spec in enumerate(todo, 1):
                t0 = time.monotonic()
                self.echo(f"[{i}/{len(todo)}] {spec.cell_id} ...")
                row = self._run_one(spec, i, len(todo))
                self._save(row)
                rows.append(row)
                if row.status != "unsupported":
                    measured_seconds.append(time.monotonic() - t0)
                self.echo(self._progress_line(i, len(todo), row, started, measured_seconds))
        except KeyboardInterrupt:
            self.echo(
                f"interrupted: {len(rows)} finished rows are saved in {self.run_dir.path}; "
                "run again with --resume to finish the rest"
            )
            raise
        return rows

    def _save(self, row: ResultRow) -> None:
        """Append the row; if that fails, print it as JSON on stderr (never lose a measured row)
        and carry on with the other cells."""
        try:
            self.run_dir.append_row(row)
        except OSError as exc:
            self.unsaved_rows.append(row)
            self.echo(f"error: could not append the row of {row.cell_id} to "
                      f"{self.run_dir.path / 'rows.jsonl'} ({exc}); the row follows as JSON:")
            self.echo(row.to_json())

    # -- one cell ---------------------------------------------------------------------------------
    @property
    def limits(self) -> CellLimits:
        return CellLimits(self.timeout_s, self.max_memory_bytes, self.threads,
                          str(self.run_dir.path.resolve()))

    def pending(self, cells: Sequence[CellSpec], resume: bool) -> list[CellSpec]:
        """The cells to run: with ``resume``, those without an ``ok`` row in the run directory
        (said through ``echo``)."""
        done = {r.cell_id for r in self.run_dir.rows() if r.status == "ok"} if resume else set()
        todo = [c for c in cells if c.cell_id not in done]
        if done:
            self.echo(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already ok")
        return todo

    def unsupported(self, spec: CellSpec) -> ResultRow | None:
        """The ``unsupported`` row of a pair that cannot run (no process needed), else None."""
        suite = self.registry.suite(spec.suite)
        try:
            backend = configured_backend(self.registry, spec.choice)
        except Exception as exc:  # checked before the run; a resumed run's plugin may differ
            return base_row(spec, None, suite, "failed", f"{type(exc).__name__}: {exc}")
        reason = check_support(backend, suite)
        if reason:
            return dataclasses.replace(base_row(spec, backend, suite, "unsupported", reason),
                                       host=socket.gethostname())
        return None

    def _run_one(self, spec: CellSpec, index: int, total: int) -> ResultRow:
        row = self.unsupported(spec)
        if row is not None:
            return row
        last_echo = time.monotonic()

        def progress(step: int, n: int, loss: float) -> None:
            nonlocal last_echo
            if time.monotonic() - last_echo > 30:
                self.echo(f"    step {step}/{n} loss {loss:.4g}")
                last_echo = time.monotonic()

        row = watch_cell(spec, configured_backend(self.registry, spec.choice),
                         self.registry.suite(spec.suite), self.selection,
                         self.run_dir.cell_dir(spec.cell_id), self.limits,
                         name=f"bench-cell-{index}", on_progress=progress)
        assert row is not None  # never stopped: Ctrl-C raises in this thread
        return row

    def _progress_line(self, i: int, n: int, row: ResultRow, started: float,
                       measured: list[float]) -> str:
        elapsed = time.monotonic() - started
        parts = [f"[{i}/{n}] {row.cell_id}: {row.status}"]
        if row.status == "ok" and row.metric is not None:
            parts.append(f"{row.metric_name}={row.metric:.4g}")
        if row.train_step_time_s is not None:
            parts.append(f"step={row.train_step_time_s:.3g}s")
        if row.error:
            parts.append(f"({row.error.splitlines()[0]})")
            if row.status in ("failed", "timeout", "diverged"):
                log = self._cell_log(row.cell_id)
                if log is not None:
                    parts.append(f"[log: {log}]")
        eta = ""
        if measured and i < n:
            eta = f", ~{fmt_duration(sum(measured) / len(measured) * (n - i))} left"
        parts.append(f"[elapsed {fmt_duration(elapsed)}{eta}]")
        return " ".join(parts)

    def _cell_log(self, cell_id: str) -> Path | None:
        """The cell's error.log (the traceback), else its cell.log (the crash's stack)."""
        work = self.run_dir.path / "cells" / safe_name(cell_id.replace("/", "__"))
        for name in ("error.log", "cell.log"):
            if (work / name).is_file() and (work / name).stat().st_size:
                return work / name
        return None
