"""The abstract interfaces a backend and a suite implement: the framework-neutral contract.

The core never imports a numerical framework. A backend says which framework it belongs to
(``"torch"``, ``"jax"``, ``"numpy"``, ...); a suite builds a :class:`AbstractTask` for that
framework, using the framework layer's API that the backend implements (``bench.frameworks.torch``:
:meth:`TorchBackend.ode_block <bench.frameworks.torch.TorchBackend.ode_block>`;
``bench.frameworks.jax``: :meth:`JaxBackend.solve <bench.frameworks.jax.JaxBackend.solve>`; both
abstract there). The core only drives the task: it times steps, synchronises the device through
the backend, measures memory through a :class:`MemoryTracker`, and writes what the task's
:class:`StepStats` counted into the row.

The core calls, in the parent before any cell: the registry's contract check
(:func:`bench.core.registry.contract_problem`), ``configure``, ``check_available`` and both
``supports``; in the cell: ``resolve_device``, :meth:`AbstractSuite.build_task`, then per step
``synchronize``, ``train_step``, ``synchronize``, ``complete_step_stats`` and
:meth:`AbstractBackend.step_stats_problem` (a step that counted no evaluation fails the cell).

docs/plugins.md walks through a complete torch and a complete JAX backend.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# ``X as X``: re-exported, this module being the framework layers' import point
from bench.core.measure import MemoryTracker as MemoryTracker

if TYPE_CHECKING:
    from bench.core.gradients import GradientProbe
from bench.core.options import OptionSpec
from bench.core.tolerances import FIXED_STEP_SOLVERS as FIXED_STEP_SOLVERS
from bench.core.tolerances import Tolerances as Tolerances
from bench.core.tolerances import effective_tolerances as effective_tolerances
from bench.core.tolerances import solver_settings as solver_settings
from bench.core.values import Budget as Budget
from bench.core.values import Evaluation as Evaluation
from bench.core.values import MetricDirection as MetricDirection
from bench.core.values import StepStats as StepStats
from bench.core.values import Support as Support


@dataclasses.dataclass(frozen=True)
class CellContext:
    """Everything a suite needs to build a task for one cell."""

    backend: AbstractBackend
    budget: Budget
    seed: int
    device: str
    work_dir: Path
    options: Mapping[str, Any]
    log: Callable[[str], None] = print


class AbstractTask(abc.ABC):
    """One model on one backend, ready to train: built by a suite for one cell."""

    #: Number of training iterations the core will run (at least 2: the first is the warm-up).
    num_train_steps: int
    #: Run an evaluation every this many steps during training (None: only at the end).
    eval_every: int | None = None
    #: The solver this task actually uses, when it is not the backend's default (e.g. a
    #: fixed-step method); None: the backend's ``solver``. Goes into the row's ``solver``.
    solver: str | None = None
    #: Extra training iterations (:meth:`memory_step`) run after the final evaluation to measure
    #: ``peak_memory_bytes`` and ``saved_for_backward_bytes`` (each its own phase; their metrics
    #: and times are not used). 0: no memory measurement.
    memory_steps: int = 2
    #: Solver tolerances this task passes to its solves in place of the backend's own (e.g. a
    #: suite budget's); None: the backend's. The row records what was used (see
    #: :func:`solver_settings`).
    tolerances: Tolerances | None = None

    @abc.abstractmethod
    def train_step(self, step: int) -> StepStats:
        """Run one training iteration (forward, backward, update) and return its statistics.

        :param step: the iteration number, from 0.
        """

    @abc.abstractmethod
    def evaluate(self, final: bool = True) -> Evaluation:
        """Evaluate the model on held-out data.

        :param final: True for the evaluation whose metrics go into the result row (the full test
            set); False for the periodic evaluations during training (``eval_every``), which may
            use a subset and say so in ``Evaluation.notes``.
        """

    @abc.abstractmethod
    def num_params(self) -> int:
        """Number of trainable parameters."""

    def memory_step(self, step: int) -> StepStats:
        """One of the ``memory_steps`` extra training iterations, run after every timed step (and
        after the final evaluation) to measure memory: the same work as :meth:`train_step`, plus
        whatever instrumentation would slow a timed step down. The row's
        ``saved_for_backward_bytes`` comes from these steps (the torch tasks measure it here, with
        saved-tensor hooks that no timed step carries), like ``peak_memory_bytes``, and their NFE
        go into ``memory_step_nfe_forward``/``_backward``. Default: :meth:`train_step`.

        :param step: the iteration number (counting on after the timed steps).
        """
        return self.train_step(step)

    def gradient_probe(self, reference: AbstractBackend | None = None, scale: float = 1.0
                       ) -> GradientProbe | None:
        """The gradient of the training loss on a fixed probe batch at the current weights (each
        weight array times ``scale``), without changing the weights or the optimiser, as a
        :class:`bench.core.gradients.GradientProbe` (flat float64, in the neutral weights' order).
        With ``reference`` (a backend of this framework configured as the reference solve): the
        same model rebuilt on it and computed in float64. Default: None (not measured)."""
        return None

    def prepare_evaluation(self, final: bool = True) -> None:  # noqa: B027 - optional
        """Called before the clock starts for each :meth:`evaluate`: compile what the evaluation
        will run (a JIT framework compiles at the first call for each input shape), so that
        ``eval_time_s`` is run time only. Must not change the model. Default: nothing."""

    def finish(self, work_dir: Path, trace: Mapping[str, Any]) -> None:  # noqa: B027
        """Called once after the last evaluation: write plots or artefacts into ``work_dir``."""


class AbstractBackend(abc.ABC):
    """A way to integrate and differentiate a Neural ODE (a solver and a gradient method).

    Required (checked when a plugin registers it; ``bench list`` shows a problem): ``name``,
    unique across plugins, without spaces or any of ``,[]=``; ``framework``, for which the suites
    build the task and whose layer's abstract method they call: subclass
    :class:`bench.frameworks.torch.TorchBackend` (``ode_block``) or
    :class:`bench.frameworks.jax.JaxBackend` (``solve``), which set it. Everything else has a
    default; user-settable parameters are :class:`bench.core.options.OptionSpec` in
    :attr:`parameters`, applied by :meth:`configure` (default: the constructor's keywords).
    """

    #: Unique across plugins (a class attribute, or an instance attribute set in ``__init__``).
    name: str
    #: ``"torch"``, ``"jax"``, ...: which framework layer's contract the backend implements.
    framework: str
    #: How gradients are computed (``"adjoint"``, ``"backprop"``, ...).
    gradient_method: str = ""
    #: The solver of the backend's own solves (e.g. ``"dopri5"``), recorded in the row.
    solver: str = ""
    description: str = ""
    #: True when the backend integrates in continuous time: a solve can return the state at
    #: arbitrary times and run backwards (False: a ResNet's discrete blocks). Suites that need
    #: either refuse such a backend in :meth:`AbstractSuite.supports`.
    continuous_time: bool = True
    #: What the literature claims for this backend's training memory in the number of solver
    #: steps (e.g. ``"O(1)"``, ``"O(L)"``); shown beside the measured fit by ``bench memory``.
    memory_claim: str | None = None
    #: The solver a forced fixed-step solve uses (the memory-scaling study's ``fixed_steps``),
    #: recorded as the row's ``solver``; None: the backend's own ``solver`` (already fixed-step).
    fixed_step_solver: str | None = None
    #: The backend's own solver tolerances (None: a fixed-step solver has none), and those of the
    #: adjoint's reverse solve (None: the forward ones).
    rtol: float | None = None
    atol: float | None = None
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    #: The backend (``--backends`` text) whose float64 backpropagation through a dopri5 solve at
    #: rtol = atol = 1e-12 is the reference gradient of this framework's cells (None: none).
    gradient_reference: str | None = None
    #: Whether the solver adapts its step (None: decided from ``rtol`` and ``solver``).
    adaptive: bool | None = None
    #: What a user may set per cell (``--backends 'name[key=value,key=[v1,v2]]'``,
    #: ``--backend-set key=value``): each parameter's type, default, valid values and help,
    #: checked in the parent before any cell starts and shown by ``bench list``. A built-in and a
    #: third-party backend declare them the same way; :meth:`configure` applies them.
    parameters: Sequence[OptionSpec] = ()
    #: Other names a user may write for a parameter (e.g. torchdiffeq's ``method`` for
    #: ``solver``).
    parameter_aliases: Mapping[str, str] = {}
    #: The parameters the user set on this instance (empty: the registered configuration).
    user_parameters: Mapping[str, Any] = {}
    #: Whether ``--backends all`` includes this backend (False: a variant run only by name, e.g.
    #: diffrax-direct; ``bench list`` says so).
    in_all: bool = True
    #: Modules the backend needs, found (never imported) by the default :meth:`check_available`:
    #: a missing one makes every cell ``unsupported`` with :attr:`install_hint`, not failed.
    required_modules: tuple[str, ...] = ()
    #: How to install :attr:`required_modules` (shown when one is missing).
    install_hint: str = ""
    #: True (the torch and JAX bases) when every training step evaluates the dynamics through
    #: counted solves: a continuous-time step reporting ``nfe_forward`` 0 or None then fails the
    #: cell (:meth:`step_stats_problem`), with :attr:`counting_hint` saying how to count.
    counts_evaluations: bool = False
    counting_hint: str = ""

    def configure(self, values: Mapping[str, Any]) -> AbstractBackend:
        """This backend with the parameters ``values`` set (already converted and checked by
        their specs; the others keep their defaults). Default: ``type(self)(**values)``, so a
        backend whose constructor takes its parameters as keywords needs nothing more; override
        it otherwise. The parameters already set on this instance are kept (``values`` win).
        Raise :class:`bench.core.errors.BenchError` for a combination that cannot run (checked in
        the parent, before any cell starts)."""
        if not values:
            return self
        merged = {**self.user_parameters, **values}
        backend = type(self)(**merged)
        backend.user_parameters = merged
        return backend

    def configuration(self) -> dict[str, Any]:
        """The effective value of every declared parameter (for the row's ``backend_config``).
        Default: the attribute of that name, else the declared default."""
        return {spec.name: getattr(self, spec.name, spec.default) for spec in self.parameters}

    def check_available(self) -> str | None:
        """Return None when the backend's dependencies are importable, else the reason and the
        install hint (e.g. ``"jax is not installed: pip install 'neural-ode-bench[jax]'"``).
        Called in the parent, where the framework may be missing: never import it here.
        Default: the :attr:`required_modules` that cannot be found, with :attr:`install_hint`."""
        from bench.core.availability import missing_modules

        missing = missing_modules(self.required_modules)
        if not missing:
            return None
        verb = "is" if len(missing) == 1 else "are"
        hint = f": {self.install_hint}" if self.install_hint else ""
        return f"{' and '.join(missing)} {verb} not installed{hint}"

    def supports(self, suite: AbstractSuite) -> Support:
        """Whether this backend can run ``suite``. The default: the suite has a model for this
        backend's framework."""
        if self.framework not in suite.frameworks:
            return Support.no(
                f"suite {suite.name!r} has no {self.framework} model "
                f"(it has: {', '.join(suite.frameworks) or 'none'})"
            )
        return Support.yes()

    def resolve_device(self, requested: str) -> str:
        """Map ``cpu``/``cuda``/``auto`` to the device this backend will use. Raise
        :class:`bench.core.errors.BenchError` when the requested device is not available."""
        if requested in ("cpu", "auto"):
            return "cpu"
        from bench.core.errors import BenchError

        raise BenchError(f"backend {self.name!r} runs on the CPU only, not on {requested!r}")

    def device_name(self, device: str) -> str:
        """A human-readable name of the device, e.g. the GPU model."""
        from bench.core.measure import cpu_model

        return cpu_model() if device == "cpu" else device

    def synchronize(self, device: str) -> None:  # noqa: B027
        """Block until all queued work on ``device`` has finished (needed before any timing)."""

    def complete_step_stats(self, stats: StepStats) -> StepStats:
        """Called by the core on each step's statistics right after the step's clock stopped:
        finish counting work that a plain training loop would not do and that must not be timed
        (diffrax-checkpoint replays its checkpoint schedule here). Default: ``stats`` as they
        are."""
        return stats

    def step_stats_problem(self, stats: StepStats, step: int) -> str | None:
        """What is wrong with a training step's completed statistics, or None; the core fails
        the cell with the message. Default: a backend that :attr:`counts_evaluations` in
        continuous time must count at least one evaluation of the dynamics in the forward pass
        of every step (a ResNet's blocks, ``continuous_time`` False, are not checked)."""
        if not (self.counts_evaluations and self.continuous_time) or stats.nfe_forward:
            return None
        return (f"backend {self.name!r} ({type(self).__module__}.{type(self).__qualname__}) "
                f"counted no evaluation of the dynamics in training step {step} (nfe_forward="
                f"{stats.nfe_forward!r}), so the row's NFE would be wrong. "
                f"{self.counting_hint or 'Count every call of the dynamics in its solves.'} "
                "See docs/plugins.md, 'Counting'.")

    def memory_tracker(self, device: str) -> MemoryTracker:
        """The tracker used for ``peak_memory_bytes``. Default: the process's resident memory."""
        from bench.core.measure import ResidentMemoryTracker

        return ResidentMemoryTracker()


class AbstractSuite(abc.ABC):
    """A standard task: data, per-framework models, a metric and budgets.

    Required, without a default (checked when a plugin registers the suite): ``name`` (unique
    across plugins, as a backend's), ``metric_name``, ``budgets`` (at least one
    :class:`Budget`), and a task for each framework it runs on: :attr:`tasks`, or an override
    of :meth:`build_task`. The task (:class:`AbstractTask`, abstract: ``train_step``,
    ``evaluate``, ``num_params``) calls the framework layer's methods on the cell's backend and
    returns each step's :class:`StepStats` from the backend's counts
    (``bench.frameworks.torch.run_train_step``, ``bench.frameworks.jax.JaxBackend.step_stats``).
    """

    name: str
    description: str = ""
    #: Name of the headline metric, with its unit (e.g. ``test_error_pct``, ``nll_nats``).
    metric_name: str
    metric_direction: MetricDirection = "lower"
    #: The task of each framework: framework -> ``"module:Class"`` (e.g. ``{"torch":
    #: "bench.suites.mnist_torch:MnistTorchTask"}``), imported by :meth:`build_task` only when a
    #: cell of that framework is built. ``Class(ctx, inputs)`` builds the task, ``inputs`` being
    #: :meth:`task_inputs`.
    tasks: Mapping[str, str] = {}
    budgets: Mapping[str, Budget]
    #: Options a user may set (``--set key=value``) and their defaults. Unknown keys raise.
    #: A suite that declares :attr:`option_specs` sets this to ``option_defaults(option_specs)``.
    options: Mapping[str, Any] = {}
    #: Each option's type, default, valid values and help; checked in the parent before any cell
    #: starts. An option in ``options`` without a spec is taken as given.
    option_specs: Sequence[OptionSpec] = ()
    #: Options that say where to find data rather than what to measure (e.g. ``data_dir``):
    #: left out of cell ids, so a resumed run may find its data elsewhere.
    location_options: tuple[str, ...] = ()
    #: Options that change only how a cell solves (e.g. memory-scaling's ``steps``), not the
    #: problem: left out of the reference gradient's cache key (:mod:`bench.core.gradients`).
    solve_options: tuple[str, ...] = ()
    #: Options ``bench gradients`` sets unless the user does (memory-scaling: adaptive solves).
    gradient_study_options: Mapping[str, Any] = {}

    @property
    def frameworks(self) -> tuple[str, ...]:
        """Frameworks this suite has models for: the keys of :attr:`tasks`."""
        return tuple(self.tasks)

    def supports(self, backend: AbstractBackend) -> Support:
        """Whether this suite can run on ``backend`` beyond the framework check (e.g. a CNF
        cannot use an untied-weight ResNet)."""
        return Support.yes()

    def build_task(self, ctx: CellContext) -> AbstractTask:
        """Build the model, data and optimiser for one cell. Default: the task class of the
        backend's framework in :attr:`tasks`, called as ``Class(ctx, self.task_inputs(ctx))``."""
        import importlib

        from bench.core.errors import BenchError

        inputs = self.task_inputs(ctx)  # checks the options first
        framework = ctx.backend.framework
        if framework not in self.tasks:
            raise BenchError(f"suite {self.name} has no {framework} model (it has: "
                             f"{', '.join(self.frameworks) or 'none'})")
        module, _, name = self.tasks[framework].partition(":")
        task_class = getattr(importlib.import_module(module), name)
        task: AbstractTask = task_class(ctx, inputs)
        return task

    def task_inputs(self, ctx: CellContext) -> Any:
        """The framework-neutral inputs that every framework's task of a cell is built from (its
        data, batches, settings), made once by the suite. Default: the cell's options
        (:meth:`cell_options`)."""
        return self.cell_options(ctx)

    def option_spec(self, name: str) -> OptionSpec:
        """The spec of option ``name`` (one made from its default when the suite declares none)."""
        for spec in self.option_specs:
            if spec.name == name:
                return spec
        default = self.options[name]
        return OptionSpec(name, type(default) if default is not None else object, default)

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` (a subset of :attr:`options`) converted and checked against the option
        specs; an unknown or invalid one raises :class:`bench.core.errors.BenchError` naming the
        option and its valid values. Options without a spec pass unchanged."""
        from bench.core.errors import BenchError

        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise BenchError(f"unknown option(s) of suite {self.name}: {', '.join(unknown)} "
                             f"(valid: {', '.join(self.options) or 'none'})")
        declared = {spec.name: spec for spec in self.option_specs}
        return {key: declared[key].parse(value, self.name) if key in declared else value
                for key, value in options.items()}

    def budget_tolerances(self, budget: Budget) -> str | None:
        """The solver tolerances ``budget`` imposes on every adaptive backend in place of its own,
        in words (shown by ``bench list``), or None when the backends keep theirs. Default: the
        budget's ``rtol``/``atol`` settings."""
        settings = budget.settings
        if "rtol" not in settings and "atol" not in settings:
            return None
        return f"rtol={settings.get('rtol')} atol={settings.get('atol')}"

    def check_data(self, options: Mapping[str, Any]) -> str | None:
        """Called once in the parent before any cell starts, with the run's options over the
        defaults: None when the suite's data can be found (it may download them here, once, for
        the cells to find), else the whole message, with its remedy. Default: None."""
        return None

    def cell_options(self, ctx: CellContext) -> dict[str, Any]:
        """The cell's options over the suite's defaults; an unknown key raises with the valid
        ones (a helper for :meth:`build_task`)."""
        from bench.core.errors import BenchError

        unknown = sorted(set(ctx.options) - set(self.options))
        if unknown:
            raise BenchError(f"unknown option(s) of suite {self.name}: {', '.join(unknown)} "
                             f"(valid: {', '.join(self.options) or 'none'})")
        return {**self.options, **self.validate_options(ctx.options)}
