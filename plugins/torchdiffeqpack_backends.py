"""``mali`` and ``aca``: TorchDiffEqPack's reverse-accurate gradient methods (Zhuang et al.),
through the same contract a third-party backend uses (plugin module: importing it imports
neither torch nor TorchDiffEqPack; without them the cells are ``unsupported`` with the install
hint).

- ``mali`` (MALI, ICLR 2021: ``odesolve_adjoint_sym12``): the asynchronous leapfrog integrator
  (ALF, method ``sym12async``), algebraically reversible: the backward pass reconstructs each
  step's input from its output (one inverse evaluation) and backpropagates through that step
  alone, so only the end state is kept: memory O(1) in the number of steps. Adaptive (``rtol``,
  ``atol``), or ``fixed_steps=N`` equal steps (``fixedstep_sym12async``). ALF is a second-order
  method with a first-order error estimate, so it needs many more steps than dopri5 at the same
  tolerance (about 9x the NFE at 1e-5, shared/MEASUREMENT.md).
- ``aca`` (ACA, ICML 2020: ``odesolve_adjoint``): the adaptive checkpoint adjoint: the forward
  solve keeps one state per accepted step (no graph); the backward pass recomputes each step from
  its saved state with its graph and backpropagates through it: memory O(steps) in states only,
  gradients as accurate as backpropagation through the solver. Adaptive solvers only (dopri5,
  bosh3 as TorchDiffEqPack's ``rk23``, heun as its ``rk12``): its fixed-step ones fail in the
  backward pass (``unsupported``, with the reason). TorchDiffEqPack's dopri5 evaluates all 7
  stages a step (no first-same-as-last) and recomputes each accepted step once more after its
  error check, so its NFE per step is about twice torchdiffeq's.

Both count NFE by calling the dynamics through the block's counter (TorchDiffEqPack exposes no
counts); both end every solve on its end time (end-point mode); TorchDiffEqPack 1.0.1 imports
matplotlib (and numpy) without declaring them, which the ``mali`` extra declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchBackend, positive_int

import bench
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend, Support, Tolerances, effective_tolerances
from bench.core.options import OptionSpec, positive
from bench.core.solvers import SOLVER_PARAMETER, TOLERANCE_PARAMETERS

INSTALL_HINT = ("pip install torch==2.13.0 TorchDiffEqPack==1.0.1 matplotlib (or pip install "
                "'neural-ode-bench[mali]'; TorchDiffEqPack imports matplotlib without declaring "
                "it)")
#: The vocabulary's adaptive solvers and TorchDiffEqPack's names for them (ACA).
ACA_METHODS = {"dopri5": "dopri5", "bosh3": "rk23", "heun": "rk12"}
ACA_FIXED_STEP_REASON = (
    "TorchDiffEqPack 1.0.1's odesolve_adjoint (ACA) fails in the backward pass with its "
    "fixed-step solvers (euler, rk2, rk4: a fixed-grid step returns no error estimate and the "
    "backward pass calls list() on it: TypeError); use an adaptive solver (dopri5, bosh3, heun)")

FIRST_STEP = OptionSpec("first_step", float, None, "initial step size (none: TorchDiffEqPack's "
                        "initial-step heuristic, two evaluations)", validator=positive,
                        nullable=True, valid="a positive number")
FIXED_STEPS = OptionSpec("fixed_steps", int, None, "equal steps over the solve's interval "
                         "(none: adaptive)", validator=positive, nullable=True,
                         valid="a positive integer")


class TdePackBackend(TorchBackend):
    """The TorchDiffEqPack base: what ``mali`` and ``aca`` share (tolerances, first step,
    availability); ``kind`` picks the function."""

    required_modules = ("torch", "TorchDiffEqPack", "matplotlib")
    install_hint = INSTALL_HINT
    kind: str
    #: Run by name only (``--backends all`` leaves it out): an optional library's backend,
    #: slow on the suites' time-dependent dynamics, kept out of the main job and its tables.
    in_all = False

    def _settings(self, rtol: float, atol: float, first_step: float | None,
                  fixed_steps: int | None) -> None:
        if not (rtol > 0 and atol > 0):
            raise BenchError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        if first_step is not None and not first_step > 0:
            raise BenchError(f"first_step must be positive or None, got {first_step}")
        self.rtol, self.atol, self.first_step = float(rtol), float(atol), first_step
        self.fixed_steps = None if fixed_steps is None else positive_int(fixed_steps,
                                                                         "fixed_steps")

    def _block(self, make_dynamics: Callable[[bool], Any], t0: float, t1: float, method: str,
               fixed_steps: int | None, tolerances: Tolerances | None) -> Any:
        from bench.frameworks.torch._library_blocks import TdePackBlock

        tol = effective_tolerances(self, tolerances) if fixed_steps is None else None
        return TdePackBlock(make_dynamics(True), t0, t1, kind=self.kind, method=method,
                            rtol=tol.rtol if tol else None, atol=tol.atol if tol else None,
                            first_step=self.first_step, fixed_steps=fixed_steps)


class MaliBackend(TdePackBackend):
    """MALI: TorchDiffEqPack's ``odesolve_adjoint_sym12`` (ALF, adaptive or fixed steps)."""

    name = "mali"
    gradient_method = "reversible"
    memory_claim = "O(1)"
    kind = "mali"
    fixed_step_solver = "alf (fixed steps)"
    parameters = (*TOLERANCE_PARAMETERS, FIRST_STEP, FIXED_STEPS)

    def __init__(self, rtol: float = 1e-3, atol: float = 1e-3, first_step: float | None = None,
                 fixed_steps: int | None = None):
        self._settings(rtol, atol, first_step, fixed_steps)
        self.adaptive = self.fixed_steps is None
        self.solver = "alf" if self.adaptive else "alf (fixed steps)"
        steps = (f"rtol={self.rtol:g} atol={self.atol:g}" if self.adaptive else
                 f"{self.fixed_steps} fixed steps")
        self.description = (f"MALI (TorchDiffEqPack odesolve_adjoint_sym12): asynchronous "
                            f"leapfrog, {steps}; gradients reconstructed backwards "
                            "(reversible solver, memory flat in steps)")

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """See :meth:`TorchBackend.ode_block`: ``odesolve_adjoint_sym12`` with ``sym12async``
        (adaptive) or, with ``fixed_steps`` (the call's or the backend's), L equal steps of
        ``fixedstep_sym12async`` (one evaluation a step)."""
        steps = self.fixed_steps if fixed_steps is None else positive_int(fixed_steps,
                                                                          "fixed_steps")
        method = "sym12async" if steps is None else "fixedstep_sym12async"
        return self._block(make_dynamics, t0, t1, method, steps, tolerances)


class AcaBackend(TdePackBackend):
    """ACA: TorchDiffEqPack's ``odesolve_adjoint`` (adaptive solvers)."""

    name = "aca"
    gradient_method = "checkpoint-adjoint"
    memory_claim = "O(L)"
    kind = "aca"
    fixed_step_solver = "dopri5 on an equal grid (fixed steps)"
    parameters = (SOLVER_PARAMETER, *TOLERANCE_PARAMETERS, FIRST_STEP)
    parameter_aliases = {"method": "solver"}

    def __init__(self, solver: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3,
                 first_step: float | None = None):
        self._settings(rtol, atol, first_step, None)
        self.solver = solver
        self.adaptive = True
        self.description = (f"ACA (TorchDiffEqPack odesolve_adjoint): {solver} rtol="
                            f"{self.rtol:g} atol={self.atol:g}; adaptive checkpoint adjoint "
                            "(one saved state per step, each step recomputed backwards)")

    def solver_problem(self) -> str | None:
        """Why ACA cannot run the solver (None: it can): fixed-step solvers fail in its backward
        pass; tsit5 and dopri8 are not in TorchDiffEqPack."""
        if self.solver in ACA_METHODS:
            return None
        from bench.core.solvers import SOLVERS

        if not SOLVERS[self.solver].adaptive:
            return ACA_FIXED_STEP_REASON
        return (f"solver {self.solver!r} is not in TorchDiffEqPack 1.0.1 (ACA's adaptive "
                f"methods: {', '.join(ACA_METHODS)})")

    def supports(self, suite: Any) -> Support:
        """A solver ACA cannot run is unsupported, with why (:meth:`solver_problem`)."""
        problem = self.solver_problem()
        return Support.no(problem) if problem else super().supports(suite)

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """See :meth:`TorchBackend.ode_block`: ``odesolve_adjoint`` with the solver's
        TorchDiffEqPack method. ``fixed_steps=L`` (the memory study's depth): L dopri5 steps on
        an equal grid, the forward solve without step control, the backward pass ACA's own
        (TorchDiffEqPack's fixed-step solvers fail there)."""
        problem = self.solver_problem()
        if problem:
            raise BenchError(problem)
        if fixed_steps is not None:
            return self._block(make_dynamics, t0, t1, "dopri5",
                               positive_int(fixed_steps, "fixed_steps"), None)
        return self._block(make_dynamics, t0, t1, ACA_METHODS[self.solver], None, tolerances)


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(MaliBackend())
    register(AcaBackend())
