"""``torch-adjoint``: torchdiffeq ``odeint_adjoint`` (dopri5), gradients by the continuous adjoint.

The forward solve keeps no graph; the backward pass solves the adjoint ODE backwards in time,
re-evaluating the dynamics (its NFE are ``nfe_backward``). Claimed memory: O(1) in the number of
steps (Chen et al. 2018) — measured by ``bench memory``, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bench
from plugins.torch_common import TorchBackend


class TorchdiffeqBackend(TorchBackend):
    """torchdiffeq's adaptive solvers; ``adjoint`` picks odeint_adjoint over odeint."""

    adjoint: bool

    def __init__(self, method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3,
                 first_step: float | None = None):
        self.solver = method
        self.rtol, self.atol, self.first_step = rtol, atol, first_step

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None, rtol: float | None = None,
                  atol: float | None = None) -> Any:
        from plugins.torch_blocks import TorchdiffeqBlock

        if fixed_steps is not None:
            # torchdiffeq's "rk4" is the 3/8-rule variant of fourth-order Runge-Kutta.
            method, options = "rk4", {"step_size": abs(t1 - t0) / int(fixed_steps)}
        else:
            method = self.solver
            options = {} if self.first_step is None else {"first_step": self.first_step}
        return TorchdiffeqBlock(
            make_dynamics(True), t0, t1, adjoint=self.adjoint, method=method,
            rtol=self.rtol if rtol is None else rtol, atol=self.atol if atol is None else atol,
            options=options)


class TorchAdjointBackend(TorchdiffeqBackend):
    name = "torch-adjoint"
    gradient_method = "adjoint"
    adjoint = True
    memory_claim = "O(1)"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.description = (f"torchdiffeq odeint_adjoint, {self.solver} rtol={self.rtol:g} "
                             f"atol={self.atol:g}; gradients by the continuous adjoint")


@bench.hookimpl
def bench_register_backends(register):
    register(TorchAdjointBackend())
