"""A fake adaptive backend for the gradient study's tests: explicit Euler whose step count
follows its ``rtol`` (steps = ceil(0.1 / rtol)), so tighter tolerances give smaller errors."""

from __future__ import annotations

import math

from fake_plugins import NumpyEulerBackend

import bench
from bench.core.options import OptionSpec, positive


class NumpyToleranceBackend(NumpyEulerBackend):
    parameters = (OptionSpec("rtol", float, 1e-2, validator=positive, valid="positive"),
                  OptionSpec("atol", float, 1e-2, validator=positive, valid="positive"))
    parameter_aliases: dict[str, str] = {}  # its parent's `n` names `steps`, not declared here

    def __init__(self, rtol: float = 1e-2, atol: float = 1e-2):
        super().__init__("numpy-tol", steps=math.ceil(0.1 / rtol))
        self.rtol, self.atol = rtol, atol
        self.solver = "euler (steps from rtol)"


@bench.hookimpl
def bench_register_backends(register):
    register(NumpyToleranceBackend())
