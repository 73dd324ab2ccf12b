"""The entry point of a cell's own process (started by :class:`bench.engine.runner.Runner` with
``spawn``): it ends with its parent, leaves a crash's Python stack in ``cell.log``, rebuilds the
registry from the parent's plugin selection, runs the cell and sends its row back."""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from bench.core.registry import PluginSelection, Registry
from bench.core.rows import Status, now_iso
from bench.engine.cell import base_row, run_cell
from bench.engine.gradient_cell import gradient_setup, run_gradient_cell
from bench.engine.phases import PhaseClock
from bench.engine.reference_cache import reference_folder
from bench.planning.backend_grid import configured_backend
from bench.planning.cells import CellSpec
from bench.store.files import atomic_write_text, open_append

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Make this (cell) process end when its parent does, even by SIGKILL: the kernel's
    parent-death signal where there is one (Linux), and a thread that exits the process when
    the parent's sentinel closes (anywhere). No orphan cell outlives its run."""
    parent = multiprocessing.parent_process()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the thread below does it
        pass
    if parent is None:
        return
    if os.getppid() != parent.pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        from multiprocessing.connection import wait

        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


#: The watchdog of :func:`end_group_with_cell`: while its parent (the cell) lives, it waits;
#: then it kills its process group (the cell's children, and itself).
_GROUP_WATCHDOG = """
import os, signal, time
cell = os.getppid()
while os.getppid() == cell:
    time.sleep(0.5)
os.killpg(0, signal.SIGKILL)
"""
_watchdog: subprocess.Popen[bytes] | None = None


def end_group_with_cell() -> None:
    """Start a small watchdog process in the cell's own process group (the cell must lead it):
    when the cell process ends without its parent ending the group (the run was killed by
    SIGKILL, and the cell by its parent-death signal), the watchdog kills the group, so the
    processes the cell started do not live on, reparented to init. No watchdog (a message in
    the cell's output) when it cannot be started."""
    global _watchdog
    if os.getpgid(0) != os.getpid():
        return
    try:
        _watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GROUP_WATCHDOG], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError as exc:
        print(f"no watchdog for the cell's processes: {exc}", file=sys.stderr)


def cell_process_main(conn: Connection, spec: CellSpec, selection: PluginSelection,
                      work_dir: str, max_memory_bytes: int | None,
                      cpus: tuple[int, ...] = (), started_at: float | None = None) -> None:
    """Entry point of a cell's process; ``cpus``: the cores it is pinned to (``--jobs N``),
    set before any framework starts a thread; ``started_at``: the parent's ``time.time()``
    when it started the process (the cell's ``process_start`` phase)."""
    phases = PhaseClock()
    if started_at is not None:
        phases.add("process_start", time.time() - started_at)
    die_with_parent()
    with contextlib.suppress(OSError):  # its own process group: the cell's children end with it
        os.setsid()
        end_group_with_cell()
    if cpus:
        os.sched_setaffinity(0, cpus)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    # max_memory_bytes is enforced by the parent on the resident set (CellMonitor); an
    # address-space limit (RLIMIT_AS) killed healthy torch cells, which reserve far more than
    # they use
    path = Path(work_dir)
    log_file = open_append(path / "cell.log")  # never through a link
    # A crash (SIGSEGV, SIGABRT, ...) leaves the Python stack of every thread in cell.log.
    faulthandler.enable(file=log_file, all_threads=True)

    def log(message: str) -> None:
        log_file.write(message + "\n")
        log_file.flush()

    def progress(step: int, n: int, loss: float) -> None:
        conn.send(("progress", (step, n, loss)))

    try:
        with phases.phase("imports"):
            registry = Registry.load(selection)
            backend = configured_backend(registry, spec.choice)
            suite = registry.suite(spec.suite)
            gradients = gradient_setup(registry, backend,
                                       *reference_folder(path.parent.parent), suite=suite)
        if spec.mode == "gradients":
            row = run_gradient_cell(spec, backend, suite, path, gradients, log=log)
        else:
            row = run_cell(spec, backend, suite, path, log=log, progress=progress,
                           gradients=gradients, phases=phases)
    except BaseException as exc:  # noqa: BLE001 - always answer the parent
        with contextlib.suppress(OSError):
            atomic_write_text(path / "error.log", traceback.format_exc())
        row = base_row(spec, None, None, Status.FAILED, f"{type(exc).__name__}: {exc}")
    row = dataclasses.replace(row, finished_at=now_iso())
    conn.send(("result", row))
    conn.close()
    faulthandler.disable()
    log_file.close()
    if multiprocessing.parent_process() is not None:
        end_cell_process()


def end_cell_process() -> None:
    """End a cell's process at once, once its row is sent and its files are closed: every
    file the cell writes is written whole and closed before this (``bench.store.files``), and
    the interpreter's own teardown (unloading torch, JAX and their thread pools) took 0.5-0.9 s
    a cell on the 2-core CPU, which the parent waited for before starting the next cell."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
