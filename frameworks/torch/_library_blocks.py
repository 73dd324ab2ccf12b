"""torch ODE blocks over other libraries' solvers (imported only when a block is built):
torchode (:class:`TorchodeBlock`) and TorchDiffEqPack's MALI and ACA (:class:`TdePackBlock`).

Each follows :class:`bench.frameworks.torch.CountingBlock` like the torchdiffeq block: the suite's
dynamics is a submodule (wrapped so that every call the library makes is counted), the call
forms ``block(y0)`` and ``block(y0, times=ts)`` (time-major), backwards solves, and
``pop_stats()``. What each library lacks is made up here, and said where:

- torchode solves a batch of flat samples, shape ``(batch, features)``, each with its own time
  and step size ("per-sample" step control), and calls f with a time per sample. The suites'
  dynamics take one 0-dim time for the whole batch and states of any shape: the block flattens
  the state, and calls f once per call torchode makes when the batch shares one time (or when f
  does not depend on t, which the block finds once, structurally, from the autograd graph of one
  uncounted evaluation), else once per distinct time, the samples of that time together, and
  counts the whole as one evaluation. "Joint" step control (the whole batch one sample, one step
  size, as torchdiffeq) reshapes the batch into one sample.
- TorchDiffEqPack's ``odesolve_adjoint`` (ACA) and ``odesolve_adjoint_sym12`` (MALI) overwrite
  ``options['t0']`` on every call (a fresh dict is built per call), return the state at t1 only
  (output times are solved interval by interval, each a solve of its own) and report no counts
  (every call of f is counted by the wrapper).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from bench.frameworks.torch._blocks import CountedDynamics, Counter, OdeBlock
from torch import nn

from bench.core.errors import BenchError


class FlatDynamics(CountedDynamics):
    """The suite's dynamics as torchode calls it: ``f(t, y)`` with ``y`` flat, ``(n, features)``
    (or one sample's ``(features,)`` under ``torch.func.vmap``, as BacksolveAdjoint does) and
    ``t`` of shape ``(n,)`` or 0-dim. One call counts one evaluation (and its output one VJP),
    however many calls of the suite's dynamics it takes (one per distinct time, see the module
    docstring)."""

    # plain attributes (set in __dict__: nn.Module would type them as tensors or submodules)
    sample_shape: tuple[int, ...]
    time_dependent: bool | None

    def __init__(self, dynamics: nn.Module, counter: Counter):
        super().__init__(dynamics, counter)
        self.__dict__["sample_shape"] = ()
        #: None until found: whether f's output depends on t at all (structurally)
        self.__dict__["time_dependent"] = None

    def _uses_time(self, t: torch.Tensor, h: torch.Tensor) -> bool:
        """Whether the dynamics' output is connected to ``t`` in autograd's graph (one
        evaluation, not counted: it is not part of the solve)."""
        probe = t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self.dynamics(probe, h.detach())
            grad = torch.autograd.grad(out.sum(), probe, allow_unused=True)[0]
        return grad is not None

    def _call(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = y.reshape(-1, *self.sample_shape)
        if t.ndim == 0:
            return self.dynamics(t.to(h.dtype), h).reshape(y.shape)
        t = t.to(h.dtype)
        first = t[0]
        if t.numel() == 1 or bool((t == first).all()):
            return self.dynamics(first, h).reshape(y.shape)
        if self.time_dependent is None:
            self.__dict__["time_dependent"] = self._uses_time(first, h)
        if not self.time_dependent:
            return self.dynamics(first, h).reshape(y.shape)
        # one call per distinct time, the samples at that time together (the time passed is
        # one of theirs, not unique()'s copy: torchode differentiates through step sizes)
        values, groups = torch.unique(t.detach(), return_inverse=True)
        parts = []
        order = []
        for i in range(values.numel()):
            index = (groups == i).nonzero().squeeze(1)
            parts.append(self.dynamics(t[index[0]], h[index]))
            order.append(index)
        out = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return out.reshape(y.shape)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        counter = self.counter
        if counter.in_forward:
            counter.calls += 1
        else:
            counter.backward_calls += 1
        try:
            out = self._call(t, h)
        except RuntimeError as exc:
            if not _under_vmap(h):
                raise
            raise BenchError(
                "torchode's BacksolveAdjoint evaluates the dynamics of each sample under "
                f"torch.func.vmap, which cannot run this dynamics ({exc}); use "
                "torchode-backsolve[adjoint=joint] (JointBacksolveAdjoint: the batch as one "
                "sample, no vmap)") from exc
        if out.requires_grad:
            out.register_hook(counter.vjp_hook)
        return out


def _under_vmap(tensor: torch.Tensor) -> bool:
    """Whether this runs inside a ``torch.func`` transform (BacksolveAdjoint's vmap and vjp)."""
    try:
        return torch._C._functorch.maybe_current_level() is not None
    except AttributeError:  # a torch without functorch's C API: say nothing more
        return False


#: torchode's step methods of the shared solver vocabulary.
TORCHODE_METHODS = {"dopri5": "Dopri5", "tsit5": "Tsit5", "heun": "Heun", "euler": "Euler"}


class TorchodeBlock(OdeBlock):
    """torchode's solve of the block's dynamics.

    :param gradient: ``backprop`` (``AutoDiffAdjoint``: backpropagation through the solver's
        operations), ``backsolve`` (``BacksolveAdjoint``: per-sample reverse solves, the VJPs
        under ``torch.func.vmap``) or ``joint`` (``JointBacksolveAdjoint``: the batch as one
        sample in both solves).
    :param step_control: ``per-sample`` or ``joint`` (ignored by ``joint``, always joint).
    :param fixed_steps: exactly this many equal steps (``FixedStepController``), else adaptive
        (``IntegralController`` at ``rtol``/``atol``).
    :param first_step: the first step (``dt0``); None: torchode's initial-step heuristic.

    Steps (``pop_stats``): torchode counts them per sample; the block reports the batch loop's
    iterations, the most steps any sample took (every iteration evaluates every sample), as
    accepted plus rejected, accepted being the most steps any sample accepted. Under joint
    control that is the one sample's count.
    """

    def __init__(self, dynamics: nn.Module, t0: float, t1: float, *, method: str,
                 gradient: str, step_control: str, rtol: float | None, atol: float | None,
                 fixed_steps: int | None = None, first_step: float | None = None):
        import torchode  # noqa: F401 - imported when the task is built, never in a timed step

        super().__init__()
        self.func = FlatDynamics(dynamics, self.counter)
        self.t0, self.t1 = float(t0), float(t1)
        self.method, self.gradient = method, gradient
        self.joint = gradient == "joint" or step_control == "joint"
        self.rtol, self.atol = rtol, atol
        self.fixed_steps, self.first_step = fixed_steps, first_step
        self._solver: Any = None

    def _build(self) -> Any:
        import torchode as to

        term = to.ODETerm(self.func, with_stats=False)
        step = getattr(to, TORCHODE_METHODS[self.method])(term=term)
        if self.fixed_steps is not None:
            controller: Any = grid_controller()
        else:
            controller = to.IntegralController(atol=self.atol, rtol=self.rtol, term=term)
        if self.gradient == "backprop":
            return to.AutoDiffAdjoint(step, controller)
        if self.gradient == "backsolve":
            return to.BacksolveAdjoint(term, step, controller)
        return to.JointBacksolveAdjoint(term, step, controller)

    def _dt0(self, batch: int, span: float, like: torch.Tensor) -> torch.Tensor | None:
        if self.fixed_steps is not None:
            step = span / self.fixed_steps
        elif self.first_step is not None:
            step = self.first_step if span > 0 else -self.first_step
        else:
            return None
        return torch.full((batch,), step, dtype=like.dtype, device=like.device)

    def integrate(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        import torchode as to

        if self._solver is None:
            self._solver = self._build()
        batch = y0.shape[0] if y0.ndim > 0 else 1
        self.func.__dict__["sample_shape"] = tuple(y0.shape[1:])
        y = y0.reshape(batch, -1)
        n = 1 if (self.joint and self.gradient != "joint") else batch
        if n == 1 and batch != 1:
            y = y.reshape(1, -1)
        # the interval is the solve's (a multi-interval call evaluates at the inner times)
        t_start = t[0].expand(n).contiguous()
        t_end = t[-1].expand(n).contiguous()
        t_eval = None if t.numel() == 2 else t.unsqueeze(0).expand(n, -1).contiguous()
        problem = to.InitialValueProblem(y0=y, t_start=t_start, t_end=t_end, t_eval=t_eval)
        # JointBacksolveAdjoint solves the batch as one sample: its dt0 is that sample's
        dt0 = self._dt0(1 if self.gradient == "joint" else n, float(t[-1] - t[0]), t)
        solution = self._solver.solve(problem, dt0=dt0)
        self._count_steps(solution.stats)
        ys = solution.ys  # (n, times, features); times = 1 (t_end) without t_eval
        if self.gradient == "joint":  # JointBacksolveAdjoint: (batch, times, features) already
            pass
        elif n == 1 and batch != 1:
            ys = ys.reshape(ys.shape[1], batch, -1).transpose(0, 1)
        out = ys.transpose(0, 1).reshape(ys.shape[1], *y0.shape)
        if t_eval is None:
            out = torch.cat([y0.unsqueeze(0), out])
        return out

    def _count_steps(self, stats: dict[str, Any]) -> None:
        if not self.counter.in_forward or "n_steps" not in stats:
            return
        steps = int(stats["n_steps"].max())
        accepted = int(stats["n_accepted"].max())
        self.counter.accepted += accepted
        self.counter.rejected += steps - accepted


@functools.cache
def grid_controller_class() -> Any:
    """torchode's ``FixedStepController`` that ends on the end time: the step that would leave
    less than half a step before it is stretched, and torchode's clamp to the interval then
    shortens it to land exactly there (summing L float32 steps of (t1 - t0) / L falls short of
    t1 often enough to cost a spurious extra step: L = 61 and 109 took L + 1 without this)."""
    import torchode as to

    class GridState(NamedTuple):
        accept_all: torch.Tensor
        dt0: torch.Tensor
        t_end: torch.Tensor

    class GridController(to.FixedStepController):
        def init(self, term: Any, problem: Any, method_order: int, dt0: Any, *,
                 stats: dict[str, Any], args: Any) -> Any:
            dt, state, f0 = super().init(term, problem, method_order, dt0, stats=stats,
                                         args=args)
            return dt, GridState(state.accept_all, state.dt0, problem.t_end), f0

        def adapt_step_size(self, t0: Any, dt: Any, y0: Any, step_result: Any, state: Any,
                            stats: dict[str, Any]) -> Any:
            left = (state.t_end - (t0 + dt)).abs()
            dt_next = torch.where(left < 1.5 * state.dt0.abs(), 2 * state.dt0, state.dt0)
            return state.accept_all, dt_next, state, None

    return GridController


def grid_controller() -> Any:
    """A new :func:`grid_controller_class` controller."""
    return grid_controller_class()()


class TimeTensorDynamics(CountedDynamics):
    """:class:`CountedDynamics` for a library that passes t as a Python float or in another
    dtype (TorchDiffEqPack: float32 times, a float t0): f gets a 0-dim tensor of the state's
    dtype and device, as the contract says."""

    def forward(self, t: Any, h: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.as_tensor(t, dtype=h.dtype, device=h.device), h)


class TdePackBlock(OdeBlock):
    """TorchDiffEqPack's MALI (``odesolve_adjoint_sym12``: the asynchronous leapfrog solver,
    ``sym12async`` adaptive or ``fixedstep_sym12async``) or ACA (``odesolve_adjoint``: adaptive
    checkpoint adjoint, one saved state per step); both differentiate by their own backward pass.

    :param kind: ``mali`` or ``aca``.
    :param method: TorchDiffEqPack's method name (``sym12async``, ``fixedstep_sym12async``,
        ``dopri5``, ``rk23``, ``rk12``).
    :param fixed_steps: with ``aca``: exactly this many steps of ``method`` on an equal grid
        (the memory study's L; TorchDiffEqPack's own fixed-step solvers fail in ACA's backward
        pass), through ACA's own backward pass.

    Steps are not reported (None): neither function exposes them. Every solve is in end-point
    mode (its last step lands on the end time; TorchDiffEqPack's plain ``odesolve`` defaults to
    interpolating, 7e-3 gradient error against 1.3e-5, shared/MEASUREMENT.md). TorchDiffEqPack
    keeps times in float32.
    """

    counts_steps = False

    def __init__(self, dynamics: nn.Module, t0: float, t1: float, *, kind: str, method: str,
                 rtol: float | None, atol: float | None, first_step: float | None = None,
                 fixed_steps: int | None = None):
        import TorchDiffEqPack  # noqa: F401 - imported when the task is built (it imports matplotlib)

        super().__init__()
        self.func = TimeTensorDynamics(dynamics, self.counter)
        self.t0, self.t1 = float(t0), float(t1)
        self.kind, self.method = kind, method
        self.rtol, self.atol = rtol, atol
        self.first_step, self.fixed_steps = first_step, fixed_steps

    def _options(self, a: float, b: float) -> dict[str, Any]:
        """A fresh options dict for one solve from ``a`` to ``b`` (the library overwrites t0)."""
        options: dict[str, Any] = {"method": self.method, "t0": a, "t1": b,
                                   "print_neval": False, "neval_max": 1_000_000}
        if self.fixed_steps is not None:
            options["h"] = abs(b - a) / self.fixed_steps
        else:
            options["h"] = self.first_step  # None: the library's initial-step heuristic
            options["rtol"], options["atol"] = self.rtol, self.atol
        return options

    def _solve(self, y: torch.Tensor, a: float, b: float) -> torch.Tensor:
        from TorchDiffEqPack import odesolve_adjoint, odesolve_adjoint_sym12

        options = self._options(a, b)
        if self.kind == "mali":
            return odesolve_adjoint_sym12(self.func, y, options=options)
        if self.fixed_steps is not None:
            return fixed_grid_aca(self.func, y, options, self.fixed_steps)
        out = odesolve_adjoint(self.func, y, options=options)
        return out[0] if isinstance(out, tuple) else out

    def integrate(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        times = [float(v) for v in t.tolist()]
        out, y = [y0], y0
        for a, b in zip(times[:-1], times[1:], strict=True):
            y = self._solve(y, a, b)
            out.append(y)
        return torch.stack(out)


def fixed_grid_aca(func: nn.Module, y0: torch.Tensor, options: dict[str, Any],
                   steps: int) -> torch.Tensor:
    """ACA (TorchDiffEqPack's ``odesolve_adjoint``) on an equal grid of ``steps`` steps of its
    adaptive method, without step control: the forward solve on the grid, the backward pass
    ACA's own (one saved state per step, each step recomputed with its graph)."""
    from TorchDiffEqPack.odesolver_mem import adjoint as aca

    class FixedGrid(aca.Checkpointing_Adjoint):
        @staticmethod
        def forward(ctx: Any, *args: Any) -> Any:
            z0, f, t0, t1, _, opts = args[:-5], args[-5], args[-4], args[-3], args[-2], args[-1]
            z0 = z0[0] if len(z0) == 1 else z0
            ctx.func, ctx.state0, ctx.z0, ctx.options = f, f.state_dict(), z0, opts
            with torch.no_grad():
                solver = aca.odesolve_endtime(f, z0, opts, return_solver=True,
                                              regenerate_graph=False)
                grid = [t0 + (t1 - t0) * (k + 1) / steps for k in range(steps)]
                ans = solver.integrate_predefined_grids(z0, t0, predefine_steps=torch.stack(
                    [torch.as_tensor(g, dtype=torch.float32) for g in grid]))
            ctx.steps = [torch.as_tensor(g, dtype=torch.float32, device=y0.device)
                         for g in grid]
            ctx.t0, ctx.t1 = t0, t1
            return ans

    options = dict(options, rtol=1.0, atol=1.0)
    t0 = torch.tensor(float(options["t0"]), dtype=torch.float32, device=y0.device)
    options["t0"] = t0
    flat = aca.flatten_params(func.parameters())
    out = FixedGrid.apply(y0, func, t0, options["t1"], flat, options)
    return out[0] if isinstance(out, tuple) else out
