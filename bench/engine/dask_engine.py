"""The cells on a Dask cluster: ``bench run --scheduler tcp://HOST:PORT`` (a running one) or
``--cluster local|slurm|pbs|sge|lsf`` (one started for the run: a ``LocalCluster``, or
dask-jobqueue's, configured from Dask's own configuration file, e.g.
``~/.config/dask/jobqueue.yaml``).

Each Dask task runs one cell as its own fresh process on the worker
(:func:`bench.engine.cell_watch.watch_cell`, as the parent does), so timeouts, the memory watchdog
and the parent-death signal hold per cell; the row goes back to the parent, which appends it. A
worker lost while running a cell gives the cell a ``failed`` row saying so (clusters started
here fail it at once; a running scheduler may first retry it elsewhere, up to its
``distributed.scheduler.allowed-failures``). Ctrl-C cancels the queued cells and sets a Dask
``Event`` that the running ones check every second: they stop their cell process.

Dask is imported only here, and only when asked for.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import importlib
import shutil
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import PluginSelection, Registry
from bench.core.rows import ResultRow
from bench.engine.cell_watch import CellLimits, Slot, watch_cell
from bench.engine.progress import ProgressView
from bench.planning.backend_grid import configured_backend
from bench.planning.cells import CellSpec

INSTALL_HINT = "pip install 'neural-ode-bench[dask]'"
#: --cluster name -> (module, class).
CLUSTERS = {
    "local": ("distributed", "LocalCluster"),
    "slurm": ("dask_jobqueue", "SLURMCluster"),
    "pbs": ("dask_jobqueue", "PBSCluster"),
    "sge": ("dask_jobqueue", "SGECluster"),
    "lsf": ("dask_jobqueue", "LSFCluster"),
}
#: The scheduler of a cluster started for a run: a worker lost while running a cell fails that
#: cell (no retry on another worker), and a worker holds no more cells than its threads (a cell
#: queued behind a long one on a busy worker would wait while another worker idles).
SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": 0,
                    "distributed.scheduler.worker-saturation": 1.0}
#: Seconds a stopped run waits for its running cells to stop before closing the client.
STOP_WAIT_S = 30.0
#: The batch system's command each dask-jobqueue cluster submits its worker jobs with: without
#: it on PATH the submissions fail in the background and the run would wait for ever.
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub", "sge": "qsub", "lsf": "bsub"}
#: Seconds the cluster started for a run (or a running scheduler) may take to give its first
#: worker (``--cluster-timeout``); a batch queue can be slow, so minutes, not seconds. Set for
#: one run with :func:`cluster_timeout`, or in Dask's configuration as ``bench.cluster-timeout``.
DEFAULT_CLUSTER_TIMEOUT_S = 300.0
CLUSTER_TIMEOUT_KEY = "bench.cluster-timeout"
#: Seconds the TCP check of a ``--scheduler`` address waits for a connection.
CONNECT_CHECK_S = 3.0
#: Dask's default scheduler port (an address without a port).
DEFAULT_PORT = 8786


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BenchError(f"{what} needs {module} ({exc}); install the Dask extra: "
                         f"{INSTALL_HINT}") from None


def require(cluster: str | None, scheduler: str | None = None) -> None:
    """Raise :class:`BenchError` unless a run can reach its Dask cells (checked before the run
    directory is made): what ``--scheduler`` / ``--cluster`` needs imports (else the install
    hint), a batch cluster's submit command is on PATH (``sbatch``, ``qsub``, ``bsub``), and a
    ``--scheduler`` address accepts a TCP connection within :data:`CONNECT_CHECK_S` seconds."""
    _import("distributed", "--scheduler/--cluster")
    if cluster in CLUSTERS:
        _import(CLUSTERS[cluster][0], f"--cluster {cluster}")
    command = SUBMIT_COMMANDS.get(cluster or "")
    if command and shutil.which(command) is None:
        raise BenchError(f"--cluster {cluster}: the batch system's command {command!r} is not on "
                         "PATH, so no worker job can be submitted; run bench on a machine that "
                         f"submits {cluster} jobs (a login node), or use --cluster local")
    if scheduler:
        check_scheduler_address(scheduler)


def scheduler_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a TCP Dask address (``tcp://HOST:PORT``, ``tls://...``, ``HOST:PORT``);
    None for other transports (``inproc://``, ``ucx://``), which are not checked here."""
    text = address.strip()
    if "://" not in text:
        text = "tcp://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("tcp", "tls"):
        return None
    try:
        port = parts.port
    except ValueError:
        raise BenchError(f"--scheduler {address!r}: the port is not a number from 0 to 65535; "
                         "expected tcp://HOST:PORT") from None
    if not parts.hostname:
        raise BenchError(f"--scheduler {address!r}: no host; expected tcp://HOST:PORT")
    return parts.hostname, port if port is not None else DEFAULT_PORT


def check_scheduler_address(address: str, timeout_s: float = CONNECT_CHECK_S) -> None:
    """Raise :class:`BenchError` unless something accepts a TCP connection at ``address``
    within ``timeout_s`` seconds (Dask's own handshake waits far longer for a wrong one)."""
    endpoint = scheduler_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except (OSError, UnicodeError, ValueError) as exc:
        reason = (f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError)
                  else getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        raise BenchError(f"--scheduler {address}: cannot reach a Dask scheduler at {host}:{port} "
                         f"({reason}); is it running, and is the address tcp://HOST:PORT?"
                         ) from None
    if urllib.parse.urlsplit(address if "://" in address else "tcp://" + address).scheme == "tcp":
        _check_handshake(f"tcp://{host}:{port}", address, timeout_s)


def _check_handshake(url: str, address: str, timeout_s: float) -> None:
    """Raise :class:`BenchError` unless the server at ``url`` answers Dask's handshake within
    ``timeout_s`` seconds: something else listening there (a web server) made the client read
    its first bytes as a frame length (a MemoryError's traceback) or wait for 30 s."""
    import asyncio

    from distributed.comm import connect as comm_connect

    async def handshake() -> None:
        comm = await comm_connect(url, timeout=timeout_s)
        await comm.close()

    try:
        asyncio.run(asyncio.wait_for(handshake(), timeout_s))
    except Exception as exc:  # noqa: BLE001 - whatever the server sent, one message
        reason = (f"no handshake within {timeout_s:g} s" if isinstance(exc, TimeoutError)
                  else f"{type(exc).__name__}: {str(exc)[:200]}")
        raise BenchError(f"--scheduler {address}: the server at {url} accepts connections but "
                         f"does not answer as a Dask scheduler ({reason}); is the address the "
                         "scheduler's (tcp://HOST:PORT, default port 8786)?") from None


@contextlib.contextmanager
def cluster_timeout(seconds: float | None) -> Iterator[None]:
    """Within it, a run waits ``seconds`` for its cluster's first worker (None: the default or
    Dask's configuration). Nothing is imported when ``seconds`` is None."""
    if seconds is None:
        yield
        return
    dask = _import("dask", "--cluster-timeout")
    with dask.config.set({CLUSTER_TIMEOUT_KEY: float(seconds)}):
        yield


def _wait_for_a_worker(client: Any, cluster: Any, what: str) -> None:
    """Wait for the first worker, at most the cluster timeout; none: close what was started
    and raise :class:`BenchError` saying so."""
    import dask

    timeout = float(dask.config.get(CLUSTER_TIMEOUT_KEY, DEFAULT_CLUSTER_TIMEOUT_S))
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        raise BenchError(f"{what}: no Dask worker joined within {timeout:g} s "
                         f"({type(exc).__name__}); the worker jobs may still be queued or may "
                         "have failed (see the batch system's queue and the jobs' logs). No "
                         "cell was run; wait longer with --cluster-timeout SECONDS") from None


def connect(scheduler: str | None, cluster: str | None, jobs: int) -> tuple[Any, Any]:
    """(a Dask client, the cluster started for the run or None)."""
    distributed = _import("distributed", "--scheduler/--cluster")
    dask = _import("dask", "--scheduler/--cluster")
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="30s")
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError from a server that is not Dask
            raise BenchError(f"--scheduler {scheduler}: cannot reach the Dask scheduler "
                             f"({type(exc).__name__}: {exc}); is it running, and is the address "
                             "tcp://HOST:PORT?") from None
        _wait_for_a_worker(client, None, f"--scheduler {scheduler}")
        return client, None
    if cluster not in CLUSTERS:
        raise BenchError(f"--cluster {cluster!r}: unknown; valid choices: "
                         f"{', '.join(CLUSTERS)}")
    module, name = CLUSTERS[cluster]
    cls = getattr(_import(module, f"--cluster {cluster}"), name)
    with dask.config.set(SCHEDULER_CONFIG):
        try:
            if cluster == "local":
                started = cls(n_workers=jobs, threads_per_worker=1, processes=True,
                              dashboard_address=None)
            else:
                started = cls()  # cores, memory, queue, ...: Dask's configuration file
                started.scale(n=jobs)
        except (ValueError, TypeError, OSError) as exc:
            raise BenchError(
                f"--cluster {cluster}: cannot start the cluster ({type(exc).__name__}: {exc}); "
                "its settings come from Dask's configuration (e.g. ~/.config/dask/"
                "jobqueue.yaml: see README, 'Running cells in parallel')") from None
    client = distributed.Client(started)
    _wait_for_a_worker(client, started, f"--cluster {cluster}")
    return client, started


@functools.lru_cache(maxsize=4)
def _registry(selection: PluginSelection) -> Registry:
    return Registry.load(selection)


def run_on_worker(spec: CellSpec, selection: PluginSelection, work_dir: str,
                  limits: CellLimits, stop_name: str) -> ResultRow | None:
    """A Dask task: one cell in its own process on this worker; None once the run was
    stopped."""
    from distributed import Event, get_worker

    worker = get_worker()
    registry = _registry(selection)
    path = Path(work_dir)  # the parent's run directory: shared, or made here on the worker
    path.mkdir(parents=True, exist_ok=True)
    event = Event(stop_name)
    if event.is_set():  # queued on this worker when the run was stopped
        return None
    checked = [time.monotonic(), False]

    def stopped() -> bool:  # a round trip to the scheduler: once a second
        if time.monotonic() - checked[0] >= 1.0:
            checked[0] = time.monotonic()
            checked[1] = bool(event.is_set())
        return bool(checked[1])

    return watch_cell(spec, configured_backend(registry, spec.choice), registry.suite(spec.suite),
                      selection, path, limits, Slot(worker=worker.address),
                      name="bench-cell", stopped=stopped)


class DaskPool:
    """Cells as Dask tasks; futures mirrored as :class:`concurrent.futures.Future`."""

    def __init__(self, runner: Any, client: Any, cluster: Any, jobs: int, device: str):
        from distributed import Event

        self.runner, self.client, self.cluster = runner, client, cluster
        self.jobs = jobs
        self.stop_name = f"bench-stop-{uuid.uuid4().hex}"
        self._event = Event(self.stop_name, client=client)
        self._tasks: list[Any] = []
        workers = client.scheduler_info().get("workers", {}).values()
        gpu_workers = any("GPU" in (w.get("resources") or {}) for w in workers)
        #: one cell per GPU where the workers declare GPUs (dask worker --resources GPU=1)
        self.resources = {"GPU": 1} if device in ("cuda", "auto") and gpu_workers else None

    @classmethod
    def start(cls, runner: Any, options: Any, device: str) -> DaskPool:
        client, cluster = connect(options.scheduler, options.cluster, options.jobs)
        workers = len(client.scheduler_info().get("workers", {}))
        runner.echo(f"dask: scheduler {client.scheduler.address}, {workers} worker(s) now"
                    + (f", cluster {options.cluster}" if options.cluster else ""))
        return cls(runner, client, cluster, max(options.jobs, workers, 1), device)

    def submit(self, spec: CellSpec, view: ProgressView) -> cf.Future[ResultRow | None]:
        mirror: cf.Future[ResultRow | None] = cf.Future()
        task = self.client.submit(
            run_on_worker, spec, self.runner.cell_selection(spec),
            str(self.runner.run_dir.cell_dir(spec.cell_id)), self.runner.limits,
            self.stop_name, pure=False, resources=self.resources,
            key=f"bench-cell-{uuid.uuid4().hex[:8]}-{spec.cell_id}")
        self._tasks.append(task)
        view.started(spec.cell_id, "dask: queued or running")

        def done(task: Any) -> None:
            if task.status == "cancelled":
                mirror.cancel()
                mirror.set_running_or_notify_cancel()
                return
            try:
                mirror.set_result(task.result())
            except BaseException as exc:  # noqa: BLE001 - the parent turns it into a row
                mirror.set_exception(exc)

        task.add_done_callback(done)
        return mirror

    def describe_failure(self, exc: BaseException) -> str:
        if type(exc).__name__ == "KilledWorker":
            last = getattr(exc, "last_worker", None)
            where = getattr(last, "address", None) or "its worker"
            return (f"the Dask worker running the cell ({where}) was lost (killed, out of memory "
                    f"or its machine gone); its cell process died with it ({type(exc).__name__})")
        return f"the Dask task failed: {type(exc).__name__}: {exc}"

    def stop(self) -> None:
        """Cancel the queued cells; tell the running ones to stop, and wait for them."""
        self._event.set()
        running = [t for t in self._tasks if not t.done()]
        deadline = time.monotonic() + STOP_WAIT_S
        while running and time.monotonic() < deadline:
            processing = {k for keys in self.client.processing().values() for k in keys}
            queued = [t for t in running if t.key not in processing]
            if queued:
                self.client.cancel(queued)
            time.sleep(0.2)
            running = [t for t in running if not t.done()]

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
