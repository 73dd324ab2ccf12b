"""Counting and training steps of the torch suites: :class:`StepCounts`, :func:`run_train_step`,
the saved-tensor meter of the memory steps and :class:`TorchTask` (no torch import at module
import time)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bench.core.interfaces import AbstractTask, StepStats


@dataclasses.dataclass(frozen=True)
class StepCounts:
    """What a block counted since its last ``OdeBlock.pop_stats``.

    ``backward_calls`` (an extra, not in :class:`~bench.core.interfaces.StepStats`): evaluations
    of f itself during the backward pass; the adjoint makes one per augmented-dynamics evaluation
    (so it equals ``nfe_backward``), direct backpropagation none.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    backward_calls: int = 0

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
