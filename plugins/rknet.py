"""``rknet``: the RK-Net of Chen et al. 2018 — the ODE-Net's architecture integrated with a
fixed-step classical RK4 and differentiated by backpropagation through the steps.

Default 6 steps = 24 evaluations of the dynamics per forward pass: close to the ~26 that dopri5 at
tolerance 1e-3 makes on the MNIST ODE-Net at initialisation (../shared/MEASUREMENT.md), so RK-Net and
ODE-Net spend similar compute, and 6 echoes the 6 blocks of the paper's ResNet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bench
from plugins.torch_common import TorchBackend


class RKNetBackend(TorchBackend):
    name = "rknet"
    gradient_method = "backprop"
    solver = "rk4"
    memory_claim = "O(L)"
    required_modules = ("torch",)

    def __init__(self, steps: int = 6):
        self.steps = int(steps)
        self.description = (f"classical RK4, {self.steps} fixed steps ({4 * self.steps} "
                            "evaluations), backpropagation through the steps")

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None, rtol: float | None = None,
                  atol: float | None = None) -> Any:
        from plugins.torch_blocks import RK4Block

        return RK4Block(make_dynamics(True), t0, t1, fixed_steps or self.steps)


@bench.hookimpl
def bench_register_backends(register):
    register(RKNetBackend())
