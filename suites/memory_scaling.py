"""The ``memory-scaling`` suite: one training step of a fixed dynamics network integrated with
exactly L fixed steps, for ``bench memory`` (training memory against depth L).

The network is an MLP ``f(h) = W2 tanh(W1 h + b1) + b2`` on a state of ``batch x width``; every
backend integrates it over [0, 1] with ``fixed_steps=L`` (torch-adjoint / torch-direct: torchdiffeq
rk4; rknet: classical RK4; resnet: L untied blocks; JAX backends: their fixed-step solver). One
warm-up step and one timed step, then (after one unmeasured step) two memory steps, each its own
phase, which also measure the bytes saved for backward; the memory figures are above the
pre-step baseline.
"""

from __future__ import annotations

import numpy as np

import bench
from bench.interfaces import (
    AbstractSuite,
    AbstractTask,
    Budget,
    CellContext,
)
from bench.options import OptionSpec, option_defaults, positive

OPTION_SPECS = (
    OptionSpec("steps", int, 8, validator=positive, valid="a positive integer",
               help="solver steps L (bench memory sets it from --steps)"),
    OptionSpec("width", int, 64, validator=positive, valid="a positive integer",
               help="state width of the MLP dynamics"),
    OptionSpec("batch", int, 1024, validator=positive, valid="a positive integer",
               help="batch size (rows of the state)"),
)
SHAPE_OPTIONS = option_defaults(OPTION_SPECS)


def initial_weights(width: int, seed: int) -> dict[str, np.ndarray]:
    """The dynamics' weights, framework-neutral (torch Linear's default distributions)."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(width)
    return {
        "net.0.weight": rng.uniform(-bound, bound, (width, width)).astype(np.float32),
        "net.0.bias": rng.uniform(-bound, bound, (width,)).astype(np.float32),
        "net.2.weight": rng.uniform(-bound, bound, (width, width)).astype(np.float32),
        "net.2.bias": rng.uniform(-bound, bound, (width,)).astype(np.float32),
    }


def initial_state(batch: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 10_000).standard_normal((batch, width)).astype(np.float32)


class MemoryScalingSuite(AbstractSuite):
    name = "memory-scaling"
    description = "one training step of an MLP ODE with exactly L fixed steps (bench memory)"
    metric_name = "loss"
    metric_direction = "lower"
    frameworks = ("torch", "jax")
    budgets = {"measure": Budget("measure", "1 warm-up step and 1 timed step, then 2 memory steps "
                                            "(each its own phase)", {"steps": 2})}
    option_specs = OPTION_SPECS
    options = SHAPE_OPTIONS

    def build_task(self, ctx: CellContext) -> AbstractTask:
        if ctx.backend.framework == "torch":
            from bench.suites.memory_scaling_torch import TorchMemoryTask

            return TorchMemoryTask(ctx)
        if ctx.backend.framework == "jax":
            from bench.suites.memory_scaling_jax import JaxMemoryTask

            return JaxMemoryTask(ctx)
        raise bench.BenchError(f"no {ctx.backend.framework} model in suite {self.name!r}")


@bench.hookimpl
def bench_register_suites(register):
    register(MemoryScalingSuite())
