"""One cell's result row (:class:`ResultRow`) and its JSON form; units are in the field names."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TextEnum(str, enum.Enum):
    """An enumeration whose members are the text the tables print (``str(member)`` and
    ``f"{member}"`` give the value on every Python version), equal to that text."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Status(TextEnum):
    """How a cell ended: the row's ``status`` column."""

    #: Trained and evaluated; every measured column is filled.
    OK = "ok"
    #: An exception, a crash, the memory limit or a row that could not be recorded: ``error``
    #: says which.
    FAILED = "failed"
    #: The cell exceeded ``--timeout`` and was stopped.
    TIMEOUT = "timeout"
    #: The training loss became non-finite.
    DIVERGED = "diverged"
    #: The backend/suite pair cannot run (a missing extra, a model the suite does not have): a
    #: reported outcome, not a failure.
    UNSUPPORTED = "unsupported"


class GradientMethod(TextEnum):
    """How a backend computes gradients: the row's ``gradient_method`` column. A backend
    declares one of these (an unknown one is refused when the plugin registers it)."""

    #: Backpropagation through every operation of the solver (memory O(steps)).
    BACKPROP = "backprop"
    #: The continuous adjoint: a reverse-time solve of the adjoint ODE (memory O(1) in steps).
    ADJOINT = "adjoint"
    #: Backpropagation through the solver with (binomial) checkpointing of the forward states.
    RECURSIVE_CHECKPOINT = "recursive-checkpoint"
    #: Forward sensitivities integrated alongside the state.
    FORWARD_SENSITIVITY = "forward-sensitivity"
    #: An algebraically reversible solver that reconstructs the forward states backwards.
    REVERSIBLE = "reversible"
    #: The adaptive checkpoint adjoint (one saved state per accepted step).
    CHECKPOINT_ADJOINT = "checkpoint-adjoint"

    @classmethod
    def parse(cls, value: object, owner: str) -> GradientMethod:
        """``value`` as a member; an unknown one raises ``ValueError`` naming ``owner`` and the
        valid values."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{owner}: gradient_method {value!r} is not one of "
                             f"{', '.join(m.value for m in cls)}") from None


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One cell's outcome. Units are in the field names; ``None`` means not measured."""

    cell_id: str
    suite: str
    #: The backend as the cell ran it: its name, with the parameters the user set in brackets
    #: (``torch-adjoint[rtol=1e-06]``); ``backend_name`` is the registered name alone.
    backend: str
    framework: str
    gradient_method: str
    solver: str
    device: str
    seed: int
    budget: str
    status: Status
    error: str = ""
    #: The suite's headline metric name (also a key of ``metrics``) and whether lower is better.
    metric_name: str = ""
    metric_direction: str = "lower"
    #: The suite's metrics under their own names (``test_error_pct``, ``nll_nats``, ``mse``, ...).
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: The suite options the cell ran with (``--set key=value``), also spread into columns.
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Means per training iteration.
    nfe_forward: float | None = None
    nfe_backward: float | None = None
    steps_accepted: float | None = None
    steps_rejected: float | None = None
    train_steps: int | None = None
    #: Median over steady-state steps (all but the first), synchronised.
    train_step_time_s: float | None = None
    #: Mean, 90th percentile and slowest of the same steady-state steps: a slow tail that the
    #: median hides (a loaded machine's 10-20x steps) shows here; see ``timing_warning``.
    train_step_time_mean_s: float | None = None
    train_step_time_p90_s: float | None = None
    train_step_time_max_s: float | None = None
    #: Extra time of the first step over the steady-state median (JIT compilation, allocations).
    compile_time_s: float | None = None
    #: Where the first step's compilations came from: ``hit`` (all loaded from the persistent
    #: compilation cache: ``compile_time_s`` is then a load, not a compilation), ``miss``
    #: (compiled), ``partial``, ``none`` (nothing compiled through the cache), ``off`` (the
    #: cache was off); empty for a framework without one (torch).
    compile_cache: str = ""
    #: Where the first step's traced programs came from (``program_cache``, the same words):
    #: ``hit``: loaded, kept by an earlier cell or run of the same cell and code, so neither
    #: tracing nor compiling is in ``compile_time_s``; ``miss``: traced (and kept); ``off``.
    program_cache: str = ""
    #: Time of the final evaluation.
    eval_time_s: float | None = None
    #: Whole cell, including set-up (data, model building) and evaluation.
    total_time_s: float | None = None
    #: Where the cell's time went (the cell folder's ``phases.json`` has every phase): the
    #: process's start and the plugins' imports, building the task (data, model), the
    #: evaluations' JIT preparation, the gradient probes (references included), the memory steps.
    startup_time_s: float | None = None
    setup_time_s: float | None = None
    eval_prepare_time_s: float | None = None
    gradient_probe_time_s: float | None = None
    memory_steps_time_s: float | None = None
    #: The loop-time split of one training step's forward solves, profiled in one extra untimed
    #: step after the memory steps: their time, the dynamics' evaluations' share of it and the
    #: rest (the solver's own loop: step-size control, stage arithmetic, bookkeeping).
    solve_time_s: float | None = None
    dynamics_time_s: float | None = None
    solver_loop_time_s: float | None = None
    #: Steady-state peak (the largest of the memory steps, run after the final evaluation) and
    #: the first step's own peak, both above the memory in use before the phase;
    #: ``peak_memory_method`` says how they were measured.
    peak_memory_bytes: int | None = None
    peak_memory_first_step_bytes: int | None = None
    peak_memory_method: str = ""
    #: Measured in the memory steps (the same steps as ``peak_memory_bytes``), never in a timed one.
    saved_for_backward_bytes: int | None = None
    #: NFE of the memory steps (the largest over them), beside the memory they measured: an
    #: adaptive solver may take another number of steps there than in the mean training step.
    memory_step_nfe_forward: float | None = None
    memory_step_nfe_backward: float | None = None
    params: int | None = None
    device_name: str = ""
    #: The host's 1-minute load average when the cell finished: CPU timings taken while it
    #: exceeds the core count are contaminated by other work.
    host_load_1m: float | None = None
    #: Mean cores kept busy by other processes while the cell ran (host CPU busy time minus the
    #: cell's own, from /proc, sampled by the parent).
    host_busy_cores_other: float | None = None
    #: The timings may not be comparable: the host was loaded beyond the cores the cell left
    #: free, or the steady step times spread far above usual; ``timing_warning`` says which.
    timing_flag: bool = False
    timing_warning: str = ""
    #: The most cells of the run that ran at once on the cell's host while it ran (itself
    #: included; sampled with the load): timings at different concurrency are not comparable.
    concurrent_cells: int | None = None
    #: Who ran the cell: ``local`` (and its slot, ``local/1``, with ``--jobs N``) or the Dask
    #: worker's address; ``host`` the machine's name.
    worker: str = ""
    host: str = ""
    #: Solver tolerances the cell ran with (None: a fixed-step solve), and the adjoint's reverse
    #: solve's; a suite budget's tolerances win over the backend's.
    rtol: float | None = None
    atol: float | None = None
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    #: Where rtol/atol came from: ``user`` (a backend parameter), ``budget`` (the suite's),
    #: ``backend`` (its default); None for a fixed-step solve.
    tolerance_source: str | None = None
    #: The error norm of the adjoint's reverse solve (``default``; ``seminorm``: Kidger et al.
    #: 2021), the checkpoints of a checkpointed backprop (None: the library's default), the
    #: first step rule or size, and the fixed steps of a fixed-step solver (None: adaptive).
    adjoint_norm: str | None = None
    checkpoints: int | None = None
    first_step: str | None = None
    fixed_steps: int | None = None
    #: The registered backend name, the parameters the user set, and the effective value of
    #: every parameter the backend declares (its full configuration).
    backend_name: str = ""
    backend_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backend_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Gradient accuracy (:mod:`bench.core.gradients`): ||g - g_ref|| / ||g_ref|| and the cosine of
    #: g and g_ref on the task's probe batch at the initial weights and after training
    #: (``_final``), against a float64 dopri5 backpropagation at rtol = atol = 1e-12 in the
    #: cell's framework; that reference's forward NFE and time (kept apart from the cell's).
    grad_rel_error: float | None = None
    grad_cosine: float | None = None
    grad_rel_error_final: float | None = None
    grad_cosine_final: float | None = None
    grad_ref_nfe: float | None = None
    grad_ref_time_s: float | None = None
    grad_ref_final_nfe: float | None = None
    grad_ref_final_time_s: float | None = None
    #: The gradient study (``bench gradients``, no training): the weights' scale k, the NFE of
    #: one gradient evaluation, its time (forward + backward, median, synchronised, after a
    #: warm-up) and its backward pass's alone where the framework separates it (torch).
    grad_scale: float | None = None
    grad_nfe_forward: float | None = None
    grad_nfe_backward: float | None = None
    grad_time_s: float | None = None
    grad_backward_time_s: float | None = None
    notes: str = ""
    finished_at: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=json_default, allow_nan=True)

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):  # from JSON or CSV: the text; unknown raises
            object.__setattr__(self, "status", Status(self.status))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def flat(self) -> dict[str, Any]:
        """The row as flat columns: ``metrics`` spread into their own columns."""
        data = dataclasses.asdict(self)
        data.pop("backend_params")  # in the backend label (and in backend_config)
        config = data["backend_config"]
        if isinstance(config, Mapping):  # a published CSV's row holds the text already
            data["backend_config"] = ",".join(f"{k}={_show(v)}" for k, v in config.items())
        for nested in ("metrics", "options"):
            for key, value in data.pop(nested).items():
                data.setdefault(key, value)
        return data

    @property
    def metric(self) -> float | None:
        return self.metrics.get(self.metric_name)


def _show(value: Any) -> str:
    from bench.core.options import format_value

    return format_value(value)


def metric_problem(metrics: Any) -> str:
    """Why ``metrics`` are not a row's metrics ('' when they are): a mapping of names to finite
    real numbers (numpy's scalars included; ``bool``, arrays, sets and text are not)."""
    if not isinstance(metrics, Mapping):
        return f"metrics are not a mapping of names to numbers: {metrics!r:.200}"
    for name, value in metrics.items():
        if not isinstance(name, str):
            return f"metric name {name!r:.80} is not a string"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"metric {name} is not a finite number: {_short_repr(value)}"
        try:
            finite = math.isfinite(float(value))
        except (OverflowError, ValueError):  # an int too big for a float
            finite = False
        if not finite:
            return f"metric {name} is not a finite number: {_short_repr(value)}"
    return ""


def _short_repr(value: Any) -> str:
    """``repr(value)`` cut to 200 characters (an int past Python's digit limit: its size)."""
    try:
        return f"{value!r:.200}"
    except ValueError:
        return f"an integer of about {int(value).bit_length() * 0.30103:.0f} digits"


def finite_metrics(metrics: Any) -> dict[str, float]:
    """The metrics of ``metrics`` that are finite real numbers, as floats (the others left
    out); empty when it is not a mapping."""
    if not isinstance(metrics, Mapping):
        return {}
    return {name: float(value) for name, value in metrics.items()
            if isinstance(name, str) and not metric_problem({name: value})}


def json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a result row")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
