"""JAX devices (a resolved device string to a jax device; the visible GPUs) and the GPU memory
tracker of the JAX backends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.core.errors import BenchError
from bench.core.interfaces import MemoryTracker


def jax_device(device: str) -> Any:
    """The jax device for a resolved device string (``cpu`` or ``cuda``)."""
    import jax

    if device == "cpu":
        return jax.devices("cpu")[0]
    if device.startswith("cuda"):
        gpus = gpu_devices()
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= len(gpus):
            raise BenchError(f"jax sees {len(gpus)} GPU(s); there is no {device!r}")
        return gpus[index]
    raise BenchError(f"unknown device {device!r} (valid: cpu, cuda, auto)")


def gpu_devices() -> list[Any]:
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
