"""Shared code of the JAX backends (:mod:`bench.plugins.jax_diffrax`) and the API that JAX suites
call.

Importing this module never imports jax: the base class must be usable to report "jax is not
installed". Everything numerical imports jax inside the function that needs it.

The API a JAX suite uses (the counterpart of ``plugins/torch_common.py``)::

    y, stats = backend.solve(f, params, y0, t0, t1)        # f(t, y, params) -> dy/dt
    ys, stats = backend.solve(f, params, y0, t0, t1, ts=ts)  # y at each time of ts
    y, stats = backend.solve(f, params, y0, t0, t1, fixed_steps=L)  # exactly L fixed steps

    vg = backend.value_and_grad(loss_fn, has_aux=True)     # loss_fn(params, *args) calls solve
    (loss, aux), grads, counts = vg(params, *args)         # inside jax.jit
    step = CompiledStep(fn)                                # fn(*args) -> (state, loss, counts)
    state, loss, counts = step(*args)                      # compiled at the first call; blocks
    stats = backend.step_stats(loss, counts, extra={"xla_temp_bytes": step.xla_temp_bytes})

``solve`` works inside ``jax.jit`` and ``jax.grad``. ``stats`` is a dict of int32 arrays read from
the solver (never from host callbacks): ``num_steps`` (accepted + rejected), ``num_accepted_steps``,
``num_rejected_steps``, ``nfe_forward`` and what the backward count needs. Inside
``value_and_grad`` every solve call also records its stats in ``counts`` (call ``solve`` at the top
level of ``loss_fn``, not inside ``lax.scan``/``vmap`` bodies, whose tracers cannot leave them), and
the backsolve backend reads the reverse solves' statistics through ``counts["probe"]`` (see
:mod:`bench.plugins.jax_diffrax`). :meth:`JaxBackend.step_stats` turns the counts into a
:class:`bench.interfaces.StepStats` on the host; what each number counts is in the backend's
``nfe_notes``.

Blocking: JAX dispatches asynchronously. :class:`CompiledStep` blocks on every output of the step
(new parameters, optimiser state, loss, counts) before returning, so a task's ``train_step`` returns
only when the step's work has finished; :meth:`JaxBackend.synchronize` additionally blocks on every
live array and on pending effects, so nothing queued can leak into the next clock reading.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

from bench.errors import BenchError
from bench.interfaces import AbstractBackend, MemoryTracker, StepStats

REQUIRED_MODULES = ("jax", "diffrax", "equinox")
INSTALL_HINT = "pip install 'neural-ode-bench[jax]'"


def missing_modules() -> list[str]:
    """The modules of the ``jax`` extra that cannot be found (without importing them)."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            missing.append(name)
    return missing


def jax_device(device: str) -> Any:
    """The jax device for a resolved device string (``cpu`` or ``cuda``)."""
    import jax

    if device == "cpu":
        return jax.devices("cpu")[0]
    if device.startswith("cuda"):
        gpus = _gpu_devices()
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= len(gpus):
            raise BenchError(f"jax sees {len(gpus)} GPU(s); there is no {device!r}")
        return gpus[index]
    raise BenchError(f"unknown device {device!r} (valid: cpu, cuda, auto)")


def _gpu_devices() -> list[Any]:
    import jax

    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend (CPU-only jaxlib, or no visible device)
        return []


# -------------------------------------------------------------------------------------------------
# Memory
# -------------------------------------------------------------------------------------------------


class JaxGpuPeakTracker(MemoryTracker):
    """GPU memory from XLA's allocator statistics (``device.memory_stats()``).

    XLA's ``peak_bytes_in_use`` cannot be reset, so the peak of a phase is the peak since the
    process started, minus the bytes in use when the phase began: a later phase never reports less
    than an earlier, larger one. The method name says so.
    """

    method = "xla_gpu_peak_bytes_in_use_since_process_start"

    def __init__(self, device: Any):
        self.device = device
        self._baseline: int | None = None

    def _stats(self) -> Mapping[str, int] | None:
        try:
            return self.device.memory_stats()
        except Exception:  # some platforms do not report statistics
            return None

    def reset(self) -> None:
        stats = self._stats()
        self._baseline = None if not stats else int(stats.get("bytes_in_use", 0))

    def peak_bytes(self) -> int | None:
        stats = self._stats()
        if not stats or self._baseline is None or "peak_bytes_in_use" not in stats:
            return None
        return max(0, int(stats["peak_bytes_in_use"]) - self._baseline)


# -------------------------------------------------------------------------------------------------
# Recording the solves of one loss function (trace time)
# -------------------------------------------------------------------------------------------------

#: Probe layout: the backsolve backend adds the reverse solves' statistics to the cotangent of a
#: zero vector passed to every solve as part of ``args`` (the dynamics never read it, so its true
#: gradient is exactly zero). Entries: reverse solves, reverse steps, accepted, rejected.
PROBE_FIELDS = ("reverse_solves", "reverse_num_steps", "reverse_accepted", "reverse_rejected")


class _Recorder:
    """Collects the stats of each ``solve`` traced inside :meth:`JaxBackend.value_and_grad`."""

    def __init__(self, probe: Any):
        self.probe = probe
        self.records: list[dict[str, Any]] = []


_RECORDERS: list[_Recorder] = []


def current_recorder() -> _Recorder | None:
    return _RECORDERS[-1] if _RECORDERS else None


@dataclasses.dataclass(frozen=True)
class _PendingStepStats(StepStats):
    """A step's statistics whose backward counts :meth:`JaxBackend.complete_step_stats` has yet
    to compute from ``pending`` (the fetched per-solve stats and probe gradient)."""

    pending: Any = dataclasses.field(default=None, repr=False, compare=False)


# -------------------------------------------------------------------------------------------------
# The base backend
# -------------------------------------------------------------------------------------------------


class JaxBackend(AbstractBackend):
    """Base of the JAX backends: availability, devices, synchronisation, memory, counting.

    Subclasses implement :meth:`solve` and :meth:`_backward_counts`.
    """

    framework = "jax"
    #: Integrates a continuous-time model (the ResNet, with untied weights, has no JAX backend).
    continuous_time = True
    rtol: float = 1e-3
    atol: float = 1e-3
    #: What each NFE number counts, for the results' notes.
    nfe_notes: str = ""

    # -- environment ----------------------------------------------------------------------------
    def check_available(self) -> str | None:
        missing = missing_modules()
        if missing:
            which = "jax" if "jax" in missing else ", ".join(missing)
            return f"{which} is not installed: {INSTALL_HINT}"
        return None

    def resolve_device(self, requested: str) -> str:
        if requested == "cpu":
            return "cpu"
        if requested == "auto":
            return "cuda" if _gpu_devices() else "cpu"
        if requested.startswith("cuda"):
            if not _gpu_devices():
                raise BenchError(
                    f"backend {self.name!r}: jax sees no GPU (install a CUDA build of jaxlib, "
                    "e.g. pip install 'jax[cuda12]', or use --device cpu)")
            jax_device(requested)  # raises for a missing index
            return requested
        raise BenchError(f"unknown device {requested!r} (valid: cpu, cuda, auto)")

    def device_name(self, device: str) -> str:
        if device == "cpu":
            from bench.measure import cpu_model

            return cpu_model()
        return str(jax_device(device).device_kind)

    def synchronize(self, device: str) -> None:
        """Block on every live jax array and on pending effects (callbacks)."""
        import jax

        for array in jax.live_arrays():
            try:
                array.block_until_ready()
            except RuntimeError:  # deleted or donated meanwhile
                pass
        jax.effects_barrier()

    def memory_tracker(self, device: str) -> MemoryTracker:
        if device == "cpu":
            from bench.measure import ResidentMemoryTracker

            return ResidentMemoryTracker()
        return JaxGpuPeakTracker(jax_device(device))

    # -- numerics ------------------------------------------------------------------------------
    def import_modules(self) -> None:
        """Import what :meth:`solve` needs (diffrax, equinox), so that the first timed step
        imports nothing: its extra time, ``compile_time_s``, is then compilation only."""
        import diffrax  # noqa: F401
        import equinox  # noqa: F401

    def solve(self, f: Callable[[Any, Any, Any], Any], params: Any, y0: Any, t0: float,
              t1: float, *, ts: Any = None, fixed_steps: int | None = None
              ) -> tuple[Any, dict[str, Any]]:
        """Integrate dy/dt = f(t, y, params) from t0 to t1; usable inside ``jax.jit``/``grad``.

        :param f: the dynamics, ``f(t, y, params) -> dy/dt`` (same pytree structure as y).
        :param params: pytree of the dynamics' parameters (differentiated through).
        :param y0: initial state (pytree of float arrays).
        :param ts: None: return y(t1); else a 1-D array of increasing times in [t0, t1]: return
            the states at those times, stacked along a new leading axis.
        :param fixed_steps: take exactly this many equal steps over [t0, t1] (no step-size
            control), e.g. for the memory-scaling study.
        :returns: ``(y, stats)``; ``stats`` holds int32 arrays (see the module docstring).
        """
        raise NotImplementedError

    def value_and_grad(self, loss_fn: Callable[..., Any], has_aux: bool = False
                       ) -> Callable[..., tuple[Any, Any, dict[str, Any]]]:
        """``loss_fn(params, *args)`` -> ``(value, grads, counts)``, for use inside ``jax.jit``.

        ``value`` is ``loss`` or ``(loss, aux)``; ``grads`` is the gradient with respect to
        ``params``; ``counts`` holds the stats of every :meth:`solve` traced in ``loss_fn`` and the
        probe's gradient (the backward statistics that only the backward pass knows).
        """
        import jax
        import jax.numpy as jnp

        self.import_modules()  # called when a task is built: no import inside a timed step

        def with_recorder(params: Any, probe: Any, *args: Any) -> tuple[Any, Any]:
            recorder = _Recorder(probe)
            _RECORDERS.append(recorder)
            try:
                out = loss_fn(params, *args)
            finally:
                _RECORDERS.remove(recorder)
            loss, aux = out if has_aux else (out, None)
            return loss, (aux, recorder.records)

        grad_fn = jax.value_and_grad(with_recorder, argnums=(0, 1), has_aux=True)

        def value_and_grad(params: Any, *args: Any) -> tuple[Any, Any, dict[str, Any]]:
            probe = jnp.zeros(len(PROBE_FIELDS), jnp.float32)
            (loss, (aux, records)), (grads, probe_grad) = grad_fn(params, probe, *args)
            value = (loss, aux) if has_aux else loss
            return value, grads, {"solves": records, "probe": probe_grad}

        return value_and_grad

    #: True where :meth:`_backward_counts` does work that must stay out of the timed step: the
    #: step's statistics then leave ``nfe_backward`` to :meth:`complete_step_stats`.
    defers_backward_counts: bool = False

    def step_stats(self, loss: Any, counts: Mapping[str, Any],
                   extra: Mapping[str, float] | None = None) -> StepStats:
        """A :class:`StepStats` from a step's loss and counts (host side; fetches them). Where
        the backend ``defers_backward_counts``, ``nfe_backward`` is filled in by
        :meth:`complete_step_stats`, which the core calls after the step's clock stopped (call
        it yourself when driving a task outside the core)."""
        import jax
        import numpy as np

        loss, counts = jax.device_get((loss, counts))
        solves = counts["solves"]
        total = {key: float(sum(np.sum(r[key]) for r in solves))
                 for key in ("nfe_forward", "num_accepted_steps", "num_rejected_steps")}
        more = dict(extra or {})
        nfe_backward = None
        deferred = bool(solves) and self.defers_backward_counts
        if solves and not deferred:
            nfe_backward, backward_extra = self._backward_counts(solves, counts["probe"])
            more.update(backward_extra)
        return (_PendingStepStats if deferred else StepStats)(
            loss=float(loss),
            nfe_forward=total["nfe_forward"] if solves else None,
            nfe_backward=nfe_backward,
            steps_accepted=total["num_accepted_steps"] if solves else None,
            steps_rejected=total["num_rejected_steps"] if solves else None,
            extra=more,
            **({"pending": (solves, counts["probe"])} if deferred else {}),
        )

    def complete_step_stats(self, stats: StepStats) -> StepStats:
        """The deferred backward counts of :meth:`step_stats` (see ``defers_backward_counts``)."""
        if not isinstance(stats, _PendingStepStats):
            return stats
        nfe_backward, backward_extra = self._backward_counts(*stats.pending)
        return StepStats(
            loss=stats.loss, nfe_forward=stats.nfe_forward, nfe_backward=nfe_backward,
            steps_accepted=stats.steps_accepted, steps_rejected=stats.steps_rejected,
            saved_for_backward_bytes=stats.saved_for_backward_bytes,
            extra={**stats.extra, **backward_extra})

    def _backward_counts(self, solves: list[Mapping[str, Any]], probe: Any
                         ) -> tuple[float | None, dict[str, float]]:
        """(nfe_backward, extra) from the fetched per-solve stats and probe gradient."""
        raise NotImplementedError


# -------------------------------------------------------------------------------------------------
# Counting the recomputation of diffrax's checkpointed loop
# -------------------------------------------------------------------------------------------------


@functools.cache
def _checkpoint_replay(max_steps: int, checkpoints: int | None) -> Callable[[int], int]:
    """A compiled toy loop run by equinox's real checkpointed while loop (the one diffrax's
    RecursiveCheckpointAdjoint uses), differentiated, with a host counter in its body: returns
    a function n -> number of body evaluations the backward pass makes after n forward steps.

    This is an instrumented replay of the checkpointing schedule only (it is a function of n,
    max_steps and checkpoints, never of the data), run outside the compiled training step.
    """
    import equinox.internal as eqxi
    import jax
    import jax.numpy as jnp

    calls = [0]

    def tick() -> None:
        calls[0] += 1

    def body(carry: tuple[Any, Any]) -> tuple[Any, Any]:
        i, x = carry
        jax.debug.callback(tick)
        return i + 1, x * 1.5

    def run(x: Any, n: Any) -> Any:
        _, out = eqxi.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x),
                                 max_steps=max_steps, kind="checkpointed",
                                 checkpoints=checkpoints)
        return out

    forward = jax.jit(lambda x, n: jax.vjp(lambda x_: run(x_, n), x))
    backward = jax.jit(lambda vjp_fn, ct: vjp_fn(ct))

    @functools.cache
    def backward_iterations(n: int) -> int:
        x = jnp.float32(1.0)
        calls[0] = 0
        _, vjp_fn = forward(x, jnp.int32(n))
        jax.block_until_ready(vjp_fn)
        jax.effects_barrier()
        if calls[0] != n:
            raise RuntimeError(f"checkpoint replay: {calls[0]} forward steps, expected {n}")
        calls[0] = 0
        jax.block_until_ready(backward(vjp_fn, jnp.float32(1.0)))
        jax.effects_barrier()
        return calls[0]

    return backward_iterations


def checkpoint_backward_iterations(num_steps: int, max_steps: int,
                                   checkpoints: int | None = None) -> int:
    """Loop-body evaluations in the backward pass of diffrax's RecursiveCheckpointAdjoint after
    ``num_steps`` forward steps: each evaluation recomputes one solver step from a checkpoint,
    either to move forward to the step being differentiated or to linearise it for its VJP."""
    if num_steps <= 0:
        return 0
    return _checkpoint_replay(int(max_steps), checkpoints)(int(num_steps))


# -------------------------------------------------------------------------------------------------
# A whole training step, compiled once
# -------------------------------------------------------------------------------------------------


class CompiledStep:
    """``fn`` compiled ahead of time at its first call (so compilation falls in the first,
    warm-up step), then called through ``jax.jit``'s dispatch, which reuses that executable:
    arguments of another shape or dtype raise TypeError (after jax has compiled them: the error is
    for a task's bug, not a path to take). Every call blocks until all outputs are ready.

    Calling the ``jax.stages.Compiled`` object itself takes a slower Python path: 1.5 ms more per
    step on the CNF (10.9 against 9.4 ms for diffrax-checkpoint), which a plain training loop
    calling a jitted function does not pay.

    ``xla_temp_bytes`` is XLA's compiled memory analysis of the step (temporary buffers).
    """

    def __init__(self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = ()):
        self.fn = fn
        self.donate_argnums = donate_argnums
        self.compiled: Any = None
        self.xla_temp_bytes: int | None = None
        self.calls = 0
        self._jitted: Any = None

    def lower(self, *args: Any) -> Any:
        import jax

        if self._jitted is None:
            self._jitted = jax.jit(self.fn, donate_argnums=self.donate_argnums)
        return self._jitted.lower(*args)

    def __call__(self, *args: Any) -> Any:
        import jax

        if self.compiled is None:
            self.compiled = self.lower(*args).compile()
            try:
                analysis = self.compiled.memory_analysis()
                self.xla_temp_bytes = int(analysis.temp_size_in_bytes)
            except Exception:  # not every platform reports it
                self.xla_temp_bytes = None
        out = self._jitted(*args)
        self.calls += 1
        cache_size = getattr(self._jitted, "_cache_size", None)
        if cache_size is not None and cache_size() > 1:
            raise TypeError("a compiled training step was called with arguments of another "
                            "shape or dtype than at its first call, which made jax compile it "
                            "again (a task must keep its shapes fixed)")
        return jax.block_until_ready(out)

    def extra(self) -> dict[str, float]:
        """``{"xla_temp_bytes": ...}`` for :class:`StepStats`, when known."""
        return {} if self.xla_temp_bytes is None else {"xla_temp_bytes": float(self.xla_temp_bytes)}


# -------------------------------------------------------------------------------------------------
# Optimisers (plain pytrees; no optax dependency)
# -------------------------------------------------------------------------------------------------


class CompileOnce:
    """For ``prepare_evaluation``: run a jitted call once per input-shape key, so that each shape
    is compiled before the evaluation's clock starts and no later evaluation runs it again."""

    def __init__(self) -> None:
        self._done: set[Any] = set()

    def __call__(self, key: Any, call: Callable[[], Any]) -> None:
        if key in self._done:
            return
        self._done.add(key)
        import jax

        jax.block_until_ready(call())


def with_tolerances(backend: Any, rtol: float, atol: float) -> Any:
    """``backend`` with a suite budget's tolerances: a shallow copy with ``rtol``/``atol`` set
    (adaptive backends); a fixed-step backend, which has none, is returned as it is."""
    import copy

    if not hasattr(backend, "rtol"):
        return backend
    tuned = copy.copy(backend)
    tuned.rtol, tuned.atol = float(rtol), float(atol)
    return tuned


def sgd_momentum_init(params: Any) -> Any:
    """Momentum buffers of :func:`sgd_momentum_update` (zeros like the float leaves)."""
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(jnp.zeros_like, params)


def sgd_momentum_update(params: Any, grads: Any, buffers: Any, lr: Any, momentum: float
                        ) -> tuple[Any, Any]:
    """torch.optim.SGD(momentum=m) without dampening, Nesterov or weight decay:
    ``b = m * b + g; p = p - lr * b`` (torch's first step sets b = g, the same as b = 0 here)."""
    import jax

    buffers = jax.tree_util.tree_map(lambda b, g: momentum * b + g, buffers, grads)
    params = jax.tree_util.tree_map(lambda p, b: p - lr * b, params, buffers)
    return params, buffers


def adam_init(params: Any) -> Any:
    """(step, first moments, second moments) for :func:`adam_update`."""
    import jax
    import jax.numpy as jnp

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return jnp.int32(0), zeros, zeros


def adam_update(params: Any, grads: Any, state: Any, lr: Any, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8) -> tuple[Any, Any]:
    """torch.optim.Adam (no weight decay, no amsgrad)."""
    import jax
    import jax.numpy as jnp

    step, m, v = state
    step = step + 1
    m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
    c1 = 1 - b1 ** step.astype(jnp.float32)
    c2 = 1 - b2 ** step.astype(jnp.float32)
    params = jax.tree_util.tree_map(
        lambda p, m_, v_: p - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), params, m, v)
    return params, (step, m, v)
