"""The CNF suite's framework-neutral part (numpy only): budgets, initial weights, the data
streams and probe vectors of a cell (:class:`CnfData`) and the plot; every framework's task
(:mod:`bench.suites.cnf_torch`, :mod:`bench.suites.cnf_jax`) imports it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from bench.suites import cnf_densities

from bench.core.errors import UnknownNameError
from bench.core.interfaces import Budget, Tolerances
from bench.core.seeding import stream
from bench.store.files import atomic_write

DIM = 2
HIDDEN = (64, 64, 64)
TRACE_ESTIMATORS = ("exact", "hutchinson")

#: The suite's random streams (bench.core.seeding: one numpy stream per seed, purpose and keys).
STREAMS = ("weights", "train_batches", "test_set", "probes", "plot")

#: FFJORD toy settings (Grathwohl et al. 2019; train_toy.py defaults where the paper is silent).
_PAPER: dict[str, Any] = {
    "steps": 10_000, "batch_size": 100, "test_size": 1000, "lr": 1e-3, "weight_decay": 1e-5,
    "rtol": 1e-5, "atol": 1e-5, "time_length": 0.5, "train_end_time": True,
    "eval_every": 500, "eval_subset": None, "plot_samples": 2000, "plot_grid": 100,
}

BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke",
        "CI check, seconds: 4 Adam steps of batch 64 at dopri5 rtol=atol=1e-3, periodic evaluation "
        "after step 2 on 64 test samples, final NLL on 256; no density plot (its sampling and "
        "grid programs are not measurement)",
        {**_PAPER, "steps": 4, "batch_size": 64, "test_size": 256, "eval_every": 2,
         "eval_subset": 64, "rtol": 1e-3, "atol": 1e-3, "plot_samples": 0, "plot_grid": 0},
    ),
    "quick": Budget(
        "quick",
        "CPU-friendly, a few minutes per backend on 2 cores: 400 Adam steps (lr 1e-3) of batch "
        "100 at dopri5 rtol=atol=1e-4, periodic evaluation every 100 steps on 200 test samples, "
        "final NLL on 1000 fresh samples (measured figures: results/cnf-quick-cpu)",
        {**_PAPER, "steps": 400, "rtol": 1e-4, "atol": 1e-4, "eval_every": 100,
         "eval_subset": 200},
    ),
    "work-precision": Budget(
        "work-precision",
        "a tolerance grid's cell in about a minute on one core: 100 Adam steps (lr 1e-3) of batch "
        "100, the backend's own tolerances (set them: --backend-set tol=[1e-3,1e-4,...]), final "
        "NLL on 1000 fresh samples at the same tolerances; no periodic evaluation",
        {**{k: v for k, v in _PAPER.items() if k not in ("rtol", "atol")}, "steps": 100,
         "eval_every": None, "plot_samples": 500, "plot_grid": 30},
    ),
    "paper": Budget(
        "paper",
        "FFJORD toy setup: 10,000 Adam steps (lr 1e-3, weight decay 1e-5) of batch 100, 3x64 "
        "concatsquash tanh dynamics, exact trace, learned T (initially 0.5), dopri5 at "
        "rtol=atol=1e-5 (training and test), test NLL on 1000 fresh samples; evaluation every "
        "500 steps",
        dict(_PAPER),
    ),
}


# -------------------------------------------------------------------------------------------------
# Initial weights (framework-neutral)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: its name and shape (torch layout: linear weight (out, in)) and how it is
    initialised (``uniform`` in +-1/sqrt(fan_in), torch's nn.Linear default; ``const``)."""

    name: str
    shape: tuple[int, ...]
    init: str
    fan_in: int = 0
    value: float = 0.0


def layer_dims(hidden: tuple[int, ...] = HIDDEN) -> list[tuple[int, int]]:
    dims = [DIM, *hidden, DIM]
    return list(zip(dims[:-1], dims[1:], strict=False))


def parameter_specs(time_length: float, hidden: tuple[int, ...] = HIDDEN) -> list[ParamSpec]:
    """All parameters of the dynamics, in the fixed order their initial values are drawn.

    Layer i (a ConcatSquashLinear d_in -> d_out): ``layers.{i}.linear.weight`` (d_out, d_in),
    ``layers.{i}.linear.bias`` (d_out,), ``layers.{i}.hyper_gate.weight`` (d_out, 1),
    ``layers.{i}.hyper_gate.bias`` (d_out,), ``layers.{i}.hyper_bias.weight`` (d_out, 1);
    then ``sqrt_end_time`` (a scalar, sqrt(time_length)).
    """
    specs: list[ParamSpec] = []
    for i, (d_in, d_out) in enumerate(layer_dims(hidden)):
        p = f"layers.{i}"
        specs += [ParamSpec(f"{p}.linear.weight", (d_out, d_in), "uniform", d_in),
                  ParamSpec(f"{p}.linear.bias", (d_out,), "uniform", d_in),
                  ParamSpec(f"{p}.hyper_gate.weight", (d_out, 1), "uniform", 1),
                  ParamSpec(f"{p}.hyper_gate.bias", (d_out,), "uniform", 1),
                  ParamSpec(f"{p}.hyper_bias.weight", (d_out, 1), "uniform", 1)]
    specs.append(ParamSpec("sqrt_end_time", (), "const", value=math.sqrt(float(time_length))))
    return specs


def initial_weights(seed: int, time_length: float = 0.5, hidden: tuple[int, ...] = HIDDEN
                    ) -> dict[str, np.ndarray]:
    """float32 arrays keyed by parameter name, drawn in :func:`parameter_specs` order from
    ``np.random.default_rng([seed, 0])``; the same for every backend and framework of a seed."""
    rng = stream(seed, STREAMS, "weights")
    weights: dict[str, np.ndarray] = {}
    for spec in parameter_specs(time_length, hidden):
        if spec.init == "uniform":
            bound = 1.0 / math.sqrt(spec.fan_in)
            value = rng.uniform(-bound, bound, size=spec.shape)
        elif spec.init == "const":
            value = np.full(spec.shape, spec.value)
        else:
            raise ValueError(f"unknown init {spec.init!r} for {spec.name}")
        weights[spec.name] = np.asarray(value, dtype=np.float32)
    return weights


# -------------------------------------------------------------------------------------------------
# Data and probe vectors (framework-neutral)
# -------------------------------------------------------------------------------------------------


class CnfData:
    """Training batches, test samples, probe vectors and plot inputs for one dataset and seed.

    Step ``k``'s batch is drawn from ``default_rng([seed, 1, k])`` (so it does not depend on what
    ran before), the test set once from ``default_rng([seed, 2])`` (fresh samples, never trained
    on), the Hutchinson probes of step ``k`` from ``default_rng([seed, 3, k])``.
    """

    def __init__(self, dataset: str, settings: Mapping[str, Any], seed: int,
                 trace_estimator: str = "exact"):
        self.dataset = dataset
        self.generator = cnf_densities.generator(dataset)
        if trace_estimator not in TRACE_ESTIMATORS:
            raise UnknownNameError("trace estimator", str(trace_estimator), TRACE_ESTIMATORS)
        self.trace_estimator = trace_estimator
        self.settings = {**_PAPER, **settings}
        #: the budget's tolerances replace the backend's (recorded in the row)
        self.tolerances = Tolerances.from_settings(self.settings)
        self.seed = int(seed)
        s = self.settings
        self.batch_size = int(s["batch_size"])
        self.num_train_steps = int(s["steps"])
        self.eval_every: int | None = int(s["eval_every"]) if s.get("eval_every") else None
        self.test_size = int(s["test_size"])
        self.eval_size = self.test_size if s.get("eval_subset") is None else min(
            int(s["eval_subset"]), self.test_size)
        self.test = self.generator(stream(self.seed, STREAMS, "test_set"),
                                   self.test_size)
        self.true_log_density = cnf_densities.TRUE_LOG_DENSITIES.get(dataset)

    def train_batch(self, step: int) -> np.ndarray:
        """The (batch_size, 2) float32 training batch of iteration ``step``."""
        return self.generator(stream(self.seed, STREAMS, "train_batches", step),
                              self.batch_size)

    def probes(self, step: int) -> np.ndarray | None:
        """Hutchinson's probe vectors of iteration ``step`` (batch_size, 2), float32 standard
        normal (FFJORD's default, not Rademacher); None for the exact trace."""
        if self.trace_estimator == "exact":
            return None
        rng = stream(self.seed, STREAMS, "probes", step)
        return rng.standard_normal((self.batch_size, DIM)).astype(np.float32)

    def test_samples(self, final: bool) -> np.ndarray:
        """All test samples (final) or the first ``eval_subset`` of them."""
        return self.test if final else self.test[:self.eval_size]

    def nll_metrics(self, x: np.ndarray, log_px: np.ndarray) -> dict[str, float]:
        """``nll_nats`` (the mean of -log p_model), and for a known density ``true_nll_nats``
        and ``nll_gap_nats`` on the same samples."""
        nll = float(-np.mean(np.asarray(log_px, dtype=np.float64)))
        metrics = {"nll_nats": nll}
        if self.true_log_density is not None:
            true = float(-np.mean(self.true_log_density(x)))
            metrics["true_nll_nats"] = true
            metrics["nll_gap_nats"] = nll - true
        return metrics

    def eval_notes(self, final: bool) -> str:
        n = self.test_size if final else self.eval_size
        which = (f"all {n} test samples" if n == self.test_size
                 else f"the first {n} of {self.test_size} test samples")
        trace = ("exact trace" if self.trace_estimator == "exact"
                 else "trained with Hutchinson's estimator, evaluated with the exact trace")
        return f"{self.dataset}: NLL on {which} (fresh, never trained on); {trace}"

    @property
    def plots(self) -> bool:
        """Whether the cell draws its density plot (``finish``): not where the budget sets
        ``plot_samples`` or ``plot_grid`` to 0 (smoke: sampling and the density grid compile
        programs of their own in a JAX cell, for no figure of the row)."""
        return int(self.settings["plot_samples"]) > 0 and int(self.settings["plot_grid"]) > 0

    def plot_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(data samples, base samples, grid xs, grid ys) for :meth:`AbstractTask.finish`."""
        n = int(self.settings["plot_samples"])
        data = self.generator(stream(self.seed, STREAMS, "plot", 0), n)
        base = stream(self.seed, STREAMS, "plot", 1).standard_normal(
            (n, DIM)).astype(np.float32)
        side = np.linspace(-4.0, 4.0, int(self.settings["plot_grid"]), dtype=np.float32)
        xs, ys = np.meshgrid(side, side)
        return data, base, xs, ys


def plot_flow(path: Any, data: np.ndarray, samples: np.ndarray, xs: np.ndarray, ys: np.ndarray,
              log_density: np.ndarray, title: str = "") -> None:
    """One PNG: data samples, model samples (the inverse flow of base samples) and the learned
    density exp(log p) on the grid (xs, ys)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 3.6))
    axes = fig.subplots(1, 3)
    lo, hi = float(xs.min()), float(xs.max())
    for ax, points, name in ((axes[0], data, "data samples"),
                             (axes[1], samples, "model samples (inverse flow)")):
        finite = points[np.isfinite(points).all(1)]
        ax.hist2d(finite[:, 0], finite[:, 1], bins=80, range=[[lo, hi], [lo, hi]], cmap="viridis")
        ax.set_title(name, fontsize=9)
    density = np.exp(np.where(np.isfinite(log_density), log_density, -np.inf))
    axes[2].pcolormesh(xs, ys, density, cmap="viridis", shading="auto")
    axes[2].set_title("learned density", fontsize=9)
    for ax in axes:
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    # whole, renamed into place: never written through a link in the cell's folder
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
