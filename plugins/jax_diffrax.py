"""The JAX backends, built on diffrax (plugin module: importing it never imports jax).

- ``diffrax-checkpoint``: Dopri5 + PIDController, gradients by differentiating the solver with
  diffrax's default ``RecursiveCheckpointAdjoint`` (online binomial checkpointing);
- ``diffrax-backsolve``: Dopri5 + PIDController, gradients by ``BacksolveAdjoint`` (the continuous
  adjoint: a second, reverse-time solve; the counterpart of torch-adjoint);
- ``jax-rknet``: classical RK4 (an explicit Runge-Kutta built from its Butcher tableau, since
  diffrax has none) with a fixed number of steps, backpropagated through the stored steps.

Matching the torch backends: rtol = atol = 1e-3 by default; the error norm is torchdiffeq's (RMS of
each leaf, maximum over leaves); the first step is torchdiffeq's initial-step heuristic (Hairer,
Norsett & Wanner II.4; two evaluations of f, the first reused as the first stage), because with
``dt0=None`` diffrax 0.7.2 starts at dt = 0.01 without probing: its ``_select_initial_step``
(``_step_size_controller/pid.py``) probes only when the terms are a bare ``ODETerm`` (else it
returns 0.01), and ``diffeqsolve`` hands the controller its terms wrapped in ``WrapTerm``
(``_integrate.py``), so the probe is never reached (checked: first step 0.01, forward NFE 1 + 6 n,
in tests/test_jax_backends.py). Even where it probes, its exponent 1/6 (Dopri5's error order)
differs from torchdiffeq's 1/5. With the same first step, torchdiffeq and diffrax take the same
accepted and rejected steps.

What the numbers count (each per solve, summed over the solves of a step; checked against explicit
counters in tests/test_jax_backends.py):

- ``nfe_forward``: evaluations of f in the forward solve, from ``sol.stats["num_steps"]`` (accepted
  plus rejected): Dopri5 with the heuristic first step 2 + 6 n (torchdiffeq: 2 + 6 n), with
  ``first_step="diffrax"`` or ``fixed_steps`` 1 + 6 n; RK4 4 n.
- ``nfe_backward``:
  - backsolve: evaluations of the augmented dynamics in the reverse solves (each is one evaluation
    of f and one vector-Jacobian product), 1 + 6 m per reverse solve, m read from the reverse
    solve's own statistics (passed out through the cotangent of a zero probe; see
    ``_reverse_counting_adjoint``). Extra ``reverse_steps_accepted``/``rejected``.
  - checkpoint: VJPs of f (1 + 6 n: every stage of every step, rejected steps included, and the
    first stage) plus the evaluations of f that recompute steps from checkpoints (6 per
    backward-loop iteration; the number of iterations comes from replaying equinox's checkpoint
    schedule for n steps in a toy loop,
    :func:`bench.frameworks.jax.checkpoint_backward_iterations`,
    run after the step's clock stopped: ``JaxBackend.complete_step_stats``). Extras
    ``nfe_backward_vjp``, ``nfe_backward_recomputed``.
  - rknet: VJPs of f, 4 n (the forward's stages are stored, nothing is recomputed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from bench.frameworks.fixed_grid import steps_in_interval
from bench.frameworks.jax import (
    JaxBackend,
    checkpoint_backward_iterations,
    current_recorder,
    rk4_solvers,
    torchdiffeq_first_step,
    torchdiffeq_norm,
)

import bench
from bench.errors import BenchError
from bench.interfaces import AbstractBackend, Tolerances

#: diffrax's default bound on the number of steps; RecursiveCheckpointAdjoint derives its number
#: of checkpoints from it.
MAX_STEPS = 4096

FIRST_STEP_CHOICES = ("torchdiffeq", "diffrax")


@functools.cache
def _diffrax_parts() -> Any:
    """The classes that need diffrax at definition time (built on first use)."""
    import types

    import diffrax
    import equinox as eqx
    import equinox.internal as eqxi
    import jax.numpy as jnp

    class ReverseCountingAdjoint(diffrax.AbstractAdjoint):
        """Runs the reverse (adjoint) solve of BacksolveAdjoint, as its default would without
        differentiation, and adds that solve's statistics to the adjoint of the probe.

        BacksolveAdjoint hands its reverse ``diffeqsolve`` the ``adjoint`` given in its kwargs.
        The reverse solve's state is (y, a_y, a_args, a_terms); ``args`` is ``(params, probe)``,
        the dynamics never read the probe, so its adjoint stays exactly zero except for the
        counts added here, and BacksolveAdjoint returns it as the probe's gradient.
        """

        def loop(self, *, args: Any, terms: Any, solver: Any, stepsize_controller: Any,
                 event: Any, saveat: Any, t0: Any, t1: Any, dt0: Any, max_steps: Any,
                 throw: Any, init_state: Any, passed_solver_state: Any,
                 passed_controller_state: Any, progress_meter: Any) -> Any:
            del throw, passed_solver_state, passed_controller_state
            lax_loop = functools.partial(eqxi.while_loop, kind="lax")
            final_state, aux_stats = self._loop(
                args=args, terms=terms, solver=solver, stepsize_controller=stepsize_controller,
                event=event, saveat=saveat, t0=t0, t1=t1, dt0=dt0, max_steps=max_steps,
                init_state=init_state, inner_while_loop=lax_loop, outer_while_loop=lax_loop,
                progress_meter=progress_meter)
            n = final_state.num_steps
            counts = jnp.stack([(n > 0).astype(jnp.int32), n,
                                final_state.num_accepted_steps,
                                final_state.num_rejected_steps]).astype(jnp.float32)

            def add_counts(ys: Any) -> Any:
                y, a_y, (a_params, a_probe), a_terms = ys
                return y, a_y, (a_params, a_probe + counts), a_terms

            final_state = eqx.tree_at(lambda s: s.save_state.ys, final_state,
                                      replace_fn=add_counts)
            return final_state, aux_stats

    return types.SimpleNamespace(ReverseCountingAdjoint=ReverseCountingAdjoint)


def _int32(x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.asarray(x, jnp.int32)


class DiffraxBackend(JaxBackend):
    """Dopri5 with a PIDController, through ``diffrax.diffeqsolve``; ``adjoint`` is
    ``"checkpoint"`` (RecursiveCheckpointAdjoint) or ``"backsolve"`` (BacksolveAdjoint)."""

    solver = "dopri5"
    #: What solve(fixed_steps=L) integrates with: Dopri5 on an exact grid of L steps.
    fixed_step_solver = "dopri5 (fixed steps)"

    def __init__(self, name: str, adjoint: str, rtol: float = 1e-3, atol: float = 1e-3,
                 first_step: str = "torchdiffeq", max_steps: int = MAX_STEPS):
        if adjoint not in ("checkpoint", "backsolve"):
            raise ValueError(f"adjoint must be 'checkpoint' or 'backsolve', not {adjoint!r}")
        if first_step not in FIRST_STEP_CHOICES:
            raise ValueError(f"first_step must be one of {FIRST_STEP_CHOICES}, not {first_step!r}")
        self.name = name
        self.adjoint = adjoint
        self.rtol, self.atol = rtol, atol
        self.first_step = first_step
        self.max_steps = max_steps
        if adjoint == "checkpoint":
            self.gradient_method = "recursive-checkpoint"
            how = ("backprop through the solver with diffrax's RecursiveCheckpointAdjoint "
                   "(binomial checkpointing)")
        else:
            self.gradient_method = "adjoint"
            how = "the continuous adjoint (diffrax BacksolveAdjoint, reverse-time solve)"
        self.description = (f"diffrax Dopri5, PID rtol={rtol} atol={atol}, first step "
                             f"{first_step}; gradients by {how}")

    def import_modules(self) -> None:
        super().import_modules()
        rk4_solvers()
        _diffrax_parts()

    def _adjoint(self, counting: bool, reverse_controller: Any = None) -> Any:
        import diffrax

        if self.adjoint == "checkpoint":
            return diffrax.RecursiveCheckpointAdjoint()
        kwargs: dict[str, Any] = {}
        if counting:
            kwargs["adjoint"] = _diffrax_parts().ReverseCountingAdjoint()
        if reverse_controller is not None:
            kwargs["stepsize_controller"] = reverse_controller
        return diffrax.BacksolveAdjoint(**kwargs)

    def solve(self, f: Callable[[Any, Any, Any], Any], params: Any, y0: Any, t0: float,
              t1: float, *, ts: Any = None, fixed_steps: int | None = None,
              tolerances: Tolerances | None = None) -> tuple[Any, dict[str, Any]]:
        import diffrax
        import jax
        import jax.numpy as jnp

        recorder = current_recorder()
        probe = None if recorder is None else recorder.probe
        rtol, atol = ((self.rtol, self.atol) if tolerances is None
                      else (tolerances.rtol, tolerances.atol))
        term = diffrax.ODETerm(lambda t, y, args: f(t, y, args[0]))
        saveat = diffrax.SaveAt(t1=True) if ts is None else diffrax.SaveAt(ts=ts)
        solver = diffrax.Dopri5()
        reverse_controller = None
        if fixed_steps is not None:
            steps = int(fixed_steps)
            if steps < 1:
                raise BenchError(f"fixed_steps must be at least 1, not {fixed_steps}")
            if ts is not None and self.adjoint == "backsolve":
                raise BenchError(f"backend {self.name!r}: fixed_steps with ts is not supported "
                                 "(the reverse solve would need one grid per interval)")
            # StepTo on an exact grid: ConstantStepSize accumulates t += dt, whose rounding can
            # add a tiny extra step
            grid = jnp.linspace(t0, t1, steps + 1)
            controller = diffrax.StepTo(ts=grid)
            reverse_controller = diffrax.StepTo(ts=grid[::-1])
            dt0, max_steps, init_evals = None, steps, 1
        else:
            controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=torchdiffeq_norm)
            max_steps = self.max_steps
            dt0, init_evals = None, 1
        # The first stage of the first step, f(t0, y0), is evaluated here and handed to the
        # solver as its FSAL state (first_step=False): the heuristic needs it too, and every
        # step then evaluates exactly 6 stages, which keeps the counts below exact.
        f0 = f(t0, y0, params)
        if fixed_steps is None and self.first_step == "torchdiffeq":
            h = torchdiffeq_first_step(lambda t, y: f(t, y, params), t0, y0,
                                       jax.lax.stop_gradient(f0), 4, rtol, atol)
            dt0 = jax.lax.stop_gradient(h)
            init_evals = 2
        if self.adjoint == "backsolve":  # its forward pass is not differentiated
            f0 = jax.lax.stop_gradient(f0)
        solver_state = (jnp.array(False), f0)
        sol = diffrax.diffeqsolve(
            term, solver, t0, t1, dt0, y0, (params, probe), saveat=saveat,
            stepsize_controller=controller,
            adjoint=self._adjoint(probe is not None, reverse_controller),
            max_steps=max_steps, solver_state=solver_state)
        n = _int32(sol.stats["num_steps"])
        stats = {
            "num_steps": n,
            "num_accepted_steps": _int32(sol.stats["num_accepted_steps"]),
            "num_rejected_steps": _int32(sol.stats["num_rejected_steps"]),
            "nfe_forward": init_evals + 6 * n,
        }
        if self.adjoint == "checkpoint":
            # VJPs: f0 (outside the loop) and 6 stages per step; the first-step probe is under
            # stop_gradient
            stats["nfe_backward_vjp"] = 1 + 6 * n
            stats["max_steps"] = _int32(max_steps)
        if recorder is not None:
            recorder.records.append(stats)
        ys = sol.ys
        if ts is None:
            ys = jax.tree_util.tree_map(lambda y: y[0], ys)
        return ys, stats

    def _backward_counts(self, solves: list[Any], probe: Any) -> tuple[float, dict[str, float]]:
        import numpy as np

        if self.adjoint == "backsolve":
            reverse = dict(zip(("solves", "steps", "accepted", "rejected"),
                               np.asarray(probe, dtype=np.float64), strict=False))
            nfe = reverse["solves"] + 6 * reverse["steps"]
            return float(nfe), {"reverse_steps_accepted": float(reverse["accepted"]),
                                "reverse_steps_rejected": float(reverse["rejected"]),
                                "reverse_solves": float(reverse["solves"])}
        vjp = recomputed = 0.0
        for record in solves:
            steps = np.ravel(record["num_steps"])
            max_steps = int(np.ravel(record["max_steps"])[0])
            vjp += float(np.sum(record["nfe_backward_vjp"]))
            # each backward-loop iteration re-runs one step (6 stages); the VJP of a step
            # re-runs its 6 stages once more (diffrax's stage loop is itself a checkpointed
            # loop that stores the stages' inputs only)
            recomputed += sum(6.0 * checkpoint_backward_iterations(int(n), max_steps) + 6.0 * n
                              for n in steps)
        return vjp + recomputed, {"nfe_backward_vjp": vjp,
                                    "nfe_backward_recomputed": float(recomputed)}


class JaxRkNetBackend(JaxBackend):
    """RK-Net: a fixed number of RK4 steps (diffrax ERK solver with the classical tableau) in a
    ``lax.scan``, backpropagated through by JAX's autodiff (all stages stored, O(steps) memory)."""

    solver = "rk4"
    gradient_method = "backprop"

    def __init__(self, name: str = "jax-rknet", steps: int = 6, tableau: str = "classical"):
        if tableau not in ("classical", "3/8"):
            raise ValueError(f"tableau must be 'classical' or '3/8', not {tableau!r}")
        if int(steps) < 1:
            raise ValueError(f"the number of steps must be at least 1, not {steps}")
        self.name = name
        self.steps = int(steps)
        self.tableau = tableau
        self.fixed_step_solver = "rk4" if tableau == "classical" else "rk4-3/8"
        self.description = (f"RK4 ({tableau} tableau), {self.steps} fixed steps by default "
                            f"({4 * self.steps} evaluations), backprop through the steps")

    def import_modules(self) -> None:
        super().import_modules()
        rk4_solvers()
        _diffrax_parts()

    def solve(self, f: Callable[[Any, Any, Any], Any], params: Any, y0: Any, t0: float,
              t1: float, *, ts: Any = None, fixed_steps: int | None = None,
              tolerances: Tolerances | None = None) -> tuple[Any, dict[str, Any]]:
        """``steps`` (or ``fixed_steps``) equal steps over [t0, t1]. With ``ts`` (concrete, not
        traced: the step counts are static), as torch's rknet: each interval between consecutive
        times of (t0, *ts) gets ceil(length / step) equal steps, step = (t1 - t0) / steps; an
        empty interval (ts[0] == t0) takes none."""

        import diffrax
        import jax
        import jax.numpy as jnp
        import numpy as np

        tableaux = rk4_solvers()
        cls = tableaux.ClassicalRK4 if self.tableau == "classical" else tableaux.ThreeEighthsRK4
        # "bounded": the stage loop becomes a plain differentiable loop whose stages are stored
        # (the default, a checkpointed loop, would recompute every stage in the backward pass)
        solver = cls(scan_kind="bounded")
        steps = int(fixed_steps if fixed_steps is not None else self.steps)
        if steps < 1:
            raise BenchError(f"the number of steps must be at least 1, not {steps}")
        term = diffrax.ODETerm(lambda t, y, args: f(t, y, args))

        def integrate(y: Any, ta: Any, dt: Any, n: int) -> Any:
            """n steps of dt from ta; ta and dt float32 (concrete or traced)."""
            def rk_step(y: Any, i: Any) -> tuple[Any, None]:
                t = ta + i * dt
                y1, _, _, _, _ = solver.step(term, t, t + dt, y, params, None, False)
                return y1, None

            y, _ = jax.lax.scan(rk_step, y, jnp.arange(n, dtype=jnp.float32))
            return y

        if ts is None:
            ys = integrate(y0, np.float32(t0), np.float32((float(t1) - float(t0)) / steps), steps)
            total = steps
        else:
            try:
                times = [float(t0)] + [float(t) for t in np.asarray(ts).ravel()]
            except jax.errors.TracerArrayConversionError as exc:
                raise BenchError(f"backend {self.name!r}: ts must be concrete (not traced), "
                                 "since the number of RK4 steps per interval is static") from exc
            step = abs(float(t1) - float(t0)) / steps
            intervals = [(a, b, 0 if b == a else steps_in_interval(b - a, step, steps))
                         for a, b in zip(times[:-1], times[1:], strict=False)]
            total = sum(n for _, _, n in intervals)
            ys = _rk_intervals(integrate, y0, intervals)
        n = _int32(total)
        stats = {"num_steps": n, "num_accepted_steps": n, "num_rejected_steps": _int32(0),
                 "nfe_forward": 4 * n, "nfe_backward_vjp": 4 * n}
        recorder = current_recorder()
        if recorder is not None:
            recorder.records.append(stats)
        return ys, stats

    def _backward_counts(self, solves: list[Any], probe: Any) -> tuple[float, dict[str, float]]:
        import numpy as np

        vjp = float(sum(np.sum(r["nfe_backward_vjp"]) for r in solves))
        return vjp, {"nfe_backward_vjp": vjp, "nfe_backward_recomputed": 0.0}


def _rk_intervals(integrate: Callable[[Any, Any, Any, int], Any], y0: Any,
                  intervals: list[tuple[float, float, int]]) -> Any:
    """The states at the end of each interval (a, b, n): n steps of (b - a) / n from a, stacked.

    Consecutive intervals with the same n form one ``lax.scan`` over the intervals (n is static
    inside it), so a trajectory with hundreds of output times compiles one loop, not one per
    interval (jax-rknet on the latent ODE: 199 intervals, about 2 minutes of compilation when
    unrolled). The arithmetic per step is what one loop per interval did: t = a + i * dt in
    float32, a and dt rounded to float32 from their double-precision values.
    """
    import itertools

    import jax
    import jax.numpy as jnp
    import numpy as np

    runs, y = [], y0
    for n, group in itertools.groupby(intervals, key=lambda interval: interval[2]):
        group = list(group)
        if n == 0:  # empty intervals: the state as it is
            runs.append(_repeat(y, len(group)))
            continue
        starts = np.array([a for a, _, _ in group], dtype=np.float32)
        dts = np.array([(b - a) / n for a, b, _ in group], dtype=np.float32)

        def interval(y: Any, start_dt: Any, n: int = n) -> tuple[Any, Any]:
            y = integrate(y, start_dt[0], start_dt[1], n)
            return y, y

        y, states = jax.lax.scan(interval, y, (starts, dts))
        runs.append(states)
    return jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves), *runs)


def _repeat(tree: Any, k: int) -> Any:
    """``tree``'s leaves stacked k times along a new leading axis."""
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (k, *jnp.shape(leaf))),
                                  tree)


def backends() -> list[JaxBackend]:
    return [
        DiffraxBackend("diffrax-checkpoint", "checkpoint"),
        DiffraxBackend("diffrax-backsolve", "backsolve"),
        JaxRkNetBackend("jax-rknet"),
    ]


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    for backend in backends():
        register(backend)
