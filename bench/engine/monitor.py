"""What the parent watches while a cell runs: its resident memory (``--max-memory-mb``) and the
load that other processes put on the host (so that contaminated timings are flagged).

Linux only (``/proc``); elsewhere nothing is measured and nothing is limited.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.store.files import read_text

#: A cell is flagged when the median absolute deviation of its steady step times (per function
#: evaluation where the steps count them, since an adaptive solver's steps legitimately differ)
#: exceeds this fraction of their median. Quiet runs stay well below it.
SPREAD_LIMIT = 0.25
#: A cell is flagged when the mean of its steady step times (per function evaluation where the
#: steps count them) exceeds this multiple of their median: a slow tail (a loaded machine's
#: 10-20x steps) that the median and the spread check hide. Quiet runs stay near 1.0-1.1.
TAIL_LIMIT = 1.5
#: Fewest steady steps for the spread to mean anything.
MIN_STEPS_FOR_SPREAD = 4
#: Headroom kept free of other processes beside a cell: a cell pinned to N threads still runs
#: helper threads (JAX dispatches from the Python thread to an XLA worker thread), so it is
#: flagged once other processes use more than the free cores minus this margin (and always above
#: ``LOAD_MIN_CORES``). Measured on 2 cores with one thread per cell: one busy process beside the
#: MNIST smoke cells (0.84-1.07 other cores measured) made the JAX cells 1.27-1.76x slower, which a
#: margin of 0.25 above the free core did not flag.
LOAD_MARGIN_CORES = 0.5
#: Other processes' cores tolerated however many cores are free (noise, the parent's polling).
LOAD_MIN_CORES = 0.25
#: Seconds between two readings of the host's CPU time.
LOAD_INTERVAL_S = 0.5


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (from ``/proc/<pid>/task/<tid>/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    todo.extend(int(c) for c in handle.read().split())
            except OSError:
                continue
    return found


def resident_bytes(pid: int) -> int | None:
    """Resident memory (VmRSS) of ``pid`` and its descendants, or None where /proc is missing."""
    total, seen = 0, False
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        seen = True
                        break
        except (OSError, ValueError):
            continue
    return total if seen else None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    ticks, seen = 0, False
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    return ticks / _clock_ticks() if seen else None


def host_busy_cpu_seconds() -> float | None:
    """CPU seconds all cores have been busy since boot (``/proc/stat``: all but idle, iowait)."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(values[:8]) - values[3] - (values[4] if len(values) > 4 else 0)
    return busy / _clock_ticks()


@dataclasses.dataclass
class CellMonitor:
    """Polled by the runner while a cell runs: resident memory against the limit, and the CPU
    time of other processes on the host (busy time of all cores minus the cell's own)."""

    pid: int
    max_memory_bytes: int | None = None
    peak_resident_bytes: int = 0
    _start: tuple[float, float, float] | None = None
    _last: tuple[float, float, float] | None = None
    _last_read: float = 0.0
    _samples_over: int = 0

    def over_memory(self) -> int | None:
        """The cell's resident bytes when they exceed the limit, else None."""
        if not self.max_memory_bytes:
            return None
        resident = resident_bytes(self.pid)
        if resident is None:
            return None
        self.peak_resident_bytes = max(self.peak_resident_bytes, resident)
        # over the limit on two samples in a row: a child forked for an instant (an exec of a
        # helper program) shares the cell's pages and would count them twice for one sample
        self._samples_over = self._samples_over + 1 if resident > self.max_memory_bytes else 0
        return resident if self._samples_over >= 2 else None

    def sample_load(self, force: bool = False) -> None:
        """Read the host's and the cell's CPU time (at most every ``LOAD_INTERVAL_S``)."""
        now = time.monotonic()
        if not force and now - self._last_read < LOAD_INTERVAL_S:
            return
        self._last_read = now
        host, cell = host_busy_cpu_seconds(), process_cpu_seconds(self.pid)
        if host is None or cell is None:
            return
        reading = (now, host, cell)
        if self._start is None:
            self._start = reading
        self._last = reading

    def load(self) -> tuple[float | None, float | None]:
        """(cores busy with other processes, cores the cell used), means over the cell's life
        so far; None before two readings."""
        if self._start is None or self._last is None or self._last[0] - self._start[0] < 0.05:
            return None, None
        wall = self._last[0] - self._start[0]
        cell = max(0.0, (self._last[2] - self._start[2]) / wall)
        other = max(0.0, (self._last[1] - self._start[1]) / wall - cell)
        return round(other, 2), round(cell, 2)


def timing_warning(other_cores: float | None, cell_cores: float | None, threads: int | None,
                   cores: int, step_times: Sequence[float],
                   evaluations: Sequence[float | None] = ()) -> str:
    """Why a cell's timings may not be comparable, or ``""``: other processes used more cores
    than the cell left free, or the steady step times spread far more than usual."""
    reasons = []
    if other_cores is not None:
        used = max(float(threads or 1), cell_cores or 0.0)
        free = max(0.0, cores - used)
        if host_too_busy(other_cores, used, cores):
            reasons.append(f"host loaded: other processes kept {other_cores:.2f} cores busy, "
                           f"{free:.2f} of {cores} were free beside the cell")
    tail = step_time_tail(step_times, evaluations)
    if tail is not None and tail[0] > TAIL_LIMIT:
        ratio, mean, median, worst, per = tail
        reasons.append(f"slow tail: mean step time{per} {mean:.3g} s is {ratio:.2f}x the median "
                       f"{median:.3g} s (slowest {worst:.3g} s; usual: below {TAIL_LIMIT:g}x)")
    spread = step_time_spread(step_times, evaluations)
    if spread is not None and spread > SPREAD_LIMIT:
        reasons.append(f"step times spread: median absolute deviation {spread:.0%} of the "
                       f"median (usual: below {SPREAD_LIMIT:.0%})")
    return "; ".join(reasons)


def host_too_busy(other_cores: float, used_cores: float, cores: int) -> bool:
    """Whether other processes keeping ``other_cores`` busy contaminate the timings of cells
    that use ``used_cores`` of ``cores`` (the rule of :func:`timing_warning`)."""
    free = max(0.0, cores - used_cores)
    return other_cores > max(free - LOAD_MARGIN_CORES, LOAD_MIN_CORES)


def other_processes_cores(seconds: float = LOAD_INTERVAL_S) -> float | None:
    """Mean cores that processes other than this one (and its children) keep busy over
    ``seconds`` (None where /proc/stat cannot be read)."""
    start_host, start_own, t0 = host_busy_cpu_seconds(), _own_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    end_host, end_own, wall = host_busy_cpu_seconds(), _own_cpu_seconds(), time.monotonic() - t0
    if start_host is None or end_host is None or wall <= 0:
        return None
    return round(max(0.0, (end_host - start_host - (end_own - start_own)) / wall), 2)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _steady_times(step_times: Sequence[float], evaluations: Sequence[float | None]
                  ) -> tuple[list[float], str]:
    """The steady steps' times (all but the first), each divided by its function evaluations
    when every step counts them (an adaptive solver's steps legitimately differ), and the words
    that say so."""
    times = list(step_times[1:])
    evals = list(evaluations[1:])
    if len(evals) == len(times) and times and all(e and e > 0 for e in evals):
        return ([t / float(e) for t, e in zip(times, evals, strict=True)],  # type: ignore[arg-type]
                " per function evaluation")
    return times, ""


def step_time_tail(step_times: Sequence[float], evaluations: Sequence[float | None] = ()
                   ) -> tuple[float, float, float, float, str] | None:
    """(mean / median, mean, median, slowest, words) of the steady steps' times, per function
    evaluation where they count them; None with too few steps."""
    times, per = _steady_times(step_times, evaluations)
    if len(times) < MIN_STEPS_FOR_SPREAD:
        return None
    median = _median(times)
    if median <= 0:
        return None
    mean = sum(times) / len(times)
    return mean / median, mean, median, max(times), per


def step_time_spread(step_times: Sequence[float], evaluations: Sequence[float | None] = ()
                     ) -> float | None:
    """Median absolute deviation over the median of the steady steps (all but the first), each
    divided by its function evaluations when every step counts them."""
    times, _ = _steady_times(step_times, evaluations)
    if len(times) < MIN_STEPS_FOR_SPREAD:
        return None
    median = _median(times)
    if median <= 0:
        return None
    return _median([abs(t - median) for t in times]) / median


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def trace_step_times(work_dir: Path) -> tuple[list[float], list[float | None]]:
    """(step times, evaluations per step) from a cell's ``trace.json``; empty when missing."""
    try:
        trace: Any = json.loads(read_text(work_dir / "trace.json"))
        steps = trace["steps"]
        times = [float(s["time_s"]) for s in steps]
        evals = []
        for s in steps:
            fwd, bwd = s.get("nfe_forward"), s.get("nfe_backward")
            evals.append(None if fwd is None else float(fwd) + float(bwd or 0.0))
        return times, evals
    except (OSError, ValueError, KeyError, TypeError):
        return [], []
