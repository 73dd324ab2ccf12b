"""Shared code of the torch backends, and the API that torch suites call.

Importing this module never imports torch (the registry imports plugin modules even where torch is
missing, so that their backends can report ``unsupported`` with the install hint); everything
numerical lives in :mod:`bench.plugins.torch_blocks`, imported when a block is built.

The API a torch suite uses::

    block = backend.ode_block(make_dynamics, t0=0.0, t1=1.0)   # an nn.Module
    y1 = block(y0)                        # the state at t1
    ys = block(y0, times=ts)              # the trajectory at the 1-D increasing times ts
    counts = block.pop_stats()            # StepCounts since the last pop (then zeroed)
    stats = run_train_step([block], compute_loss, optimizer, params)   # -> StepStats
    class MyTask(TorchTask): ...          # its memory steps measure the bytes saved for backward

``make_dynamics(time_dependent) -> nn.Module`` is the suite's: the module's ``forward(t, h)``
ignores ``t`` when ``time_dependent`` is False. The continuous backends call it once; the resnet
backend calls it once per residual block (untied weights).

What the counts mean (the same for every torch backend):

- ``nfe_forward``: evaluations of the dynamics inside the block's forward call.
- ``nfe_backward``: vector-Jacobian products of the dynamics computed during the backward pass,
  counted by a hook on each evaluation's output. For direct backpropagation that is one per
  evaluation the loss depends on; for the adjoint, one per evaluation of the augmented dynamics in
  the reverse solve (each is one evaluation of f plus its VJP; ``backward_calls`` counts the
  former, and the two agree).
- ``steps_accepted`` / ``steps_rejected``: solver steps of the forward solve (torchdiffeq's
  ``callback_accept_step`` / ``callback_reject_step``; rknet and resnet: all accepted; None where
  the solver reports none, i.e. torchdiffeq's fixed-grid solvers under ``fixed_steps``).

:class:`OdeBlock` (an ``nn.Module``) is importable from here, loaded lazily from
:mod:`bench.plugins.torch_blocks` on first access.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import numbers
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.interfaces import AbstractBackend, AbstractTask, MemoryTracker, StepStats

if TYPE_CHECKING:
    from bench.plugins.torch_blocks import OdeBlock

INSTALL_HINT = "pip install torch==2.13.0 torchdiffeq (or pip install 'neural-ode-bench[torch]')"


def __getattr__(name: str) -> Any:
    """``from bench.plugins.torch_common import OdeBlock`` imports torch only when asked for."""
    if name == "OdeBlock":
        from bench.plugins.torch_blocks import OdeBlock

        return OdeBlock
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def missing_modules(names: Sequence[str] = ("torch", "torchdiffeq")) -> list[str]:
    missing = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            missing.append(name)
    return missing


def missing_message(missing: Sequence[str]) -> str:
    """``"torch is not installed: pip install ..."`` (or ``"torch and torchdiffeq are ..."``)."""
    verb = "is" if len(missing) == 1 else "are"
    return f"{' and '.join(missing)} {verb} not installed: {INSTALL_HINT}"


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int, or a :class:`BenchError` naming ``what`` (0, 2.5, True are refused)."""
    try:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and value == int(value) and value >= 1)
    except (ValueError, OverflowError):  # nan, inf
        ok = False
    if not ok:
        raise BenchError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class StepCounts:
    """What a block counted since its last :meth:`OdeBlock.pop_stats`.

    ``backward_calls`` (an extra, not in :class:`~bench.interfaces.StepStats`): evaluations of f
    itself during the backward pass; the adjoint makes one per augmented-dynamics evaluation (so it
    equals ``nfe_backward``), direct backpropagation none.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    backward_calls: int = 0


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


class TorchBackend(AbstractBackend):
    """Base of the torch backends: device handling, synchronisation, memory, blocks."""

    framework = "torch"
    #: True when a block can return the state at arbitrary times (False: resnet).
    continuous_time: bool = True
    #: What the literature claims for this backend's training memory in the number of steps.
    memory_claim: str | None = None
    #: Modules this backend needs (rknet and resnet need torch only).
    required_modules: tuple[str, ...] = ("torch", "torchdiffeq")

    def check_available(self) -> str | None:
        missing = missing_modules(self.required_modules)
        return missing_message(missing) if missing else None

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

    def device_name(self, device: str) -> str:
        import torch

        from bench.measure import cpu_model

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
        from bench.measure import ResidentMemoryTracker

        return ResidentMemoryTracker()

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None, rtol: float | None = None,
                  atol: float | None = None) -> OdeBlock:
        """Build the block that integrates (or, for resnet, replaces) the ODE from t0 to t1.

        :param make_dynamics: the suite's factory of the dynamics module; ``forward(t, h)``.
        :param fixed_steps: force exactly this many fixed steps (the memory-scaling study):
            torchdiffeq rk4 for torch-adjoint / torch-direct, classical RK4 for rknet, L blocks
            for resnet.
        :param rtol: override the backend's relative tolerance (adaptive solvers; the fixed-step
            backends and ``fixed_steps`` have no tolerance and ignore it).
        :param atol: override the backend's absolute tolerance (likewise).
        """
        raise NotImplementedError


class saved_tensors_meter:  # noqa: N801 - used as a context manager, like torch's own
    """Bytes saved for backward by the graph built inside the ``with`` block and still held when
    it ends: each distinct storage once, the ``exclude`` tensors (the parameters) left out.
    ``.bytes`` after the block.

    Tensors saved by graphs that were dropped inside the block (an adjoint's forward solve building
    and discarding a graph per evaluation, for instance) do not count: they are not held for the
    backward pass. Each saved tensor is kept as a detached alias with a weak reference to it;
    returning the tensor itself would make a saved output hold its own ``grad_fn``, a C++
    reference cycle that leaked every step's graph (measured: 4 MiB a step for the CNF under the
    adjoint). Autograd re-attaches the history when it unpacks the alias.
    """

    def __init__(self, exclude: Iterable[Any] = ()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.bytes = 0
        self._saved: list[tuple[Any, int, int]] = []  # (weak ref to the alias, pointer, bytes)
        self._hooks: Any = None

    def _pack(self, tensor: Any) -> Any:
        alias = tensor.detach()
        try:
            storage = tensor.untyped_storage()
            pointer, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # sparse, nested, ...: count the elements
            pointer, nbytes = -len(self._saved) - 1, tensor.numel() * tensor.element_size()
        if pointer not in self._exclude:
            self._saved.append((weakref.ref(alias), pointer, nbytes))
        return alias

    @staticmethod
    def _unpack(tensor: Any) -> Any:
        return tensor

    def __enter__(self) -> saved_tensors_meter:
        import torch

        self.bytes = 0
        self._saved.clear()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None
        held = {pointer: nbytes for ref, pointer, nbytes in self._saved if ref() is not None}
        self.bytes = sum(held.values())
        self._saved.clear()


def _sum(values: Iterable[int | None]) -> int | None:
    values = list(values)
    if any(v is None for v in values):
        return None
    return sum(values)  # type: ignore[arg-type]


_METERING = threading.local()


@contextlib.contextmanager
def metering_saved_tensors() -> Any:
    """Inside the ``with`` block (in this thread), :func:`run_train_step` measures the bytes saved
    for backward. Outside it, a step carries no saved-tensor hooks: the meter is a Python call per
    saved tensor (measured: +26-32% on the CNF's torch-direct step), so it never runs in a timed
    step, only in the memory steps (:meth:`TorchTask.memory_step`)."""
    previous = getattr(_METERING, "on", False)
    _METERING.on = True
    try:
        yield
    finally:
        _METERING.on = previous


def metering() -> bool:
    """True inside :func:`metering_saved_tensors` (in this thread)."""
    return getattr(_METERING, "on", False)


class TorchTask(AbstractTask):
    """Base of the torch suites' tasks: a memory step is a training step with the bytes saved for
    backward measured (the timed steps run without the meter)."""

    def memory_step(self, step: int) -> StepStats:
        with metering_saved_tensors():
            return self.train_step(step)


def run_train_step(blocks: Sequence[Any], compute_loss: Callable[[], Any], optimizer: Any,
                   params: Iterable[Any]) -> StepStats:
    """One training iteration with NFE counting; inside :func:`metering_saved_tensors` (the
    memory steps) also the bytes saved for backward, else ``saved_for_backward_bytes`` is None.

    ``compute_loss`` runs the forward pass (calling the blocks) and returns the scalar loss;
    ``params`` are left out of the saved bytes. Forward counts are read after ``compute_loss``,
    backward counts after ``loss.backward()``; counts made before the step (e.g. by an
    evaluation) are dropped.
    """
    for block in blocks:
        block.pop_stats()
    optimizer.zero_grad(set_to_none=True)
    meter = saved_tensors_meter(params) if metering() else None
    if meter is None:
        loss = compute_loss()
    else:
        with meter:
            loss = compute_loss()
    forward = [block.pop_stats() for block in blocks]
    loss.backward()
    backward = [block.pop_stats() for block in blocks]
    optimizer.step()
    return StepStats(
        loss=float(loss.detach()),
        nfe_forward=sum(c.nfe_forward for c in forward),
        nfe_backward=sum(c.nfe_backward for c in backward),
        steps_accepted=_sum(c.steps_accepted for c in forward),
        steps_rejected=_sum(c.steps_rejected for c in forward),
        saved_for_backward_bytes=None if meter is None else meter.bytes,
    )
