"""``example-heun``: a complete torch backend that does not derive from torchdiffeq's base.

Heun's method (the explicit trapezoidal rule: two evaluations of the dynamics a step) with a
fixed number of equal steps, differentiated by backpropagation through the steps. The solver and
its counted dynamics are in :mod:`bench_example_torch_heun._block`; this module, which the
registry imports even where torch is missing, holds the backend and the registration hook and
never imports torch (a missing torch then makes the cells ``unsupported`` with the install hint,
through ``required_modules``).

Walked through in docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchBackend, positive_int

import bench
from bench.core.interfaces import AbstractBackend, Tolerances
from bench.core.options import OptionSpec, positive


class HeunBackend(TorchBackend):
    """Heun's method, ``steps`` fixed steps over the solve's interval, backpropagation."""

    name = "example-heun"  # unique across all plugins; what --backends takes
    gradient_method = "backprop"  # how gradients are computed (a column of every table)
    solver = "heun-fixed"  # the row's solver column
    adaptive = False  # fixed steps: no tolerances apply ...
    rtol = atol = None  # ... and the rows record none
    memory_claim = "O(L)"  # every stage is kept for the backward pass
    required_modules = ("torch",)  # found, never imported, by check_available
    in_all = False  # an example: run by name (a real backend leaves it True)
    parameters = (
        OptionSpec("steps", int, 8, "Heun steps over the solve's interval",
                   validator=positive, valid="a positive integer"),
    )

    def __init__(self, steps: int = 8):
        # the constructor's keywords are the parameters: configure() calls
        # HeunBackend(**values) with the user's values, already converted and checked
        self.steps = positive_int(steps, "example-heun steps")
        self.description = (f"Heun's method, {self.steps} fixed steps ({2 * self.steps} "
                            "evaluations), backpropagation through the steps (example plugin)")

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """``steps`` (or the memory study's ``fixed_steps``) Heun steps over [t0, t1];
        ``tolerances`` do not apply to a fixed step and are ignored."""
        from bench_example_torch_heun._block import HeunBlock  # imports torch

        steps = self.steps if fixed_steps is None else positive_int(fixed_steps, "fixed_steps")
        return HeunBlock(make_dynamics(True), t0, t1, steps)


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(HeunBackend())
