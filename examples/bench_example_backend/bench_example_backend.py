"""``example-bosh3``: a complete third-party backend (runs on every built-in suite).

torchdiffeq's Bogacki-Shampine 3(2) adaptive solver (``bosh3``), gradients by backpropagation
through the solver. Everything it needs is the public framework layer: the torchdiffeq backend
base (:class:`bench.frameworks.torch.TorchdiffeqBackend`) builds the counted ODE blocks that every
torch suite asks for (``ode_block(make_dynamics, t0, t1, fixed_steps=..., tolerances=...)``), and
the registration hook below is found through the package's ``bench`` entry point.

The solver is what this backend is, so ``solver`` is not one of its parameters: a user's
``example-bosh3[solver=dopri5]`` is refused as an unknown parameter (with the valid ones), never
silently replaced by bosh3. docs/plugins.md shows backends that do not derive from torchdiffeq.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchdiffeqBackend, torchdiffeq_parameters

import bench
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend

#: Set by the backend itself, so not parameters: the solver (bosh3) and fixed_steps (which only
#: a fixed-step solver takes).
FIXED_BY_THE_BACKEND = ("solver", "method", "fixed_steps")


class Bosh3Backend(TorchdiffeqBackend):
    name = "example-bosh3"  # unique across plugins
    gradient_method = "backprop"  # shown in every table
    adjoint = False  # torchdiffeq odeint (True: odeint_adjoint)
    memory_claim = "O(L)"  # what `bench memory` compares its measured fit with
    # torchdiffeq's parameters (rtol, atol, first_step) without the ones fixed above
    parameters = tuple(spec for spec in torchdiffeq_parameters(adjoint=False)
                       if spec.name not in FIXED_BY_THE_BACKEND)
    parameter_aliases: dict[str, str] = {}  # no "method" alias: there is no solver to set

    def __init__(self, **kwargs: Any):
        fixed = sorted(set(kwargs) & set(FIXED_BY_THE_BACKEND))
        if fixed:
            raise BenchError(f"backend {self.name!r} always solves with bosh3: it takes no "
                             f"{', '.join(fixed)} (its parameters: "
                             f"{', '.join(spec.name for spec in self.parameters)})")
        super().__init__(solver="bosh3", **kwargs)
        self.description = (f"torchdiffeq odeint, bosh3 rtol={self.rtol:g} atol={self.atol:g}; "
                            "gradients by backpropagation (example third-party plugin)")


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(Bosh3Backend())
