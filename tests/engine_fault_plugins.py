"""Fake plugins for the engine's fault tests: a backend whose ``supports()`` raises, suites whose
final metric is not a finite number, and a backend whose cell leaves a child process behind (its
pid in the row's notes)."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
from fake_plugins import LinearSuite, LinearTask, NumpyEulerBackend

import bench
from bench.core.interfaces import AbstractTask, CellContext, Evaluation, Support

#: suite name -> the metric its final evaluation returns
ODD_METRICS = {
    "odd-array": np.array([1.0, 2.0]),
    "odd-set": {1.0},
    "odd-string": "low",
    "odd-nan": float("nan"),
    "odd-none": None,
}


class RaisingSupportBackend(NumpyEulerBackend):
    def supports(self, suite):  # type: ignore[override]
        raise RuntimeError("supports() is broken in this plugin")


class OrphanTask(LinearTask):
    """Starts a long ``sleep`` that outlives the cell unless its process group is ended."""

    def evaluate(self, final: bool = True) -> Evaluation:
        child = subprocess.Popen(["sleep", "300"], start_new_session=False)
        return Evaluation({"rate_error": 0.0}, notes=f"child={child.pid}")


class OrphanSuite(LinearSuite):
    name = "orphan"

    def build_task(self, ctx: CellContext) -> AbstractTask:
        return OrphanTask(ctx.backend, dict(ctx.budget.settings), ctx.seed, 0.0)


class SpawnHangTask(LinearTask):
    """Starts a long ``sleep`` (its pid appended to ``$BENCH_TEST_PIDFILE``), then hangs."""

    def train_step(self, step: int):  # type: ignore[override]
        child = subprocess.Popen(["sleep", "300"], start_new_session=False)
        with open(os.environ["BENCH_TEST_PIDFILE"], "a") as handle:
            handle.write(f"{child.pid}\n")
        time.sleep(600)


class SpawnHangSuite(LinearSuite):
    name = "spawn-hang"

    def build_task(self, ctx: CellContext) -> AbstractTask:
        return SpawnHangTask(ctx.backend, dict(ctx.budget.settings), ctx.seed, 0.0)


class OddTask(LinearTask):
    def __init__(self, metric: object, *args: object):
        super().__init__(*args)  # type: ignore[arg-type]
        self.metric = metric

    def evaluate(self, final: bool = True) -> Evaluation:
        return Evaluation({"rate_error": self.metric})  # type: ignore[dict-item]


class OddSuite(LinearSuite):
    def __init__(self, name: str):
        self.name = name

    def build_task(self, ctx: CellContext) -> AbstractTask:
        return OddTask(ODD_METRICS[self.name], ctx.backend, dict(ctx.budget.settings),
                       ctx.seed, 0.0)

    def supports(self, backend) -> Support:  # type: ignore[override]
        return Support.yes()


@bench.hookimpl
def bench_register_backends(register):
    register(RaisingSupportBackend("numpy-supports-raises"))


@bench.hookimpl
def bench_register_suites(register):
    register(OrphanSuite())
    register(SpawnHangSuite())
    for name in ODD_METRICS:
        register(OddSuite(name))
