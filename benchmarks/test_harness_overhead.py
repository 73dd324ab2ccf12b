"""The harness's own cost per training step must stay within 1% of a bare training loop.

Run with: ``python -m pytest benchmarks --benchmark-only`` (not part of the unit tests: timings
on a shared machine are not pass/fail material for CI).

Both loops run the same torch task (an MLP ODE integrated with torch-direct, fixed RK4 steps, a
few milliseconds per step on a CPU core): the bare loop calls ``train_step`` directly; the harness
loop is the core's measured loop (synchronised timing, NFE and memory bookkeeping, progress sent
through a pipe as in a cell process). The two are interleaved over rounds and their medians
compared, because shared machines drift by 15-30% between rounds.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bench.cell import _train_and_evaluate  # noqa: E402
from bench.interfaces import CellContext  # noqa: E402
from bench.registry import PluginSelection, Registry  # noqa: E402

STEPS = 40
ROUNDS = 9


def _make_task(tmp_path: Path):
    registry = Registry.load(PluginSelection(
        builtins=False, entry_points=False,
        extra_modules=("plugins.torch_direct", "suites.memory_scaling")))
    backend = registry.backend("torch-direct")
    suite = registry.suite("memory-scaling")
    budget = type(suite.budgets["measure"])("bench", "overhead benchmark", {"steps": STEPS})
    ctx = CellContext(backend=backend, budget=budget, seed=0, device="cpu", work_dir=tmp_path,
                      options={"steps": 8, "width": 64, "batch": 512})
    task = suite.build_task(ctx)
    # the two memory steps after the final evaluation are a phase of their own, outside every
    # timing; this benchmark compares the timed loop with a bare one
    task.memory_steps = 0
    return backend, task


def test_harness_overhead_within_one_percent(benchmark, tmp_path):
    backend, task = _make_task(tmp_path)
    parent, child = multiprocessing.Pipe(duplex=False)
    received = []

    def harness() -> float:
        t0 = time.perf_counter()
        _train_and_evaluate(task, backend, "cpu", tmp_path, {},
                            lambda step, n, loss: child.send(("progress", (step, n, loss))))
        elapsed = time.perf_counter() - t0
        while parent.poll():
            received.append(parent.recv())
        return elapsed

    def bare() -> float:
        t0 = time.perf_counter()
        for step in range(STEPS):
            task.train_step(step)
        task.evaluate(final=True)
        return time.perf_counter() - t0

    bare()  # warm up
    harness_times, bare_times = [], []
    for _ in range(ROUNDS):
        harness_times.append(harness())
        bare_times.append(bare())
    benchmark.extra_info["bare_median_s"] = statistics.median(bare_times)
    benchmark.extra_info["harness_median_s"] = statistics.median(harness_times)
    benchmark.pedantic(harness, rounds=3, iterations=1)
    overhead = statistics.median(harness_times) / statistics.median(bare_times) - 1
    benchmark.extra_info["overhead_fraction"] = overhead
    assert len(received) >= STEPS
    assert overhead < 0.01, f"harness overhead {overhead:.2%} per step exceeds 1%"
