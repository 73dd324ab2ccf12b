"""Tiny fake plugins for the core's tests: a NumPy Euler backend and a linear-ODE suite.

The suite fits the rate ``a`` of dy/dt = a*y (exact solution y(t) = y0 exp(a t)) by gradient
descent; the backend integrates with explicit Euler and differentiates by forward sensitivity.
Misbehaving backends raise, hang, exhaust memory or diverge, to test the runner's isolation.
"""

from __future__ import annotations

import math
import time

import numpy as np

import bench
from bench.core.interfaces import (
    AbstractBackend,
    AbstractSuite,
    AbstractTask,
    Budget,
    CellContext,
    Evaluation,
    StepStats,
    Support,
)
from bench.core.options import OptionSpec, non_negative, positive

A_TRUE = -0.5


class NumpyEulerBackend(AbstractBackend):
    """Declares its parameters the way a third-party backend does (as the built-ins do)."""

    framework = "numpy"
    gradient_method = "forward-sensitivity"
    solver = "euler"
    parameters = (
        OptionSpec("steps", int, 20, "Euler steps", validator=positive,
                   valid="a positive integer"),
        OptionSpec("tol", float, None, "a tolerance: at least ceil(0.1 / tol) steps",
                   validator=positive, nullable=True, valid="a positive number"),
        OptionSpec("pause_s", float, 0.0, "seconds each training step sleeps",
                   validator=non_negative, valid="zero or more"),
        OptionSpec("flavour", str, "plain", "a choice", choices=("plain", "salted")),
    )
    parameter_aliases = {"n": "steps"}
    #: The fake framework's reference gradient: Euler with 200 steps.
    gradient_reference = "numpy-euler-fine"

    def __init__(self, name: str = "numpy-euler", steps: int = 20, behaviour: str = "ok",
                 tol: float | None = None, pause_s: float = 0.0, flavour: str = "plain"):
        self.name = name
        # not "rtol": the gradient reference sets rtol = 1e-12 where a backend declares it
        self.tol, self.pause_s, self.flavour = tol, pause_s, flavour
        self.steps = steps if tol is None else max(steps, math.ceil(0.1 / tol))
        self.behaviour = behaviour
        self.description = f"explicit Euler, {steps} steps ({behaviour})"

    def configure(self, values):
        if not values or type(self) is not NumpyEulerBackend:  # a subclass: the default
            return super().configure(values)
        backend = NumpyEulerBackend(self.name, behaviour=self.behaviour,
                                    **{"steps": self.steps, **values})
        backend.gradient_method = self.gradient_method
        backend.user_parameters = {**self.user_parameters, **values}
        return backend

    def integrate(self, a: float, y0: float, t1: float) -> tuple[float, float, int]:
        """y(t1) and dy/da by Euler on the state and its sensitivity; returns (y, s, nfe)."""
        if self.behaviour == "raise":
            raise RuntimeError("this backend always fails")
        if self.behaviour == "hang":
            time.sleep(3600)
        if self.behaviour == "alloc300":  # holds 300 MiB, touched, for a second
            hog = np.ones(300 * 2**20 // 8)
            time.sleep(1.0)
            del hog
        if self.behaviour == "oom":
            hog = []
            while True:
                hog.append(np.ones(48 * 1024 * 1024))  # 384 MiB each, touched
        h = t1 / self.steps
        y, s = y0, 0.0
        for _ in range(self.steps):
            y, s = y + h * a * y, s + h * (a * s + y)
        return y, s, self.steps


class LinearTask(AbstractTask):
    def __init__(self, backend: NumpyEulerBackend, settings: dict, seed: int, lr: float):
        rng = np.random.default_rng(seed)
        self.a = float(rng.normal(0.0, 0.1))
        self.backend = backend
        self.num_train_steps = settings["steps"]
        self.eval_every = settings.get("eval_every")
        self.lr = lr

    def train_step(self, step: int) -> StepStats:
        if self.backend.pause_s:
            time.sleep(self.backend.pause_s)
        y, s, nfe = self.backend.integrate(self.a, 1.0, 1.0)
        target = math.exp(A_TRUE)
        loss = (y - target) ** 2
        self.a -= self.lr * 2 * (y - target) * s
        if self.backend.behaviour == "nan" and step == 2:
            loss = float("nan")
        return StepStats(loss=loss, nfe_forward=nfe, nfe_backward=nfe, steps_accepted=nfe,
                         steps_rejected=0)

    def evaluate(self, final: bool = True) -> Evaluation:
        return Evaluation({"rate_error": abs(self.a - A_TRUE), "a": self.a})

    def gradient_probe(self, reference=None, scale: float = 1.0):
        """d/da of the training loss at a * scale (the reference: its backend's solve)."""
        from bench.core.gradients import GradientProbe, weights_hash

        y, s, nfe = (reference or self.backend).integrate(self.a * scale, 1.0, 1.0)
        grad = 2 * (y - math.exp(A_TRUE)) * s
        return GradientProbe(np.array([grad]), nfe, nfe, None, weights_hash([np.float64(self.a)]))

    def num_params(self) -> int:
        return 1


class LinearSuite(AbstractSuite):
    name = "linear"
    description = "fit the rate of dy/dt = a*y (exact solution known)"
    metric_name = "rate_error"
    metric_direction = "lower"
    frameworks = ("numpy",)
    budgets = {
        "smoke": Budget("smoke", "3 steps", {"steps": 3}),
        "quick": Budget("quick", "200 steps", {"steps": 200, "eval_every": 50}),
    }
    options = {"lr": 2.0}

    def build_task(self, ctx: CellContext) -> AbstractTask:
        return LinearTask(ctx.backend, dict(ctx.budget.settings), ctx.seed,
                          float(ctx.options.get("lr", self.options["lr"])))


class PickySuite(LinearSuite):
    """Refuses one backend, to test `unsupported` rows."""

    name = "picky"

    def supports(self, backend: AbstractBackend) -> Support:
        if backend.name != "numpy-euler":
            return Support.no("picky only runs on numpy-euler")
        return Support.yes()


class MemoryTask(AbstractTask):
    """Allocates L state-sized buffers per step (backprop) or two (adjoint)."""

    num_train_steps = 2
    solver = "euler (fixed steps)"

    def __init__(self, backend: NumpyEulerBackend, steps: int, width: int):
        self.backend, self.steps, self.width = backend, steps, width

    def train_step(self, step: int) -> StepStats:
        kept = self.steps if self.backend.gradient_method != "adjoint" else 2
        states = [np.full(self.width, float(i)) for i in range(kept)]
        loss = float(sum(s[0] for s in states))
        return StepStats(loss=loss, nfe_forward=self.steps, nfe_backward=self.steps,
                         saved_for_backward_bytes=sum(s.nbytes for s in states))

    def evaluate(self, final: bool = True) -> Evaluation:
        return Evaluation({"loss": 0.0})

    def num_params(self) -> int:
        return 0


class FakeMemoryScalingSuite(AbstractSuite):
    name = "memory-scaling"
    metric_name = "loss"
    frameworks = ("numpy",)
    budgets = {"measure": Budget("measure", "one warm-up and one timed step, two memory steps")}
    options = {"steps": 8, "width": 131072}

    def build_task(self, ctx: CellContext) -> AbstractTask:
        return MemoryTask(ctx.backend, int(ctx.options["steps"]), int(ctx.options["width"]))


class TorchOnlySuite(LinearSuite):
    name = "torch-only"
    frameworks = ("torch",)


@bench.hookimpl
def bench_register_backends(register):
    register(NumpyEulerBackend())
    register(NumpyEulerBackend("numpy-euler-fine", steps=200))
    for behaviour in ("raise", "hang", "oom", "nan", "alloc300"):
        register(NumpyEulerBackend(f"numpy-{behaviour}", behaviour=behaviour))
    adjoint = NumpyEulerBackend("numpy-adjoint")
    adjoint.gradient_method = "adjoint"
    register(adjoint)


@bench.hookimpl
def bench_register_suites(register):
    register(LinearSuite())
    register(PickySuite())
    register(TorchOnlySuite())
    register(FakeMemoryScalingSuite())
