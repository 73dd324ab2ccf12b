"""The latent-ODE suite's framework-neutral part (numpy only): datasets' and budgets' settings,
sizes and initial weights, the series, batches and masks of a cell (:class:`LatentOdeData`) and
the plot; every framework's task imports it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from bench.suites import latent_ode_series

from bench.core.errors import BenchError, UnknownNameError
from bench.core.interfaces import Budget, Evaluation, Tolerances
from bench.core.seeding import stream

DATASETS = tuple(latent_ode_series.GENERATORS)
TABLE2_OBSERVED = (30, 50, 100)  # Chen et al. 2018, Table 2: observed points out of 100
ENCODERS = ("rnn", "ode-rnn")

#: The suite's random streams (bench.core.seeding: one numpy stream per seed, purpose and keys).
STREAMS = ("weights", "dataset", "train_batches", "test_masks")

#: What the training loss covers: every point of a training series, or its window only (the
#: future is then never trained on: Chen et al.'s split of interpolation and extrapolation).
LOSS_POINTS = ("all", "window")

#: Per dataset: generator arguments, architecture, observation noise (``noise_std``: the std of
#: the Gaussian noise on the data, and the likelihood's), what the loss covers and the paper's
#: settings (which override the others under the paper budget).
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "spirals": {
        "data": {"num_series": 1000, "num_points": 200},
        # Sec. 5.1: "f with a one-hidden-layer network with 20 hidden units" (the example code
        # latent_ode.py has two; the paper's Table 2 is the claim, so its text is followed)
        "latent_dim": 4, "rnn_hidden": 25, "hidden": 20, "dynamics_layers": 1,
        # quick/smoke: torchdiffeq's examples/latent_ode.py (noise_std = .3 in its main), the loss
        # over all 200 points (published quick figures stay comparable)
        "noise_std": 0.3, "loss_points": "all",
        # Chen et al. 2018 Sec. 5.1 gives no noise std ("we add gaussian noise to the
        # observations") nor an iteration count. 0.1: the default of generate_spiral2d in
        # torchdiffeq's examples/latent_ode.py (its main passes 0.3; a std of 0.3 puts the RMSE
        # against the noisy series above 0.3, while Table 2 reports 0.1346). 4000 Adam steps at
        # lr 0.01 on all training series (the example: 2000, still improving there; independent
        # code converged by 4000). The loss covers the 100 window points only: the example
        # trains on its 100 sampled points, and Table 2's RMSE is "on 100 time points extending
        # beyond those that were used for training". Tolerances: torchdiffeq's defaults, which
        # the example uses (rtol 1e-7, atol 1e-9).
        "paper": {"steps": 4000, "batch_size": None, "lr": 0.01, "rtol": 1e-7, "atol": 1e-9,
                  "noise_std": 0.1, "loss_points": "window"},
    },
    "periodic": {
        "data": {"num_series": 1000, "num_points": 100},
        "latent_dim": 10, "rnn_hidden": 20, "hidden": 100, "dynamics_layers": 2,
        # Rubanova et al.'s --noise-weight 0.01, as Gaussian noise (the paper's text; see
        # bench.suites.latent_ode_series.periodic); Rubanova's extrapolation trains on the future
        "noise_std": 0.01, "loss_points": "all",
        # Rubanova et al.: 500 epochs of 16 batches of 50 (800 training series), lr 0.01,
        # dopri5 rtol 1e-3, atol 1e-4
        "paper": {"steps": 8000, "batch_size": 50, "lr": 0.01, "rtol": 1e-3, "atol": 1e-4},
    },
}

_COMMON = {"test_fraction": 0.2, "eval_every": 500, "eval_subset": None, "plot_series": 3}

BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke",
        "CI check, seconds: 40 series, 3 Adam steps of batch 8 at dopri5 rtol=1e-3, atol=1e-4, "
        "evaluation after step 2 on 4 test series, final on all 8; no series plot (its "
        "prediction program is not measurement)",
        {**_COMMON, "num_series": 40, "steps": 3, "batch_size": 8, "lr": 0.01, "rtol": 1e-3,
         "atol": 1e-4, "eval_every": 2, "eval_subset": 4, "plot_series": 0},
    ),
    "quick": Budget(
        "quick",
        "CPU-friendly: 1000 series (800 train / 200 test), 300 Adam steps (lr 0.01) of batch "
        "100 at dopri5 rtol=1e-3, atol=1e-4; evaluation every 100 steps on 50 test series, final "
        "on all 200 (spirals: 199 output intervals, so the adjoint makes 199 reverse solves a "
        "step; measured figures: results/latent-ode-quick-cpu)",
        {**_COMMON, "steps": 300, "batch_size": 100, "lr": 0.01, "rtol": 1e-3, "atol": 1e-4,
         "eval_every": 100, "eval_subset": 50},
    ),
    "paper": Budget(
        "paper",
        "the reference settings of each dataset: spirals as Chen et al. 2018 (noise std 0.1, "
        "the loss on the 100 window points only, 4000 Adam steps, lr 0.01, all 800 training "
        "series per step, dopri5 rtol=1e-7, atol=1e-9); periodic as Rubanova et al. 2019 (8000 "
        "steps = 500 epochs of batch 50, lr 0.01, dopri5 rtol=1e-3, atol=1e-4); evaluation "
        "every 500 steps",
        {**_COMMON, "paper": True},
    ),
}


def resolve_settings(dataset: str, budget_settings: Mapping[str, Any],
                     noise_std: float | None = None, loss_points: str | None = None
                     ) -> dict[str, Any]:
    """The flat settings of one dataset under one budget (the paper budget takes the dataset's
    reference settings); ``noise_std`` and ``loss_points`` (the suite options), when given,
    replace the noise std of the data and of the likelihood, and what the loss covers."""
    if dataset not in DATASET_SETTINGS:
        raise UnknownNameError("latent-ode dataset", dataset, DATASETS)
    spec = DATASET_SETTINGS[dataset]
    settings: dict[str, Any] = {k: v for k, v in spec.items() if k not in ("data", "paper")}
    settings["data"] = dict(spec["data"])
    budget = dict(budget_settings)
    if budget.pop("paper", False):
        budget = {**budget, **spec["paper"]}
    for key in ("num_series", "num_points"):  # a budget may shrink the dataset (tests, smoke)
        if key in budget:
            settings["data"][key] = int(budget.pop(key))
    settings.update(budget)
    if noise_std is not None:
        settings["noise_std"] = noise_std
    if loss_points is not None:
        settings["loss_points"] = loss_points
    try:
        std = float(settings["noise_std"])
    except (TypeError, ValueError):
        std = float("nan")
    if not (math.isfinite(std) and std > 0.0):
        raise BenchError(f"noise_std must be a positive number (the std of the observation "
                         f"noise and of the likelihood), not {settings['noise_std']!r}")
    settings["data"]["noise_std"] = settings["obs_std"] = std
    if settings["loss_points"] not in LOSS_POINTS:
        raise UnknownNameError("latent-ode loss_points", str(settings["loss_points"]),
                               LOSS_POINTS)
    return settings


# -------------------------------------------------------------------------------------------------
# Initial weights (framework-neutral)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    obs_dim: int
    latent_dim: int
    rnn_hidden: int
    hidden: int
    dynamics_layers: int = 1  # hidden layers of the latent dynamics
    encoder: str = "rnn"  # or "ode-rnn": the RNN's hidden state also follows an ODE between times


def layer_shapes(sizes: Sizes) -> list[tuple[str, int, int]]:
    """(prefix, fan_in, fan_out) of every linear layer, in the order their weights are drawn:
    ``encoder.i2h`` ([x, t, h] -> h), ``encoder.h2o`` (h -> [mu, logvar]), ``dynamics.fc1`` ..
    ``dynamics.fc{n+1}`` (n = ``dynamics_layers`` hidden layers), ``decoder.fc1..2``, and for
    the ODE-RNN encoder last ``encoder.ode.fc1..2`` (so the other layers' weights do not depend on
    the encoder). Each has ``.weight`` (out, in) and ``.bias`` (out,)."""
    d, z, r, u = sizes.obs_dim, sizes.latent_dim, sizes.rnn_hidden, sizes.hidden
    n = int(sizes.dynamics_layers)
    if n < 1:
        raise BenchError(f"the latent dynamics needs at least one hidden layer, not {n}")
    dynamics = [(f"dynamics.fc{i + 1}", z if i == 0 else u, z if i == n else u)
                for i in range(n + 1)]
    shapes = [("encoder.i2h", d + 1 + r, r), ("encoder.h2o", r, 2 * z), *dynamics,
              ("decoder.fc1", z, u), ("decoder.fc2", u, d)]
    if sizes.encoder == "ode-rnn":
        shapes += [("encoder.ode.fc1", r, u), ("encoder.ode.fc2", u, r)]
    elif sizes.encoder != "rnn":
        raise UnknownNameError("latent-ode encoder", sizes.encoder, ENCODERS)
    return shapes


def initial_weights(seed: int, sizes: Sizes) -> dict[str, np.ndarray]:
    """float32 arrays keyed by parameter name (torch layout), uniform in +-1/sqrt(fan_in)
    (torch.nn.Linear's default), drawn in :func:`layer_shapes` order (weight, then bias) from
    ``np.random.default_rng([seed, 0])``: the same for every backend and framework."""
    rng = stream(seed, STREAMS, "weights")
    weights: dict[str, np.ndarray] = {}
    for prefix, fan_in, fan_out in layer_shapes(sizes):
        bound = 1.0 / math.sqrt(fan_in)
        weights[f"{prefix}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(
            np.float32)
        weights[f"{prefix}.bias"] = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
    return weights


# -------------------------------------------------------------------------------------------------
# Data, masks and metrics (framework-neutral)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Batch:
    """What one forward pass needs: ``values`` (B, T, D) noisy series, ``mask`` (B, T) with 1 at
    the points the encoder sees (window points only), ``eps`` (B, latent) standard normal noise of
    the reparametrisation (zeros: z0 = the posterior mean)."""

    values: np.ndarray
    mask: np.ndarray
    eps: np.ndarray


def observation_mask(rng: np.random.Generator, num_series: int, num_points: int, window: int,
                     observed: int) -> np.ndarray:
    """(num_series, num_points) float32: ``observed`` distinct random window points per series."""
    if not 1 <= observed <= window:
        raise BenchError(f"cannot observe {observed} of a window of {window} points")
    mask = np.zeros((num_series, num_points), np.float32)
    for i in range(num_series):
        mask[i, rng.choice(window, size=observed, replace=False)] = 1.0
    return mask


class LatentOdeData:
    """Series, splits, masks and noise for one dataset and seed; metrics of predictions.

    The dataset is drawn from ``default_rng([seed, 1])``; the last ``test_fraction`` of the series
    are the test set. Step ``k``'s batch (series indices, masks, reparametrisation noise) comes
    from ``default_rng([seed, 2, k])``, the test masks from ``default_rng([seed, 3, n])`` (n: the
    number of observed points), so nothing depends on what ran before.
    """

    def __init__(self, dataset: str, budget_settings: Mapping[str, Any], seed: int,
                 observed_fraction: float = 0.5, encoder: str = "rnn",
                 noise_std: float | None = None, loss_points: str | None = None):
        self.dataset = dataset
        self.settings = s = resolve_settings(dataset, budget_settings, noise_std, loss_points)
        #: the budget's (or the dataset's paper) tolerances replace the backend's (in the row)
        self.tolerances = Tolerances.from_settings(s)
        try:
            fraction = float(observed_fraction)
        except (TypeError, ValueError):
            fraction = float("nan")
        if not 0.0 < fraction <= 1.0:
            raise BenchError(f"observed_fraction must be in (0, 1], not {observed_fraction!r}")
        self.observed_fraction = fraction
        if encoder not in ENCODERS:
            raise UnknownNameError("latent-ode encoder", str(encoder), ENCODERS)
        self.encoder = str(encoder)
        self.seed = int(seed)
        generator = latent_ode_series.GENERATORS[dataset]
        self.series = generator(stream(self.seed, STREAMS, "dataset"), **s["data"])
        n = self.series.num_series
        self.num_test = max(1, int(round(n * float(s["test_fraction"]))))
        self.num_train = n - self.num_test
        if self.num_train < 1:
            raise BenchError(f"{n} series leave none for training")
        self.times = self.series.times
        self.num_points = self.series.num_points
        self.window = self.num_points // 2
        self.observed = max(1, int(round(fraction * self.window)))
        self.sizes = Sizes(self.series.dim, int(s["latent_dim"]), int(s["rnn_hidden"]),
                           int(s["hidden"]), int(s["dynamics_layers"]), self.encoder)
        self.obs_std = float(s["obs_std"])
        #: the noise std of the data (and of the likelihood)
        self.noise_std = float(s["noise_std"])
        #: what the training loss covers: "all" points, or the "window" only (the future is then
        #: pure extrapolation, never trained on)
        self.loss_points = str(s["loss_points"])
        batch = s.get("batch_size")
        self.batch_size = self.num_train if batch is None else min(int(batch), self.num_train)
        self.num_train_steps = int(s["steps"])
        self.eval_every: int | None = int(s["eval_every"]) if s.get("eval_every") else None
        subset = s.get("eval_subset")
        self.eval_size = self.num_test if subset is None else min(int(subset), self.num_test)

    # ---- solving -------------------------------------------------------------------------------

    def solve_times(self) -> tuple[np.ndarray, int]:
        """(times to integrate to, starting at t0 = 0, strictly increasing; how many leading
        entries to drop to get the series' times)."""
        if float(self.times[0]) > 0.0:
            return np.concatenate([[0.0], self.times]).astype(np.float32), 1
        return self.times, 0

    def train_solve_times(self) -> tuple[np.ndarray, int]:
        """:meth:`solve_times` cut to what the loss covers: with ``loss_points == "window"``
        training integrates to the window's last time only (the future's terms would be zero)."""
        grid, offset = self.solve_times()
        if self.loss_points == "window":
            return grid[:offset + self.window], offset
        return grid, offset

    def encoder_gaps(self) -> np.ndarray:
        """(window - 1,) float32: ``gaps[i] = t[i + 1] - t[i]``, the span the ODE-RNN encoder's
        hidden state is integrated over between window times i + 1 and i (backwards in time)."""
        return np.diff(self.times[:self.window]).astype(np.float32)

    # ---- batches -------------------------------------------------------------------------------

    def train_batch(self, step: int) -> Batch:
        rng = stream(self.seed, STREAMS, "train_batches", step)
        if self.batch_size == self.num_train:
            index = np.arange(self.num_train)
        else:
            index = rng.choice(self.num_train, size=self.batch_size, replace=False)
        mask = observation_mask(rng, len(index), self.num_points, self.window, self.observed)
        eps = rng.standard_normal((len(index), self.sizes.latent_dim)).astype(np.float32)
        values = self.series.noisy[index]
        if self.loss_points == "window":  # what the loss sees: the window's points only
            values, mask = values[:, :self.window], mask[:, :self.window]
        return Batch(values, mask, eps)

    def _test_slice(self, final: bool) -> slice:
        count = self.num_test if final else self.eval_size
        return slice(self.num_train, self.num_train + count)

    def test_batch(self, final: bool, observed: int | None = None) -> tuple[Batch, np.ndarray]:
        """(batch with zero noise, clean targets) of the test series (all, or the first
        ``eval_subset`` when not final), ``observed`` window points seen (default: the option's)."""
        part = self._test_slice(final)
        values, clean = self.series.noisy[part], self.series.clean[part]
        n = self.observed if observed is None else int(observed)
        rng = stream(self.seed, STREAMS, "test_masks", n)
        mask = observation_mask(rng, self.num_test, self.num_points, self.window, n)
        mask = mask[:len(values)]
        eps = np.zeros((len(values), self.sizes.latent_dim), np.float32)
        return Batch(values, mask, eps), clean

    # ---- metrics -------------------------------------------------------------------------------

    def errors(self, prediction: np.ndarray, clean: np.ndarray, mask: np.ndarray
               ) -> dict[str, float]:
        """``mse_interp``, ``mse_extrap`` and ``mse`` (see the module doc)."""
        sq = ((np.asarray(prediction, np.float64) - clean) ** 2).mean(axis=2)  # (N, T)
        window = np.zeros(self.num_points, bool)
        window[:self.window] = True
        unseen = mask < 0.5
        interp = unseen & window if self.observed < self.window else np.broadcast_to(
            window, unseen.shape)
        return {"mse_interp": float(sq[interp].mean()),
                "mse_extrap": float(sq[:, ~window].mean()),
                "mse": float(sq[unseen].mean())}

    def evaluate(self, predict: Callable[[Batch], tuple[np.ndarray, float]], final: bool
                 ) -> Evaluation:
        """Metrics of ``predict(batch) -> (prediction (N, T, D), forward NFE)`` on the test set."""
        batch, clean = self.test_batch(final)
        prediction, nfe = predict(batch)
        metrics = self.errors(prediction, clean, batch.mask)
        metrics["nfe_eval_forward"] = float(nfe)
        if self.dataset == "spirals" and self.window == 100:
            metrics.update(self.table2_errors(predict, final))
        return Evaluation(metrics, notes=self.eval_notes(final))

    def table2_errors(self, predict: Callable[[Batch], tuple[np.ndarray, float]], final: bool
                      ) -> dict[str, float]:
        """Chen et al.'s Table 2 quantity for n = 30, 50, 100 of the 100 window points observed:
        ``rmse_obs{n}``, the predictive RMSE "on 100 time points extending beyond those that were
        used for training" (Sec. 5.1), i.e. over the 100 future points, against the noiseless
        series; ``rmse_noisy_obs{n}`` the same against the noisy series (what the model could
        be scored on with the data alone); ``rmse_window_obs{n}``, the RMSE of the window's
        reconstruction (all 100 window points, noiseless). And ``noise_floor``: the RMSE of the
        noiseless series against the noisy one over those future points, what a perfect model
        scores in ``rmse_noisy_obs{n}`` (about ``noise_std``): no model's ``rmse_noisy`` falls
        below it, while ``rmse_obs`` may."""
        out: dict[str, float] = {}
        future = slice(self.window, self.window + 100)
        noisy = np.asarray(self.series.noisy[self._test_slice(final)], np.float64)
        for n in TABLE2_OBSERVED:
            b, c = self.test_batch(final, observed=n)
            p = np.asarray(predict(b)[0], np.float64)
            err = (p - c) ** 2
            out[f"rmse_obs{n}"] = float(np.sqrt(err[:, future].mean()))
            out[f"rmse_noisy_obs{n}"] = float(np.sqrt(((p - noisy)[:, future] ** 2).mean()))
            out[f"rmse_window_obs{n}"] = float(np.sqrt(err[:, :self.window].mean()))
            clean = c
        out["noise_floor"] = float(np.sqrt(((noisy - clean)[:, future] ** 2).mean()))
        return out

    def eval_notes(self, final: bool) -> str:
        count = self.num_test if final else self.eval_size
        which = (f"all {count} test series" if count == self.num_test
                 else f"the first {count} of {self.num_test} test series")
        interp = ("mse_interp on the unobserved window points" if self.observed < self.window
                  else "mse_interp is the window's reconstruction error (all points observed)")
        notes = (f"{self.dataset}: {which}; {self.observed} of {self.window} window points "
                 f"observed, {self.num_points - self.window} future points; {interp}; errors "
                 f"against the noiseless series, z0 = posterior mean; noise std "
                 f"{self.noise_std:g}; the loss on "
                 + ("the window only (the future never trained on)"
                    if self.loss_points == "window" else "every point of a training series"))
        if self.encoder != "rnn":
            notes += f"; {self.encoder} encoder"
        if self.dataset == "spirals" and self.window == 100:
            notes += ("; rmse_obs30/50/100: RMSE on the 100 future points (Chen et al.'s "
                      "predictive RMSE) with 30/50/100 window points observed, "
                      "rmse_noisy_obs30/50/100 the same against the noisy series (noise_floor: "
                      "a perfect model's rmse_noisy), rmse_window_obs30/50/100 on the window, "
                      f"from the one model trained with {self.observed} observed points (Chen et "
                      "al. trained one model per count)")
        return notes

    def plot(self, work_dir: Any, predict: Callable[[Batch], tuple[np.ndarray, float]],
             trace: Mapping[str, Any], backend_name: str) -> None:
        """``latent_ode_<dataset>.png`` in ``work_dir``: the first ``plot_series`` test series
        (none where the budget sets it to 0: smoke, whose JAX cells would compile a prediction
        program of its own for the plot's batch)."""
        from pathlib import Path

        n = int(self.settings["plot_series"])
        if n <= 0:
            return
        batch, clean = self.test_batch(final=True)
        batch, clean = Batch(batch.values[:n], batch.mask[:n], batch.eps[:n]), clean[:n]
        prediction, _ = predict(batch)
        final = [e for e in trace.get("evaluations", []) if e.get("final")]
        mse = final[-1].get("mse") if final else None
        title = f"latent-ode {self.dataset}, {backend_name}"
        if mse is not None and math.isfinite(mse):
            title += f": test MSE {mse:.4g}"
        from bench.suites.latent_ode_plot import plot_series

        plot_series(Path(work_dir) / f"latent_ode_{self.dataset}.png", self, batch, clean,
                    prediction, title)


def gaussian_log_constant(obs_std: float) -> float:
    """The constant of log N(x; m, s^2) per point: -log(s) - log(2 pi) / 2."""
    return -math.log(obs_std) - 0.5 * math.log(2.0 * math.pi)
