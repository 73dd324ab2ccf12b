"""The torch framework layer: what torch backends implement and torch suites call.

Importing this package never imports torch (the registry imports backend modules even where torch
is missing, so that their backends can report ``unsupported`` with the install hint); the
``nn.Module`` blocks (:class:`OdeBlock` and its subclasses) are loaded from the private
``_blocks`` module, which imports torch, on first access.

The API a torch suite uses::

    block = backend.ode_block(make_dynamics, t0=0.0, t1=1.0, tolerances=None)  # an nn.Module
    y1 = block(y0)                        # the state at t1
    ys = block(y0, times=ts)              # time-major: (len(ts), *y0.shape), ys[0] = y0
    counts = block.pop_stats()            # StepCounts since the last pop (then zeroed)
    stats = run_train_step([block], compute_loss, optimizer, params)   # -> StepStats
    probe = probe_gradient([block], compute_loss, named_params, order)  # gradient accuracy
    load_weights(module, named_parameters, weights)   # a suite's neutral numpy initial weights
    class MyTask(TorchTask): ...          # its memory steps measure the bytes saved for backward

``make_dynamics(time_dependent) -> nn.Module`` is the suite's: the module's ``forward(t, h)``
ignores ``t`` when ``time_dependent`` is False. The continuous backends call it once; the resnet
backend calls it once per residual block (untied weights). ``tolerances``
(:class:`bench.core.interfaces.Tolerances`) replace the backend's own; None keeps them.

The contract is :meth:`TorchBackend.ode_block` (abstract; its docstring says everything a block
must do) and :class:`CountingBlock`. What the counts mean (the same for every torch backend):

- ``nfe_forward``: evaluations of the dynamics inside the block's forward call.
- ``nfe_backward``: vector-Jacobian products of the dynamics computed during the backward pass,
  counted by a hook on each evaluation's output. For direct backpropagation that is one per
  evaluation the loss depends on; for the adjoint, one per evaluation of the augmented dynamics in
  the reverse solve (each is one evaluation of f plus its VJP; ``backward_calls`` counts the
  former, and the two agree).
- ``steps_accepted`` / ``steps_rejected``: solver steps of the forward solve (torchdiffeq's
  ``callback_accept_step`` / ``callback_reject_step``; rknet and resnet: all accepted; None where
  the solver reports none, i.e. torchdiffeq's fixed-grid solvers under ``fixed_steps``).

A backend: subclass :class:`TorchBackend` and implement ``ode_block`` (returning a block that
follows :class:`CountingBlock`: an :class:`OdeBlock` subclass with the dynamics wrapped in
:class:`CountedDynamics` counts for you), or subclass :class:`TorchdiffeqBackend` (torchdiffeq's
solvers; set ``name``, ``gradient_method``, ``adjoint`` and the constructor's
``solver``/tolerances). docs/plugins.md walks through a complete one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.frameworks.torch._backend import (
    COUNTING_HINT,
    INSTALL_HINT,
    CountingBlock,
    CudaAllocatorTracker,
    OdeBlockBackend,
    TorchBackend,
    missing_message,
    missing_modules,
    positive_int,
)
from bench.frameworks.torch._gradients import copy_parameters, probe_gradient, scaled_weights
from bench.frameworks.torch._torchdiffeq import (
    TorchdiffeqBackend,
    UniformGrid,
    torchdiffeq_parameters,
)
from bench.frameworks.torch._training import (
    StepCounts,
    TorchTask,
    metering,
    metering_saved_tensors,
    run_train_step,
    saved_tensors_meter,
)
from bench.frameworks.torch._weights import load_weights

if TYPE_CHECKING:
    from bench.frameworks.torch._blocks import (
        AdaptiveCountedDynamics,
        CountedDynamics,
        Counter,
        OdeBlock,
        ResNetBlock,
        RK4Block,
        TorchdiffeqBlock,
    )

#: Loaded from ``_blocks`` (which imports torch) on first access.
_BLOCKS = ("OdeBlock", "TorchdiffeqBlock", "RK4Block", "ResNetBlock", "CountedDynamics",
           "AdaptiveCountedDynamics", "Counter")

__all__ = [
    "COUNTING_HINT", "INSTALL_HINT", "CountingBlock", "CudaAllocatorTracker", "OdeBlockBackend",
    "StepCounts",
    "TorchBackend", "TorchTask", "TorchdiffeqBackend", "copy_parameters", "probe_gradient",
    "scaled_weights", "UniformGrid", "load_weights", "metering",
    "metering_saved_tensors", "missing_message", "missing_modules", "positive_int",
    "run_train_step", "saved_tensors_meter", "OdeBlock", "TorchdiffeqBlock", "RK4Block",
    "ResNetBlock", "CountedDynamics", "AdaptiveCountedDynamics", "Counter",
    "torchdiffeq_parameters",
]


def __getattr__(name: str) -> Any:
    """``from bench.frameworks.torch import OdeBlock`` imports torch only when asked for."""
    if name in _BLOCKS:
        from bench.frameworks.torch import _blocks

        return getattr(_blocks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
