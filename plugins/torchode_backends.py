"""``torchode`` and ``torchode-backsolve``: torchode's solvers (Lienen & Günnemann 2022) through
the same contract a third-party backend uses (plugin module: importing it imports neither torch
nor torchode; without them the cells are ``unsupported`` with the install hint).

- ``torchode``: ``AutoDiffAdjoint``, gradients by backpropagation through the solver's operations
  (memory O(L), as torch-direct);
- ``torchode-backsolve``: ``BacksolveAdjoint`` (the continuous adjoint, a reverse solve per
  sample, its VJPs under ``torch.func.vmap``; memory O(1)), or with ``adjoint=joint``
  ``JointBacksolveAdjoint`` (the batch as one sample in both solves; the choice for dynamics
  that call ``torch.autograd.grad`` themselves, such as the CNF's trace, which ``vmap`` cannot
  run).

Parameters: the shared ``solver`` (dopri5, tsit5, heun; euler with ``fixed_steps``: torchode's
methods; the others are ``unsupported`` with the reason), ``rtol``/``atol`` (torchode's
``IntegralController``), ``first_step`` (none: torchode's initial-step heuristic),
``fixed_steps`` (``FixedStepController``), and ``step_control``: ``per-sample`` (torchode's own:
each sample of the batch its own step size, error norm over the sample's features) or ``joint``
(the batch reshaped into one sample: one step size and one error norm over the whole state, as
torchdiffeq). NFE: every call torchode makes of the dynamics (the block's counter, one per batched
evaluation); steps: the batch loop's iterations (see
:class:`bench.frameworks.torch._library_blocks.TorchodeBlock`). The last step is clamped to end on
t1 (torchode never steps past it), as diffrax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchBackend, positive_int

import bench
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend, Support, Tolerances, effective_tolerances
from bench.core.options import OptionSpec, positive
from bench.core.solvers import SOLVERS, fixed_steps_problem, ode_parameters

INSTALL_HINT = ("pip install torch==2.13.0 torchode==1.0.1 (or pip install "
                "'neural-ode-bench[torchode]')")
#: The vocabulary's solvers that torchode 1.0.1 has (its Dopri5, Tsit5, Heun, Euler).
TORCHODE_SOLVERS = ("dopri5", "tsit5", "heun", "euler")
STEP_CONTROLS = ("per-sample", "joint")
ADJOINTS = ("backsolve", "joint")


def torchode_parameters(backsolve: bool) -> tuple[OptionSpec, ...]:
    """The parameters of a torchode backend (``backsolve``: with the ``adjoint`` choice)."""
    first_step = OptionSpec("first_step", float, None, "initial step size (none: torchode's "
                            "heuristic)", validator=positive, nullable=True,
                            valid="a positive number")
    step_control = OptionSpec(
        "step_control", str, None, "per-sample: each sample of the batch its own step size "
        "(torchode's own); joint: the batch as one sample, one step size (as torchdiffeq); "
        "none: per-sample, joint under adjoint=joint", choices=STEP_CONTROLS, nullable=True)
    extra: tuple[OptionSpec, ...] = (step_control,)
    if backsolve:
        extra += (OptionSpec("adjoint", str, "backsolve", "backsolve: BacksolveAdjoint (a "
                             "reverse solve per sample, VJPs under torch.func.vmap); joint: "
                             "JointBacksolveAdjoint (the batch as one sample)",
                             choices=ADJOINTS),)
    return ode_parameters(first_step, extra=extra)


class TorchodeBackend(TorchBackend):
    """torchode's ``AutoDiffAdjoint`` (``gradient = "backprop"``); subclasses set another
    gradient. Its constructor's keywords are its parameters (:func:`torchode_parameters`)."""

    name = "torchode"
    gradient_method = "backprop"
    memory_claim = "O(L)"
    required_modules = ("torch", "torchode")
    install_hint = INSTALL_HINT
    parameters = torchode_parameters(backsolve=False)
    parameter_aliases = {"method": "solver"}
    fixed_step_solver = "dopri5 (fixed steps)"
    #: torchode's solve: ``backprop``, ``backsolve`` or ``joint``.
    solve_kind = "backprop"
    #: Run by name only (``--backends all`` leaves it out): an optional library's backend,
    #: slow on the suites' time-dependent dynamics, kept out of the main job and its tables.
    in_all = False

    def __init__(self, solver: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3,
                 first_step: float | None = None, fixed_steps: int | None = None,
                 step_control: str | None = None, adjoint: str | None = None):
        if not (rtol > 0 and atol > 0):
            raise BenchError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        problem = fixed_steps_problem(solver, fixed_steps)
        if problem:
            raise BenchError(problem)
        if step_control is not None and step_control not in STEP_CONTROLS:
            raise BenchError(f"step_control must be one of {', '.join(STEP_CONTROLS)}, not "
                             f"{step_control!r}")
        kind = self.solve_kind
        if adjoint is not None:
            if kind == "backprop":
                raise BenchError("adjoint applies to torchode-backsolve only (torchode "
                                 "backpropagates through the solver)")
            if adjoint not in ADJOINTS:
                raise BenchError(f"adjoint must be one of {', '.join(ADJOINTS)}, not "
                                 f"{adjoint!r}")
            kind = adjoint
        if kind == "joint":
            if step_control == "per-sample":
                raise BenchError("adjoint=joint (JointBacksolveAdjoint) solves the batch as one "
                                 "sample: step_control=per-sample is not possible with it (use "
                                 "adjoint=backsolve)")
            step_control = "joint"
        self.solver = solver
        self.rtol, self.atol, self.first_step = float(rtol), float(atol), first_step
        self.fixed_steps = None if fixed_steps is None else positive_int(fixed_steps,
                                                                         "fixed_steps")
        self.step_control = step_control or "per-sample"
        self.adjoint = adjoint if adjoint is not None else (
            None if self.solve_kind == "backprop" else "backsolve")
        self.solve_kind = kind
        self.adaptive = SOLVERS[solver].adaptive
        self.description = self._describe()

    def _describe(self) -> str:
        what = {"backprop": "AutoDiffAdjoint: backpropagation through the solver",
                "backsolve": "BacksolveAdjoint: per-sample continuous adjoint",
                "joint": "JointBacksolveAdjoint: continuous adjoint of the whole batch"}
        steps = (f"{self.fixed_steps} fixed steps" if not self.adaptive else
                 f"rtol={self.rtol:g} atol={self.atol:g}, {self.step_control} step control")
        return f"torchode {self.solver}, {steps}; {what[self.solve_kind]}"

    def supports(self, suite: Any) -> Support:
        """A solver of the vocabulary that torchode lacks is unsupported, with why."""
        if self.solver not in TORCHODE_SOLVERS:
            return Support.no(f"solver {self.solver!r} is not in torchode 1.0.1 (its methods: "
                              f"{', '.join(TORCHODE_SOLVERS)})")
        return super().supports(suite)

    def configuration(self) -> dict[str, Any]:
        config = super().configuration()
        config["step_control"] = self.step_control
        return config

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """See :meth:`TorchBackend.ode_block`: torchode's solve of the dynamics (its
        ``solve_kind``); ``fixed_steps=L`` takes L equal Dopri5 steps (``FixedStepController``:
        6 evaluations a step); a fixed-step ``solver`` its own ``fixed_steps``."""
        from bench.frameworks.torch._library_blocks import TorchodeBlock

        if self.solver not in TORCHODE_SOLVERS:
            raise BenchError(f"solver {self.solver!r} is not in torchode 1.0.1")
        method, steps = self.solver, None
        if fixed_steps is not None:
            method, steps = "dopri5", positive_int(fixed_steps, "fixed_steps")
        elif not self.adaptive:
            steps = self.fixed_steps
        tol = effective_tolerances(self, tolerances) if steps is None else None
        return TorchodeBlock(
            make_dynamics(True), t0, t1, method=method, gradient=self.solve_kind,
            step_control=self.step_control, rtol=tol.rtol if tol else None,
            atol=tol.atol if tol else None, fixed_steps=steps, first_step=self.first_step)


class TorchodeBacksolveBackend(TorchodeBackend):
    """torchode's ``BacksolveAdjoint`` (``adjoint=joint``: ``JointBacksolveAdjoint``)."""

    name = "torchode-backsolve"
    gradient_method = "adjoint"
    memory_claim = "O(1)"
    parameters = torchode_parameters(backsolve=True)
    solve_kind = "backsolve"

    def configuration(self) -> dict[str, Any]:
        config = super().configuration()
        config["adjoint"] = self.adjoint
        return config


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(TorchodeBackend())
    register(TorchodeBacksolveBackend())
