"""``torch-direct``: torchdiffeq ``odeint`` (dopri5), gradients by backpropagation through every
operation of the solver (the graph of all steps is kept: memory O(steps x stages))."""

from __future__ import annotations

from typing import Any

from bench.plugins.torch_adjoint import TorchdiffeqBackend

import bench


class TorchDirectBackend(TorchdiffeqBackend):
    name = "torch-direct"
    gradient_method = "backprop"
    adjoint = False
    memory_claim = "O(L)"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.description = (f"torchdiffeq odeint, {self.solver} rtol={self.rtol:g} "
                            f"atol={self.atol:g}; gradients by backpropagation through the solver")


@bench.hookimpl
def bench_register_backends(register):
    register(TorchDirectBackend())
