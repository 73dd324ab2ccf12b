"""The ODE block of ``example-heun``: Heun's method, with its own counted dynamics.

Everything a torch block must do (``TorchBackend.ode_block``'s docstring is the contract): be an
``nn.Module`` whose parameters are the dynamics' own, answer ``block(y0)`` and
``block(y0, times=ts)`` (time-major), call the dynamics with a 0-dim ``t``, and report its counts
through ``pop_stats()``. (``bench.frameworks.torch.OdeBlock`` and ``CountedDynamics`` do the
counting part for you; this block does it by hand to show what it is.)
"""

from __future__ import annotations

import torch
from bench.frameworks.fixed_grid import steps_in_interval
from bench.frameworks.torch import StepCounts
from torch import nn

from bench.core.errors import BenchError


class Counts:
    """Plain counters (on a plain object: an ``nn.Module`` attribute costs ~2 us to set)."""

    __slots__ = ("in_forward", "forward", "backward_calls", "vjps", "steps")

    def __init__(self) -> None:
        self.in_forward = False
        self.zero()

    def zero(self) -> None:
        self.forward = self.backward_calls = self.vjps = self.steps = 0


class CountedDynamics(nn.Module):
    """The suite's dynamics, counted: each call in the block's forward pass is one forward
    evaluation; each vector-Jacobian product that backpropagation computes from an output is one
    backward evaluation (a hook on the output counts it when ``loss.backward()`` reaches it)."""

    def __init__(self, dynamics: nn.Module, counts: Counts):
        super().__init__()
        self.dynamics = dynamics  # a submodule: the block's parameters are the dynamics' own
        self.__dict__["counts"] = counts  # a plain attribute, not a submodule

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        counts = self.counts
        if counts.in_forward:
            counts.forward += 1
        else:
            counts.backward_calls += 1  # (an adjoint's reverse solve would call f here)
        out = self.dynamics(t, h)
        if out.requires_grad:
            out.register_hook(self._count_vjp)
        return out

    def _count_vjp(self, grad: torch.Tensor) -> None:
        self.counts.vjps += 1


class HeunBlock(nn.Module):
    """``steps`` Heun steps of (t1 - t0) / steps; with output ``times``, each interval between
    them gets ceil(length / step) equal steps, so every output is a Heun state."""

    def __init__(self, dynamics: nn.Module, t0: float, t1: float, steps: int):
        super().__init__()
        self.__dict__["counts"] = Counts()
        self.func = CountedDynamics(dynamics, self.counts)
        self.t0, self.t1, self.steps = float(t0), float(t1), int(steps)

    def forward(self, y0: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """The state at t1 (``times`` None), else the states at every time of ``times``,
        time-major: shape ``(len(times), *y0.shape)``, the first being ``y0``."""
        if times is None:
            grid = [self.t0, self.t1]
        else:
            times = torch.as_tensor(times)
            if times.ndim != 1 or times.numel() < 2:
                raise BenchError("example-heun: times must be a 1-D tensor of at least two times")
            grid = times.tolist()
        step = abs(self.t1 - self.t0) / self.steps  # negative intervals: a backwards solve
        self.counts.in_forward = True
        try:
            y, out = y0, [y0]
            for a, b in zip(grid[:-1], grid[1:], strict=True):
                n = steps_in_interval(b - a, step, self.steps)
                h = (b - a) / n
                for i in range(n):
                    t = torch.tensor(a + i * h, dtype=y0.dtype, device=y0.device)  # 0-dim
                    k1 = self.func(t, y)
                    k2 = self.func(t + h, y + h * k1)
                    y = y + (h / 2) * (k1 + k2)
                    self.counts.steps += 1
                out.append(y)
        finally:
            self.counts.in_forward = False
        return y if times is None else torch.stack(out)

    def pop_stats(self) -> StepCounts:
        """What was counted since the last pop, then zeroed: the suite pops after the forward
        pass (nfe_forward, steps) and after ``loss.backward()`` (nfe_backward)."""
        c = self.counts
        counts = StepCounts(nfe_forward=c.forward, nfe_backward=c.vjps,
                            steps_accepted=c.steps, steps_rejected=0,
                            backward_calls=c.backward_calls)
        c.zero()
        return counts
