"""The torch backend base: availability (without importing torch), devices, synchronisation,
memory trackers, and the ODE-block contract a torch suite asks of a backend: the abstract
:meth:`TorchBackend.ode_block` and the blocks it returns (:class:`CountingBlock`)."""

from __future__ import annotations

import abc
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bench.core.availability import missing_modules as find_missing
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend, MemoryTracker, Tolerances

if TYPE_CHECKING:
    from bench.frameworks.torch._training import StepCounts

INSTALL_HINT = "pip install torch==2.13.0 torchdiffeq (or pip install 'neural-ode-bench[torch]')"


def missing_modules(names: Sequence[str] = ("torch", "torchdiffeq")) -> list[str]:
    """The ``names`` (default: the torch extra's modules) that cannot be found."""
    return find_missing(names)


def missing_message(missing: Sequence[str]) -> str:
    """``"torch is not installed: pip install ..."`` (or ``"torch and torchdiffeq are ..."``)."""
    verb = "is" if len(missing) == 1 else "are"
    return f"{' and '.join(missing)} {verb} not installed: {INSTALL_HINT}"


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int, or a :class:`BenchError` naming ``what`` (0, 2.5, True are refused)."""
    try:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              # typeshed's numbers.Real declares neither __int__ nor __ge__
              and value == int(value) and value >= 1)  # type: ignore[call-overload, operator]
    except (ValueError, OverflowError):  # nan, inf
        ok = False
    if not ok:
        raise BenchError(f"{what} must be a positive integer, got {value!r}")
    return int(value)

class CudaAllocatorTracker(MemoryTracker):
    """Peak of torch's CUDA caching allocator over a phase (reset per phase)."""

    method = "cuda_max_memory_allocated"

    def __init__(self, device: str):
        self.device = device
        self._baseline = 0

    def reset(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._baseline = torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> int | None:
        import torch

        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - self._baseline)


#: What a torch backend must do so that its NFE reach the row (shown when a step counted none).
COUNTING_HINT = (
    "A torch backend's block must count every call of the dynamics in its forward pass and "
    "return it as StepCounts.nfe_forward from block.pop_stats() (then zero its counters): wrap "
    "the module make_dynamics returns in bench.frameworks.torch.CountedDynamics (subclassing "
    "bench.frameworks.torch.OdeBlock does it for you), or count in a wrapper of your own; the "
    "suite's bench.frameworks.torch.run_train_step reads pop_stats() after the forward and "
    "after the backward pass.")


class TorchBackend(AbstractBackend):
    """Base of the torch backends: device handling, synchronisation, memory, and the one
    abstract method every torch suite calls, :meth:`ode_block`.

    A subclass sets ``name`` (unique), ``gradient_method``, ``solver``, ``description`` and,
    when the solver takes fixed steps, ``adaptive = False`` with ``rtol = atol = None``; declares
    its user-settable parameters as :class:`bench.core.options.OptionSpec` in ``parameters``
    (the constructor's keywords, applied by :meth:`configure`); and implements :meth:`ode_block`.
    ``continuous_time`` False: a block cannot return the state at arbitrary times (resnet).
    torchdiffeq's solvers are ready-made in :class:`bench.frameworks.torch.TorchdiffeqBackend`.
    """

    framework = "torch"
    #: float64 backpropagation through torchdiffeq dopri5 at rtol = atol = 1e-12.
    gradient_reference = "torch-direct"
    #: Modules this backend needs, found without importing them (rknet and resnet: torch only;
    #: a backend wrapping another library adds it, e.g. ``("torch", "torchode")``).
    required_modules: tuple[str, ...] = ("torch", "torchdiffeq")
    install_hint = INSTALL_HINT
    #: Every torch block counts its evaluations (:meth:`ode_block`): a step without one fails.
    counts_evaluations = True
    counting_hint = COUNTING_HINT

    def resolve_device(self, requested: str) -> str:
        import torch

        if requested == "cpu":
            return "cpu"
        if requested in ("cuda", "auto"):
            if torch.cuda.is_available():
                return "cuda"
            if requested == "auto":
                return "cpu"
            raise BenchError(
                "CUDA requested but torch sees no GPU (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu"
            )
        raise BenchError(f"unknown device {requested!r} (valid: cpu, cuda, auto)")

    def profile_solves(self, device: str) -> Any:
        """A context manager around one untimed training step that yields the loop-time
        split of its forward solves (:mod:`bench.frameworks.torch._profile`)."""
        from bench.frameworks.torch._profile import profile_solves

        return profile_solves(device)

    def device_name(self, device: str) -> str:
        import torch

        from bench.core.measure import cpu_model

        if device.startswith("cuda"):
            return torch.cuda.get_device_name(device)
        return f"{cpu_model()}, {torch.get_num_threads()} threads"

    def synchronize(self, device: str) -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(device)

    def memory_tracker(self, device: str) -> MemoryTracker:
        if device.startswith("cuda"):
            return CudaAllocatorTracker(device)
        from bench.core.measure import ResidentMemoryTracker

        return ResidentMemoryTracker()

    @abc.abstractmethod
    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> CountingBlock:
        """Build the ``nn.Module`` that integrates (or, for resnet, replaces) the ODE
        dy/dt = f(t, y) from ``t0`` to ``t1``; called once per block when a suite builds its
        model (never inside a timed step), the block then called in every step.

        **The dynamics.** ``make_dynamics(time_dependent)`` is the suite's factory: it returns
        an ``nn.Module`` whose ``forward(t, h)`` is f. Call it once (``True``) for one shared f;
        resnet calls it ``fixed_steps``/L times with ``False`` (untied weights; t ignored). The
        block must hold the returned module(s) as submodule(s), so that ``block.parameters()``
        are exactly the dynamics' own tensors: the suite's optimiser, ``.to(device)``, an
        adjoint's ``adjoint_params`` and the gradient probes all use those tensors, and a block
        with parameters of its own (or copies) is refused by the suites. ``t`` passed to f is
        a 0-dim tensor of the state's dtype and device (not a Python float, not shape (1,)); h
        has the state's shape.

        **Call forms of the block** (see :class:`CountingBlock`):

        - ``block(y0)``: the state at ``t1``, the same shape as ``y0`` (a batch: any shape);
        - ``block(y0, times=ts)``: ``ts`` a 1-D increasing (or, for a block built with
          t1 < t0, decreasing) tensor of at least two times, ``ts[0]`` the start: the states at
          every time, **time-major**, shape ``(len(ts), *y0.shape)``, ``out[0]`` being ``y0``.
          A backend that cannot output arbitrary times sets ``continuous_time = False`` and
          raises :class:`~bench.core.errors.BenchError` here.

        ``t1 < t0`` is a solve backwards in time (the CNF's sampling block runs from 1 to 0):
        the step is negative and f is called with decreasing t. An adjoint method's reverse
        solve also runs from t1 back to t0 on the augmented state and calls f (and its
        vector-Jacobian product) with decreasing t.

        **Counting** (what reaches the row: ``nfe_forward``, ``nfe_backward``,
        ``steps_accepted``, ``steps_rejected``): ``block.pop_stats()`` returns a
        :class:`~bench.frameworks.torch.StepCounts` of what happened since the last pop and
        zeroes the counters; the suite's :func:`~bench.frameworks.torch.run_train_step` pops
        after the forward pass and after ``loss.backward()``, so:

        - ``nfe_forward``: calls of f during ``block(...)`` (every stage of every step,
          rejected steps and a first-step heuristic's probes included);
        - ``nfe_backward``: vector-Jacobian products of f computed during ``loss.backward()``
          (a hook on each evaluation's output that requires grad counts them:
          backpropagation through the steps makes one per forward evaluation the loss depends
          on; an adjoint one per evaluation of the augmented dynamics in its reverse solve);
          ``backward_calls``: calls of f itself during the backward pass;
        - ``steps_accepted``/``steps_rejected``: the forward solve's solver steps (never
          evaluations); a fixed-step solver's steps are all accepted (rejected 0); None where
          the solver cannot report them.

        :class:`~bench.frameworks.torch.CountedDynamics` (with the block's
        :class:`~bench.frameworks.torch.Counter`) does the evaluation counting, and subclassing
        :class:`~bench.frameworks.torch.OdeBlock` gives ``forward``, the call forms and
        ``pop_stats``; a block of one's own must behave the same. A training step of a
        continuous-time backend that counts no forward evaluation fails the cell.

        :param make_dynamics: the suite's factory of the dynamics module (above).
        :param t0: start of the interval (a Python float).
        :param t1: end of the interval; below ``t0`` for a backwards solve.
        :param fixed_steps: take exactly this many equal fixed steps over [t0, t1] (the
            memory-scaling study's L), in place of the backend's own step control: record the
            solver that does this as the class's ``fixed_step_solver`` (None: the backend's own
            ``solver``, already fixed-step). torch-adjoint / torch-direct use torchdiffeq rk4,
            rknet classical RK4, resnet L blocks.
        :param tolerances: the task's tolerances (e.g. a budget's), to use in place of the
            backend's own: pass them through
            :func:`bench.core.tolerances.effective_tolerances` (a user's setting on the backend
            wins over them, they win over the backend's defaults), the same rule the row's
            ``rtol``/``atol`` are recorded with. A fixed-step solver has none and ignores them.
        :returns: the block, an ``nn.Module`` following :class:`CountingBlock`.
        """


@runtime_checkable
class OdeBlockBackend(Protocol):
    """What a torch suite asks of a backend (:class:`TorchBackend` implements it; see
    :meth:`TorchBackend.ode_block`)."""

    #: The backend's name (a suite's messages name it).
    name: str

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> CountingBlock: ...


class CountingBlock(Protocol):
    """What a block built by :meth:`TorchBackend.ode_block` is: an ``nn.Module`` called as
    ``block(y0)`` (the state at t1) or ``block(y0, times=ts)`` (the trajectory at the 1-D
    times ``ts``, time-major: ``(len(ts), *y0.shape)``), whose ``parameters()`` are the
    dynamics' own, and whose :meth:`pop_stats` returns the counts since the last pop (zeroing
    them). :class:`~bench.frameworks.torch.OdeBlock` is one."""

    def __call__(self, y0: Any, times: Any = None) -> Any: ...

    def pop_stats(self) -> StepCounts: ...

    # nn.Module's, which suites use too
    def parameters(self) -> Any: ...

    def named_parameters(self) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...
