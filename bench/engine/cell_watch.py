"""One cell's own process, started and watched (the runner's child-process machinery).

:func:`watch_cell` starts a cell's process (``spawn``: its peak memory is its own; it dies with
the thread that started it, see :func:`bench.engine.cell_process.die_with_parent`), pinned to its
:class:`Slot` (CPU cores, a GPU) when it has one, and watches it: the result, its resident memory
against ``--max-memory-mb``, its time against ``--timeout``, the host's load, and how many cells
of the run run on this host at once. The local slots (one for a serial run, N for ``--jobs N``)
and the Dask workers all run a cell through it, so limits and clean-up hold per cell in every
pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.core.interfaces import AbstractBackend, AbstractSuite
from bench.core.measure import cpu_count
from bench.core.registry import PluginSelection
from bench.core.rows import ResultRow, Status
from bench.engine.cell import base_row
from bench.engine.cell_process import cell_process_main
from bench.engine.compile_cache import COMPILE_CACHE_ENV
from bench.engine.monitor import CellMonitor, timing_warning, trace_step_times
from bench.planning.cells import CellSpec
from bench.planning.concurrency import HostCells
from bench.store.files import read_text

#: Environment of every cell process: JAX does not preallocate GPU memory (so it can share a GPU
#: with torch, and its peak is measurable). glibc keeps its default allocation policy for the
#: timed steps; the memory steps change it from inside the cell (see
#: :func:`bench.core.measure.return_freed_memory_to_os`).
CELL_ENVIRONMENT = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}

#: Cell processes of several threads start one at a time: their environment is set in
#: ``os.environ`` while a process starts (``spawn`` copies it).
_START_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CellLimits:
    """What every cell of a run runs under."""

    timeout_s: float | None = None
    max_memory_bytes: int | None = None
    #: CPU threads of each cell (OMP/MKL for torch, XLA's Eigen pool for JAX); None: defaults.
    threads: int | None = None
    #: Names the run for :class:`bench.planning.concurrency.HostCells` (its run directory).
    run_key: str = ""
    #: The frameworks' persistent compilation cache: a folder, ``off``, or '' (the cells
    #: inherit the environment); set as ``BENCH_COMPILE_CACHE`` in every cell's environment
    #: (:mod:`bench.engine.compile_cache`).
    compile_cache: str = ""


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one cell runs: its CPU cores (empty: not pinned) and GPU (None: not assigned)."""

    index: int = 0
    cpus: tuple[int, ...] = ()
    gpu: str | None = None
    worker: str = "local"


def watch_cell(spec: CellSpec, backend: AbstractBackend, suite: AbstractSuite,
               selection: PluginSelection, work_dir: Path, limits: CellLimits,
               slot: Slot = Slot(), name: str = "bench-cell",
               on_progress: Callable[[int, int, float], None] | None = None,
               stopped: Callable[[], bool] = lambda: False) -> ResultRow | None:
    """Run one (supported) cell in its own process and return its row; None when ``stopped``
    said so first (the cell was stopped: Ctrl-C)."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    override = thread_environment(limits.threads)
    if slot.gpu is not None:
        override["CUDA_VISIBLE_DEVICES"] = slot.gpu
    if limits.compile_cache:
        override[COMPILE_CACHE_ENV] = limits.compile_cache
    with _START_LOCK, _environment(CELL_ENVIRONMENT, override=override), _may_have_children():
        proc = ctx.Process(
            target=cell_process_main,
            args=(child_conn, spec, selection, str(work_dir), limits.max_memory_bytes,
                  slot.cpus, time.time()),
            name=name,
            daemon=True,
        )
        proc.start()
    child_conn.close()
    assert proc.pid is not None  # set by start()
    deadline = None if limits.timeout_s is None else time.monotonic() + limits.timeout_s
    monitor = CellMonitor(proc.pid, limits.max_memory_bytes)
    monitor.sample_load(force=True)
    host_cells = HostCells(limits.run_key)
    # the memory watchdog needs a short period: a cell can allocate GiBs in a second
    period = 0.05 if limits.max_memory_bytes else 0.2

    def finish(row: ResultRow) -> ResultRow:
        return dataclasses.replace(row, concurrent_cells=host_cells.peak, worker=slot.worker,
                                   host=socket.gethostname())

    try:
        with host_cells:
            while True:
                monitor.sample_load()
                host_cells.sample()
                if stopped():
                    return None
                resident = monitor.over_memory()
                if resident is not None:
                    _stop(proc)
                    limit_mb = limits.max_memory_bytes / 2**20  # type: ignore[operator]
                    return finish(base_row(spec, backend, suite, Status.FAILED,
                                           f"exceeded --max-memory-mb {limit_mb:g} (resident "
                                           f"{resident / 2**20:.0f} MiB); the cell was stopped"))
                if parent_conn.poll(period):
                    try:
                        kind, payload = parent_conn.recv()
                    except EOFError:
                        proc.join(5)
                        return finish(base_row(spec, backend, suite, Status.FAILED,
                                               exit_reason(proc, work_dir)))
                    if kind == "result":
                        monitor.sample_load(force=True)
                        proc.join(30)
                        return finish(_with_timing_check(payload, monitor, work_dir, limits,
                                                         slot))
                    if kind == "progress" and on_progress is not None:
                        on_progress(*payload)
                    continue
                if not proc.is_alive():
                    if parent_conn.poll(0):  # a result sent just before exiting
                        continue
                    return finish(base_row(spec, backend, suite, Status.FAILED,
                                           exit_reason(proc, work_dir)))
                if deadline is not None and time.monotonic() > deadline:
                    _stop(proc)
                    return finish(base_row(spec, backend, suite, Status.TIMEOUT,
                                           f"cell exceeded the timeout of {limits.timeout_s:g} s"))
    finally:
        if proc.is_alive():  # Ctrl-C, a stop or any other exit path: no orphan cell
            _stop(proc)
        end_process_group(proc.pid)  # and none of its children (it leads its own group)
        parent_conn.close()


def _with_timing_check(row: ResultRow, monitor: CellMonitor, work_dir: Path, limits: CellLimits,
                       slot: Slot) -> ResultRow:
    """The row with the host's load during the cell and, for measured timings, a flag when
    they may not be comparable (a loaded host, or step times spread far above usual). Other
    cells of the run on this host count as load: a cell pinned to its own cores is flagged
    only when they spill onto its cores' share."""
    other, cell = monitor.load()
    if row.status != Status.OK:
        return dataclasses.replace(row, host_busy_cores_other=other)
    times, evaluations = trace_step_times(work_dir)
    cores = len(slot.cpus) if slot.cpus else cpu_count()
    if slot.cpus and other is not None:  # the other slots' cells are expected, on their cores
        other = max(0.0, other - (cpu_count() - cores))
    warning = timing_warning(other, cell, limits.threads, cores, times, evaluations)
    return dataclasses.replace(row, host_busy_cores_other=other, timing_flag=bool(warning),
                               timing_warning=warning)


def thread_environment(threads: int | None) -> dict[str, str]:
    """Environment variables that pin a cell's CPU threads (read by the frameworks at start)."""
    if threads is None:
        return {}
    flags = (f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
             f"intra_op_parallelism_threads={threads}")
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()}


@contextlib.contextmanager
def _environment(defaults: dict[str, str], override: dict[str, str] | None = None
                 ) -> Iterator[None]:
    """Set environment variables while a cell process starts. ``defaults`` leave the user's
    values alone; ``override`` (what --threads asks for: OMP/MKL, and XLA_FLAGS with the thread
    flags appended to the user's own; a slot's GPU) wins."""
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


@contextlib.contextmanager
def _may_have_children() -> Iterator[None]:
    """Let a daemonic process (a Dask worker, by default) start a cell's process: the cell dies
    with its starter anyway (parent-death signal), which is what the flag protects."""
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    daemon = config.get("daemon")
    if daemon:
        config["daemon"] = False
    try:
        yield
    finally:
        if daemon:
            config["daemon"] = daemon


def end_process_group(pgid: int | None) -> None:
    """Kill what is left of the cell's process group (the processes its cell started: data
    loaders, compilers, a library's helpers), whether the cell ended well or not."""
    if not pgid:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stop(proc: Any) -> None:
    proc.terminate()
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def exit_reason(proc: Any, work_dir: Path | None = None) -> str:
    """Why a cell process ended without a row: its exit code or signal, and what its folder
    holds (cell.log's last line, or that it is empty; the last step in trace.json)."""
    code = proc.exitcode
    log = _last_words(work_dir) if work_dir is not None else ""
    if code is None:
        return "cell process stopped answering"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else code
        hint = " (killed: most likely out of memory)" if -code == signal.SIGKILL else log
        return f"cell process was killed by signal {name}{hint}"
    return f"cell process exited with code {code} without a result{log}"


def _last_words(work_dir: Path) -> str:
    """What a dead cell left: where its Python stack is (and the log's last line), or that
    cell.log is empty; the last training step trace.json recorded, if any."""
    path = work_dir / "cell.log"
    try:
        lines = [line.strip() for line in read_text(path, errors="replace").splitlines()]
    except OSError:
        lines = []
    lines = [line for line in lines if line]
    if lines:
        last = lines[-1] if len(lines[-1]) <= 200 else lines[-1][:197] + "..."
        text = f"; the Python stack is in {path} (its last line: {last!r})"
    else:
        text = (f"; {path} is empty or missing: the process ended without a Python stack (killed "
                "from outside, os._exit, or a crash in native code before faulthandler wrote)")
    try:
        steps = json.loads(read_text(work_dir / "trace.json")).get("steps") or []
        text += f"; trace.json's last step: {int(steps[-1]['step'])}" if steps else ""
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return text
