"""The resident-memory tracker's phase reset waits for memory that is still being given back
(bench.core.measure.settle_rss): XLA frees a step's temporary buffers on its own thread after the
step's outputs are ready, and a reset in that window took them into the baseline."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bench.core import measure
from bench.core.measure import ResidentMemoryTracker, current_rss_bytes

MIB = 2**20


def _touched(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)  # written: every page resident


@pytest.fixture
def linux_rss():
    if current_rss_bytes() is None or not measure.reset_peak_rss():
        pytest.skip("needs /proc/self/status and /proc/self/clear_refs")


def test_reset_waits_for_memory_another_thread_is_still_freeing(linux_rss):
    """A block freed by another thread just after the reset started is not in the baseline: the
    next phase's allocation of the same size shows in full (without the wait: about 0)."""
    holder = [_touched(64 * MIB)]  # above glibc's largest mmap threshold: unmapped when freed

    def free_soon() -> None:
        time.sleep(0.01)
        holder.clear()

    tracker = ResidentMemoryTracker()
    freeing = threading.Thread(target=free_soon)
    freeing.start()
    tracker.reset()
    block = _touched(64 * MIB)
    peak = tracker.peak_bytes()
    freeing.join()
    del block
    assert peak is not None and peak >= 60 * MIB


def test_settle_returns_once_the_resident_set_is_quiet(monkeypatch):
    monkeypatch.setattr(measure, "current_rss_bytes", lambda: 100 * MIB)
    start = time.perf_counter()
    assert measure.settle_rss(quiet_s=0.02, limit_s=5.0)
    assert time.perf_counter() - start < 1.0


def test_settle_gives_up_when_the_resident_set_keeps_changing(monkeypatch):
    readings = iter(range(10**9))
    monkeypatch.setattr(measure, "current_rss_bytes", lambda: next(readings) * 4096)
    start = time.perf_counter()
    assert not measure.settle_rss(quiet_s=0.02, limit_s=0.1)
    assert 0.1 <= time.perf_counter() - start < 2.0


def test_settle_without_a_resident_set_does_not_wait(monkeypatch):
    monkeypatch.setattr(measure, "current_rss_bytes", lambda: None)
    assert not measure.settle_rss(quiet_s=10.0, limit_s=10.0)


#: A worker thread that lives through every phase (as XLA's do) frees a large block twice, as
#: a timed step would, then the memory phase starts and the same block is measured twice. Run in
#: a fresh interpreter: glibc's thresholds are process-wide and other tests fix them.
_WORKER_ARENA = r"""
import ctypes, queue, threading
from bench.core.measure import ResidentMemoryTracker

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 8 * 2**20
jobs, done = queue.Queue(), queue.Queue()

def worker():
    while (job := jobs.get()) is not None:
        job()
        done.put(None)

def on_worker(job):
    jobs.put(job)
    done.get()

def block():
    pointer = libc.malloc(SIZE)
    ctypes.memset(pointer, 1, SIZE)
    libc.free(pointer)

thread = threading.Thread(target=worker)
thread.start()
on_worker(block)  # mapped; its free raises the mmap threshold to 8 MiB, the trim one to 16
on_worker(block)  # now from the worker's heap, freed into its top and kept there
tracker = ResidentMemoryTracker()
tracker.begin_memory_phase()
on_worker(block)  # the unmeasured warm-up step (its free gives the heap's top back)
peaks = []
for _ in range(2):
    tracker.reset()
    on_worker(block)
    peaks.append(tracker.peak_bytes())
jobs.put(None)
thread.join()
print(min(peaks))
"""


def test_memory_phase_sees_a_block_a_worker_thread_kept_at_its_heap_top(linux_rss):
    """glibc's trim threshold, raised by a large free, is fixed again for the memory phase: a
    worker thread's heap (malloc_trim trims only the main heap's top) gives its top back at the
    warm-up step's free, and each phase sees the block (measured without: 0 and 0)."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-c", _WORKER_ARENA], capture_output=True,
                            text=True, check=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert int(result.stdout.strip()) >= 7 * MIB


#: A step that fills a hole in its thread's heap (2 MiB of blocks below the mmap threshold, freed
#: under a small block that lives on), as a training step's small tensors and Python objects do,
#: measured by the core's memory steps; prints the measured steps' peaks.
_HEAP_HOLE = r"""
import ctypes
from bench.core.interfaces import StepStats
from bench.core.measure import ResidentMemoryTracker
from bench.engine.cell import _measure_memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BLOCK, COUNT = 64 * 1024, 32
kept = []

class Task:
    memory_steps = 2

    def train_step(self, step):
        blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
        for pointer in blocks:
            ctypes.memset(pointer, 1, BLOCK)
        kept.append(libc.malloc(64))  # above the blocks: their free leaves a hole, not a top
        for pointer in blocks:
            libc.free(pointer)
        return StepStats(loss=0.0)

class Backend:
    def synchronize(self, device):
        pass

    def complete_step_stats(self, stats):
        return stats

class Tracker(ResidentMemoryTracker):
    peaks = []

    def peak_bytes(self):
        self.peaks.append(super().peak_bytes())
        return self.peaks[-1]

_measure_memory(Task(), Backend(), "cpu", Tracker(), 0, {})
print(*Tracker.peaks)
"""


def test_memory_steps_measure_the_steady_state_not_a_trimmed_heap(linux_rss):
    """The measured steps start where every later step starts: nothing is trimmed after the
    unmeasured step. A trim there returned the pages of the heap's free chunks, which the first
    measured step alone refilled (measured: 2.0 and 0.0 MiB here; torch-adjoint at L = 512 6.58
    and 5.96 MiB, independent code 5.96)."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-c", _HEAP_HOLE], capture_output=True,
                            text=True, check=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    first, second = (int(peak) for peak in result.stdout.split())
    assert abs(first - second) < MIB // 2, (first, second)
