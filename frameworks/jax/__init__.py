"""The JAX framework layer: what JAX backends implement (:mod:`bench.plugins.jax_diffrax`) and
JAX suites call.

Importing this package never imports jax: the base class must be usable to report "jax is not
installed". Everything numerical imports jax inside the function that needs it.

The API a JAX suite uses (the counterpart of :mod:`bench.frameworks.torch`)::

    y, stats = backend.solve(f, params, y0, t0, t1)        # f(t, y, params) -> dy/dt
    ys, stats = backend.solve(f, params, y0, t0, t1, ts=ts)  # y at each time of ts
    y, stats = backend.solve(f, params, y0, t0, t1, fixed_steps=L)  # exactly L fixed steps
    y, stats = backend.solve(f, params, y0, t0, t1, tolerances=Tolerances(1e-5, 1e-5))

    vg = backend.value_and_grad(loss_fn, has_aux=True)     # loss_fn(params, *args) calls solve
    (loss, aux), grads, counts = vg(params, *args)         # inside jax.jit
    step = CompiledStep(fn)                                # fn(*args) -> (state, loss, counts)
    state, loss, counts = step(*args)                      # compiled at the first call
    evaluate = TracedOnce(fn, "name")                      # jax.jit, kept across runs
    stats = backend.step_stats(loss, counts, step.extra())  # reads the loss only
    stats = backend.complete_step_stats(stats)             # the counts (the core: after the clock)

The contract is :meth:`JaxBackend.solve` (abstract; its docstring says everything a solve must
do). ``solve`` works inside ``jax.jit`` and ``jax.grad``. ``stats`` is a dict of int32 arrays read
from the solver (never from host callbacks): ``num_steps`` (accepted + rejected),
``num_accepted_steps``, ``num_rejected_steps``, ``nfe_forward`` and what the backward count needs
(``nfe_backward``, or what :meth:`JaxBackend.backward_counts` reads). Inside ``value_and_grad``
every solve records its stats in ``counts`` through :func:`record_solve` (call ``solve`` at the top
level of ``loss_fn``, not inside ``lax.scan``/``vmap`` bodies, whose tracers cannot leave them), and
the backsolve backend reads the reverse solves' statistics through ``counts["probe"]`` (see
:mod:`bench.plugins.jax_diffrax`). :meth:`JaxBackend.step_stats` turns the counts into a
:class:`bench.core.interfaces.StepStats` on the host; what each number counts is in the backend
module's docstring; inside the step's clock it only reads the loss back, and
:meth:`JaxBackend.complete_step_stats` fetches and sums the counts after the clock stopped (the
core calls it; call it yourself when driving a task outside the core). ``load_weights(model,
where, weights)`` loads a suite's neutral numpy weights.

A backend: subclass :class:`JaxBackend` and implement ``solve`` (docs/plugins.md walks through a
complete one).

Blocking: JAX dispatches asynchronously. :class:`CompiledStep` returns the step's outputs as
dispatched, like a plain loop's jitted call; ``step_stats`` reads the loss, which waits for the
step; :meth:`JaxBackend.synchronize` (called by the core before the step's clock stops) blocks on
every live array and on pending effects, so nothing queued can leak into the next clock reading.
"""

from __future__ import annotations

from bench.frameworks.jax._backend import (
    COUNTING_HINT,
    INSTALL_HINT,
    PROBE_FIELDS,
    REQUIRED_MODULES,
    JaxBackend,
    SolveBackend,
    current_recorder,
    missing_modules,
    record_solve,
)
from bench.frameworks.jax._cache import configure_from_environment
from bench.frameworks.jax._checkpoint import checkpoint_backward_iterations
from bench.frameworks.jax._devices import JaxGpuPeakTracker, jax_device
from bench.frameworks.jax._gradients import GradientProber
from bench.frameworks.jax._programs import TracedOnce
from bench.frameworks.jax._solvers import (
    reverse_seminorm,
    rk4_solvers,
    rk4_step,
    torchdiffeq_first_step,
    torchdiffeq_norm,
)
from bench.frameworks.jax._step import (
    CompiledStep,
    CompileOnce,
    adam_init,
    adam_update,
    sgd_momentum_init,
    sgd_momentum_update,
)
from bench.frameworks.jax._weights import load_weights

# a cell's compile cache (BENCH_COMPILE_CACHE; unset: nothing), before jax and equinox are
# imported (no module above imports them)
configure_from_environment()

__all__ = [
    "COUNTING_HINT", "INSTALL_HINT", "PROBE_FIELDS", "REQUIRED_MODULES", "CompileOnce",
    "CompiledStep", "GradientProber", "JaxBackend", "JaxGpuPeakTracker", "SolveBackend",
    "adam_init", "adam_update", "checkpoint_backward_iterations", "current_recorder",
    "jax_device", "load_weights", "missing_modules", "record_solve", "rk4_solvers", "rk4_step",
    "sgd_momentum_init", "sgd_momentum_update", "torchdiffeq_first_step", "torchdiffeq_norm",
    "reverse_seminorm", "TracedOnce",
]
