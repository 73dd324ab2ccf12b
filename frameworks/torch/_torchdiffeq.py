"""The torchdiffeq backend base (public: torch-adjoint, torch-direct and third-party backends
subclass it with another method, gradient or tolerances)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch._backend import TorchBackend, positive_int

from bench.core.errors import BenchError
from bench.core.interfaces import Support, Tolerances, effective_tolerances
from bench.core.options import OptionSpec, positive
from bench.core.solvers import (
    ADJOINT_NORMS,
    SOLVERS,
    fixed_steps_problem,
    framework_method,
    ode_parameters,
)


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


#: torchdiffeq's rules for an adaptive solve's last step (the ``last_step`` parameter).
LAST_STEP_RULES = ("interpolate", "clamp")

LAST_STEP_PARAMETER = OptionSpec(
    "last_step", str, "interpolate", "an adaptive solve's last step: interpolate (torchdiffeq's "
    "default: step past t1 and evaluate the dense interpolant there) or clamp (shorten the step "
    "that would pass an output time so that it lands on it, as diffrax does: options "
    "step_t=<the output times>, and adjoint_options step_t=... for the reverse solve)",
    choices=LAST_STEP_RULES)


def torchdiffeq_parameters(adjoint: bool) -> tuple[OptionSpec, ...]:
    """The parameters of a torchdiffeq backend (with the reverse solve's for the adjoint)."""
    first_step = OptionSpec("first_step", float, None, "initial step size (none: torchdiffeq's "
                            "heuristic, one extra evaluation)", validator=positive,
                            nullable=True, valid="a positive number")
    return ode_parameters(first_step, adjoint=adjoint, extra=(LAST_STEP_PARAMETER,))


class TorchdiffeqBackend(TorchBackend):
    """torchdiffeq's solvers; ``adjoint`` picks odeint_adjoint over odeint. Its parameters
    (:func:`torchdiffeq_parameters`) are its constructor's keywords:

    :param solver: the solver, one of :data:`bench.core.solvers.SOLVER_NAMES` (default dopri5, as in
        the paper); one torchdiffeq lacks (tsit5) makes its cells ``unsupported``.
    :param rtol: relative tolerance (default 1e-3: the paper's value for classification).
    :param atol: absolute tolerance (default 1e-3).
    :param first_step: initial step size (``options=dict(first_step=...)``); None lets torchdiffeq
        choose it, at the cost of one extra evaluation (NFE = 2 + 6 x steps for dopri5, else 1 +).
    :param fixed_steps: the number of equal steps of a fixed-step solver.
    :param adjoint_rtol: adjoint_atol: the reverse solve's tolerances (None: rtol, atol).
    :param adjoint_norm: ``default`` or ``seminorm`` (``adjoint_options=dict(norm="seminorm")``).
    :param last_step: ``interpolate`` (torchdiffeq's default: the adaptive solve steps past each
        output time and evaluates its interpolant there) or ``clamp`` (the step that would pass an
        output time is shortened to land on it: torchdiffeq's ``step_t`` option set to the output
        times, in the forward and, for the adjoint, the reverse solve). Fixed-step solves land on
        their grid already: ``clamp`` with one is refused.
    :param method: torchdiffeq's name for ``solver`` (kept for subclasses that pass it).
    """

    #: odeint_adjoint (True) or odeint (False).
    adjoint: bool
    rtol: float
    atol: float
    parameter_aliases = {"method": "solver"}

    #: What ode_block(fixed_steps=L) integrates with (see its docstring).
    fixed_step_solver = "rk4-3/8 (fixed steps)"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "parameters" not in cls.__dict__ and isinstance(cls.__dict__.get("adjoint"), bool):
            cls.parameters = torchdiffeq_parameters(cls.__dict__["adjoint"])

    def __init__(self, solver: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3,
                 first_step: float | None = None, fixed_steps: int | None = None,
                 adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
                 adjoint_norm: str = "default", last_step: str = "interpolate", *,
                 method: str | None = None):
        solver = method if method is not None else solver
        if not (rtol > 0 and atol > 0):
            raise BenchError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        if first_step is not None and not first_step > 0:
            raise BenchError(f"first_step must be positive or None, got {first_step}")
        # (a third-party subclass may pass any torchdiffeq method: only the vocabulary's are
        # checked here)
        problem = fixed_steps_problem(solver, fixed_steps) if solver in SOLVERS else None
        if problem:
            raise BenchError(problem)
        if adjoint_norm == "seminorm" and solver in SOLVERS and not SOLVERS[solver].adaptive:
            raise BenchError(f"adjoint_norm=seminorm controls adaptive steps: solver {solver!r} "
                             "takes fixed steps")
        if adjoint_norm not in ADJOINT_NORMS:
            raise BenchError(f"adjoint_norm must be one of {', '.join(ADJOINT_NORMS)}, not "
                             f"{adjoint_norm!r}")
        if last_step not in LAST_STEP_RULES:
            raise BenchError(f"last_step must be one of {', '.join(LAST_STEP_RULES)}, not "
                             f"{last_step!r}")
        if last_step == "clamp" and solver in SOLVERS and not SOLVERS[solver].adaptive:
            raise BenchError(f"last_step=clamp shortens an adaptive solve's last step: solver "
                             f"{solver!r} takes fixed steps, which end on t1 already")
        if not self.adjoint and (adjoint_rtol, adjoint_atol, adjoint_norm) != (
                None, None, "default"):
            raise BenchError("adjoint_rtol, adjoint_atol and adjoint_norm apply to the adjoint "
                             "only (torch-adjoint)")
        self.solver = solver
        self.rtol, self.atol, self.first_step = float(rtol), float(atol), first_step
        self.fixed_steps = None if fixed_steps is None else positive_int(fixed_steps,
                                                                         "fixed_steps")
        self.adjoint_rtol, self.adjoint_atol = adjoint_rtol, adjoint_atol
        self.adjoint_norm = adjoint_norm if self.adjoint else None
        self.last_step = last_step
        info = SOLVERS.get(solver)
        self.adaptive = info.adaptive if info is not None else None

    def supports(self, suite: Any) -> Support:
        """A solver of the vocabulary that torchdiffeq lacks (tsit5) is unsupported, with why."""
        info = SOLVERS.get(self.solver)
        if info is not None and info.torchdiffeq is None:
            return Support.no(f"solver {self.solver!r} is not in torchdiffeq: {info.missing}")
        return super().supports(suite)

    def torchdiffeq_method(self) -> str:
        """The torchdiffeq name of the solver (dopri5 -> dopri5, heun -> adaptive_heun, ...)."""
        info = SOLVERS.get(self.solver)
        return self.solver if info is None else framework_method(self.solver, "torchdiffeq")

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """See :meth:`TorchBackend.ode_block`. With ``fixed_steps=L`` the solve is torchdiffeq's
        ``rk4`` with L equal steps of (t1 - t0) / L; torchdiffeq's ``rk4`` is the 3/8-rule variant
        of fourth-order Runge-Kutta (4 evaluations per step), not the classical tableau that rknet
        uses. Output ``times`` between grid points are then torchdiffeq's linear interpolation.
        A fixed-step solver of the backend's own (``solver=euler,fixed_steps=N``) takes the same
        exact grid of N steps. Tolerances: :func:`bench.core.interfaces.effective_tolerances`."""
        from bench.frameworks.torch._blocks import TorchdiffeqBlock

        grid_steps = None
        method = self.torchdiffeq_method()
        if fixed_steps is not None:
            grid_steps = positive_int(fixed_steps, "fixed_steps")
            method = "rk4"
        elif self.adaptive is False:
            grid_steps = self.fixed_steps
        if grid_steps is not None:
            # "step_size" makes the block wrap f without the adaptive step callbacks (torchdiffeq
            # warns when a fixed-grid solver gets them) ...
            options: dict[str, Any] = {"step_size": abs(t1 - t0) / grid_steps}
            tol = Tolerances(self.rtol, self.atol)  # unused by a fixed-grid solver
        else:
            options = {} if self.first_step is None else {"first_step": self.first_step}
            tol = effective_tolerances(self, tolerances)
        adjoint_options = ({"norm": "seminorm"} if grid_steps is None and self.adjoint
                           and self.adjoint_norm == "seminorm" else None)
        block = TorchdiffeqBlock(
            make_dynamics(True), t0, t1, adjoint=self.adjoint, method=method,
            rtol=tol.rtol, atol=tol.atol, options=options,
            adjoint_rtol=tol.adjoint_rtol, adjoint_atol=tol.adjoint_atol,
            adjoint_options=adjoint_options,
            clamp_last_step=grid_steps is None and self.last_step == "clamp")
        if grid_steps is not None:
            # ... and the solve then uses an exact grid of L steps instead (see UniformGrid).
            block.options = {"grid_constructor": UniformGrid(grid_steps)}
        return block
