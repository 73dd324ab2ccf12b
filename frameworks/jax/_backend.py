"""The JAX backend base: availability (without importing jax), devices, synchronisation, memory,
and the solve / value_and_grad / step_stats contract a JAX suite asks of a backend."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from bench.frameworks.jax import _cache, _profile, _programs
from bench.frameworks.jax._devices import JaxGpuPeakTracker, gpu_devices, jax_device

from bench.core.availability import missing_modules as find_missing
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend, MemoryTracker, StepStats, Tolerances

REQUIRED_MODULES = ("jax", "diffrax", "equinox")
INSTALL_HINT = "pip install 'neural-ode-bench[jax]'"


def missing_modules() -> list[str]:
    """The modules of the ``jax`` extra that cannot be found (without importing them)."""
    return find_missing(REQUIRED_MODULES)


# -- recording the solves of one loss function (trace time) --------------------------------------

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
    """The recorder of the :meth:`JaxBackend.value_and_grad` being traced (None outside one).
    Its ``probe`` is the zero vector whose cotangent carries backward statistics out (see
    :data:`PROBE_FIELDS`); its ``records`` the stats of the solves traced so far."""
    return _RECORDERS[-1] if _RECORDERS else None


def record_solve(stats: dict[str, Any]) -> dict[str, Any]:
    """Record one solve's ``stats`` for the step being traced, and return them: every
    :meth:`JaxBackend.solve` calls this once with the dict it returns. Inside
    :meth:`JaxBackend.value_and_grad` the step's counts are the recorded solves' stats (summed by
    :meth:`JaxBackend.complete_step_stats`); outside one (an evaluation) it does nothing. A
    solve that records nothing counts nothing: a training step without a recorded solve fails
    the cell."""
    recorder = current_recorder()
    if recorder is not None:
        recorder.records.append(stats)
    return stats


@dataclasses.dataclass(frozen=True)
class _PendingStepStats(StepStats):
    """A step's statistics whose counts :meth:`JaxBackend.complete_step_stats` has yet to fetch
    and compute from ``pending`` (the step's counts pytree, device arrays)."""

    pending: Any = dataclasses.field(default=None, repr=False, compare=False)


# -------------------------------------------------------------------------------------------------
# The base backend
# -------------------------------------------------------------------------------------------------


#: What a JAX backend must do so that its NFE reach the row (shown when a step counted none).
COUNTING_HINT = (
    "A JAX backend's solve must return stats with 'nfe_forward' (an int32 array: evaluations of "
    "f in this solve, computed in the traced program, never by a host callback) and, where the "
    "solver can say, 'num_accepted_steps' and 'num_rejected_steps', and pass them to "
    "bench.frameworks.jax.record_solve(stats) before returning: a training step's counts are the "
    "solves recorded while the suite's backend.value_and_grad traced its loss.")


class JaxBackend(AbstractBackend):
    """Base of the JAX backends: availability, devices, synchronisation, memory, counting, and
    the one abstract method every JAX suite calls, :meth:`solve`.

    A subclass sets ``name`` (unique), ``gradient_method``, ``solver``, ``description`` (a
    fixed-step one also ``adaptive = False`` and ``rtol = atol = None``), declares its
    user-settable parameters as :class:`bench.core.options.OptionSpec` in ``parameters``
    (the constructor's keywords, applied by ``configure``), lists the modules it needs in
    ``required_modules``, and implements :meth:`solve`; :meth:`backward_counts` when its
    solves cannot put ``nfe_backward`` into their stats (an adjoint's reverse solve, known
    only in the backward pass). The suite's side (:meth:`value_and_grad`,
    :meth:`step_stats`, :meth:`complete_step_stats`) is done here.
    """

    framework = "jax"
    #: float64 backpropagation through diffrax Dopri5 at rtol = atol = 1e-12.
    gradient_reference = "diffrax-checkpoint"
    rtol: float | None = 1e-3
    atol: float | None = 1e-3
    #: Modules this backend needs, found without importing them (a backend that needs no
    #: diffrax: ``("jax",)``; one wrapping another library adds it).
    required_modules: tuple[str, ...] = REQUIRED_MODULES
    install_hint = INSTALL_HINT
    #: Every JAX solve records its counts (:func:`record_solve`): a step without one fails.
    counts_evaluations = True
    counting_hint = COUNTING_HINT

    # -- environment ----------------------------------------------------------------------------
    def check_available(self) -> str | None:
        """The missing :attr:`required_modules` (``jax`` alone when jax is among them: the rest
        comes with the install hint), or None."""
        missing = find_missing(self.required_modules)
        if missing:
            which = "jax" if "jax" in missing else ", ".join(missing)
            return f"{which} is not installed: {self.install_hint}"
        return None

    def resolve_device(self, requested: str) -> str:
        if requested == "cpu":
            return "cpu"
        if requested == "auto":
            return "cuda" if gpu_devices() else "cpu"
        if requested.startswith("cuda"):
            if not gpu_devices():
                raise BenchError(
                    f"backend {self.name!r}: jax sees no GPU (install a CUDA build of jaxlib, "
                    "e.g. pip install 'jax[cuda12]', or use --device cpu)")
            jax_device(requested)  # raises for a missing index
            return requested
        raise BenchError(f"unknown device {requested!r} (valid: cpu, cuda, auto)")

    def device_name(self, device: str) -> str:
        if device == "cpu":
            from bench.core.measure import cpu_model

            return cpu_model()
        return str(jax_device(device).device_kind)

    def synchronize(self, device: str) -> None:
        """Block on every live jax array and on pending effects (callbacks). One batched wait
        (``jax.block_until_ready`` of the list: 80 against 100-200 us for 300 arrays, one at a
        time, inside a timed CNF step); where an array was deleted or donated meanwhile, one at
        a time, skipping those."""
        import jax

        arrays = jax.live_arrays()
        try:
            jax.block_until_ready(arrays)
        except RuntimeError:  # deleted or donated meanwhile
            for array in arrays:
                try:
                    array.block_until_ready()
                except RuntimeError:
                    pass
        jax.effects_barrier()

    def memory_tracker(self, device: str) -> MemoryTracker:
        if device == "cpu":
            from bench.core.measure import ResidentMemoryTracker

            return ResidentMemoryTracker()
        return JaxGpuPeakTracker(jax_device(device))

    # -- numerics ------------------------------------------------------------------------------
    def import_modules(self) -> None:
        """Import what :meth:`solve` needs (default: :attr:`required_modules`), so that the
        first timed step imports nothing: its extra time, ``compile_time_s``, is then
        compilation only. Called when a task is built (:meth:`value_and_grad`)."""
        import importlib

        for module in self.required_modules:
            importlib.import_module(module)
        if _cache.enabled():
            _cache.start_counting()

    def compile_cache_counts(self) -> tuple[int, int] | None:
        """``(compile requests through JAX's persistent cache, hits)`` so far (the row's
        ``compile_cache``, read around the warm-up step); None when the cache is off."""
        return _cache.counts()

    def program_scope(self, scope: str | None) -> None:
        """Called by the core before a cell builds its task: the text naming the cell and its
        code, which starts every key of its kept programs (:mod:`._programs`)."""
        _programs.set_scope(scope)

    def program_cache_counts(self) -> tuple[int, int] | None:
        """``(programs asked for, programs loaded)`` of the kept programs so far (the row's
        ``program_cache``); None when none are kept."""
        return _programs.counts()

    def nan_hint(self) -> str:
        """Added by the core to a NaN metric's or loss's message: a failed solve returns NaN
        while the compile cache is on (:func:`bench.frameworks.jax._cache.nan_hint`)."""
        return _cache.nan_hint()

    def profile_solves(self, device: str) -> Any:
        """A context manager around one untimed training step that yields the loop-time
        split of its forward solves (:mod:`bench.frameworks.jax._profile`)."""
        return _profile.profile_solves(device)

    @abc.abstractmethod
    def solve(self, f: Callable[[Any, Any, Any], Any], params: Any, y0: Any, t0: float,
              t1: float, *, ts: Any = None, fixed_steps: int | None = None,
              tolerances: Tolerances | None = None) -> tuple[Any, dict[str, Any]]:
        """Integrate dy/dt = f(t, y, params) from ``t0`` to ``t1``; called by the suites inside
        ``jax.jit`` and inside :meth:`value_and_grad`'s ``jax.value_and_grad``, so it must be
        traceable: jax operations only, no Python side effects on traced values, no host
        callbacks for counting.

        **Call forms**::

            y1, stats = backend.solve(f, params, y0, t0, t1)            # the state at t1
            ys, stats = backend.solve(f, params, y0, t0, t1, ts=ts)     # time-major trajectory
            y1, stats = backend.solve(f, params, y0, t0, t1, fixed_steps=L)
            y1, stats = backend.solve(f, params, y0, t0, t1, tolerances=Tolerances(1e-5, 1e-5))

        ``t`` passed to f is a 0-dim (scalar) array; ``y`` has ``y0``'s pytree structure, shapes
        and dtypes (float32 in the suites; float64 for a reference gradient, so do not hard-code
        a dtype). ``params`` are the dynamics' own parameters (a pytree, e.g. an equinox
        module): pass them to f unchanged and let autodiff differentiate through them (an
        adjoint passes them as the ``args`` of its reverse solve); never close over copies.
        ``t1 < t0`` is a solve backwards in time (a CNF's sampling), with a negative step; an
        adjoint's reverse solve runs from t1 back to t0 and calls f with decreasing t.

        **Counting**: ``stats`` is a dict of int32 arrays computed from the solver (static
        Python ints made arrays, or loop counters; never host callbacks):

        - ``nfe_forward`` (required): evaluations of f in this forward solve (every stage of
          every step, rejected steps and first-step probes included);
        - ``num_accepted_steps``, ``num_rejected_steps`` (and ``num_steps``, their sum): solver
          steps, never evaluations; a fixed-step solver's are all accepted; left out where the
          solver cannot say (the row's step columns are then empty);
        - ``nfe_backward`` when the backward pass's count is known here (backpropagation
          through stored stages: one vector-Jacobian product per forward evaluation);
          otherwise implement :meth:`backward_counts`, which gets every recorded stats dict and
          the probe's cotangent.

        Pass ``stats`` to :func:`record_solve` before returning them: the step's counts are the
        solves recorded while :meth:`value_and_grad` traced the loss (summed over them); a
        training step of a continuous-time backend that records no evaluation fails the cell.

        :param f: the dynamics, ``f(t, y, params) -> dy/dt`` (same pytree structure as y).
        :param params: pytree of the dynamics' parameters (differentiated through).
        :param y0: initial state (pytree of float arrays).
        :param t0: start time (a Python float).
        :param t1: end time; below ``t0`` for a backwards solve.
        :param ts: None: return y(t1); else a 1-D array of times from t0 towards t1 (the
            suites pass ``ts[0] == t0``): return the states at those times, **time-major**,
            each leaf stacked along a new leading axis (``(len(ts), *leaf.shape)``).
        :param fixed_steps: take exactly this many equal steps over [t0, t1] (no step-size
            control) in place of the backend's own step rule: the memory-scaling study's L;
            record the solver that does this as the class's ``fixed_step_solver`` (None: the
            backend's own ``solver``, already fixed-step).
        :param tolerances: the task's tolerances (e.g. a budget's), to use in place of the
            backend's own: pass them through
            :func:`bench.core.tolerances.effective_tolerances` (a user's setting on the
            backend wins, then these, then the backend's defaults), the rule the row's
            ``rtol``/``atol`` are recorded with. A fixed-step solve has none and ignores them.
        :returns: ``(y, stats)``.
        """

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
            profile = _profile.active()
            if profile is not None and profile.capturing:  # eager: the loop-time profile
                profile.run_loss(self, loss_fn, params, args)
            probe = jnp.zeros(len(PROBE_FIELDS), jnp.float32)
            (loss, (aux, records)), (grads, probe_grad) = grad_fn(params, probe, *args)
            value = (loss, aux) if has_aux else loss
            return value, grads, {"solves": records, "probe": probe_grad}

        return value_and_grad

    def step_stats(self, loss: Any, counts: Mapping[str, Any],
                   extra: Mapping[str, float] | None = None) -> StepStats:
        """A step's statistics, inside the step's clock: the loss read back (as a training loop
        reads its loss) and the counts kept as they are, device arrays not fetched. Every count
        is filled in by :meth:`complete_step_stats`, which the core calls after the step's clock
        stopped (call it yourself when driving a task outside the core): fetching the counts
        pytree and summing it is host work a plain training loop does not do (0.1-0.3 ms of a
        7-13 ms CNF step on a 2-core EPYC)."""
        return _PendingStepStats(loss=float(loss), extra=dict(extra or {}), pending=counts)

    def complete_step_stats(self, stats: StepStats, *, backward: bool = True) -> StepStats:
        """The counts of :meth:`step_stats`: fetched, summed over the step's solves, and the
        backward counts from :meth:`backward_counts` (diffrax-checkpoint replays its checkpoint
        schedule there; ``backward=False`` leaves them out: ``nfe_backward`` None, for a count
        nothing reads, the float64 gradient reference's). Statistics that are not pending come
        back as they are."""
        if not isinstance(stats, _PendingStepStats):
            return stats
        import jax

        counts = jax.device_get(stats.pending)
        solves = counts["solves"]
        more = dict(stats.extra)
        if not solves:
            return StepStats(loss=stats.loss, extra=more,
                             saved_for_backward_bytes=stats.saved_for_backward_bytes)
        failed = _cache.failed_solve(solves, counts["probe"])
        if failed:
            return _cache.FailedStepStats(loss=stats.loss, extra=more, problem=failed)
        total = {key: _summed(solves, key)
                 for key in ("nfe_forward", "num_accepted_steps", "num_rejected_steps")}
        nfe_backward: float | None = None
        if backward:
            nfe_backward, backward_extra = self.backward_counts(solves, counts["probe"])
            more.update(backward_extra)
        return StepStats(
            loss=stats.loss, nfe_forward=total["nfe_forward"], nfe_backward=nfe_backward,
            steps_accepted=total["num_accepted_steps"],
            steps_rejected=total["num_rejected_steps"],
            saved_for_backward_bytes=stats.saved_for_backward_bytes, extra=more)

    def step_stats_problem(self, stats: StepStats, step: int) -> str | None:
        """A solve that failed in the step (:func:`bench.frameworks.jax._cache.failed_solve`),
        else the core's check."""
        if isinstance(stats, _cache.FailedStepStats):
            return f"training step {step}: {stats.problem}"
        return super().step_stats_problem(stats, step)

    def backward_counts(self, solves: list[Mapping[str, Any]], probe: Any
                        ) -> tuple[float | None, dict[str, float]]:
        """``(nfe_backward, extra)`` of one step, on the host, after the step's clock stopped:
        ``solves`` are the recorded stats of the step's solves (fetched: numpy arrays), ``probe``
        the cotangent of the zero probe (:data:`PROBE_FIELDS`; a reverse solve can add its own
        statistics to it). ``extra`` goes into the row's metrics. Default: the sum of every
        solve's ``nfe_backward``; a backend whose solves do not report it overrides this."""
        import numpy as np

        lacking = sum(1 for record in solves if "nfe_backward" not in record)
        if lacking:
            raise NotImplementedError(
                f"{type(self).__name__}.backward_counts: {lacking} of the step's solves have no "
                "'nfe_backward' in their stats; put it there in solve() (backpropagation "
                "through stored stages: one VJP per forward evaluation) or override "
                "backward_counts(solves, probe) to count the backward pass")
        return float(sum(np.sum(record["nfe_backward"]) for record in solves)), {}


def _summed(solves: list[Mapping[str, Any]], key: str) -> float | None:
    """``key`` summed over a step's recorded solves; None where a solve lacks it: a library that
    cannot say how many steps it took leaves the step counts out (the row's columns are empty, as
    a torch block's None), and a step without ``nfe_forward`` fails the cell with the counting
    hint (:meth:`AbstractBackend.step_stats_problem`) instead of a ``KeyError``."""
    import numpy as np

    if any(key not in record for record in solves):
        return None
    return float(sum(np.sum(record[key]) for record in solves))


@runtime_checkable
class SolveBackend(Protocol):
    """What a JAX suite asks of a backend (:class:`JaxBackend` implements it)."""

    def solve(self, f: Callable[[Any, Any, Any], Any], params: Any, y0: Any, t0: float,
              t1: float, *, ts: Any = None, fixed_steps: int | None = None,
              tolerances: Tolerances | None = None) -> tuple[Any, dict[str, Any]]: ...

    def value_and_grad(self, loss_fn: Callable[..., Any], has_aux: bool = False
                       ) -> Callable[..., tuple[Any, Any, dict[str, Any]]]: ...

    def step_stats(self, loss: Any, counts: Mapping[str, Any],
                   extra: Mapping[str, float] | None = None) -> StepStats: ...

    def complete_step_stats(self, stats: StepStats, *, backward: bool = True
                            ) -> StepStats: ...
