"""The JAX backends, built on diffrax (plugin module: importing it never imports jax).

- ``diffrax-checkpoint``: Dopri5 + PIDController, gradients by differentiating the solver with
  diffrax's default ``RecursiveCheckpointAdjoint`` (online binomial checkpointing);
- ``diffrax-backsolve``: Dopri5 + PIDController, gradients by ``BacksolveAdjoint`` (the continuous
  adjoint: a second, reverse-time solve; the counterpart of torch-adjoint);
- ``diffrax-direct`` (not in ``--backends all``: run it by name): the same solve, gradients by
  ``DirectAdjoint`` (differentiating through every stored step);
- ``jax-rknet`` (:mod:`bench.plugins.jax_rknet`): classical RK4 (an explicit Runge-Kutta built
  from its Butcher tableau, since diffrax has none) with a fixed number of steps, backpropagated
  through the stored steps.

Matching the torch backends: rtol = atol = 1e-3 by default; the error norm is torchdiffeq's (RMS of
each leaf, maximum over leaves); the first step is torchdiffeq's initial-step heuristic (Hairer,
Norsett & Wanner II.4; two evaluations of f, the first reused as the first stage), because with
``dt0=None`` diffrax 0.7.2 starts at dt = 0.01 without probing: its ``_select_initial_step``
(``_step_size_controller/pid.py``) probes only when the terms are a bare ``ODETerm`` (else it
returns 0.01), and ``diffeqsolve`` hands the controller its terms wrapped in ``WrapTerm``
(``_integrate.py``), so the probe is never reached (checked: first step 0.01, forward NFE 1 + 6 n,
in tests/test_jax_backends.py). Even where it probes, its exponent 1/6 (Dopri5's error order)
differs from torchdiffeq's 1/5. Even with the same first step the two libraries do not take the
same steps: their error norms differ on a tuple state (torchdiffeq's RMS over all of it, diffrax's
largest RMS of its parts) and torchdiffeq steps past the last output time and interpolates back
while diffrax clips its last step (docs/usage.md's step rules).

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
from collections.abc import Callable, Mapping
from typing import Any

from bench.frameworks.jax import (
    JaxBackend,
    checkpoint_backward_iterations,
    current_recorder,
    reverse_seminorm,
    rk4_solvers,
    torchdiffeq_first_step,
    torchdiffeq_norm,
)

import bench
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend, Tolerances, effective_tolerances
from bench.core.options import OptionSpec, positive
from bench.core.solvers import (
    ADJOINT_NORMS,
    fixed_steps_problem,
    framework_method,
    ode_parameters,
    solver_info,
)

#: diffrax's default bound on the number of steps; RecursiveCheckpointAdjoint derives its number
#: of checkpoints from it.
MAX_STEPS = 4096

FIRST_STEP_CHOICES = ("torchdiffeq", "diffrax")
#: diffrax's gradient methods: RecursiveCheckpointAdjoint, BacksolveAdjoint, DirectAdjoint.
ADJOINTS = ("checkpoint", "backsolve", "direct")


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
                 saveat: Any, t0: Any, t1: Any, dt0: Any, max_steps: Any,
                 throw: Any, init_state: Any, passed_solver_state: Any,
                 passed_controller_state: Any, progress_meter: Any, **event: Any) -> Any:
            # event: diffrax 0.6's ``event``, or 0.5's ``discrete_terminating_event``, passed on
            # under its own name
            del throw, passed_solver_state, passed_controller_state
            lax_loop = functools.partial(eqxi.while_loop, kind="lax")
            final_state, aux_stats = self._loop(
                args=args, terms=terms, solver=solver, stepsize_controller=stepsize_controller,
                **event, saveat=saveat, t0=t0, t1=t1, dt0=dt0, max_steps=max_steps,
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


def diffrax_parameters(adjoint: str) -> tuple[OptionSpec, ...]:
    """The parameters of a diffrax backend of gradient method ``adjoint``."""
    first_step = OptionSpec("first_step", str, "torchdiffeq", "initial step rule: torchdiffeq's "
                            "heuristic (as torch's backends) or diffrax's dt0=None",
                            choices=FIRST_STEP_CHOICES)
    checkpoints = OptionSpec("checkpoints", int, None, "checkpoints of "
                             "RecursiveCheckpointAdjoint (none: diffrax's default, from "
                             "max_steps)", validator=positive, nullable=True,
                             valid="a positive integer")
    return ode_parameters(first_step, adjoint=adjoint == "backsolve",
                          extra=(checkpoints,) if adjoint == "checkpoint" else ())


class DiffraxBackend(JaxBackend):
    """A solver of the shared vocabulary (default Dopri5 with a PIDController) through
    ``diffrax.diffeqsolve``; ``adjoint`` is ``"checkpoint"`` (RecursiveCheckpointAdjoint) or
    ``"backsolve"`` (BacksolveAdjoint). The other keywords are its parameters
    (:func:`diffrax_parameters`)."""

    #: What solve(fixed_steps=L) integrates with: Dopri5 on an exact grid of L steps.
    fixed_step_solver = "dopri5 (fixed steps)"
    parameter_aliases = {"method": "solver"}

    def __init__(self, name: str, adjoint: str, rtol: float = 1e-3, atol: float = 1e-3,
                 first_step: str = "torchdiffeq", max_steps: int = MAX_STEPS,
                 solver: str = "dopri5", fixed_steps: int | None = None,
                 checkpoints: int | None = None, adjoint_rtol: float | None = None,
                 adjoint_atol: float | None = None, adjoint_norm: str = "default"):
        if adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be one of {ADJOINTS}, not {adjoint!r}")
        if first_step not in FIRST_STEP_CHOICES:
            raise ValueError(f"first_step must be one of {FIRST_STEP_CHOICES}, not {first_step!r}")
        info = solver_info(solver)
        problem = fixed_steps_problem(solver, fixed_steps)
        if problem:
            raise BenchError(problem)
        if adjoint_norm not in ADJOINT_NORMS:
            raise BenchError(f"adjoint_norm must be one of {', '.join(ADJOINT_NORMS)}")
        if adjoint_norm == "seminorm" and not info.adaptive:
            raise BenchError(f"adjoint_norm=seminorm controls adaptive steps: solver {solver!r} "
                             "takes fixed steps")
        self.name = name
        self.adjoint = adjoint
        self.parameters = diffrax_parameters(adjoint)
        self.solver = solver
        self.adaptive = info.adaptive
        self.rtol, self.atol = rtol, atol
        self.first_step = first_step
        self.max_steps = max_steps
        self.fixed_steps = fixed_steps
        self.checkpoints = checkpoints if adjoint == "checkpoint" else None
        backsolve = adjoint == "backsolve"
        self.adjoint_rtol = adjoint_rtol if backsolve else None
        self.adjoint_atol = adjoint_atol if backsolve else None
        self.adjoint_norm = adjoint_norm if backsolve else None
        # DirectAdjoint (everything stored; slow to compile) is a variant run by name
        self.in_all = adjoint != "direct"
        if adjoint == "checkpoint":
            self.gradient_method = "recursive-checkpoint"
            how = ("backprop through the solver with diffrax's RecursiveCheckpointAdjoint "
                   "(binomial checkpointing)")
        elif adjoint == "direct":
            self.gradient_method = "backprop"
            how = "backprop through the solver with diffrax's DirectAdjoint (every step stored)"
        else:
            self.gradient_method = "adjoint"
            how = "the continuous adjoint (diffrax BacksolveAdjoint, reverse-time solve)"
            if adjoint_norm == "seminorm":
                how += ", seminorm reverse solve"
        steps = (f"PID rtol={rtol} atol={atol}, first step {first_step}" if info.adaptive
                 else f"{fixed_steps} fixed steps")
        self.description = f"diffrax {info.diffrax}, {steps}; gradients by {how}"

    def configure(self, values: Mapping[str, Any]) -> DiffraxBackend:
        if not values:
            return self
        backend = DiffraxBackend(self.name, self.adjoint, max_steps=self.max_steps,
                                 **{**self.configuration(), **values})
        backend.user_parameters = {**self.user_parameters, **values}
        return backend

    def import_modules(self) -> None:
        super().import_modules()
        rk4_solvers()
        _diffrax_parts()

    def stepper(self) -> tuple[Any, bool, int, bool]:
        """The diffrax solver of ``solver``, whether it reuses its last stage as the next
        step's first (FSAL), its evaluations of f per step, and whether its stages run in a
        stage loop (a Runge-Kutta method: the VJP of a step re-runs its stages; Euler: no)."""
        import diffrax

        name = framework_method(self.solver, "diffrax")
        if name == "Euler":
            return diffrax.Euler(), False, 1, False
        cls = (rk4_solvers().ThreeEighthsRK4 if name == "ThreeEighthsRK4"
               else getattr(diffrax, name))
        tableau = cls.tableau
        stages = len(tableau.c) + 1
        return cls(), bool(tableau.fsal), stages - 1 if tableau.fsal else stages, True

    def _adjoint(self, counting: bool, reverse_controller: Any = None) -> Any:
        import diffrax

        if self.adjoint == "checkpoint":
            return diffrax.RecursiveCheckpointAdjoint(checkpoints=self.checkpoints)
        if self.adjoint == "direct":
            return diffrax.DirectAdjoint()
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
        tol = effective_tolerances(self, tolerances)
        rtol, atol = tol.rtol, tol.atol
        term = diffrax.ODETerm(lambda t, y, args: f(t, y, args[0]))
        saveat = diffrax.SaveAt(t1=True) if ts is None else diffrax.SaveAt(ts=ts)
        solver, fsal, per_step, stage_loop = self.stepper()
        controller: diffrax.AbstractStepSizeController
        reverse_controller: diffrax.AbstractStepSizeController | None = None
        if fixed_steps is not None:  # the suite's (the memory study): Dopri5 on an exact grid
            solver, fsal, per_step, stage_loop = diffrax.Dopri5(), True, 6, True
        elif not self.adaptive:
            fixed_steps = self.fixed_steps
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
            dt0, max_steps, probe_first_step = None, steps, False
        else:
            controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=torchdiffeq_norm)
            max_steps = self.max_steps
            dt0, probe_first_step = None, self.first_step == "torchdiffeq"
            reverse_rtol, reverse_atol = tol.reverse
            if self.adjoint_norm == "seminorm" or (reverse_rtol, reverse_atol) != (rtol, atol):
                norm = reverse_seminorm if self.adjoint_norm == "seminorm" else torchdiffeq_norm
                reverse_controller = diffrax.PIDController(rtol=reverse_rtol, atol=reverse_atol,
                                                           norm=norm)
        # An FSAL solver's first stage of the first step, f(t0, y0), is evaluated here and
        # handed to the solver as its FSAL state (first_step=False): the heuristic needs it too,
        # and every step then evaluates exactly per_step stages, which keeps the counts below
        # exact. A solver without FSAL evaluates every stage of every step itself; f0 is then
        # evaluated here only for the heuristic.
        init_evals = 0
        solver_state = None
        f0 = None
        if fsal or probe_first_step:
            f0 = f(t0, y0, params)
            init_evals = 1
        if probe_first_step:
            order = solver_info(self.solver).order - 1  # as torchdiffeq passes it
            h = torchdiffeq_first_step(lambda t, y: f(t, y, params), t0, y0,
                                       jax.lax.stop_gradient(f0), order, rtol, atol)
            dt0 = jax.lax.stop_gradient(h)
            init_evals += 1
        if fsal:
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
            "nfe_forward": init_evals + per_step * n,
            "per_step": _int32(per_step),
            "fsal": _int32(int(fsal)),
            "stage_loop": _int32(int(stage_loop)),
        }
        if self.adjoint in ("checkpoint", "direct"):
            # VJPs: f0 (outside the loop, an FSAL solver's) and per_step stages per step; the
            # first-step probe is under stop_gradient
            stats["nfe_backward_vjp"] = int(fsal) + per_step * n
            stats["max_steps"] = _int32(max_steps)
        if recorder is not None:
            recorder.records.append(stats)
        ys = sol.ys
        if ts is None:
            ys = jax.tree_util.tree_map(lambda y: y[0], ys)
        return ys, stats

    def backward_counts(self, solves: list[Any], probe: Any) -> tuple[float, dict[str, float]]:
        import numpy as np

        if self.adjoint == "backsolve":
            reverse = dict(zip(("solves", "steps", "accepted", "rejected"),
                               np.asarray(probe, dtype=np.float64), strict=False))
            # the reverse solve runs the forward's solver: an FSAL one evaluates its first stage
            # once per solve, then per_step a step
            record = solves[0] if solves else {"per_step": 6, "fsal": 1}
            per_step = float(np.ravel(record["per_step"])[0])
            fsal = float(np.ravel(record["fsal"])[0])
            nfe = fsal * reverse["solves"] + per_step * reverse["steps"]
            return float(nfe), {"reverse_steps_accepted": float(reverse["accepted"]),
                                "reverse_steps_rejected": float(reverse["rejected"]),
                                "reverse_solves": float(reverse["solves"])}
        vjp = recomputed = 0.0
        for record in solves:
            steps = np.ravel(record["num_steps"])
            max_steps = int(np.ravel(record["max_steps"])[0])
            per_step = float(np.ravel(record["per_step"])[0])
            stage_loop = float(np.ravel(record["stage_loop"])[0])
            vjp += float(np.sum(record["nfe_backward_vjp"]))
            # each backward-loop iteration re-runs one step (per_step evaluations); the VJP of a
            # Runge-Kutta step re-runs its stages once more (diffrax's stage loop is itself a
            # checkpointed loop that stores the stages' inputs only; Euler has none)
            # DirectAdjoint stores every step: its backward pass re-runs each step once
            recomputed += sum(
                per_step * (n if self.adjoint == "direct" else
                            checkpoint_backward_iterations(int(n), max_steps, self.checkpoints))
                + stage_loop * per_step * n for n in steps)
        return vjp + recomputed, {"nfe_backward_vjp": vjp,
                                    "nfe_backward_recomputed": float(recomputed)}


def backends() -> list[JaxBackend]:
    return [
        DiffraxBackend("diffrax-checkpoint", "checkpoint"),
        DiffraxBackend("diffrax-backsolve", "backsolve"),
        DiffraxBackend("diffrax-direct", "direct"),
    ]


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    for backend in backends():
        register(backend)
