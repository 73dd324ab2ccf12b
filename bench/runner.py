"""Run each cell of a run in its own fresh process (the parent's side).

A cell's process (its entry point: :func:`bench.cell_process.cell_process_main`) is started with
``spawn``, so its peak memory is its own and a crash, hang or out-of-memory stays inside it. Each
finished row is appended to the run directory at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.backend_grid import configured_backend
from bench.cell import CellSpec, base_row, check_support
from bench.cell_process import cell_process_main
from bench.measure import cpu_count
from bench.monitor import CellMonitor, timing_warning, trace_step_times
from bench.registry import PluginSelection, Registry
from bench.results import RunDirectory, safe_name
from bench.rows import ResultRow

#: Environment of every cell process: JAX does not preallocate GPU memory (so it can share a GPU
#: with torch, and its peak is measurable). glibc keeps its default allocation policy for the
#: timed steps; the memory steps change it from inside the cell (see
#: :func:`bench.measure.return_freed_memory_to_os`).
CELL_ENVIRONMENT = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}


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
        done = {r.cell_id for r in self.run_dir.rows() if r.status == "ok"} if resume else set()
        todo = [c for c in cells if c.cell_id not in done]
        if done:
            self.echo(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already ok")
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
    def _run_one(self, spec: CellSpec, index: int, total: int) -> ResultRow:
        suite = self.registry.suite(spec.suite)
        try:
            backend = configured_backend(self.registry, spec.choice)
        except Exception as exc:  # checked before the run; a resumed run's plugin may differ
            return base_row(spec, None, suite, "failed", f"{type(exc).__name__}: {exc}")
        reason = check_support(backend, suite)
        if reason:  # no process needed to say so
            return base_row(spec, backend, suite, "unsupported", reason)
        work_dir = self.run_dir.cell_dir(spec.cell_id)
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        with _environment(CELL_ENVIRONMENT, override=thread_environment(self.threads)):
            proc = ctx.Process(
                target=cell_process_main,
                args=(child_conn, spec, self.selection, str(work_dir), self.max_memory_bytes),
                name=f"bench-cell-{index}",
                daemon=True,
            )
            proc.start()
        child_conn.close()
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        last_echo = time.monotonic()
        monitor = CellMonitor(proc.pid, self.max_memory_bytes)
        monitor.sample_load(force=True)
        # the memory watchdog needs a short period: a cell can allocate GiBs in a second
        period = 0.05 if self.max_memory_bytes else 0.2
        try:
            while True:
                monitor.sample_load()
                resident = monitor.over_memory()
                if resident is not None:
                    _stop(proc)
                    limit_mb = self.max_memory_bytes / 2**20  # type: ignore[operator]
                    return base_row(spec, backend, suite, "failed",
                                    f"exceeded --max-memory-mb {limit_mb:g} (resident "
                                    f"{resident / 2**20:.0f} MiB); the cell was stopped")
                if parent_conn.poll(period):
                    try:
                        kind, payload = parent_conn.recv()
                    except EOFError:
                        proc.join(5)
                        return base_row(spec, backend, suite, "failed",
                                        _exit_reason(proc, work_dir))
                    if kind == "result":
                        monitor.sample_load(force=True)
                        proc.join(30)
                        return self._with_timing_check(payload, monitor, work_dir)
                    if kind == "progress" and time.monotonic() - last_echo > 30:
                        step, n, loss = payload
                        self.echo(f"    step {step}/{n} loss {loss:.4g}")
                        last_echo = time.monotonic()
                    continue
                if not proc.is_alive():
                    if parent_conn.poll(0):  # a result sent just before exiting
                        continue
                    return base_row(spec, backend, suite, "failed", _exit_reason(proc, work_dir))
                if deadline is not None and time.monotonic() > deadline:
                    _stop(proc)
                    return base_row(spec, backend, suite, "timeout",
                                    f"cell exceeded the timeout of {self.timeout_s:g} s")
        finally:
            if proc.is_alive():  # Ctrl-C or any other exit path: no orphan cell
                _stop(proc)
            parent_conn.close()

    def _with_timing_check(self, row: ResultRow, monitor: CellMonitor, work_dir: Any
                           ) -> ResultRow:
        """The row with the host's load during the cell and, for measured timings, a flag when
        they may not be comparable (a loaded host, or step times spread far above usual)."""
        other, cell = monitor.load()
        if row.status != "ok":
            return dataclasses.replace(row, host_busy_cores_other=other)
        times, evaluations = trace_step_times(work_dir)
        warning = timing_warning(other, cell, self.threads, cpu_count(), times, evaluations)
        return dataclasses.replace(row, host_busy_cores_other=other, timing_flag=bool(warning),
                                   timing_warning=warning)

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
            eta = f", ~{_fmt_duration(sum(measured) / len(measured) * (n - i))} left"
        parts.append(f"[elapsed {_fmt_duration(elapsed)}{eta}]")
        return " ".join(parts)

    def _cell_log(self, cell_id: str) -> Path | None:
        """The cell's error.log (the traceback), else its cell.log (the crash's stack)."""
        work = self.run_dir.path / "cells" / safe_name(cell_id.replace("/", "__"))
        for name in ("error.log", "cell.log"):
            if (work / name).is_file() and (work / name).stat().st_size:
                return work / name
        return None


def thread_environment(threads: int | None) -> dict[str, str]:
    """Environment variables that pin a cell's CPU threads (read by the frameworks at start)."""
    if threads is None:
        return {}
    flags = (f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
             f"intra_op_parallelism_threads={threads}")
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()}


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@contextlib.contextmanager
def _environment(defaults: dict[str, str], override: dict[str, str] | None = None
                 ) -> Iterator[None]:
    """Set environment variables while a cell process starts. ``defaults`` leave the user's
    values alone; ``override`` (what --threads asks for: OMP/MKL, and XLA_FLAGS with the thread
    flags appended to the user's own) wins."""
    override = override or {}
    saved = {k: os.environ.get(k) for k in (*defaults, *override)}
    os.environ.update({k: v for k, v in defaults.items() if k not in os.environ})  # user's win
    os.environ.update(override)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _stop(proc: Any) -> None:
    proc.terminate()
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _exit_reason(proc: Any, work_dir: Path | None = None) -> str:
    code = proc.exitcode
    log = f"; the Python stack is in {work_dir / 'cell.log'}" if work_dir is not None else ""
    if code is None:
        return "cell process stopped answering"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else code
        hint = " (killed: most likely out of memory)" if -code == signal.SIGKILL else log
        return f"cell process was killed by signal {name}{hint}"
    return f"cell process exited with code {code} without a result{log}"
