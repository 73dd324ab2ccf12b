"""Framework-neutral measurement helpers: the memory tracker interface, the process's resident
memory, statistics of step times, and the CPU's model and vector extensions."""

from __future__ import annotations

import abc
import functools
import os
import platform
import re
import statistics
import time
from collections.abc import Sequence

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int | None:
    """Resident set size of this process now (Linux), in bytes."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """High-water mark of the resident set (``VmHWM``) since start or the last reset, in bytes."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


#: How long the resident set must stay unchanged to count as settled, and the longest wait.
SETTLE_QUIET_S = 0.05
SETTLE_LIMIT_S = 1.0


def settle_rss(quiet_s: float = SETTLE_QUIET_S, limit_s: float = SETTLE_LIMIT_S,
               poll_s: float = 0.002) -> bool:
    """Wait until the resident set has not changed for ``quiet_s`` seconds (at most ``limit_s``);
    True when it settled, False when the wait ran out or the resident set cannot be read.

    A step can return before the memory it used is given back: XLA's CPU runtime frees a compiled
    step's temporary buffers on its own worker thread after the outputs are ready. A phase reset
    in that window takes the buffers into its baseline, and the next step, whose buffers only
    fill the room that the freed ones leave, shows almost no increase (measured: jax-rknet's
    memory step read 0.2 MiB at L = 8 for 26.8 MiB of XLA temporaries; an independent script
    read 0.1 to 16.8 MiB step to step until it waited like this, then 26.6 to 27.0 MiB).
    """
    rss = current_rss_bytes()
    if rss is None:
        return False
    start = changed = time.perf_counter()
    while True:
        time.sleep(poll_s)
        now, current = time.perf_counter(), current_rss_bytes()
        if current != rss:
            rss, changed = current, now
        elif now - changed >= quiet_s:
            return True
        if now - start >= limit_s:
            return False


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark to the current RSS (Linux ``clear_refs`` 5).

    Returns False where the kernel does not allow it; ``ru_maxrss`` cannot be reset, which is why
    ``VmHWM`` is read instead.
    """
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD``.
_M_MMAP_THRESHOLD = -3
#: ... and of ``M_TRIM_THRESHOLD``.
_M_TRIM_THRESHOLD = -1
#: Blocks from this size up get their own mapping, unmapped when freed.
MMAP_THRESHOLD_BYTES = 128 * 1024
#: Free memory at the top of a heap beyond this is given back when a block is freed (glibc's
#: default, before a large free raises it).
TRIM_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory_to_os() -> bool:
    """Make glibc give freed memory back, so that a phase's resident peak is its own.

    By default glibc raises its mmap threshold after the first large free and keeps freed blocks
    in its heap: a later phase then reuses them and shows no increase. Fixing the threshold at
    128 KiB (``mallopt``) and trimming the heap now (``malloc_trim``) undoes that, at a price:
    every large allocation becomes a fresh mapping (measured: MNIST training steps twice as slow),
    so this is done only for the memory steps, after every timed step. Returns False where glibc
    is not available (the peaks may then be too low).

    The trim threshold is fixed too (128 KiB): the same large free had raised it to twice the
    mmap threshold, and ``malloc_trim`` gives back the top of the main heap only. A thread's
    own arena (XLA's worker threads run a JAX step) then kept a freed block of up to 64 MiB at
    the top of its heap, resident, and every later step took its buffers from there unseen:
    jax-rknet at L = 8 read 0.04 to 0.4 MiB for 26.8 MiB of XLA temporaries in 2 of 5 cells,
    diffrax at L = 64 and 128 0.6 to 0.7 MiB for 6 to 14 MiB. With the trim threshold fixed, the
    next free there gives the top back (the memory steps' unmeasured warm-up step does it).
    """
    import ctypes

    try:
        # CDLL(None): the C library already loaded in this process. find_library("c") would run
        # /sbin/ldconfig in a forked child, which the parent's memory watchdog counted as the
        # cell's memory (a healthy cell stopped at --max-memory-mb 500)
        libc = ctypes.CDLL(None)
        fixed: bool = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        fixed = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and fixed
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return fixed


class MemoryTracker(abc.ABC):
    """Measures the peak memory of a phase. ``method`` names how, and goes into the results."""

    method: str

    @abc.abstractmethod
    def reset(self) -> None:
        """Start a new phase: forget earlier peaks."""

    @abc.abstractmethod
    def peak_bytes(self) -> int | None:
        """Peak bytes used since :meth:`reset`, above what was in use at the reset."""

    def begin_memory_phase(self) -> None:  # noqa: B027 - optional
        """Called once before the memory steps, after every timed step: switch on whatever makes
        per-phase peaks exact but would slow the timed steps down (the resident-memory tracker
        makes glibc return freed memory). Default: nothing."""


class ResidentMemoryTracker(MemoryTracker):
    """Peak increase of the process's resident memory over the phase (CPU).

    Meaningful when the cell runs in its own process (the runner does this) and glibc returns freed
    memory (:meth:`begin_memory_phase`, called by the core before the memory steps).
    """

    method = "cpu_rss_peak_increase"

    def __init__(self) -> None:
        self._baseline: int | None = None
        self._resettable = True

    def reset(self) -> None:
        """Start a phase at a settled resident set (:func:`settle_rss`: memory that the last
        step is still giving back would otherwise count in the baseline)."""
        settle_rss()
        self._resettable = reset_peak_rss()
        self._baseline = current_rss_bytes()

    def peak_bytes(self) -> int | None:
        peak = peak_rss_bytes()
        if peak is None or self._baseline is None or not self._resettable:
            return None
        return max(0, peak - self._baseline)

    def begin_memory_phase(self) -> None:
        return_freed_memory_to_os()


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (linear interpolation between the closest ranks, as
    numpy's default); ``values`` must not be empty."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo's text (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _cpuinfo_field(pattern: str, cpuinfo: str) -> str | None:
    match = re.search(rf"^(?:{pattern})\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    return (_cpuinfo_field("model name", _cpuinfo()) or platform.processor()
            or platform.machine())


#: The vector extensions that decide which kernels torch, oneDNN and XLA pick on x86 and Arm;
#: two CPUs that differ in them round differently, so the same seed can train differently.
SIMD_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve", "sve2",
)


def cpu_simd_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's vector extensions among :data:`SIMD_FLAGS` (/proc/cpuinfo; else empty)."""
    flags = _cpuinfo_field("flags|Features", _cpuinfo() if cpuinfo is None else cpuinfo)
    present = set(flags.split()) if flags else set()
    return [flag for flag in SIMD_FLAGS if flag in present]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity: 1 under ``taskset -c 0``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
