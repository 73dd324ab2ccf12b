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
