"""``torch-adjoint``: torchdiffeq ``odeint_adjoint`` (dopri5), gradients by the continuous adjoint.

The forward solve keeps no graph; the backward pass solves the adjoint ODE backwards in time,
re-evaluating the dynamics (its NFE are ``nfe_backward``). Claimed memory: O(1) in the number of
steps (Chen et al. 2018) — measured by ``bench memory``, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchdiffeqBackend

import bench
from bench.core.interfaces import AbstractBackend


class TorchAdjointBackend(TorchdiffeqBackend):
    name = "torch-adjoint"
    gradient_method = "adjoint"
    adjoint = True
    memory_claim = "O(1)"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        clamp = ", last step clamped to t1" if self.last_step == "clamp" else ""
        norm = ", seminorm reverse solve" if self.adjoint_norm == "seminorm" else ""
        self.description = (f"torchdiffeq odeint_adjoint, {self.solver} rtol={self.rtol:g} "
                            f"atol={self.atol:g}{clamp}{norm}; gradients by the continuous adjoint")


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(TorchAdjointBackend())
