"""``resnet``: L residual blocks ``h <- h + f_k(h)`` with untied weights in place of the ODE block
(Chen et al. 2018's ResNet baseline: L = 6). No time variable and no solver: it cannot output the
state at arbitrary times (``continuous_time = False``), so suites that need that (CNF, latent ODE)
should report it unsupported. Counts: NFE forward = NFE backward = steps_accepted = L."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.torch import TorchBackend, positive_int

import bench
from bench.core.interfaces import AbstractBackend, Tolerances
from bench.core.options import OptionSpec, positive


class ResNetBackend(TorchBackend):
    name = "resnet"
    gradient_method = "backprop"
    solver = "resnet"
    continuous_time = False
    memory_claim = "O(L)"
    required_modules = ("torch",)

    parameters = (OptionSpec("blocks", int, 6, "residual blocks (untied weights)",
                             validator=positive, valid="a positive integer"),)

    def __init__(self, blocks: int = 6):
        self.blocks = positive_int(blocks, "resnet blocks")
        self.description = (f"{self.blocks} residual blocks with untied weights, "
                            "backpropagation (no ODE solver)")

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> Any:
        """See :meth:`TorchBackend.ode_block`: ``make_dynamics(False)`` is called L times
        (``blocks``, or ``fixed_steps``); t0, t1 and tolerances are ignored."""
        from bench.frameworks.torch import ResNetBlock

        blocks = self.blocks if fixed_steps is None else positive_int(fixed_steps, "fixed_steps")
        return ResNetBlock(make_dynamics, blocks)


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(ResNetBackend())
