"""The plain values that pass between the core, the suites and the backends: a pair's
:class:`Support`, a suite's :class:`Budget`, a training step's :class:`StepStats`, an
:class:`Evaluation`. Re-exported by :mod:`bench.core.interfaces`, their usual import point."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

MetricDirection = Literal["lower", "higher"]


@dataclasses.dataclass(frozen=True)
class Support:
    """Whether a backend/suite pair can run, and if not, why (recorded as ``unsupported``)."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Support:
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Support:
        if not reason:
            raise ValueError("an unsupported pair needs a reason")
        return cls(False, reason)

    def __bool__(self) -> bool:
        return self.ok


@dataclasses.dataclass(frozen=True)
class Budget:
    """A named amount of work for a suite (``smoke``, ``quick``, ``paper``, ...).

    ``settings`` is read by the suite only (epochs, batch size, subset sizes, tolerances).
    """

    name: str
    description: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StepStats:
    """What one training iteration measured (filled by the task, from the backend's counters).

    ``nfe_forward`` counts evaluations of the dynamics in the forward pass; ``nfe_backward``
    the backward pass's: each vector-Jacobian product of the dynamics counts 1 (an adjoint's
    evaluation of f and its VJP at one point too), and the JAX backends that backpropagate
    through a solver loop add the evaluations of f that recompute forward values (docs/plugins.md,
    "What nfe_backward counts"). Steps are solver steps, never confused with function
    evaluations; None: not known. ``extra`` holds further counts, recorded in the row as their
    largest value over the training steps.
    """

    loss: float
    nfe_forward: float | None = None
    nfe_backward: float | None = None
    steps_accepted: float | None = None
    steps_rejected: float | None = None
    saved_for_backward_bytes: int | None = None
    extra: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Metrics of an evaluation pass. ``metrics`` must hold the suite's ``metric_name``."""

    metrics: Mapping[str, float]
    notes: str = ""
