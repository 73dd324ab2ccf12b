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

from collections.abc import Callable

import bench
from bench.core.interfaces import (
    AbstractSuite,
    Budget,
)
from bench.core.options import OptionSpec, option_defaults, positive

OPTION_SPECS = (
    OptionSpec("steps", int, 8, validator=positive, valid="a positive integer",
               help="solver steps L (bench memory sets it from --steps)"),
    OptionSpec("width", int, 64, validator=positive, valid="a positive integer",
               help="state width of the MLP dynamics"),
    OptionSpec("batch", int, 1024, validator=positive, valid="a positive integer",
               help="batch size (rows of the state)"),
    OptionSpec("solve", str, "fixed", choices=("fixed", "adaptive"),
               help="fixed: exactly `steps` fixed steps; adaptive: each backend's own solver "
                    "and tolerances (bench gradients' default)"),
)
SHAPE_OPTIONS = option_defaults(OPTION_SPECS)


class MemoryScalingSuite(AbstractSuite):
    name = "memory-scaling"
    description = "one training step of an MLP ODE with exactly L fixed steps (bench memory)"
    metric_name = "loss"
    metric_direction = "lower"
    tasks = {"torch": "bench.suites.memory_scaling_torch:TorchMemoryTask",
             "jax": "bench.suites.memory_scaling_jax:JaxMemoryTask"}
    budgets = {"measure": Budget("measure", "1 warm-up step and 1 timed step, then 2 memory steps "
                                            "(each its own phase)", {"steps": 2})}
    option_specs = OPTION_SPECS
    options = SHAPE_OPTIONS
    #: Options that change how a cell solves, not the problem: one reference gradient for all.
    solve_options = ("steps", "solve")
    #: ``bench gradients`` compares tolerances: each backend solves adaptively there.
    gradient_study_options = {"solve": "adaptive"}


@bench.hookimpl
def bench_register_suites(register: Callable[[AbstractSuite], None]) -> None:
    register(MemoryScalingSuite())
