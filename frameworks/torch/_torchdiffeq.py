"""The torchdiffeq backend base (public: torch-adjoint, torch-direct and third-party backends
subclass it with another method, gradient or tolerances)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch._backend import TorchBackend, positive_int

from bench.errors import BenchError
from bench.interfaces import Tolerances


class UniformGrid:
    """torchdiffeq ``grid_constructor``: exactly ``steps`` equal steps from the first to the last
    output time. (torchdiffeq's own ``step_size`` grid takes ``ceil((t1 - t0) / h + 1)`` points,
    computed in the state's dtype: in float32 L = 61, 109, ... give one extra, tiny step.)"""

    def __init__(self, steps: int):
        self.steps = int(steps)

    def __call__(self, func: Any, y0: Any, t: Any) -> Any:
        import torch

        fraction = torch.arange(self.steps + 1, dtype=t.dtype, device=t.device) / self.steps
        grid = t[0] + (t[-1] - t[0]) * fraction  # no .item(): no device synchronisation
        grid[-1] = t[-1]
        return grid


class TorchdiffeqBackend(TorchBackend):
    """torchdiffeq's solvers; ``adjoint`` picks odeint_adjoint over odeint.

    :param method: torchdiffeq method of the adaptive solve (default dopri5, as in the paper).
    :param rtol: relative tolerance (default 1e-3: the paper's value for classification).
    :param atol: absolute tolerance (default 1e-3).
    :param first_step: initial step size (``options=dict(first_step=...)``); None lets torchdiffeq
        choose it, at the cost of one extra evaluation (NFE = 2 + 6 x steps for dopri5, else 1 +).
    """

    #: odeint_adjoint (True) or odeint (False).
    adjoint: bool
    rtol: float
    atol: float

    #: What ode_block(fixed_steps=L) integrates with (see its docstring).
    fixed_step_solver = "rk4-3/8 (fixed steps)"

    def __init__(self, method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3,
                 first_step: float | None = None):
        if not (rtol > 0 and atol > 0):
            raise BenchError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        if first_step is not None and not first_step > 0:
            raise BenchError(f"first_step must be positive or None, got {first_step}")
        self.solver = method
        self.rtol, self.atol, self.first_step = float(rtol), float(atol), first_step

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """See :meth:`TorchBackend.ode_block`. With ``fixed_steps=L`` the solve is torchdiffeq's
        ``rk4`` with L equal steps of (t1 - t0) / L; torchdiffeq's ``rk4`` is the 3/8-rule variant
        of fourth-order Runge-Kutta (4 evaluations per step), not the classical tableau that rknet
        uses. Output ``times`` between grid points are then torchdiffeq's linear interpolation."""
        from bench.frameworks.torch._blocks import TorchdiffeqBlock

        if fixed_steps is not None:
            fixed_steps = positive_int(fixed_steps, "fixed_steps")
            # "step_size" makes the block wrap f without the adaptive step callbacks (torchdiffeq
            # warns when a fixed-grid solver gets them) ...
            options: dict[str, Any] = {"step_size": abs(t1 - t0) / fixed_steps}
            method = "rk4"
        else:
            options = {} if self.first_step is None else {"first_step": self.first_step}
            method = self.solver
        tol = Tolerances(self.rtol, self.atol) if tolerances is None else tolerances
        block = TorchdiffeqBlock(
            make_dynamics(True), t0, t1, adjoint=self.adjoint, method=method,
            rtol=tol.rtol, atol=tol.atol, options=options,
            adjoint_rtol=tol.adjoint_rtol, adjoint_atol=tol.adjoint_atol)
        if fixed_steps is not None:
            # ... and the solve then uses an exact grid of L steps instead (see UniformGrid).
            block.options = {"grid_constructor": UniformGrid(fixed_steps)}
        return block
