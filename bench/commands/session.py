"""The run session: one :class:`~bench.planning.request.RunRequest` carried out.

A :class:`RunSession` starts (or, with ``resume``, reopens) and locks the run directory, records
its configuration, invocations and environment, runs the cells through the engine
(:class:`bench.engine.runner.Runner`, one process each, in the pool the request asks for), and
writes what a run leaves behind: the table (``report.md``) and the plots of ``bench run``, or the
measurements, slope fits and plot of ``bench memory``. It prints only progress and warnings
(through ``echo``, stderr by default); the outcome goes back to the caller (:mod:`bench.cli.main`),
which prints it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import PluginSelection, Registry
from bench.core.rows import ResultRow, now_iso
from bench.engine.environment import capture_environment
from bench.engine.monitor import host_too_busy, other_processes_cores
from bench.engine.parallel import ParallelOptions, make_pool
from bench.engine.runner import Runner
from bench.planning.concurrency import concurrency_warning, usable_cores
from bench.planning.request import RunRequest
from bench.reports.plots import plot_run
from bench.reports.report import render, table_frame
from bench.store.files import atomic_write_text
from bench.store.formats import csv_text
from bench.store.results import RunDirectory, rows_to_frame
from bench.studies.memory import plot_scaling, scaling_table
from bench.studies.work_precision import plot_work_precision


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What a session leaves for its caller to show."""

    run_dir: RunDirectory
    #: The latest row of each requested cell (rows that could not be saved included); empty
    #: after an interruption.
    rows: tuple[ResultRow, ...] = ()
    #: Rows that could not be appended to rows.jsonl (printed as JSON on stderr instead).
    unsaved_rows: int = 0
    #: Ctrl-C or SIGTERM stopped the run; every finished row is saved.
    interrupted: bool = False
    #: The run's table (markdown), or the memory study's slope table.
    table: str = ""
    #: Lines for the end of the output (cells with flagged timings, plots that failed).
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """A cell failed or timed out, or a row was not saved."""
        return (any(r.status in ("failed", "timeout") for r in self.rows)
                or bool(self.unsaved_rows))


def timing_warnings(rows: list[ResultRow] | tuple[ResultRow, ...]) -> list[str]:
    """The lines naming the cells whose timings may not be comparable (none: empty)."""
    flagged = [r for r in rows if getattr(r, "timing_flag", False)]
    if not flagged:
        return []
    return [f"warning: the timings of {len(flagged)} cell(s) may not be comparable (column "
            "timing_warning; rerun them on a quiet machine, with --threads pinned):",
            *(f"  {row.cell_id}: {row.timing_warning}" for row in flagged)]


@dataclasses.dataclass
class RunSession:
    registry: Registry
    request: RunRequest
    #: The plugin selection each cell process loads its registry from.
    selection: PluginSelection
    echo: Callable[[str], None] = _stderr
    #: The cells' persistent compilation cache: a folder, ``off``, or '' (the cells inherit
    #: the environment); :mod:`bench.engine.compile_cache`.
    compile_cache: str = ""

    def start(self) -> RunDirectory:
        """Create (or, with ``resume``, reopen) and lock the run directory; record the config
        (first invocation only), the invocation and the environment."""
        request = self.request
        if request.scheduler or request.cluster:  # Dask installed, before anything is written
            from bench.engine.dask_engine import require

            require(request.cluster)
        if request.resume:
            out = request.out
            assert out is not None  # RunRequest checks it
            fresh = not out.exists() or (out.is_dir() and not any(out.iterdir()))
            run_dir = RunDirectory.create(out) if fresh else RunDirectory.open(out)
        else:
            run_dir = RunDirectory.create(request.out, label="-".join(request.suites))
        run_dir.check_writable()  # before any cell runs: a measured row must have a place to go
        run_dir.lock()
        extra: dict[str, Any] = ({"steps": list(request.steps)} if request.command == "memory"
                                 else {"seeds": list(request.seeds)})
        config = {
            "command": request.command, "suites": list(request.suites),
            "backends": list(request.backends), "backend_set": list(request.backend_set),
            "budget": request.budget,
            "device": request.device, "timeout_s": request.timeout_s,
            "max_memory_mb": request.max_memory_mb, "threads": request.threads,
            "jobs": request.jobs, "scheduler": request.scheduler, "cluster": request.cluster,
            "compile_cache": self.compile_cache or None,
            "plugins_loaded": [p.name for p in self.registry.plugins if not p.error],
            "started_at": now_iso(), "command_line": sys.argv,
            **extra, "options": dict(request.options),
        }
        try:
            if run_dir.read_json("config.json") is None:
                run_dir.write_json("config.json", config)
            run_dir.append_jsonl("invocations.jsonl", json.dumps(config, default=str))
            run_dir.write_json("environment.json",
                               {**capture_environment(), **self.check_host_load()})
        except OSError as exc:  # e.g. a read-only file in a resumed run: no cell has run yet
            run_dir.unlock()
            where = exc.filename or run_dir.path
            raise BenchError(f"cannot record the run's configuration in {str(run_dir.path)!r}: "
                             f"{exc.strerror or exc} ({where}); make the run directory writable "
                             "or choose another --out") from None
        self.echo(f"run directory: {run_dir.path}")
        return run_dir

    def check_host_load(self) -> dict[str, Any]:
        """Before the first cell: how many cores other processes keep busy. When that would flag
        the cells' timings, say so now, with the figures and what to do (the cells' own flags
        come later). Returns what goes into ``environment.json``."""
        request = self.request
        if request.scheduler or request.cluster:  # the cells run elsewhere
            return {}
        other = other_processes_cores()
        if other is None:
            return {}
        cores = len(usable_cores())
        threads = request.threads or max(1, cores // max(request.jobs, 1))
        used = min(cores, threads * max(request.jobs, 1))
        busy = host_too_busy(other, used, cores)
        if busy:
            free = max(0, int(cores - other))
            self.echo(
                f"warning: other processes keep {other:.2f} of this machine's {cores} cores busy "
                f"before the first cell; the cells' {used} core(s) would share them, and their "
                "timings would be flagged as not comparable (column timing_warning). Run later "
                "on a quiet machine, or leave the other work room: "
                f"--jobs 1 --threads {max(1, free)}")
        return {"host_busy_cores_before_run": other, "host_busy_before_run": busy,
                "usable_cores": cores}

    def runner(self, run_dir: RunDirectory) -> Runner:
        request = self.request
        return Runner(self.registry, self.selection, run_dir, timeout_s=request.timeout_s,
                      max_memory_bytes=request.max_memory_bytes,
                      threads=request.threads or None, echo=self.echo,
                      compile_cache=self.compile_cache)

    def run_cells(self, run_dir: RunDirectory) -> RunOutcome:
        """Run the request's cells into ``run_dir`` (unlocked afterwards)."""
        runner = self.runner(run_dir)
        cells = self.request.cells
        options = ParallelOptions(self.request.jobs, self.request.scheduler,
                                  self.request.cluster)
        try:
            pool = make_pool(runner, options, self.request.threads, self.request.device)
            live = self.echo is _stderr and sys.stderr.isatty()
            runner.run(cells, resume=self.request.resume, pool=pool, live=live)
        except KeyboardInterrupt:
            return RunOutcome(run_dir, interrupted=True)
        finally:
            run_dir.unlock()
        ids = {c.cell_id for c in cells}
        saved = [r for r in run_dir.rows() if r.cell_id in ids]
        unsaved = {r.cell_id: r for r in runner.unsaved_rows}
        if unsaved:
            self.echo(f"bench: error: {len(unsaved)} rows could not be written to "
                      f"{run_dir.path / 'rows.jsonl'}; they are printed above as JSON")
        rows = [r for r in saved if r.cell_id not in unsaved] + list(unsaved.values())
        return RunOutcome(run_dir, tuple(rows), len(unsaved))

    def run(self) -> RunOutcome:
        """``bench run``: the cells, then ``report.md`` and the run's plots."""
        outcome = self.run_cells(self.start())
        if outcome.interrupted:
            return outcome
        path = outcome.run_dir.path
        table = render(table_frame(rows_to_frame(outcome.rows)), "markdown")
        try:
            atomic_write_text(path / "report.md", table)
        except OSError as exc:  # the rows are saved (or printed); the caller shows the table
            self.echo(f"warning: could not write {path / 'report.md'}: {exc}")
        warnings = timing_warnings(outcome.rows)
        mixed = concurrency_warning({str(path): outcome.rows})
        if mixed:
            warnings.append(mixed)
        try:
            plot_run(path)
            plot_work_precision(path)
        except ImportError:
            pass
        except Exception as exc:  # plots never lose results
            warnings.append(f"warning: could not draw plots: {exc}")
        return dataclasses.replace(outcome, table=table, warnings=tuple(warnings))

    def memory_study(self) -> RunOutcome:
        """``bench memory``: every L of every backend, then the measurements
        (``memory_measurements.csv``), the slope fits against each backend's claim
        (``memory_scaling.csv`` and ``.md``) and their log-log plot."""
        outcome = self.run_cells(self.start())
        if outcome.interrupted:
            return outcome
        path = outcome.run_dir.path
        frame = rows_to_frame(outcome.rows)
        atomic_write_text(path / "memory_measurements.csv", csv_text(frame))
        claims = {cell.backend_label: self.registry.backends[cell.backend].memory_claim
                  for cell in self.request.cells}
        table = scaling_table(frame, {k: v for k, v in claims.items() if v})
        atomic_write_text(path / "memory_scaling.csv", csv_text(table))
        text = render(table, "markdown") if not table.empty else "(no successful measurements)\n"
        atomic_write_text(path / "memory_scaling.md", text)
        if not table.empty:
            plot_scaling(frame, str(path / "memory_scaling.png"),
                         f"training memory vs solver steps ({self.request.device})")
        return dataclasses.replace(outcome, table=text)
