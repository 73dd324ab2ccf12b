"""Fake plugins for fault tests: a backend that crashes its process, one whose error is long,
and a suite whose rows report the cell process's thread environment (in ``notes``)."""

from __future__ import annotations

import os
import signal

from fake_plugins import LinearSuite, LinearTask, NumpyEulerBackend

import bench
from bench.core.interfaces import AbstractTask, CellContext, Evaluation

LONG_ERROR = ("the data files are missing: " + "looked in many places, " * 8
              + "pass --data-dir DIR or set BENCH_FAKE_DIR")


class FaultBackend(NumpyEulerBackend):
    def integrate(self, a: float, y0: float, t1: float) -> tuple[float, float, int]:
        if self.behaviour == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.behaviour == "abort":
            os.abort()
        if self.behaviour == "long-error":
            raise FileNotFoundError(LONG_ERROR)
        return super().integrate(a, y0, t1)


class EnvTask(LinearTask):
    """Its row's notes: the thread variables, the GPU and the cores the cell ran on."""

    def evaluate(self, final: bool = True) -> Evaluation:
        keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")
        cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        return Evaluation({"rate_error": 0.0},
                          notes="|".join([*(f"{k}={os.environ.get(k, '')}" for k in keys),
                                          f"CPUS={cpus}"]))


class EnvSuite(LinearSuite):
    name = "env"

    def build_task(self, ctx: CellContext) -> AbstractTask:
        return EnvTask(ctx.backend, dict(ctx.budget.settings), ctx.seed, 0.0)


@bench.hookimpl
def bench_register_backends(register):
    for behaviour in ("segv", "abort", "long-error"):
        register(FaultBackend(f"numpy-{behaviour}", behaviour=behaviour))
    register(FaultBackend("numpy-plain"))


@bench.hookimpl
def bench_register_suites(register):
    register(EnvSuite())
