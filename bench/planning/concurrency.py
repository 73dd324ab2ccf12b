"""Cells that run at once: their CPU cores and GPUs (``--jobs N``), how many of a run's cells run
on one host at once (the ``concurrent_cells`` column), and the warning for timings measured at
different concurrency.

No Dask here: :mod:`bench.engine.parallel` and :mod:`bench.engine.dask_engine` use these.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError

#: Seconds between two counts of the cells running on a host.
SAMPLE_S = 0.5
#: ``--cluster`` names: a Dask ``LocalCluster``, or dask-jobqueue's clusters.
CLUSTER_NAMES = ("local", "slurm", "pbs", "sge", "lsf")


def parallel_problem(jobs: int, threads: int, device: str, scheduler: str | None,
                     cluster: str | None) -> str | None:
    """What is wrong with how a run asks to run cells at once (None: fine). Locally, whether
    the cores (and GPUs) go round is checked here, before anything is written."""
    if not isinstance(jobs, int) or jobs < 1:
        return f"--jobs {jobs!r}: expected a positive integer (cells at once; default 1)"
    if scheduler and cluster:
        return ("--scheduler and --cluster both given: use a running Dask scheduler "
                "(--scheduler tcp://HOST:PORT) or start one (--cluster), not both")
    if cluster is not None and cluster not in CLUSTER_NAMES:
        return f"--cluster {cluster!r}: unknown; valid choices: {', '.join(CLUSTER_NAMES)}"
    if scheduler is not None and ("://" not in scheduler and ":" not in scheduler):
        return (f"--scheduler {scheduler!r}: expected a Dask scheduler address, "
                "tcp://HOST:PORT")
    if scheduler or cluster or jobs == 1:
        return None
    gpus = visible_gpus() if device in ("cuda", "auto") else []
    try:
        plan_slots(jobs, threads, device, usable_cores(), gpus)
    except BenchError as exc:
        return str(exc)
    return None


def usable_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def default_threads(jobs: int, distributed: bool = False) -> int:
    """``--threads`` when not given: a local run splits the cores this process may use evenly
    among its ``--jobs`` cells (one cell at a time gets them all: on 2 idle cores the MNIST quick
    job's steps ran about 1.35x faster with 2 threads than with 1); cells sent to Dask workers
    (``--scheduler``, ``--cluster``) 1, since each worker runs one cell on its own core."""
    if distributed:
        return 1
    return max(1, len(usable_cores()) // max(int(jobs), 1))


def visible_gpus() -> list[str]:
    """The GPUs cells may use, as ``CUDA_VISIBLE_DEVICES`` names them: that variable's entries
    where it is set, else one per NVIDIA GPU the driver lists (none without one)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return [str(i) for i in range(len(list(gpus.iterdir())))]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


def plan_slots(jobs: int, threads: int, device: str, cores: Sequence[int],
               gpus: Sequence[str]) -> list[tuple[tuple[int, ...], str | None]]:
    """The (cores, GPU) of each of ``jobs`` cells run at once: ``threads`` cores each, never
    shared (``threads`` 0, the frameworks' own: an equal share of the cores); with ``device``
    cuda one GPU each (auto: when there is a GPU). One job: not pinned, as a sequential run.
    Raises :class:`BenchError` when the cores or GPUs do not go round."""
    if jobs < 1:
        raise BenchError(f"--jobs {jobs}: expected a positive number of cells at once")
    if jobs == 1:
        return [((), None)]
    per_cell = threads if threads > 0 else len(cores) // jobs
    if per_cell < 1 or jobs * per_cell > len(cores):
        shown = f"--threads {threads}" if threads > 0 else "at least one core each"
        raise BenchError(
            f"--jobs {jobs} x {shown} needs {jobs * max(per_cell, 1)} CPU cores, but this "
            f"process may use {len(cores)} ({_ranges(cores)}); cells never share cores (their "
            f"timings would not be their own): lower --jobs or --threads (at most "
            f"--jobs {max(1, len(cores) // max(threads, 1))} at --threads {max(threads, 1)})")
    use_gpus = device == "cuda" or (device == "auto" and bool(gpus))
    if use_gpus and jobs > len(gpus):
        raise BenchError(
            f"--jobs {jobs} --device {device} runs one cell per GPU, but "
            f"{len(gpus)} GPU(s) are visible ({', '.join(gpus) or 'none'}; from "
            "CUDA_VISIBLE_DEVICES or the NVIDIA driver): lower --jobs to at most "
            f"{max(len(gpus), 1)}")
    return [(tuple(cores[k * per_cell:(k + 1) * per_cell]), gpus[k] if use_gpus else None)
            for k in range(jobs)]


def _ranges(cores: Iterable[int]) -> str:
    """``0-3,6``: the cores as ranges."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and runs[-1][1] == core - 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


#: Seconds after which a lock file of another run that nobody holds is cleared (younger ones may
#: be about to be locked by a cell that is starting).
STALE_AFTER_S = 60.0


@functools.lru_cache(maxsize=8)
def _warn_once(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _folder_problem(folder: Path, check_parent: bool = False) -> str:
    """Why ``folder`` is no private folder of this user ('' when it is one): a link, not a
    folder, owned by another user, or writable by group or others; with ``check_parent``, also
    a parent where others could rename it (owned by another user than root or this one, or
    writable by others without the sticky bit)."""
    try:
        info = os.lstat(folder)
    except OSError as exc:
        return f"{exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if info.st_uid != os.getuid():
        return f"it is owned by user {info.st_uid}, not by this user ({os.getuid()})"
    if info.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    if check_parent:
        try:
            parent = os.stat(folder.parent)
        except OSError as exc:
            return f"its parent cannot be read ({exc.strerror or exc})"
        if parent.st_uid not in (0, os.getuid()) or (
                parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
            return "its parent folder lets other users rename it (not sticky)"
    return ""


def private_folder() -> Path | None:
    """This user's private folder for bookkeeping shared by the processes of a host:
    ``$XDG_RUNTIME_DIR/neural-ode-bench`` where that variable is set, else
    ``<temporary folder>/neural-ode-bench-<uid>``; made with mode 0700 when missing, and used
    only when it is a real folder owned by this user that no one else can write (a planted link
    or someone else's folder is refused: None, with a warning saying why)."""
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        candidates.append(Path(runtime) / "neural-ode-bench")
    candidates.append(Path(tempfile.gettempdir()) / f"neural-ode-bench-{os.getuid()}")
    problems = []
    for folder in candidates:
        with contextlib.suppress(OSError):
            os.mkdir(folder, 0o700)
        problem = _folder_problem(folder, check_parent=True)
        if not problem:
            return folder
        problems.append(f"{folder}: {problem}")
    _warn_once("no private folder to count the cells running on this host ("
               + "; ".join(problems) + "): concurrent_cells counts each cell alone")
    return None


class HostCells:
    """The cells of one run that run on this host, across processes (the parent's threads and
    every Dask worker process on the host): each running cell holds a lock on its own file in a
    folder named after the run, inside this user's private folder (:func:`private_folder`);
    counting them is counting the locked files. A dead holder's lock goes with it (its file is
    removed by the next count), and the folders that runs which died left behind are cleared
    when a cell starts. Without a private folder a cell counts only itself."""

    def __init__(self, run_key: str):
        digest = hashlib.sha1(run_key.encode()).hexdigest()[:16]
        base = private_folder()
        self.folder: Path | None = None if base is None else base / f"cells-{digest}"
        self.peak = 1
        self._handle: Any = None
        self._path: Path | None = None
        self._last_sample = -SAMPLE_S

    def __enter__(self) -> HostCells:
        if self.folder is None:
            self.sample()
            return self
        self._path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex}"
        for _ in range(3):  # the folder may vanish between mkdir and open (its last cell left)
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.folder, 0o700)
                if _folder_problem(self.folder):
                    break  # not ours (a link, another user's): this cell counts only itself
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
                self._handle = os.fdopen(fd, "w")
                fcntl.flock(self._handle, fcntl.LOCK_EX)
                break
            except FileNotFoundError:
                continue
            except OSError:  # no usable folder: this cell counts only itself
                break
        if self._handle is not None:
            self._clear_dead_runs()
        self.sample()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                assert self._path is not None
                self._path.unlink()
            self._handle.close()
            self._handle = None
            with contextlib.suppress(OSError):  # the run's last cell here: leave no folder
                assert self.folder is not None
                self.folder.rmdir()

    @staticmethod
    def _held(path: Path) -> bool | None:
        """Whether a process holds the lock on ``path`` (None: it cannot be opened)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)
        return False

    def _clear_dead_runs(self) -> None:
        """Remove the lock files nobody holds (older than :data:`STALE_AFTER_S`) of the other
        runs' folders, and those folders once empty: what runs that died left behind."""
        assert self.folder is not None
        now = time.time()
        with contextlib.suppress(OSError):
            for run_folder in self.folder.parent.iterdir():
                if run_folder == self.folder or not run_folder.name.startswith("cells-"):
                    continue
                with contextlib.suppress(OSError):
                    for path in run_folder.iterdir():
                        old = now - os.lstat(path).st_mtime > STALE_AFTER_S
                        if old and self._held(path) is False:
                            path.unlink()
                    run_folder.rmdir()

    def count(self) -> int:
        """The run's cells running on this host now (this one included)."""
        if self._handle is None or self.folder is None:
            return 1
        running = 0
        try:
            names = list(self.folder.iterdir())
        except OSError:
            return 1
        for path in names:
            if path == self._path:
                running += 1
                continue
            held = self._held(path)
            if held:
                running += 1
            elif held is False:  # nobody holds it: a cell whose process died
                with contextlib.suppress(OSError):
                    path.unlink()
        return max(running, 1)

    def sample(self) -> None:
        """Count at most every :data:`SAMPLE_S` (the watch loop polls far more often)."""
        now = time.monotonic()
        if now - self._last_sample >= SAMPLE_S:
            self._last_sample = now
            self.peak = max(self.peak, self.count())


def concurrency_warning(groups: Mapping[str, Iterable[Any]]) -> str:
    """A warning when the ``ok`` rows' timings were measured at different concurrency
    (``concurrent_cells``), '' otherwise. ``groups``: a name (a run) and its rows."""
    seen: dict[str, set[int]] = {}
    for name, rows in groups.items():
        values = {int(v) for r in rows if getattr(r, "status", "ok") == "ok"
                  and (v := getattr(r, "concurrent_cells", None)) is not None}
        if values:
            seen[name] = values
    every = set().union(*seen.values()) if seen else set()
    if len(every) <= 1:
        return ""
    parts = "; ".join(f"{name}: {', '.join(map(str, sorted(v)))}" for name, v in seen.items())
    return ("warning: these timings were measured with different numbers of cells running at "
            f"once on their host (concurrent_cells {parts}); cells running side by side share "
            "memory bandwidth and caches, so their step times are not directly comparable")
