"""Solver tolerances: what a task passes to its solves (:class:`Tolerances`), which tolerances win
(:func:`effective_tolerances`) and what a row records (:func:`solver_settings`).

Precedence, for each of ``rtol``, ``atol``, ``adjoint_rtol``, ``adjoint_atol``:

1. a value the user set on the backend (``--backends 'name[rtol=1e-6]'``, ``--backend-set``);
2. the task's (a suite budget's, e.g. the cnf budgets' 1e-5);
3. the backend's default.

The adjoint's reverse solve uses the forward tolerances unless its own are set (torchdiffeq's and
diffrax's default). Each row records the tolerances used and where they came from
(``tolerance_source``: ``user``, ``budget`` or ``backend``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol


class SolvingBackend(Protocol):
    """What these functions read of a backend (:class:`bench.core.interfaces.AbstractBackend`,
    which imports this module: a protocol keeps the two apart)."""

    @property
    def name(self) -> str: ...
    @property
    def solver(self) -> str: ...
    @property
    def gradient_method(self) -> str: ...
    @property
    def rtol(self) -> float | None: ...
    @property
    def atol(self) -> float | None: ...
    @property
    def adaptive(self) -> bool | None: ...
    @property
    def user_parameters(self) -> Mapping[str, Any]: ...


class SolvingTask(Protocol):
    """What :func:`solver_settings` reads of a task (an
    :class:`~bench.core.interfaces.AbstractTask`)."""

    @property
    def solver(self) -> str | None: ...
    @property
    def tolerances(self) -> Tolerances | None: ...

#: Solvers that take a fixed number of steps: tolerances do not apply to them.
FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4", "rk4-3/8", "explicit_adams", "resnet")
TOLERANCE_NAMES = ("rtol", "atol", "adjoint_rtol", "adjoint_atol")


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Solver tolerances a task passes to its solves in place of the backend's own (e.g. a suite
    budget's): the forward solve's ``rtol``/``atol`` and, for the adjoint's reverse solve,
    ``adjoint_rtol``/``adjoint_atol`` (None: the forward ones, torchdiffeq's and diffrax's
    default). Fixed-step solvers have none and ignore them."""

    rtol: float
    atol: float
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None

    def __post_init__(self) -> None:
        for name in TOLERANCE_NAMES:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Tolerances | None:
        """The ``rtol``/``atol`` of a budget's settings, or None when it sets neither."""
        if "rtol" not in settings and "atol" not in settings:
            return None
        return cls(float(settings["rtol"]), float(settings["atol"]),
                   settings.get("adjoint_rtol"), settings.get("adjoint_atol"))

    @property
    def reverse(self) -> tuple[float, float]:
        """The reverse (adjoint) solve's ``(rtol, atol)``: its own, else the forward ones."""
        return (self.rtol if self.adjoint_rtol is None else self.adjoint_rtol,
                self.atol if self.adjoint_atol is None else self.adjoint_atol)


def effective_tolerances(backend: SolvingBackend, given: Tolerances | None) -> Tolerances:
    """The tolerances a solve of ``backend`` uses when its task passes ``given`` (None: none):
    the user's values on the backend over ``given`` over the backend's defaults (see the module
    docstring). Raises when an adaptive solve would end up without rtol/atol."""
    user = getattr(backend, "user_parameters", {}) or {}
    values: dict[str, Any] = {}
    for name in TOLERANCE_NAMES:
        if user.get(name) is not None:
            values[name] = user[name]
        elif given is not None and getattr(given, name) is not None:
            values[name] = getattr(given, name)
        else:
            values[name] = getattr(backend, name, None)
    if values["rtol"] is None or values["atol"] is None:
        from bench.core.errors import BenchError

        raise BenchError(f"backend {backend.name!r}: an adaptive solve needs rtol and atol")
    return Tolerances(**values)


def tolerance_source(backend: SolvingBackend, given: Tolerances | None) -> str:
    """Where a cell's forward ``rtol``/``atol`` came from: ``user``, ``budget`` or ``backend``."""
    user = getattr(backend, "user_parameters", {}) or {}
    if any(user.get(name) is not None for name in ("rtol", "atol")):
        return "user"
    return "backend" if given is None else "budget"


def solver_settings(backend: SolvingBackend, task: SolvingTask) -> dict[str, Any]:
    """The solver settings a cell ran with, for its row: ``rtol``/``atol`` (None for a fixed-step
    solve), for the adjoint ``adjoint_rtol``/``adjoint_atol`` of the reverse solve, and
    ``tolerance_source``. The task's ``tolerances`` are what it passed to its
    solves; :func:`effective_tolerances` says which win."""
    solver = task.solver or backend.solver
    # a task's own solver (e.g. the memory study's fixed steps) is judged by its name
    adaptive = None if task.solver else backend.adaptive
    if adaptive is None:
        adaptive = backend.rtol is not None and _adaptive(solver)
    if not adaptive:
        return {"rtol": None, "atol": None, "adjoint_rtol": None, "adjoint_atol": None,
                "tolerance_source": None}
    tol = effective_tolerances(backend, task.tolerances)
    settings: dict[str, Any] = {"rtol": tol.rtol, "atol": tol.atol, "adjoint_rtol": None,
                                "adjoint_atol": None,
                                "tolerance_source": tolerance_source(backend, task.tolerances)}
    if backend.gradient_method == "adjoint":
        settings["adjoint_rtol"], settings["adjoint_atol"] = tol.reverse
    return settings


def _adaptive(solver: str) -> bool:
    from bench.core.solvers import SOLVERS

    info = SOLVERS.get(solver)
    return info.adaptive if info is not None else (
        solver not in FIXED_STEP_SOLVERS and "fixed steps" not in solver)
