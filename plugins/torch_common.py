"""Shared code of the torch backends, and the API that torch suites call.

Importing this module never imports torch (the registry imports plugin modules even where torch is
missing, so that their backends can report ``unsupported`` with the install hint); everything
numerical lives in :mod:`plugins.torch_blocks`, imported when a block is built.

The API a torch suite uses::

    block = backend.ode_block(make_dynamics, t0=0.0, t1=1.0)   # an nn.Module
    y1 = block(y0)                        # the state at t1
    ys = block(y0, times=ts)              # the trajectory at the 1-D increasing times ts
    counts = block.pop_stats()            # StepCounts since the last pop (then zeroed)
    stats = run_train_step([block], compute_loss, optimizer, params)   # -> StepStats

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
  ``callback_accept_step`` / ``callback_reject_step``; fixed-step solvers: all accepted).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bench.errors import BenchError
from bench.interfaces import AbstractBackend, MemoryTracker, StepStats

INSTALL_HINT = (
    "pip install torch==2.13.0 torchdiffeq (or pip install 'neural-ode-bench[torch]'; without the "
    "pin pip picks a CUDA build)"
)


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


@dataclasses.dataclass(frozen=True)
class StepCounts:
    nfe_forward: int = 0
    nfe_backward: int = 0
    backward_calls: int = 0
    steps_accepted: int | None = None
    steps_rejected: int | None = None


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
    #: Modules this backend needs.
    required_modules: tuple[str, ...] = ("torch", "torchdiffeq")

    def check_available(self) -> str | None:
        missing = missing_modules(self.required_modules)
        if missing:
            return f"{', '.join(missing)} not installed: {INSTALL_HINT}"
        return None

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
                  atol: float | None = None) -> Any:
        """Build the block that integrates (or, for resnet, replaces) the ODE from t0 to t1.

        :param make_dynamics: the suite's factory of the dynamics module.
        :param fixed_steps: force exactly this many fixed steps (the memory-scaling study).
        :param rtol: override the backend's relative tolerance (adaptive solvers only).
        :param atol: override the backend's absolute tolerance (adaptive solvers only).
        """
        raise NotImplementedError


class saved_tensors_meter:  # noqa: N801 - used as a context manager, like torch's own
    """Bytes saved for backward inside the ``with`` block: each distinct storage once, the
    ``exclude`` tensors (the parameters) left out. ``.bytes`` after the block."""

    def __init__(self, exclude: Iterable[Any] = ()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.bytes = 0
        self._seen: set[int] = set()
        self._hooks: Any = None

    def _pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self._seen and pointer not in self._exclude:
            self._seen.add(pointer)
            self.bytes += storage.nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: Any) -> Any:
        return tensor

    def __enter__(self) -> saved_tensors_meter:
        import torch

        self.bytes = 0
        self._seen.clear()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None
        self._seen.clear()


def _sum(values: Iterable[int | None]) -> int | None:
    values = list(values)
    if any(v is None for v in values):
        return None
    return sum(values)  # type: ignore[arg-type]


def run_train_step(blocks: Sequence[Any], compute_loss: Callable[[], Any], optimizer: Any,
                   params: Iterable[Any]) -> StepStats:
    """One training iteration with NFE counting and the bytes saved for backward.

    ``compute_loss`` runs the forward pass (calling the blocks) and returns the scalar loss.
    """
    for block in blocks:
        block.pop_stats()  # anything counted outside the step (e.g. evaluation) is dropped
    optimizer.zero_grad(set_to_none=True)
    meter = saved_tensors_meter(params)
    with meter:
        loss = compute_loss()
    loss.backward()
    counts = [block.pop_stats() for block in blocks]
    optimizer.step()
    return StepStats(
        loss=float(loss.detach()),
        nfe_forward=sum(c.nfe_forward for c in counts),
        nfe_backward=sum(c.nfe_backward for c in counts),
        steps_accepted=_sum(c.steps_accepted for c in counts),
        steps_rejected=_sum(c.steps_rejected for c in counts),
        saved_for_backward_bytes=meter.bytes,
    )
