"""The torch backend base: availability (without importing torch), devices, synchronisation,
memory trackers, and the ODE-block contract a torch suite asks of a backend
(:class:`OdeBlockBackend`)."""

from __future__ import annotations

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


class TorchBackend(AbstractBackend):
    """Base of the torch backends: device handling, synchronisation, memory, blocks
    (``continuous_time`` False: a block cannot return the state at arbitrary times, e.g. resnet).
    """

    framework = "torch"
    #: float64 backpropagation through torchdiffeq dopri5 at rtol = atol = 1e-12.
    gradient_reference = "torch-direct"
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

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> CountingBlock:
        """Build the block that integrates (or, for resnet, replaces) the ODE from t0 to t1.

        :param make_dynamics: the suite's factory of the dynamics module; ``forward(t, h)``.
        :param fixed_steps: force exactly this many fixed steps (the memory-scaling study):
            torchdiffeq rk4 for torch-adjoint / torch-direct, classical RK4 for rknet, L blocks
            for resnet.
        :param tolerances: replace the backend's own tolerances (adaptive solvers; the fixed-step
            backends and ``fixed_steps`` have none and ignore them); None: the backend's.
        """
        raise NotImplementedError


@runtime_checkable
class OdeBlockBackend(Protocol):
    """What a torch suite asks of a backend (:class:`TorchBackend` implements it)."""

    def ode_block(self, make_dynamics: Callable[[bool], Any], t0: float = 0.0, t1: float = 1.0,
                  *, fixed_steps: int | None = None,
                  tolerances: Tolerances | None = None) -> CountingBlock: ...


class CountingBlock(Protocol):
    """What a block built by :meth:`TorchBackend.ode_block` is (an ``nn.Module``): called as
    ``block(y0)`` (the state at t1) or ``block(y0, times=ts)`` (the trajectory at the 1-D
    increasing times ``ts``); :meth:`pop_stats` returns the counts since the last pop."""

    def __call__(self, y0: Any, times: Any = None) -> Any: ...

    def pop_stats(self) -> StepCounts: ...

    def parameters(self) -> Any: ...
