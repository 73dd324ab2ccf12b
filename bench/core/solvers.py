"""One solver vocabulary across frameworks: the names a backend's ``solver`` parameter takes, and
what each is in torchdiffeq and in diffrax (framework-neutral: names and facts only).

A name a framework lacks maps to None with the reason, and a cell asking for it is recorded as
``unsupported`` with that reason (never silently replaced by another method).
"""

from __future__ import annotations

import dataclasses

from bench.core.errors import BenchError
from bench.core.options import OptionSpec, positive


@dataclasses.dataclass(frozen=True)
class SolverName:
    """One solver of the shared vocabulary.

    ``adaptive``: it has an embedded error estimate and adapts its step (tolerances apply);
    otherwise it takes ``fixed_steps`` equal steps. ``torchdiffeq``/``diffrax``: the method's name
    there (``odeint(method=...)``, a ``diffrax`` class), or None when the framework lacks it, with
    ``missing`` saying so. ``note``: where the two frameworks' versions differ."""

    name: str
    adaptive: bool
    order: int
    torchdiffeq: str | None
    diffrax: str | None
    description: str
    missing: str = ""
    note: str = ""


SOLVERS: dict[str, SolverName] = {s.name: s for s in (
    SolverName("dopri5", True, 5, "dopri5", "Dopri5",
               "Dormand-Prince 5(4), 7 stages, first same as last: 6 evaluations a step"),
    SolverName("tsit5", True, 5, None, "Tsit5",
               "Tsitouras 5(4), 7 stages, first same as last: 6 evaluations a step",
               missing="torchdiffeq has no tsit5 (its methods: dopri5, dopri8, bosh3, "
                       "adaptive_heun, fehlberg2, euler, midpoint, rk4, ...)"),
    SolverName("bosh3", True, 3, "bosh3", "Bosh3",
               "Bogacki-Shampine 3(2), 4 stages, first same as last: 3 evaluations a step"),
    SolverName("dopri8", True, 8, "dopri8", "Dopri8",
               "Dormand-Prince 8(7)",
               note="the two frameworks use different 8th-order Dormand-Prince tableaux (stages, "
                    "error estimate): steps and NFE are not comparable one to one"),
    SolverName("heun", True, 2, "adaptive_heun", "Heun",
               "Heun's method with an embedded Euler error estimate, 2(1)",
               note="torchdiffeq's adaptive_heun reuses its second stage, f(t0 + h, y0 + h k1), "
                    "as the next step's first (1 evaluation a step, in place of f(t1, y1)); "
                    "diffrax's Heun evaluates both stages every step (2 a step): their steps, "
                    "NFE and errors differ"),
    SolverName("midpoint", False, 2, "midpoint", "Midpoint",
               "explicit midpoint, fixed steps (2 evaluations a step)"),
    SolverName("euler", False, 1, "euler", "Euler", "explicit Euler, fixed steps"),
    SolverName("rk4", False, 4, "rk4", "ThreeEighthsRK4",
               "Kutta's 3/8-rule fourth-order Runge-Kutta, fixed steps (4 evaluations a step)",
               note="torchdiffeq's rk4 is the 3/8 rule; diffrax has no RK4, the harness builds "
                    "the same 3/8 tableau (bench.frameworks.jax.rk4_solvers)"),
)}

SOLVER_NAMES = tuple(SOLVERS)


def solver_info(name: str) -> SolverName:
    """The vocabulary entry of ``name``; an unknown name raises naming the valid ones."""
    from bench.core.errors import UnknownNameError

    if name not in SOLVERS:
        raise UnknownNameError("solver", name, SOLVER_NAMES)
    return SOLVERS[name]


def framework_method(name: str, framework: str) -> str:
    """The method name of solver ``name`` in ``framework`` (``"torchdiffeq"``/``"diffrax"``);
    :class:`BenchError` with the reason when the framework lacks it."""
    info = solver_info(name)
    method: str | None = getattr(info, framework)
    if method is None:
        raise BenchError(f"solver {name!r} is not available in {framework}: {info.missing}")
    return method


def fixed_steps_problem(solver: str, fixed_steps: int | None) -> str | None:
    """What is wrong with a solver/fixed-steps pair (None: fine): a fixed-step solver needs
    ``fixed_steps``; an adaptive one takes tolerances instead."""
    info = solver_info(solver)
    if not info.adaptive and fixed_steps is None:
        return (f"solver {solver!r} takes fixed steps: set fixed_steps=N (the number of equal "
                "steps over the solve's interval)")
    return None


# -- the parameters every ODE backend shares (declared once; bench.planning.backend_grid)
# ------------------

#: The error norms of the adjoint's reverse solve.
ADJOINT_NORMS = ("default", "seminorm")
POSITIVE_NUMBER = "a positive number"

SOLVER_PARAMETER = OptionSpec(
    "solver", str, "dopri5", "the ODE solver (one vocabulary for torch and JAX; fixed-step ones "
    "need fixed_steps)", choices=SOLVER_NAMES)
TOLERANCE_PARAMETERS = (
    OptionSpec("rtol", float, 1e-3, "relative tolerance of the adaptive solve",
               validator=positive, valid=POSITIVE_NUMBER),
    OptionSpec("atol", float, 1e-3, "absolute tolerance of the adaptive solve",
               validator=positive, valid=POSITIVE_NUMBER),
)
FIXED_STEPS_PARAMETER = OptionSpec(
    "fixed_steps", int, None, "equal steps over the solve's interval, for a fixed-step solver "
    "(euler, midpoint, rk4)", validator=positive, nullable=True, valid="a positive integer")
#: A continuous adjoint's reverse solve: its tolerances and its error norm.
ADJOINT_PARAMETERS = (
    OptionSpec("adjoint_rtol", float, None, "relative tolerance of the reverse solve (none: "
               "rtol)", validator=positive, nullable=True, valid=POSITIVE_NUMBER),
    OptionSpec("adjoint_atol", float, None, "absolute tolerance of the reverse solve (none: "
               "atol)", validator=positive, nullable=True, valid=POSITIVE_NUMBER),
    OptionSpec("adjoint_norm", str, "default", "error norm of the reverse solve: seminorm "
               "leaves the parameters' adjoint out of step-size control (Kidger et al. 2021)",
               choices=ADJOINT_NORMS),
)


def ode_parameters(first_step: OptionSpec, *, adjoint: bool = False,
                   extra: tuple[OptionSpec, ...] = ()) -> tuple[OptionSpec, ...]:
    """An ODE backend's parameters: solver, tolerances, its ``first_step`` rule, fixed steps,
    ``extra`` ones, and with ``adjoint`` the reverse solve's."""
    return (SOLVER_PARAMETER, *TOLERANCE_PARAMETERS, first_step, FIXED_STEPS_PARAMETER, *extra,
            *(ADJOINT_PARAMETERS if adjoint else ()))
