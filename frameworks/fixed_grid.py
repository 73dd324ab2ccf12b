"""The fixed-step grid shared by the torch and JAX RK4 nets (framework-neutral)."""

from __future__ import annotations

import math

#: Relative slack when dividing an interval by the step: output times often arrive in float32
#: (``linspace(0, 1, 4)`` gives intervals of 1/3 +- 3e-8), and an interval that is two steps
#: long must not get a third.
RELATIVE_SLACK = 1e-5


def steps_in_interval(length: float, step: float, default: int) -> int:
    """Equal RK4 steps for an interval of ``length`` on a grid of ``step``: ceil(length / step),
    at least 1; ``default`` where the grid is degenerate (``step == 0``)."""
    if step == 0:
        return default
    ratio = abs(length) / step
    return max(1, math.ceil(ratio - RELATIVE_SLACK * max(1.0, ratio)))
