"""The torch ODE blocks behind the torch backends (imported only when a block is built).

Counting costs a few plain-object attribute increments and one ``register_hook`` per evaluation:
counters live on a plain object, never on an ``nn.Module`` (whose ``__setattr__`` costs ~2 us).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from bench.frameworks.fixed_grid import steps_in_interval
from bench.frameworks.torch._training import StepCounts
from torch import nn

from bench.core.errors import BenchError

try:  # torch's optimizers import this at their first step (record_function): import it before
    import torch.profiler._cupti_monitor  # noqa: F401 - the clock, like torchdiffeq (see below)
except Exception:  # noqa: BLE001 - a private module; its absence costs only a first-step import
    pass


class Counter:
    """Plain counters shared by a block and its counted dynamics (what
    :meth:`OdeBlock.pop_stats` reports).

    ``in_forward`` is True while the block's forward call runs (the block sets it): a call of f
    then counts in ``calls`` (``nfe_forward``), otherwise in ``backward_calls`` (an adjoint's
    reverse solve). ``vjps`` (``nfe_backward``) counts the vector-Jacobian products computed from
    f's outputs during the backward pass, through :meth:`vjp_hook`. ``accepted``/``rejected``:
    the forward solve's steps, counted by the block's solver loop (or its callbacks)."""

    __slots__ = ("in_forward", "calls", "backward_calls", "vjps", "accepted", "rejected")

    def __init__(self) -> None:
        self.in_forward = False
        self.zero()

    def zero(self) -> None:
        self.calls = self.backward_calls = self.vjps = self.accepted = self.rejected = 0

    def vjp_hook(self, grad: torch.Tensor) -> None:
        self.vjps += 1


class CountedDynamics(nn.Module):
    """Wraps the suite's dynamics: counts evaluations (forward pass or backward pass) and, through
    a hook on each output that requires grad, the vector-Jacobian products computed from it.

    The dynamics is a submodule, so the block's ``parameters()`` are the dynamics' own tensors;
    call it as the dynamics, ``self(t, h)`` with ``t`` a 0-dim tensor."""

    counter: Counter  # set in __dict__: nn.Module would type it as a tensor or a submodule

    def __init__(self, dynamics: nn.Module, counter: Counter):
        super().__init__()
        self.dynamics = dynamics
        self.__dict__["counter"] = counter  # a plain attribute, not a submodule or buffer

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        counter = self.counter
        if counter.in_forward:
            counter.calls += 1
        else:
            counter.backward_calls += 1
        out = self.dynamics(t, h)
        if out.requires_grad:
            out.register_hook(counter.vjp_hook)
        return out


class AdaptiveCountedDynamics(CountedDynamics):
    """Also counts the accepted and rejected steps of torchdiffeq's adaptive forward solve (the
    callbacks exist only on this class: torchdiffeq warns when a fixed-grid solver gets them)."""

    def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        if self.counter.in_forward:
            self.counter.accepted += 1

    def callback_reject_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        if self.counter.in_forward:
            self.counter.rejected += 1


class OdeBlock(nn.Module, abc.ABC):
    """Base of the torch blocks (:class:`bench.frameworks.torch.CountingBlock`): ``forward(y0,
    times=None)`` checks the times, marks the forward pass on :attr:`counter` and calls
    :meth:`integrate`; ``pop_stats()`` reports and zeroes the counters.

    A subclass sets ``t0``/``t1`` (floats), wraps the dynamics in
    ``CountedDynamics(dynamics, self.counter)`` (a submodule: its parameters are the block's),
    counts its solver's steps in ``self.counter.accepted``/``rejected`` and implements
    :meth:`integrate`. ``counts_steps`` False: ``pop_stats`` reports no steps (None), for a
    solver that cannot say how many it took."""

    counts_steps = True
    t0: float
    t1: float
    counter: Counter  # set in __dict__: nn.Module would type it as a tensor or a submodule

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["counter"] = Counter()

    def pop_stats(self) -> StepCounts:
        """The counts since the last pop (then zeroed)."""
        c = self.counter
        counts = StepCounts(
            nfe_forward=c.calls,
            nfe_backward=c.vjps,
            backward_calls=c.backward_calls,
            steps_accepted=c.accepted if self.counts_steps else None,
            steps_rejected=c.rejected if self.counts_steps else None,
        )
        c.zero()
        return counts

    def _times(self, y0: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        if times is None:
            return torch.tensor([self.t0, self.t1], dtype=y0.dtype, device=y0.device)
        times = torch.as_tensor(times, dtype=y0.dtype, device=y0.device)
        if times.ndim != 1 or times.numel() < 2:
            raise BenchError("times must be a 1-D tensor of at least two increasing times")
        return times

    def forward(self, y0: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        self.counter.in_forward = True
        try:
            out = self.integrate(y0, self._times(y0, times))
        finally:
            self.counter.in_forward = False
        return out[-1] if times is None else out

    @abc.abstractmethod
    def integrate(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The states at every time of ``t`` (1-D, ``t[0]`` the start; ``[t0, t1]`` for a plain
        call), time-major: shape ``(len(t), *y0.shape)``, ``out[0]`` = ``y0``. Call the
        counted dynamics for every evaluation and count the solver's steps on
        ``self.counter``."""


class TorchdiffeqBlock(OdeBlock):
    """torchdiffeq ``odeint`` (direct backpropagation) or ``odeint_adjoint``.

    ``clamp_last_step``: every output time is a step end (torchdiffeq's ``step_t`` option, in the
    forward solve and in the adjoint's reverse solves), so the adaptive solve shortens the step
    that would pass it instead of stepping past and interpolating back."""

    def __init__(self, dynamics: nn.Module, t0: float, t1: float, *, adjoint: bool, method: str,
                 rtol: float, atol: float, options: dict | None,
                 adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
                 adjoint_options: dict | None = None, clamp_last_step: bool = False):
        # imported here, when the task is built, never inside the first timed step: importing
        # torchdiffeq (it pulls in scipy) took 1.2 s, counted as compile_time_s
        import torchdiffeq  # noqa: F401

        super().__init__()
        adaptive = "step_size" not in (options or {})
        wrapper = AdaptiveCountedDynamics if adaptive else CountedDynamics
        self.func = wrapper(dynamics, self.counter)
        self.t0, self.t1 = float(t0), float(t1)
        self.adjoint, self.method, self.rtol, self.atol = adjoint, method, rtol, atol
        self.options = dict(options or {})
        self.counts_steps = adaptive
        # the reverse solve's own tolerances and options (absent: torchdiffeq's defaults)
        self.adjoint_kwargs: dict[str, Any] = {
            k: float(v) for k, v in (("adjoint_rtol", adjoint_rtol), ("adjoint_atol", adjoint_atol))
            if v is not None}
        # e.g. the seminorm adjoint: dict(norm="seminorm") (Kidger et al. 2021)
        if adjoint_options:
            self.adjoint_kwargs["adjoint_options"] = dict(adjoint_options)
        self.clamp_last_step = bool(clamp_last_step)

    def integrate(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        import torchdiffeq

        options = dict(self.options)
        adjoint_kwargs = dict(self.adjoint_kwargs)
        if self.clamp_last_step:
            # every output time a step must end on (torchdiffeq flips them with the time of a
            # backwards solve); the reverse solve gets them too, as its own options
            options["step_t"] = t
            if self.adjoint:
                adjoint_kwargs["adjoint_options"] = {
                    **adjoint_kwargs.get("adjoint_options", {}), "step_t": t}
        kwargs = dict(rtol=self.rtol, atol=self.atol, method=self.method,
                      options=options or None)
        if self.adjoint:
            return torchdiffeq.odeint_adjoint(self.func, y0, t,
                                              adjoint_params=tuple(self.func.parameters()),
                                              **adjoint_kwargs, **kwargs)
        return torchdiffeq.odeint(self.func, y0, t, **kwargs)


class RK4Block(OdeBlock):
    """Classical fourth-order Runge-Kutta (Butcher tableau 0, 1/2, 1/2, 1; weights 1/6, 1/3,
    1/3, 1/6) with a fixed step, differentiated by backpropagation through the steps. With output
    times, each interval between them gets ceil(length / step) equal steps."""

    def __init__(self, dynamics: nn.Module, t0: float, t1: float, steps: int):
        super().__init__()
        if steps < 1:
            raise BenchError(f"rknet needs at least 1 step, got {steps}")
        self.func = CountedDynamics(dynamics, self.counter)
        self.t0, self.t1, self.steps = float(t0), float(t1), int(steps)

    def integrate(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f = self.func
        step = abs(self.t1 - self.t0) / self.steps
        out, y = [y0], y0
        times = t.tolist()
        for a, b in zip(times[:-1], times[1:], strict=False):
            n = steps_in_interval(b - a, step, self.steps)
            h = (b - a) / n
            for i in range(n):
                s = torch.as_tensor(a + i * h, dtype=y0.dtype, device=y0.device)
                k1 = f(s, y)
                k2 = f(s + h / 2, y + (h / 2) * k1)
                k3 = f(s + h / 2, y + (h / 2) * k2)
                k4 = f(s + h, y + h * k3)
                y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
                self.counter.accepted += 1
            out.append(y)
        return torch.stack(out)


class ResNetBlock(OdeBlock):
    """L residual blocks ``h <- h + f_k(h)`` with untied weights (no time, no solver)."""

    def __init__(self, make_dynamics: Callable[[bool], nn.Module], blocks: int):
        super().__init__()
        if blocks < 1:
            raise BenchError(f"resnet needs at least 1 block, got {blocks}")
        self.layers = nn.ModuleList(
            CountedDynamics(make_dynamics(False), self.counter) for _ in range(blocks))

    def forward(self, y0: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        if times is not None:
            raise BenchError("resnet has no continuous time: it cannot output the state at "
                             "arbitrary times (use a continuous backend)")
        self.counter.in_forward = True
        try:
            h = y0
            zero = torch.zeros((), dtype=y0.dtype, device=y0.device)
            for layer in self.layers:
                h = h + layer(zero, h)
                self.counter.accepted += 1
        finally:
            self.counter.in_forward = False
        return h

    def integrate(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Never called (:meth:`forward` is resnet's own): there is no time to integrate over."""
        raise BenchError("ResNetBlock.integrate: resnet has no continuous time (its forward "
                         "applies the residual blocks)")
