"""``example-bosh3``: a complete third-party backend (runs on every built-in suite).

torchdiffeq's Bogacki-Shampine 3(2) adaptive solver (``bosh3``), gradients by backpropagation
through the solver. Everything it needs is the public framework layer: the torchdiffeq backend
base (:class:`bench.frameworks.torch.TorchdiffeqBackend`) builds the counted ODE blocks that every
torch suite asks for (``ode_block(make_dynamics, t0, t1, fixed_steps=..., tolerances=...)``), and
the registration hook below is found through the package's ``bench`` entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchdiffeqBackend

import bench
from bench.core.interfaces import AbstractBackend


class Bosh3Backend(TorchdiffeqBackend):
    name = "example-bosh3"  # unique across plugins
    gradient_method = "backprop"  # shown in every table
    adjoint = False  # torchdiffeq odeint (True: odeint_adjoint)
    memory_claim = "O(L)"  # what `bench memory` compares its measured fit with

    def __init__(self, **kwargs: Any):
        super().__init__(method="bosh3", **kwargs)
        self.description = (f"torchdiffeq odeint, bosh3 rtol={self.rtol:g} atol={self.atol:g}; "
                            "gradients by backpropagation (example third-party plugin)")


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(Bosh3Backend())
