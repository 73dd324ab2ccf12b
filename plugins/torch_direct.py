"""``torch-direct``: torchdiffeq ``odeint`` (dopri5), gradients by backpropagation through every
operation of the solver (the graph of all steps is kept: memory O(steps x stages))."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchdiffeqBackend

import bench
from bench.core.interfaces import AbstractBackend


class TorchDirectBackend(TorchdiffeqBackend):
    name = "torch-direct"
    gradient_method = "backprop"
    adjoint = False
    memory_claim = "O(L)"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        clamp = ", last step clamped to t1" if self.last_step == "clamp" else ""
        self.description = (f"torchdiffeq odeint, {self.solver} rtol={self.rtol:g} "
                            f"atol={self.atol:g}{clamp}; gradients by backpropagation through "
                            "the solver")


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(TorchDirectBackend())
