"""Latent ODEs on irregularly sampled time series (Chen et al. 2018, Sec. 5.1; Rubanova et al.
2019): mean squared error of interpolation and extrapolation.

This module declares the suite. Data, observation masks, reparametrisation noise, initial weights,
metrics and budgets are framework-neutral, in :mod:`bench.suites.latent_ode_data`, so that every
framework's model (torch in :mod:`bench.suites.latent_ode_torch`, JAX in
:mod:`bench.suites.latent_ode_jax`) trains on the very same batches from the very same initial
weights for a given seed. The generators are in :mod:`bench.suites.latent_ode_series`.

The task. Every series has T time points shared by all series (spirals: equally spaced; periodic:
irregular). The first half of the points is the *observation window*, the second half the
*future*. The encoder sees a random subset of the window's points (suite option
``observed_fraction``, default 0.5; at least one point): which points are observed differs from
series to series, so observation times are irregular. The model reconstructs every point:

- ``mse_interp``: MSE on the window's points the encoder did not see (with
  ``observed_fraction=1`` there are none, and it is the reconstruction MSE of the window instead;
  the row's notes say which);
- ``mse_extrap``: MSE on the future half (predicting the second half from the first);
- ``mse``: MSE on every point the encoder did not see (the suite's metric);
- spirals only: ``rmse_obs30``, ``rmse_obs50``, ``rmse_obs100``: with 30, 50 or 100 of the 100
  window points observed, the RMSE over the 100 future points, the quantity of Chen et al.
  Table 2 ("predictive RMSE ... on 100 time points extending beyond those that were used for
  training", Sec. 5.1; Latent ODE 0.1642 / 0.1502 / 0.1346); ``rmse_window_obs30/50/100``: the
  same over the 100 window points (reconstruction; what ``rmse_obs*`` measured before this
  change, so earlier tables' ``rmse_obs*`` figures are window RMSEs). Chen trained one model per
  number of observations, here one model trained at ``observed_fraction`` is evaluated at all
  three (the notes say so); ``rmse_noisy_obs30/50/100``: the same RMSE against the noisy
  series, and ``noise_floor``: what a perfect model scores there (about the noise std; a
  noisy RMSE never falls below it, the noiseless one may).

Errors are measured against the noiseless series, on held-out test series (80/20 split), with
z0 set to the posterior mean (no sampling).

Noise and loss (suite options). ``noise_std``: the std of the Gaussian noise on the observations
and of the likelihood (default: the dataset's under the budget: spirals 0.3, the torchdiffeq
example's; under the paper budget 0.1, see below; periodic 0.01). ``loss_points``: what the loss
covers, ``all`` points of a training series (the future half too) or the ``window`` only (the
future is then pure extrapolation, never trained on; the training solve stops at the window's
last time). Default: the budget's (``window`` for spirals under the paper budget, else ``all``).

The spirals paper budget and where each number comes from. Chen et al. 2018, Sec. 5.1: 1000
spirals, 100 observed time steps, "we add gaussian noise to the observations" (no std given),
Table 2's RMSE "on 100 time points extending beyond those that were used for training" (no
iteration count given). The paper budget: noise std 0.1 (the default of ``generate_spiral2d`` in
torchdiffeq's ``examples/latent_ode.py``, a later example whose main passes 0.3: against targets
with noise 0.3 no RMSE falls below 0.3, and Table 2 reports 0.1346); the loss on the 100 window
points (the example trains on its 100 sampled points only); 4000 Adam steps at lr 0.01 on all
800 training series (the example stops at 2000, still improving); torchdiffeq's default
tolerances as the example (rtol 1e-7, atol 1e-9). results/latent-ode-paper-cpu measures it.

The model (Chen et al.'s ``latent_ode.py`` example, written anew):

- recognition RNN, run backwards in time over the window: h <- tanh(W [x_i, t_i, h] + b) at each
  observed point (unobserved points leave h unchanged); q(z0) = N(mu, exp(logvar)) from a linear
  layer of the final h. (The observation time t_i is an input so that the RNN knows where its
  irregular observations are; Chen's spirals, all observed on one grid, did without.)
  Option ``encoder=ode-rnn`` (Rubanova et al.'s ODE-RNN): between consecutive window times the
  hidden state also evolves by its own ODE, dh/dt = fc2(tanh(fc1(h))) over the gap, integrated by
  the same backend (one solve per gap, each rescaled to [0, 1] with the gap in the state, so fixed-
  step backends take the same steps in both frameworks; the encoder's NFE adds to the latent
  ODE's). Much slower than the RNN: a window of 100 points is 99 solves per forward pass.
- latent dynamics, an MLP with ELU activations, time-independent (spirals: one hidden layer,
  dz/dt = fc2(elu(fc1(z))), as Chen et al.'s Sec. 5.1; periodic: two), integrated by the backend
  from t = 0 to every time of the series (all series of a batch in one solve);
- decoder x = fc2(relu(fc1(z))); Gaussian likelihood with the dataset's noise std;
- loss: the negative ELBO per series, -sum_{t, d} log N(x | x_hat, sigma^2) + KL(q(z0) || N(0, I)),
  averaged over the batch; Adam.

Sizes (latent / RNN / hidden units): spirals 4 / 25 / 20 as Chen et al.; periodic 10 / 20 / 100,
Rubanova's ``-l 10`` with the default recognition (20) and generative (100) widths. Rubanova used
Adamax with KL annealing and tanh networks; this suite uses Adam, no annealing and ELU dynamics
with two hidden layers of 100, and claims no Rubanova number. The periodic series' noise is
Gaussian, as Rubanova et al.'s text says (their code adds ``noise_weight`` times U[0, 1) noise,
all positive; see :func:`bench.suites.latent_ode_series.periodic`).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suites.latent_ode_data import (
    BUDGETS,
    DATASET_SETTINGS,
    DATASETS,
    ENCODERS,
    LOSS_POINTS,
    LatentOdeData,
)

import bench
from bench.core.interfaces import (
    AbstractBackend,
    AbstractSuite,
    Budget,
    CellContext,
    Support,
)
from bench.core.options import OptionSpec, in_unit_interval, option_defaults, positive

# -------------------------------------------------------------------------------------------------
# The suite
# -------------------------------------------------------------------------------------------------


class LatentOdeSuite(AbstractSuite):
    name = "latent-ode"
    description = ("latent ODE (RNN encoder, ODE in latent space, decoder; ELBO) on irregularly "
                   "sampled procedural series: interpolation and extrapolation MSE")
    metric_name = "mse"
    metric_direction = "lower"
    tasks = {"torch": "bench.suites.latent_ode_torch:LatentOdeTorchTask",
             "jax": "bench.suites.latent_ode_jax:LatentOdeJaxTask"}
    budgets = BUDGETS
    option_specs = (
        OptionSpec("dataset", str, "spirals", choices=DATASETS,
                   help="spirals (Chen et al. 2018 Sec. 5.1) or periodic (Rubanova et al. 2019)"),
        OptionSpec("observed_fraction", float, 0.5, validator=in_unit_interval,
                   valid="a number in (0, 1]",
                   help="fraction of the window's points the encoder sees"),
        OptionSpec("encoder", str, "rnn", choices=ENCODERS,
                   help="rnn, or ode-rnn (the hidden state also follows an ODE between "
                   "observations)"),
        OptionSpec("noise_std", float, None, validator=positive, valid="a positive number",
                   nullable=True,
                   help="std of the Gaussian noise on the observations (and of the likelihood); "
                   "none: the dataset's under the budget (spirals 0.3, paper budget 0.1; "
                   "periodic 0.01)"),
        OptionSpec("loss_points", str, None, choices=LOSS_POINTS, nullable=True,
                   help="what the training loss covers: all (every point of a training series, "
                   "the future half too) or window (the observed half only: the future is pure "
                   "extrapolation); none: the budget's (spirals paper budget window, else all)"),
    )
    options = option_defaults(option_specs)

    def budget_tolerances(self, budget: Budget) -> str | None:
        if budget.settings.get("paper"):  # each dataset's reference tolerances
            return "; ".join(
                f"{name}: rtol={spec['paper']['rtol']} atol={spec['paper']['atol']}"
                for name, spec in DATASET_SETTINGS.items())
        return super().budget_tolerances(budget)

    def supports(self, backend: AbstractBackend) -> Support:
        if not backend.continuous_time:
            return Support.no(
                f"backend {backend.name!r} has no continuous time: a latent ODE must output the "
                "latent state at every (irregular) observation time; use an ODE backend (e.g. "
                "torch-adjoint, torch-direct, rknet)")
        return Support.yes()

    def task_inputs(self, ctx: CellContext) -> LatentOdeData:
        options = self.cell_options(ctx)
        return LatentOdeData(str(options["dataset"]), ctx.budget.settings, ctx.seed,
                             options["observed_fraction"], str(options["encoder"]),
                             options["noise_std"], options["loss_points"])


@bench.hookimpl
def bench_register_suites(register: Callable[[AbstractSuite], None]) -> None:
    register(LatentOdeSuite())
