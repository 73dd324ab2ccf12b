"""``rknet``: the RK-Net of Chen et al. 2018 — the ODE-Net's architecture integrated with a
fixed-step classical RK4 and differentiated by backpropagation through the steps.

Classical RK4: Butcher tableau c = (0, 1/2, 1/2, 1), weights (1/6, 1/3, 1/3, 1/6), exactly 4
evaluations of the dynamics per step (torchdiffeq's ``rk4`` is the 3/8 rule instead).

Default 6 steps = 24 evaluations of the dynamics per forward pass: close to the ~26 that dopri5 at
tolerance 1e-3 makes on the MNIST ODE-Net at initialisation (shared/MEASUREMENT.md), so RK-Net and
ODE-Net spend similar compute; 6 also echoes the 6 blocks of the paper's ResNet. The paper does not
state its RK-Net's step count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchBackend, positive_int

import bench
from bench.core.interfaces import AbstractBackend, Tolerances
from bench.core.options import OptionSpec, positive


class RKNetBackend(TorchBackend):
    name = "rknet"
    gradient_method = "backprop"
    solver = "rk4"
    memory_claim = "O(L)"
    required_modules = ("torch",)
    parameters = (OptionSpec("steps", int, 6, "classical RK4 steps over the solve's interval",
                             validator=positive, valid="a positive integer"),)
    parameter_aliases = {"fixed_steps": "steps"}

    def __init__(self, steps: int = 6):
        self.steps = positive_int(steps, "rknet steps")
        self.description = (f"classical RK4, {self.steps} fixed steps ({4 * self.steps} "
                            "evaluations), backpropagation through the steps")

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """See :meth:`TorchBackend.ode_block`: ``steps`` (or ``fixed_steps``) classical RK4 steps
        over [t0, t1]; tolerances are ignored (fixed step). With output ``times``, each interval
        between them gets ceil(length / step) equal steps, so every output is an RK4 state."""
        from bench.frameworks.torch import RK4Block

        steps = self.steps if fixed_steps is None else positive_int(fixed_steps, "fixed_steps")
        return RK4Block(make_dynamics(True), t0, t1, steps)

    def configuration(self) -> dict[str, Any]:
        return {"steps": self.steps}


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(RKNetBackend())
